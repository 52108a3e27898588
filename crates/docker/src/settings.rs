//! How containers are made, and how the Docker host is reached.

use std::time::Duration;

use bollard::Docker;
use loraforge_engine::BackendError;

/// Which GPUs a container gets (`LORAFORGE_DOCKER_GPUS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    /// `none`: a CPU host; no device request.
    None,
    /// `all`: every GPU of the host (`Count: -1`).
    All,
    /// `2`: that many GPUs.
    Count(u32),
    /// `0,1` or `GPU-uuid,…`: these devices.
    Ids(Vec<String>),
}

impl Gpus {
    /// `none`, `all`, a count (`1`), or device ids separated by commas (`0,2`, `GPU-…`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "" => return Err("docker_gpus is empty; use all, none, a count or device ids".into()),
            "none" => return Ok(Gpus::None),
            "all" => return Ok(Gpus::All),
            _ => {}
        }
        if !text.contains(',')
            && let Ok(n) = text.parse::<u32>()
        {
            return if n == 0 {
                Ok(Gpus::None)
            } else {
                Ok(Gpus::Count(n))
            };
        }
        let ids: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
        if ids
            .iter()
            .any(|id| id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(format!(
                "docker_gpus {text:?}: use all, none, a count or device ids like 0,1 or GPU-<uuid>"
            ));
        }
        Ok(Gpus::Ids(ids))
    }

    /// How a run's `gpu_type` records it (`None` for a CPU container).
    pub fn describe(&self) -> Option<String> {
        match self {
            Gpus::None => None,
            Gpus::All => Some("docker:all".into()),
            Gpus::Count(n) => Some(format!("docker:{n}")),
            Gpus::Ids(ids) => Some(format!("docker:{}", ids.join(","))),
        }
    }
}

/// CPUs as decimal text (`1.5`) → Docker's `NanoCpus` (1_500_000_000), without floats.
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    let bad = || format!("docker_cpus {text:?} must be a number of CPUs like 2 or 1.5");
    let text = text.trim();
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if (int.is_empty() && frac.is_empty())
        || frac.len() > 9
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac: i64 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
    let nanos = int
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac))
        .ok_or_else(bad)?;
    if nanos == 0 {
        return Err(bad());
    }
    Ok(nanos)
}

#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// The backend's name in the database. Default "docker".
    pub name: String,
    /// The worker image, e.g. `ghcr.io/acme/loraforge-worker:0.1.0`.
    pub image: String,
    /// The container's command; default `loraforge worker` (the image's `CMD`, given explicitly
    /// so an image with another default still runs the worker).
    pub command: Vec<String>,
    pub gpus: Gpus,
    /// Memory limit per container, MiB (`HostConfig.Memory`); `None`: no limit.
    pub memory_mb: Option<u64>,
    /// CPU limit per container in billionths of a CPU (`HostConfig.NanoCpus`); `None`: no limit.
    pub nano_cpus: Option<i64>,
    /// A network to attach containers to (`HostConfig.NetworkMode`); `None`: Docker's default.
    pub network: Option<String>,
    /// Containers at once across every replica.
    pub max_runs: usize,
    /// Extra environment for every container (e.g. `HF_TOKEN`), after the worker's own.
    pub env: Vec<(String, String)>,
    /// `stop`'s timeout: SIGTERM, then SIGKILL after this (the worker checkpoints on SIGTERM).
    pub stop_timeout: Duration,
    /// How long a finished run's container may take to exit on its own before it is stopped.
    pub finish_grace: Duration,
    /// Limit on every API call but pulls and stops.
    pub call_timeout: Duration,
    /// Limit on pulling the image.
    pub pull_timeout: Duration,
    /// How long a launch waits for a pull it started or found (below the engine's limit on a
    /// launch, 30 s); a pull still going then leaves the job queued until a later launch.
    pub pull_wait: Duration,
    /// How often the engine lists the containers.
    pub observe_every: Duration,
    /// What the Docker host costs per hour while a container runs (recorded on each run; the
    /// engine bills from the run's start to its container's confirmed removal). `None`: no cost.
    pub price_per_hour: Option<loraforge_domain::MicroUsd>,
}

impl DockerSettings {
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            name: "docker".to_owned(),
            image: image.into(),
            command: vec!["loraforge".to_owned(), "worker".to_owned()],
            gpus: Gpus::All,
            memory_mb: None,
            nano_cpus: None,
            network: None,
            max_runs: 1,
            env: Vec::new(),
            stop_timeout: Duration::from_secs(20),
            finish_grace: Duration::from_secs(30),
            call_timeout: Duration::from_secs(30),
            pull_timeout: Duration::from_secs(30 * 60),
            pull_wait: Duration::from_secs(15),
            observe_every: Duration::from_secs(5),
            price_per_hour: None,
        }
    }
}

/// A client for `host`: `unix:///var/run/docker.sock` (or a bare path), `tcp://h:p` or
/// `http://h:p`. The API version is pinned to the one bollard 0.21.1 was generated for
/// (`API_DEFAULT_VERSION`, 1.53), never negotiated (bollard issue 736).
pub fn connect(host: &str, timeout: Duration) -> Result<Docker, BackendError> {
    let secs = timeout.as_secs().max(1);
    let version = bollard::API_DEFAULT_VERSION;
    let host = host.trim();
    let connected = if let Some(path) = host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, secs, version)
    } else if host.starts_with('/') {
        Docker::connect_with_unix(host, secs, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, secs, version)
    } else {
        return Err(BackendError::Permanent(format!(
            "docker_host {host:?}: use unix:///path/to/docker.sock, tcp://HOST:PORT or http://HOST:PORT"
        )));
    };
    connected.map_err(|e| {
        BackendError::Permanent(format!(
            "connecting to Docker at {host}: {e}; check LORAFORGE_DOCKER_HOST and that Docker is running"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_parse() {
        assert_eq!(Gpus::parse("all"), Ok(Gpus::All));
        assert_eq!(Gpus::parse("NONE"), Ok(Gpus::None));
        assert_eq!(Gpus::parse("0"), Ok(Gpus::None));
        assert_eq!(Gpus::parse("2"), Ok(Gpus::Count(2)));
        assert_eq!(
            Gpus::parse("0,1"),
            Ok(Gpus::Ids(vec!["0".into(), "1".into()]))
        );
        assert_eq!(
            Gpus::parse("GPU-3a1f-77"),
            Ok(Gpus::Ids(vec!["GPU-3a1f-77".into()]))
        );
        assert!(Gpus::parse("").is_err());
        assert!(Gpus::parse("0,,1").is_err());
        assert!(Gpus::parse("x y").is_err());
    }

    #[test]
    fn cpus_parse_to_nanos() {
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_cpus(".25"), Ok(250_000_000));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("1e3").is_err());
        assert!(parse_cpus("99999999999").is_err());
    }

    #[test]
    fn hosts_must_name_a_scheme_we_speak() {
        assert!(connect("ssh://h", Duration::from_secs(1)).is_err());
        assert!(connect("tcp://127.0.0.1:1", Duration::from_secs(1)).is_ok());
        let missing = connect("unix:///nonexistent/docker.sock", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("LORAFORGE_DOCKER_HOST"), "{missing}");
    }
}
