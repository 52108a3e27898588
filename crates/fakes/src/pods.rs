//! Pods: deploy, get, list, terminate, and the supervisor that watches a pod's process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::process::{self, Stdout};
use crate::state::{CallOp, Shared, State};
use crate::{FakePodStatus, KillPod, PodSnapshot};

/// RunPod's out-of-capacity message (api-contracts.md §1a).
pub const NO_CAPACITY_MESSAGE: &str = "There are no longer any instances available with the requested specifications. Please refresh and try again.";

pub(crate) struct PodRecord {
    pub id: String,
    pub name: String,
    pub image_name: String,
    pub gpu_type: String,
    pub gpu_count: u32,
    pub cloud_type: String,
    pub env: Vec<(String, String)>,
    pub ports: Option<String>,
    pub container_disk_in_gb: Option<Value>,
    pub volume_in_gb: Option<Value>,
    pub volume_mount_path: Option<String>,
    pub docker_args: Option<String>,
    pub cost_micros: i64,
    pub machine_id: String,
    pub status: FakePodStatus,
    pub seq: u64,
    pub created_at: DateTime<Utc>,
    pub terminated_at: Option<DateTime<Utc>>,
    pub last_status_change: DateTime<Utc>,
    /// When `runtime` turns non-null (boot delay after the last start).
    pub up_at: Instant,
    pub has_program: bool,
    /// (registry key, pid) of the running process.
    pub process: Option<(u64, i32)>,
    pub exit_code: Option<i32>,
    /// `kill_pod` was used: the supervisor must not restart it.
    pub host_died: bool,
}

impl PodRecord {
    pub fn snapshot(&self, shared: &Shared) -> PodSnapshot {
        PodSnapshot {
            id: self.id.clone(),
            name: self.name.clone(),
            image_name: self.image_name.clone(),
            gpu_type: self.gpu_type.clone(),
            gpu_count: self.gpu_count,
            cloud_type: self.cloud_type.clone(),
            status: self.status,
            env: self.env.clone(),
            created_at: self.created_at,
            terminated_at: self.terminated_at,
            process_alive: self.process.is_some(),
            pid: self.process.map(|(_, pid)| pid),
            exit_code: self.exit_code,
            log_path: shared.logs_dir.join(format!("{}.log", self.id)),
        }
    }

    fn runtime_up(&self, now: Instant) -> bool {
        self.status == FakePodStatus::Running
            && now >= self.up_at
            && (!self.has_program || self.process.is_some())
    }

    /// The pod as GraphQL returns it. It carries every documented field whatever the query
    /// selected: returning more than was selected is acceptable for a fake, and clients that
    /// parse by name ignore the rest.
    pub fn to_json(&self, shared: &Shared, now: Instant) -> Value {
        let cost = render_price(self.cost_micros, shared.config.cost_as_string);
        let runtime = if self.runtime_up(now) {
            let ports: Vec<Value> = self
                .ports
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter_map(|p| {
                    let (port, kind) = p.trim().split_once('/')?;
                    let port: u16 = port.parse().ok()?;
                    Some(json!({"ip": "127.0.0.1", "isIpPublic": false, "privatePort": port, "publicPort": port, "type": kind}))
                })
                .collect();
            let gpus: Vec<Value> = (0..self.gpu_count)
                .map(|i| json!({"id": format!("GPU-{}-{i}", self.id), "gpuUtilPercent": 0, "memoryUtilPercent": 0}))
                .collect();
            json!({
                "uptimeInSeconds": now.duration_since(self.up_at).as_secs(),
                "ports": ports,
                "gpus": gpus,
                "container": {"cpuPercent": 0, "memoryPercent": 0},
            })
        } else {
            Value::Null
        };
        let desired = match self.status {
            FakePodStatus::Running => "RUNNING",
            FakePodStatus::Exited => "EXITED",
            FakePodStatus::Terminated | FakePodStatus::Vanished => "TERMINATED",
        };
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        json!({
            "id": self.id,
            "name": self.name,
            "imageName": self.image_name,
            "desiredStatus": desired,
            "costPerHr": cost,
            "gpuCount": self.gpu_count,
            "containerDiskInGb": self.container_disk_in_gb,
            "volumeInGb": self.volume_in_gb,
            "volumeMountPath": self.volume_mount_path,
            "dockerArgs": self.docker_args,
            "env": env,
            "ports": self.ports,
            "machineId": self.machine_id,
            "memoryInGb": 62,
            "vcpuCount": 16,
            "podType": "RESERVED",
            "lastStatusChange": format!("{desired}: {}", self.last_status_change.to_rfc2822()),
            "uptimeSeconds": if runtime.is_null() { 0 } else { now.duration_since(self.up_at).as_secs() },
            "machine": {"podHostId": format!("{}-{}", self.id, self.machine_id), "gpuDisplayName": self.gpu_type},
            "runtime": runtime,
        })
    }
}

/// Micro-dollars as the JSON number RunPod sends (0.79), or as a string ("0.79").
fn render_price(micros: i64, as_string: bool) -> Value {
    let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    if as_string {
        Value::String(text)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// `len` random lowercase alphanumerics (pod ids are 14, machine ids 12).
pub(crate) fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() < len {
                out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
            }
        }
    }
    out
}

fn text_field(input: &Map<String, Value>, key: &str) -> Option<String> {
    match input.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn number_field(input: &Map<String, Value>, key: &str) -> Option<Value> {
    input.get(key).filter(|v| v.is_number()).cloned()
}

/// `podFindAndDeployOnDemand`: the created pod, or an error message.
pub(crate) fn deploy(shared: &Arc<Shared>, input: &Value) -> Result<Value, String> {
    let input = input
        .as_object()
        .ok_or("input: PodFindAndDeployOnDemandInput! is required")?;
    let name = text_field(input, "name").unwrap_or_default();
    let gpu_type = text_field(input, "gpuTypeId").unwrap_or_default();
    let mut st = shared.lock();
    let result = deploy_locked(shared, &mut st, input, &name, &gpu_type);
    let (pod_id, error) = match &result {
        Ok(pod) => (pod["id"].as_str().map(str::to_owned), None),
        Err(e) => (None, Some(e.clone())),
    };
    st.log_call(CallOp::Deploy {
        name,
        gpu_type,
        pod_id,
        error,
    });
    result
}

fn deploy_locked(
    shared: &Arc<Shared>,
    st: &mut State,
    input: &Map<String, Value>,
    name: &str,
    gpu_type: &str,
) -> Result<Value, String> {
    let image_name = text_field(input, "imageName").ok_or("imageName is required")?;
    if gpu_type.is_empty() {
        return Err("gpuTypeId is required".into());
    }
    let gpu_count = match input.get("gpuCount") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=8).contains(n))
            .ok_or("gpuCount must be 1 to 8")? as u32,
    };
    let cloud_type = text_field(input, "cloudType").unwrap_or_else(|| "ALL".into());
    if !["ALL", "SECURE", "COMMUNITY"].contains(&cloud_type.as_str()) {
        return Err(format!(
            "Value \"{cloud_type}\" does not exist in \"CloudTypeEnum\" enum."
        ));
    }
    let mut env = Vec::new();
    match input.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let key = item
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or("env items need key and value")?;
                let value = item
                    .get("value")
                    .and_then(Value::as_str)
                    .ok_or("env items need key and value")?;
                env.push((key.to_owned(), value.to_owned()));
            }
        }
        Some(_) => return Err("env must be a list of {key, value}".into()),
    }
    // Unknown GPU types have no capacity, like sold-out ones.
    let cost_micros = match st.gpus.get_mut(gpu_type) {
        Some(gpu) if gpu.available >= gpu_count => {
            gpu.available -= gpu_count;
            gpu.cost_per_hr_micros * i64::from(gpu_count)
        }
        _ => return Err(NO_CAPACITY_MESSAGE.into()),
    };
    let mut id = random_id(14);
    while st.pods.contains_key(&id) {
        id = random_id(14);
    }
    let now = Utc::now();
    let has_program = shared
        .config
        .images
        .get(&image_name)
        .is_some_and(|i| i.program.is_some());
    let seq = st.seq();
    st.pods.insert(
        id.clone(),
        PodRecord {
            id: id.clone(),
            name: name.to_owned(),
            image_name,
            gpu_type: gpu_type.to_owned(),
            gpu_count,
            cloud_type,
            env,
            ports: text_field(input, "ports"),
            container_disk_in_gb: number_field(input, "containerDiskInGb"),
            volume_in_gb: number_field(input, "volumeInGb"),
            volume_mount_path: text_field(input, "volumeMountPath"),
            docker_args: text_field(input, "dockerArgs"),
            cost_micros,
            machine_id: random_id(12),
            status: FakePodStatus::Running,
            seq,
            created_at: now,
            terminated_at: None,
            last_status_change: now,
            up_at: Instant::now() + shared.config.boot_delay,
            has_program,
            process: None,
            exit_code: None,
            host_died: false,
        },
    );
    if has_program {
        start_process(shared, st, &id);
    }
    Ok(st.pods[&id].to_json(shared, Instant::now()))
}

/// Starts the pod's image program, or marks the pod EXITED (code 127) when it cannot start.
fn start_process(shared: &Arc<Shared>, st: &mut State, id: &str) {
    if st.shutting_down {
        return;
    }
    let Some(pod) = st.pods.get(id) else { return };
    let Some(image) = shared.config.images.get(&pod.image_name) else {
        return;
    };
    let mut env = pod.env.clone();
    env.push(("RUNPOD_POD_ID".into(), id.to_owned()));
    let log = shared.logs_dir.join(format!("{id}.log"));
    let spawned = process::spawn(image, &env, &log, Stdout::Log);
    let key = st.proc_key();
    let pod = st.pods.get_mut(id).expect("checked above");
    match spawned {
        Ok(child) => {
            let pid = child.id().map_or(0, |p| p as i32);
            pod.process = Some((key, pid));
            st.procs.insert(key, pid);
            tokio::spawn(supervise(Arc::clone(shared), id.to_owned(), key, child));
        }
        Err(error) => {
            let _ = std::fs::write(
                &log,
                format!("fake-runpod: could not start the container: {error}\n"),
            );
            pod.status = FakePodStatus::Exited;
            pod.exit_code = Some(127);
            pod.last_status_change = Utc::now();
        }
    }
}

/// Waits for the pod's process; then the pod is EXITED (or restarted) unless it was terminated.
async fn supervise(shared: Arc<Shared>, id: String, key: u64, mut child: tokio::process::Child) {
    let status = child.wait().await;
    let mut st = shared.lock();
    st.procs.remove(&key);
    let shutting_down = st.shutting_down;
    let Some(pod) = st.pods.get_mut(&id) else {
        return;
    };
    if pod.process.map(|(k, _)| k) != Some(key) {
        return;
    }
    pod.process = None;
    pod.exit_code = status.ok().map(|s| process::exit_code(&s));
    if pod.status != FakePodStatus::Running {
        return;
    }
    if shared.config.restart_on_exit && !pod.host_died && !shutting_down {
        pod.up_at = Instant::now() + shared.config.boot_delay;
        start_process(&shared, &mut st, &id);
    } else {
        pod.status = FakePodStatus::Exited;
        pod.last_status_change = Utc::now();
    }
}

/// `pod(input: {podId})`: the pod, or null.
pub(crate) fn get(shared: &Shared, id: &str) -> Value {
    let st = shared.lock();
    let Some(pod) = st.pods.get(id) else {
        return Value::Null;
    };
    let visible = match pod.status {
        FakePodStatus::Running | FakePodStatus::Exited => true,
        FakePodStatus::Terminated => {
            shared.config.terminated_pods == crate::TerminatedPods::ReportTerminated
        }
        FakePodStatus::Vanished => false,
    };
    if visible {
        pod.to_json(shared, Instant::now())
    } else {
        Value::Null
    }
}

/// `myself { pods }`: every pod not terminated, oldest first.
pub(crate) fn list(shared: &Shared) -> Value {
    let st = shared.lock();
    let now = Instant::now();
    let mut pods: Vec<&PodRecord> = st
        .pods
        .values()
        .filter(|p| matches!(p.status, FakePodStatus::Running | FakePodStatus::Exited))
        .collect();
    pods.sort_by_key(|p| p.seq);
    Value::Array(pods.into_iter().map(|p| p.to_json(shared, now)).collect())
}

/// `podTerminate`: SIGTERM to the group now, SIGKILL after the grace; the pod is gone at once.
pub(crate) fn terminate(shared: &Arc<Shared>, id: &str) -> Result<(), String> {
    let mut st = shared.lock();
    let live = st
        .pods
        .get(id)
        .is_some_and(|p| matches!(p.status, FakePodStatus::Running | FakePodStatus::Exited));
    st.log_call(CallOp::Terminate {
        pod_id: id.to_owned(),
        found: live,
    });
    if !live {
        return match &shared.config.terminate_unknown {
            crate::TerminateUnknown::Succeed => Ok(()),
            crate::TerminateUnknown::Error(message) => Err(message.clone()),
        };
    }
    let pod = st.pods.get_mut(id).expect("checked above");
    pod.status = FakePodStatus::Terminated;
    pod.terminated_at = Some(Utc::now());
    pod.last_status_change = Utc::now();
    let (gpu_type, gpu_count, process) = (pod.gpu_type.clone(), pod.gpu_count, pod.process);
    if let Some(gpu) = st.gpus.get_mut(&gpu_type) {
        gpu.available += gpu_count;
    }
    if let Some((key, pid)) = process {
        process::signal_group(pid, libc::SIGTERM);
        tokio::spawn(kill_after(
            Arc::clone(shared),
            key,
            pid,
            shared.config.kill_grace,
        ));
    }
    Ok(())
}

async fn kill_after(shared: Arc<Shared>, key: u64, pid: i32, grace: Duration) {
    tokio::time::sleep(grace).await;
    if shared.lock().procs.contains_key(&key) {
        process::signal_group(pid, libc::SIGKILL);
    }
}

/// The host dies under the pod: SIGKILL, then EXITED or gone without a trace.
pub(crate) fn kill(shared: &Shared, id: &str, how: KillPod) -> bool {
    let mut st = shared.lock();
    let Some(pod) = st.pods.get_mut(id) else {
        return false;
    };
    if !matches!(pod.status, FakePodStatus::Running | FakePodStatus::Exited) {
        return false;
    }
    pod.host_died = true;
    if let Some((_, pid)) = pod.process {
        process::signal_group(pid, libc::SIGKILL);
    }
    pod.status = match how {
        KillPod::Exited => FakePodStatus::Exited,
        KillPod::Removed => FakePodStatus::Vanished,
    };
    pod.last_status_change = Utc::now();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_render_as_numbers_or_strings() {
        assert_eq!(render_price(790_000, false), json!(0.79));
        assert_eq!(render_price(2_000_000, false), json!(2));
        assert_eq!(render_price(340_000, true), json!("0.34"));
    }

    #[test]
    fn ids_are_lowercase_alphanumeric() {
        let id = random_id(14);
        assert_eq!(id.len(), 14);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }
}
