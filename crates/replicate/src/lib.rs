//! Replicate: [`ReplicateClient`] creates, reads, lists and cancels trainings through
//! `https://api.replicate.com/v1` (api-contracts.md §3), and [`ReplicateBackend`] runs training
//! attempts there for the job engine: our trainer packaged as a Cog model (`cog/`) trains on
//! Replicate's GPUs while the control plane plays the worker's part over the worker protocol
//! (`loraforge_worker::remote`), so a Replicate run's files and result take exactly the path a
//! worker's do. `loraforge-fakes` serves the same contract locally (`fake-replicate`), and is
//! what the tests here run against.
//!
//! One error type, [`ReplicateError`], with the predicates callers decide on; one retry rule
//! ([`retry`]): reads and cancels are retried on 429 (waiting what Replicate asks), 5xx and
//! transport failures; a create is never repeated blindly — a training whose answer was lost is
//! found again by its `loraforge_instance` tag. Money is integer micro-dollars; the token lives
//! in a [`secrecy::SecretString`].

mod backend;
mod client;
mod deliver;
mod error;
mod http;
pub mod retry;
mod types;

pub use backend::{ReplicateBackend, ReplicateBackendSettings};
pub use client::{AuthScheme, ReplicateClient, ReplicateSettings};
pub use error::{ReplicateError, Result};
pub use retry::RetrySettings;
pub use types::{
    CreateTraining, INSTANCE_TAG, Metrics, ModelRef, Page, Training, TrainingStatus,
    parse_slug_pair,
};
