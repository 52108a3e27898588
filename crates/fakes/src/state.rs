//! The fake's one piece of shared state, behind one mutex held only for short, non-async
//! sections (no `.await` while locked), so requests, supervisors and steering calls serialise.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{FakeConfig, GpuType};
use crate::jobs::JobRecord;
use crate::pods::PodRecord;

pub(crate) struct Shared {
    pub config: FakeConfig,
    pub logs_dir: PathBuf,
    state: Mutex<State>,
}

impl Shared {
    pub fn new(config: FakeConfig, logs_dir: PathBuf) -> Arc<Self> {
        let gpus = config
            .gpu_types
            .iter()
            .map(|g| (g.id.clone(), g.clone()))
            .collect();
        Arc::new(Self {
            config,
            logs_dir,
            state: Mutex::new(State {
                gpus,
                ..State::default()
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// Free GPUs and prices by `gpuTypeId`.
    pub gpus: HashMap<String, GpuType>,
    pub pods: HashMap<String, PodRecord>,
    pub next_seq: u64,
    pub jobs: HashMap<String, JobRecord>,
    /// Queued job ids per endpoint, oldest first.
    pub queues: HashMap<String, VecDeque<String>>,
    /// Jobs holding a worker slot per endpoint.
    pub running: HashMap<String, usize>,
    /// Live processes: key → pid (= pgid). A supervisor removes its entry once the pid is reaped.
    pub procs: HashMap<u64, i32>,
    pub next_proc: u64,
    pub calls: Vec<Call>,
    /// Every request received, answered or refused, in order.
    pub requests: Vec<RequestSeen>,
    pub inject: Option<Injection>,
    /// Set when the fake is dropped: nothing new is started.
    pub shutting_down: bool,
}

impl State {
    pub fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub fn proc_key(&mut self) -> u64 {
        self.next_proc += 1;
        self.next_proc
    }

    pub fn log_call(&mut self, op: CallOp) {
        self.calls.push(Call { at: Utc::now(), op });
    }
}

/// The next `remaining` requests (to either API) answer `status`.
#[derive(Debug, Clone)]
pub(crate) struct Injection {
    pub remaining: u32,
    pub status: u16,
    pub retry_after: Option<Duration>,
}

/// One request the fake received (to either API), whatever it was answered: also those an
/// injected failure refused, which never reach [`Call`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSeen {
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// The GraphQL root field (`podFindAndDeployOnDemand`, `pod`, `myself`, …; `graphql` when
    /// the body is not a query), or the serverless route (`run`, `status`, `cancel`, `health`).
    pub operation: String,
    /// The HTTP status it was answered.
    pub status: u16,
}

/// One operation the fake received, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub at: DateTime<Utc>,
    pub op: CallOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallOp {
    /// `podFindAndDeployOnDemand`; `pod_id` when a pod was created, `error` when not.
    Deploy {
        name: String,
        gpu_type: String,
        pod_id: Option<String>,
        error: Option<String>,
    },
    /// `podTerminate`; `found`: the pod existed and was not terminated yet.
    Terminate { pod_id: String, found: bool },
    /// `POST /run`.
    Run { endpoint: String, job_id: String },
    /// `POST /cancel/{id}`; `found`: the job exists.
    Cancel {
        endpoint: String,
        job_id: String,
        found: bool,
    },
}
