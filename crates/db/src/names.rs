//! Who already uses a LoRA name (`NameStore`, a supertrait of `Repository`): the check people
//! see as they type a new LoRA's name. Names are compared by their key (`LoraName::key`), as the
//! unique index `(user_id, name_key)` compares them.

use async_trait::async_trait;

use loraforge_domain::UserId;

use crate::Result;

/// The LoRAs already named by one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameUse {
    /// The user already has a LoRA of that name: creating another is refused (`duplicate_name`).
    pub yours: bool,
    /// Other users' LoRAs of that name: allowed (the library shows "Name (by creator)").
    pub others: u64,
}

#[async_trait]
pub trait NameStore: Send + Sync {
    /// Uses of the name whose key is `key` (`LoraName::key`), from `user`'s point of view.
    async fn name_use(&self, user: UserId, key: &str) -> Result<NameUse>;
}
