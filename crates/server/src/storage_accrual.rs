//! Storage costs in the ledger: once a month per LoRA with stored files, a `storage` entry of
//! its model file's bytes × the price per GB-month (`domain::budget::storage_cost`, rounded once),
//! keyed `storage:<lora>:<YYYY-MM>` so running it again (every maintenance round, on every
//! replica) charges nothing twice. A LoRA is charged the whole month it is first seen stored in.
//! Only the model file's size is recorded on a LoRA (`file_size`); the kohya copy and the
//! validation images are not counted.

use chrono::{DateTime, Utc};

use loraforge_db::Repository;
use loraforge_db::ledger::NewCostEntry;
use loraforge_domain::MicroUsd;
use loraforge_domain::budget::{CostKind, storage_cost, storage_entry_key};

/// LoRAs read per query.
const PAGE: u32 = 500;

/// What one [`accrue_storage`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageAccrual {
    /// Entries written now (the rest were written before).
    pub charged: u64,
    /// Their sum.
    pub amount: MicroUsd,
}

/// Charges `month` (`YYYY-MM`) of storage to every LoRA with a stored file that has no entry for
/// it yet, at `price` per GB-month. One steppable round; the maintenance loop calls it with the
/// current month.
pub async fn accrue_storage(
    repo: &dyn Repository,
    price: MicroUsd,
    month: &str,
    now: DateTime<Utc>,
) -> loraforge_db::Result<StorageAccrual> {
    let mut done = StorageAccrual::default();
    let mut after = None;
    loop {
        let page = repo.stored_loras(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.lora_id);
        for lora in &page {
            let amount = storage_cost(lora.bytes, price);
            let entry = NewCostEntry {
                lora_id: lora.lora_id,
                user_id: lora.user_id,
                backend: None,
                kind: CostKind::Storage,
                month: month.to_owned(),
                amount,
                run_id: None,
                idempotency_key: storage_entry_key(lora.lora_id, month),
                created_at: now,
            };
            if repo.insert_cost_entry(&entry).await? {
                done.charged += 1;
                done.amount = done.amount.saturating_add(amount);
            }
        }
        if page.len() < PAGE as usize {
            break;
        }
    }
    Ok(done)
}
