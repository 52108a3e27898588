//! What a fake starts with. Facts the contracts mark [U] (unconfirmed) are settings here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a container image does when a pod or worker starts it: `program args` with exactly
/// `env` (the image's own `ENV`) plus what the pod or job adds. `program: None` is an image that
/// "stays running" without any process (cheap enough for 1,000 pods).
///
/// The process starts with a cleared environment, so give `program` as an absolute path (or put
/// a `PATH` in `env`).
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub program: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl ImageSpec {
    /// An image with no process: its pods run until terminated.
    pub fn idle() -> Self {
        Self::default()
    }

    pub fn program(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            program: Some(program.into()),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// `/bin/sh -c script`, with a `PATH` so the script finds the usual tools.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::program("/bin/sh", ["-c".to_owned(), script.into()])
            .with_env("PATH", "/usr/local/bin:/usr/bin:/bin")
    }

    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A GPU type on offer: how many are free and the on-demand price.
#[derive(Debug, Clone)]
pub struct GpuType {
    /// The `gpuTypeId`, e.g. "NVIDIA RTX A6000".
    pub id: String,
    /// GPUs free now; a deploy takes `gpuCount`, a terminate gives them back.
    pub available: u32,
    /// `costPerHr` per GPU in micro-dollars (0.79 $/h = 790_000).
    pub cost_per_hr_micros: i64,
}

impl GpuType {
    /// `price` as decimal dollars per hour ("0.79"). Panics on anything else (config is code).
    pub fn new(id: impl Into<String>, available: u32, price: &str) -> Self {
        Self {
            id: id.into(),
            available,
            cost_per_hr_micros: parse_price(price).expect("price like \"0.79\""),
        }
    }
}

/// "0.79" → 790_000; at most 6 fractional digits, no sign, no exponent.
pub fn parse_price(text: &str) -> Option<i64> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if (int.is_empty() && frac.is_empty()) || frac.len() > 6 {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i64 = format!("{frac:0<6}").parse().ok()?;
    int.checked_mul(1_000_000)?.checked_add(frac)
}

/// A serverless queue endpoint whose workers run `image`.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub id: String,
    pub image: ImageSpec,
    /// Jobs running at once; the rest wait IN_QUEUE (default 4).
    pub max_workers: usize,
}

impl EndpointSpec {
    pub fn new(id: impl Into<String>, image: ImageSpec) -> Self {
        Self {
            id: id.into(),
            image,
            max_workers: 4,
        }
    }
}

/// What `pod(input: {podId})` answers for a terminated pod [U].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TerminatedPods {
    /// `"pod": null` (default).
    #[default]
    Null,
    /// The pod with `desiredStatus: "TERMINATED"`.
    ReportTerminated,
}

/// What `podTerminate` answers for a pod that is unknown or already terminated [U].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TerminateUnknown {
    /// `{"data":{"podTerminate":null}}` (default).
    #[default]
    Succeed,
    /// `errors[]` with this message.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The one API key both APIs accept.
    pub api_key: String,
    /// Default 127.0.0.1:0 (a free port).
    pub bind: SocketAddr,
    pub gpu_types: Vec<GpuType>,
    /// `imageName` → what it runs. Images not listed behave as [`ImageSpec::idle`].
    pub images: HashMap<String, ImageSpec>,
    pub endpoints: Vec<EndpointSpec>,
    /// Where `<pod id>.log` and `job-<job id>.log` go; `None` → a temporary directory owned by
    /// the fake and deleted with it.
    pub logs_dir: Option<PathBuf>,
    /// How long a new pod's `runtime` stays null (default 300 ms) [U for GraphQL].
    pub boot_delay: Duration,
    /// Start a pod's process again when it exits instead of reporting EXITED (default false).
    pub restart_on_exit: bool,
    /// SIGTERM → SIGKILL grace on `podTerminate` (default 5 s).
    pub kill_grace: Duration,
    pub terminated_pods: TerminatedPods,
    pub terminate_unknown: TerminateUnknown,
    /// Send `costPerHr` as a string ("0.79", as in the REST spec's example) instead of a number.
    pub cost_as_string: bool,
}

impl FakeConfig {
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            gpu_types: Vec::new(),
            images: HashMap::new(),
            endpoints: Vec::new(),
            logs_dir: None,
            boot_delay: Duration::from_millis(300),
            restart_on_exit: false,
            kill_grace: Duration::from_secs(5),
            terminated_pods: TerminatedPods::default(),
            terminate_unknown: TerminateUnknown::default(),
            cost_as_string: false,
        }
    }

    pub fn with_gpu(mut self, id: &str, available: u32, price: &str) -> Self {
        self.gpu_types.push(GpuType::new(id, available, price));
        self
    }

    pub fn with_image(mut self, name: impl Into<String>, image: ImageSpec) -> Self {
        self.images.insert(name.into(), image);
        self
    }

    pub fn with_endpoint(mut self, endpoint: EndpointSpec) -> Self {
        self.endpoints.push(endpoint);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::parse_price;

    #[test]
    fn prices() {
        assert_eq!(parse_price("0.79"), Some(790_000));
        assert_eq!(parse_price("2"), Some(2_000_000));
        assert_eq!(parse_price("0.000001"), Some(1));
        assert_eq!(parse_price("0.0000001"), None);
        assert_eq!(parse_price("-1"), None);
        assert_eq!(parse_price("x"), None);
    }
}
