//! loraforge's domain: the nouns of the service (a LoRA, its training job, a dataset, a user's
//! limits) and the rules that govern them (the status machine, parameter ranges, name rules,
//! monthly windows). It does no I/O and knows neither HTTP nor SQL; every other crate depends on
//! it and it depends on none of them. Time comes in as an argument or through [`Clock`], so every
//! rule can be tested at any instant.

pub mod breaker;
pub mod budget;
pub mod caption;
pub mod clock;
pub mod creator;
pub mod credit;
pub mod dataset;
pub mod handoff;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod lora;
pub mod moderation;
pub mod money;
pub mod name;
pub mod outcome;
pub mod params;
pub mod quota;
pub mod quote;
pub mod run;
pub mod sample_wire;
pub mod samples;
pub mod status;
pub mod text;
pub mod validation;
pub mod webhooks;

pub use caption::caption_for_training;
pub use clock::{Clock, ManualClock, SystemClock};
pub use creator::{DisplayName, DisplayNameError, default_display_name};
pub use dataset::{Dataset, DatasetImage, DatasetRules, ImageFormat};
pub use ids::{DatasetId, LoraId, RunId, SampleBatchId, UserId};
pub use limits::{MonthlyWindow, UsageLimits};
pub use lora::{CreatorRef, LoraModel, LoraSort, LoraSummary, Progress};
pub use moderation::{Hidden, ReportInput, ReportReason, Resolution};
pub use money::MicroUsd;
pub use name::{LoraName, NameError};
pub use outcome::{Disposition, OutcomeSpec};
pub use params::{
    ParamError, ParamErrorKind, ParamLimits, ParamsInput, PriorPreservation, TrainingParams,
    TrainingType,
};
pub use quota::{
    DailyWindow, DatasetQuota, DatasetRetention, DatasetUsage, QuotaExceeded, QuotaKind,
};
pub use run::{FileFacts, RunResult, TrainingRun, ValidationFacts};
pub use status::{StatusEvent, TrainingStatus, TransitionError};
pub use text::{TextError, TextRule};
pub use validation::Verdict;
