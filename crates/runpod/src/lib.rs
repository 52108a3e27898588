//! RunPod: [`PodsBackend`] runs training attempts on on-demand GPU pods for the job engine and
//! [`ServerlessBackend`] runs them as jobs on a Serverless queue endpoint, on top of typed
//! clients for RunPod's two APIs: [`GraphqlClient`] creates, reads, lists and terminates
//! on-demand GPU pods through `https://api.runpod.io/graphql`, and
//! [`ServerlessClient`] submits, polls and cancels jobs on a queue endpoint under
//! `https://api.runpod.ai/v2/{endpoint_id}`. The wire contracts they follow are in
//! `shared/research/api-contracts.md` §1a and §2; `loraforge-fakes` serves the same contracts
//! locally and is what the tests here run against.
//!
//! Both clients share one error type, [`RunpodError`], whose predicates (`is_retryable`,
//! `is_capacity`, `is_not_found`) are what callers decide on, and one retry rule: reads and
//! deletes are retried on 429, 5xx and transport failures; creates (`deploy_pod`, `run`) only when
//! the request certainly was not processed (see [`retry`]). Money is integer micro-dollars; the
//! API key lives in a [`secrecy::SecretString`] and never reaches a `Debug`, a log or an error.

mod error;
mod graphql;
mod http;
mod pods;
pub mod retry;
mod serverless;
mod serverless_backend;

pub use error::{Result, RunpodError};
pub use graphql::{CloudType, DeployPod, GraphqlClient, GraphqlSettings, Pod, PodStatus};
pub use pods::{PodsBackend, PodsSettings};
pub use retry::RetrySettings;
pub use serverless::{
    Health, HealthJobs, HealthWorkers, JobRef, JobState, JobStatus, Policy, ServerlessClient,
    ServerlessSettings,
};
pub use serverless_backend::{ServerlessBackend, ServerlessBackendSettings};
