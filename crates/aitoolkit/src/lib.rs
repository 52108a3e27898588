//! ostris/ai-toolkit as a place to train: [`AiToolkitClient`] speaks its web UI's HTTP API
//! (`shared/research/api-contracts.md` §4), [`config::job_config`] turns our trainer spec into its
//! job config, and [`AiToolkitBackend`] is the `aitoolkit` backend of the job engine, which
//! plays the worker's part for the attempt over the worker protocol
//! (`loraforge_worker::remote`): it hands ai-toolkit the dataset and the job, follows it, and
//! delivers its final LoRA (converted from kohya form) through the same path a worker's result
//! takes. `loraforge-fakes` serves the same API locally (`fake-aitoolkit`), running our trainer.

mod backend;
mod client;
pub mod config;
mod deliver;
mod error;

pub use backend::{
    AiToolkitBackend, AiToolkitBackendSettings, PROVIDER_FAILED, Reissue, failure_code, stage_of,
};
pub use client::{
    AiToolkitClient, ClientSettings, Job, JobStatus, Log, OutputFile, Queue, ToolkitSettings,
};
pub use deliver::Delivery;
pub use error::{AiToolkitError, Result};
