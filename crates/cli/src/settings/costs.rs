//! Money settings: the system budget, its alert, the storage price and the local host's price,
//! checked at start-up and turned into what the server and the engine take.

use anyhow::bail;

use loraforge_domain::MicroUsd;

use super::Settings;

fn dollars(key: &str, text: &str, example: &str) -> anyhow::Result<MicroUsd> {
    match MicroUsd::parse_dollars(text) {
        Ok(m) => Ok(m),
        Err(e) => bail!("{key} must be decimal dollars like {example}: {e}"),
    }
}

/// Every money setting must parse, and the alert percent be 1–100.
pub(super) fn check(s: &Settings) -> anyhow::Result<()> {
    s.monthly_budget()?;
    s.storage_price()?;
    s.local_price()?;
    if !(1..=100).contains(&s.budget_alert_percent) {
        bail!(
            "budget_alert_percent must be between 1 and 100, not {}",
            s.budget_alert_percent
        );
    }
    Ok(())
}

impl Settings {
    /// `monthly_budget_usd` in micro-dollars.
    pub fn monthly_budget(&self) -> anyhow::Result<MicroUsd> {
        dollars("monthly_budget_usd", &self.monthly_budget_usd, "200")
    }

    /// `storage_price_per_gb_month` in micro-dollars.
    pub fn storage_price(&self) -> anyhow::Result<MicroUsd> {
        dollars(
            "storage_price_per_gb_month",
            &self.storage_price_per_gb_month,
            "0.023",
        )
    }

    /// `local_price_per_hour` in micro-dollars; `None` when free.
    pub fn local_price(&self) -> anyhow::Result<Option<MicroUsd>> {
        let p = dollars("local_price_per_hour", &self.local_price_per_hour, "0.50")?;
        Ok((p > MicroUsd::ZERO).then_some(p))
    }

    /// What the server needs of them (settings were checked at load).
    pub fn cost_settings(&self) -> loraforge_server::settings::CostSettings {
        let d = loraforge_server::settings::CostSettings::default();
        loraforge_server::settings::CostSettings {
            monthly_budget: self.monthly_budget().unwrap_or(d.monthly_budget),
            alert_percent: self.budget_alert_percent,
            storage_price_per_gb_month: self
                .storage_price()
                .unwrap_or(d.storage_price_per_gb_month),
        }
    }

    /// The engine's budget gate's settings.
    pub fn budget_settings(&self) -> loraforge_engine::BudgetSettings {
        let c = self.cost_settings();
        loraforge_engine::BudgetSettings {
            monthly_budget: c.monthly_budget,
            alert_percent: c.alert_percent,
        }
    }
}
