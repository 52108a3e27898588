//! RunPod's GraphQL API for on-demand pods (api-contracts.md §1a). Values travel as GraphQL
//! `variables`, never inlined into the query text.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use url::Url;

use crate::error::{Result, RunpodError, truncate_body};
use crate::http::{self, Answer};
use crate::retry::{Idempotency, RetrySettings};

/// The substring RunPod's out-of-capacity message is recognised by (third-party code matches the
/// same text; the full message is "There are no longer any instances available with the
/// requested specifications. Please refresh and try again.").
const NO_CAPACITY: &str = "no longer any instances available";

pub struct GraphqlSettings {
    /// Default `https://api.runpod.io/graphql`.
    pub url: Url,
    pub api_key: SecretString,
    /// Per attempt, connect to last byte.
    pub timeout: Duration,
    pub retry: RetrySettings,
}

impl GraphqlSettings {
    pub const DEFAULT_URL: &'static str = "https://api.runpod.io/graphql";

    /// The production URL, a 30 s timeout and the default retries.
    pub fn new(api_key: SecretString) -> Self {
        Self {
            url: Url::parse(Self::DEFAULT_URL).expect("static URL"),
            api_key,
            timeout: Duration::from_secs(30),
            retry: RetrySettings::default(),
        }
    }
}

impl fmt::Debug for GraphqlSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL is shown without its query, which may hold `api_key=`.
        f.debug_struct("GraphqlSettings")
            .field("url", &redacted_url(&self.url))
            .field("api_key", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

pub(crate) fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(Some("[redacted]"));
    }
    shown.to_string()
}

/// `cloudType` of a deploy: where RunPod may place the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudType {
    All,
    Secure,
    Community,
}

impl CloudType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "ALL",
            Self::Secure => "SECURE",
            Self::Community => "COMMUNITY",
        }
    }
}

/// The input of `podFindAndDeployOnDemand`; `None` fields are left out of the request.
#[derive(Clone)]
pub struct DeployPod {
    /// How the caller finds the pod again after an ambiguous failure; make it unique.
    pub name: String,
    pub image_name: String,
    /// For example "NVIDIA RTX A6000".
    pub gpu_type_id: String,
    pub gpu_count: u32,
    pub cloud_type: CloudType,
    pub container_disk_in_gb: Option<u32>,
    pub volume_in_gb: Option<u32>,
    pub volume_mount_path: Option<String>,
    pub network_volume_id: Option<String>,
    /// Container environment, in order. Values may be credentials: `Debug` shows keys only.
    pub env: Vec<(String, String)>,
    /// For example "8888/http,22/tcp".
    pub ports: Option<String>,
    pub docker_args: Option<String>,
}

impl DeployPod {
    /// One GPU of `gpu_type_id` in any cloud, everything else RunPod's default.
    pub fn new(
        name: impl Into<String>,
        image_name: impl Into<String>,
        gpu_type_id: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            image_name: image_name.into(),
            gpu_type_id: gpu_type_id.into(),
            gpu_count: 1,
            cloud_type: CloudType::All,
            container_disk_in_gb: None,
            volume_in_gb: None,
            volume_mount_path: None,
            network_volume_id: None,
            env: Vec::new(),
            ports: None,
            docker_args: None,
        }
    }

    fn to_input(&self) -> Value {
        let mut input = Map::new();
        input.insert("name".into(), json!(self.name));
        input.insert("imageName".into(), json!(self.image_name));
        input.insert("gpuTypeId".into(), json!(self.gpu_type_id));
        input.insert("gpuCount".into(), json!(self.gpu_count));
        input.insert("cloudType".into(), json!(self.cloud_type.as_str()));
        let optional = [
            (
                "containerDiskInGb",
                self.container_disk_in_gb.map(|v| json!(v)),
            ),
            ("volumeInGb", self.volume_in_gb.map(|v| json!(v))),
            (
                "volumeMountPath",
                self.volume_mount_path.as_ref().map(|v| json!(v)),
            ),
            (
                "networkVolumeId",
                self.network_volume_id.as_ref().map(|v| json!(v)),
            ),
            ("ports", self.ports.as_ref().map(|v| json!(v))),
            ("dockerArgs", self.docker_args.as_ref().map(|v| json!(v))),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                input.insert(key.into(), value);
            }
        }
        let env: Vec<Value> = self
            .env
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        input.insert("env".into(), Value::Array(env));
        Value::Object(input)
    }
}

impl fmt::Debug for DeployPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_keys: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("DeployPod")
            .field("name", &self.name)
            .field("image_name", &self.image_name)
            .field("gpu_type_id", &self.gpu_type_id)
            .field("gpu_count", &self.gpu_count)
            .field("cloud_type", &self.cloud_type)
            .field("container_disk_in_gb", &self.container_disk_in_gb)
            .field("volume_in_gb", &self.volume_in_gb)
            .field("volume_mount_path", &self.volume_mount_path)
            .field("network_volume_id", &self.network_volume_id)
            .field("env_keys", &env_keys)
            .field("ports", &self.ports)
            .field("docker_args", &self.docker_args)
            .finish()
    }
}

/// `desiredStatus`. RUNNING, EXITED and TERMINATED are documented; anything else is kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodStatus {
    Running,
    Exited,
    Terminated,
    Other(String),
}

impl PodStatus {
    fn parse(text: &str) -> Self {
        match text {
            "RUNNING" => Self::Running,
            "EXITED" => Self::Exited,
            "TERMINATED" => Self::Terminated,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A pod as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub desired_status: PodStatus,
    /// `costPerHr` in micro-dollars per hour.
    pub cost_per_hour_micros: Option<i64>,
    pub image_name: Option<String>,
    /// `runtime != null`: the container is up (it is null while the pod boots or after it exits).
    pub runtime_up: bool,
    pub uptime_seconds: Option<u64>,
    /// `machine.gpuDisplayName`.
    pub gpu_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePod {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    desired_status: Option<String>,
    #[serde(default)]
    cost_per_hr: Option<Value>,
    #[serde(default)]
    image_name: Option<String>,
    #[serde(default)]
    runtime: Option<Value>,
    #[serde(default)]
    uptime_seconds: Option<u64>,
    #[serde(default)]
    machine: Option<WireMachine>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMachine {
    #[serde(default)]
    gpu_display_name: Option<String>,
}

impl TryFrom<WirePod> for Pod {
    type Error = RunpodError;

    fn try_from(wire: WirePod) -> Result<Self> {
        let cost_per_hour_micros = match wire.cost_per_hr {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                loraforge_domain::MicroUsd::from_json(&v)
                    .map_err(|e| RunpodError::Decode(format!("costPerHr: {e}")))?
                    .micros(),
            ),
        };
        let runtime_up = matches!(wire.runtime, Some(ref v) if !v.is_null());
        let uptime_seconds = wire.uptime_seconds.or_else(|| {
            wire.runtime
                .as_ref()
                .and_then(|r| r.get("uptimeInSeconds"))
                .and_then(Value::as_u64)
        });
        Ok(Pod {
            id: wire.id,
            name: wire.name.unwrap_or_default(),
            desired_status: PodStatus::parse(wire.desired_status.as_deref().unwrap_or("")),
            cost_per_hour_micros,
            image_name: wire.image_name,
            runtime_up,
            uptime_seconds,
            gpu_type: wire.machine.and_then(|m| m.gpu_display_name),
        })
    }
}

const POD_FIELDS: &str = "id name desiredStatus costPerHr imageName machineId uptimeSeconds runtime { uptimeInSeconds } machine { gpuDisplayName }";

/// The client for pods. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct GraphqlClient {
    http: reqwest::Client,
    url: Url,
    api_key: SecretString,
    retry: RetrySettings,
}

impl fmt::Debug for GraphqlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphqlClient")
            .field("url", &redacted_url(&self.url))
            .field("api_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl GraphqlClient {
    pub fn new(settings: GraphqlSettings) -> Self {
        Self {
            http: http::build_client(settings.timeout),
            url: settings.url,
            api_key: settings.api_key,
            retry: settings.retry,
        }
    }

    /// `podFindAndDeployOnDemand`. Not repeated after the request may have reached RunPod (see
    /// `crate::retry`): on a timeout or 5xx, look for a pod with this name before deploying again.
    pub async fn deploy_pod(&self, deploy: &DeployPod) -> Result<Pod> {
        let query = "mutation DeployPod($input: PodFindAndDeployOnDemandInput!) { \
                     podFindAndDeployOnDemand(input: $input) { id name desiredStatus costPerHr imageName machineId } }";
        let data = self
            .call(
                "podFindAndDeployOnDemand",
                Idempotency::Create,
                query,
                json!({ "input": deploy.to_input() }),
            )
            .await?;
        match field(data, "podFindAndDeployOnDemand")? {
            Value::Null => Err(RunpodError::Decode(
                "podFindAndDeployOnDemand returned null without errors".into(),
            )),
            pod => parse_pod(pod),
        }
    }

    /// One pod, or `None` when RunPod does not know it (any more).
    pub async fn pod(&self, id: &str) -> Result<Option<Pod>> {
        let query =
            format!("query Pod($input: PodFilter!) {{ pod(input: $input) {{ {POD_FIELDS} }} }}");
        let data = match self
            .call(
                "pod",
                Idempotency::Idempotent,
                &query,
                json!({"input": {"podId": id}}),
            )
            .await
        {
            Ok(data) => data,
            Err(e) if means_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match field(data, "pod")? {
            Value::Null => Ok(None),
            pod => parse_pod(pod).map(Some),
        }
    }

    /// Every pod of the account (RunPod does not paginate this).
    pub async fn list_pods(&self) -> Result<Vec<Pod>> {
        let query = format!("query Pods {{ myself {{ pods {{ {POD_FIELDS} }} }} }}");
        let data = self
            .call("myself.pods", Idempotency::Idempotent, &query, json!({}))
            .await?;
        let pods = field(field(data, "myself")?, "pods")?;
        match pods {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items.into_iter().map(parse_pod).collect(),
            other => Err(RunpodError::Decode(format!(
                "myself.pods is not a list: {}",
                truncate_body(other.to_string().as_bytes())
            ))),
        }
    }

    /// `podTerminate`. Idempotent: a pod RunPod reports as not found is already gone → `Ok`.
    pub async fn terminate_pod(&self, id: &str) -> Result<()> {
        let query =
            "mutation TerminatePod($input: PodTerminateInput!) { podTerminate(input: $input) }";
        match self
            .call(
                "podTerminate",
                Idempotency::Idempotent,
                query,
                json!({"input": {"podId": id}}),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if means_gone(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One GraphQL request; returns `data` or the classified first error.
    async fn call(
        &self,
        op: &'static str,
        idempotency: Idempotency,
        query: &str,
        variables: Value,
    ) -> Result<Value> {
        let body = json!({ "query": query, "variables": variables });
        let Answer { status, body } = http::send(op, &self.retry, idempotency, || {
            self.http
                .post(self.url.clone())
                .bearer_auth(self.api_key.expose_secret())
                .json(&body)
        })
        .await?;
        let parsed: Option<GraphqlResponse> = serde_json::from_slice(&body).ok();
        if let Some(message) = parsed.as_ref().and_then(GraphqlResponse::first_error) {
            return Err(classify(message));
        }
        match (status, parsed) {
            (
                200,
                Some(GraphqlResponse {
                    data: Some(data), ..
                }),
            ) => Ok(data),
            (200, _) => Err(RunpodError::Decode(format!(
                "{op}: no data in {}",
                truncate_body(&body)
            ))),
            (404, _) => Err(RunpodError::NotFound),
            (status, _) => Err(RunpodError::Http {
                status,
                body: truncate_body(&body),
            }),
        }
    }
}

#[derive(Deserialize)]
struct GraphqlResponse {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    errors: Option<Vec<GraphqlError>>,
}

#[derive(Deserialize)]
struct GraphqlError {
    #[serde(default)]
    message: Option<String>,
}

impl GraphqlResponse {
    fn first_error(&self) -> Option<String> {
        let first = self.errors.as_ref()?.first()?;
        Some(
            first
                .message
                .clone()
                .unwrap_or_else(|| "unknown error".into()),
        )
    }
}

fn classify(message: String) -> RunpodError {
    let lower = message.to_ascii_lowercase();
    if lower.contains(NO_CAPACITY) {
        RunpodError::NoCapacity(message)
    } else {
        RunpodError::Api(message)
    }
}

/// Whether an error to a call naming one pod says that pod does not exist (any more). The exact
/// wording is not documented [U]; "not found" and "does not exist" are what REST v1 and common
/// GraphQL servers say.
fn means_gone(error: &RunpodError) -> bool {
    match error {
        RunpodError::NotFound => true,
        RunpodError::Api(message) => {
            let lower = message.to_ascii_lowercase();
            lower.contains("not found") || lower.contains("does not exist")
        }
        _ => false,
    }
}

fn field(mut value: Value, name: &str) -> Result<Value> {
    match value.get_mut(name) {
        Some(v) => Ok(v.take()),
        None => Err(RunpodError::Decode(format!("missing field {name}"))),
    }
}

fn parse_pod(value: Value) -> Result<Pod> {
    let wire: WirePod =
        serde_json::from_value(value).map_err(|e| RunpodError::Decode(format!("pod: {e}")))?;
    Pod::try_from(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key_and_url_query() {
        let mut settings = GraphqlSettings::new(SecretString::from("sk-very-secret"));
        settings.url = Url::parse("https://api.runpod.io/graphql?api_key=sk-very-secret").unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        let client = GraphqlClient::new(settings);
        let shown = format!("{client:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
    }

    #[test]
    fn deploy_debug_shows_env_keys_only() {
        let mut deploy = DeployPod::new("n", "img", "gpu");
        deploy
            .env
            .push(("LORAFORGE_WORKER_TOKEN".into(), "tok-secret".into()));
        let shown = format!("{deploy:?}");
        assert!(
            shown.contains("LORAFORGE_WORKER_TOKEN") && !shown.contains("tok-secret"),
            "{shown}"
        );
    }

    #[test]
    fn deploy_input_omits_none_and_sends_env_as_pairs() {
        let mut deploy = DeployPod::new("n", "img", "NVIDIA A40");
        deploy.env.push(("A".into(), "1".into()));
        deploy.ports = Some("8888/http".into());
        let input = deploy.to_input();
        assert_eq!(input["cloudType"], "ALL");
        assert_eq!(input["env"], json!([{"key": "A", "value": "1"}]));
        assert_eq!(input["ports"], "8888/http");
        assert!(input.get("volumeInGb").is_none());
        assert!(input.get("networkVolumeId").is_none());
    }

    #[test]
    fn classifies_error_messages() {
        assert!(classify("There are no longer any instances available with the requested specifications. Please refresh and try again.".into()).is_capacity());
        assert!(means_gone(&classify("Pod not found".into())));
        assert!(!means_gone(&classify("Unauthorized".into())));
        assert!(matches!(
            classify("something else".into()),
            RunpodError::Api(_)
        ));
    }

    #[test]
    fn parses_pods_with_number_or_string_cost() {
        let pod = parse_pod(
            json!({"id": "p", "name": "n", "desiredStatus": "RUNNING", "costPerHr": 0.34,
            "runtime": {"uptimeInSeconds": 5}, "machine": {"gpuDisplayName": "RTX 3090"}}),
        )
        .unwrap();
        assert_eq!(pod.cost_per_hour_micros, Some(340_000));
        assert!(pod.runtime_up);
        assert_eq!(pod.uptime_seconds, Some(5));
        assert_eq!(pod.gpu_type.as_deref(), Some("RTX 3090"));
        let pod = parse_pod(
            json!({"id": "p", "desiredStatus": "CREATED", "costPerHr": "0.74", "runtime": null}),
        )
        .unwrap();
        assert_eq!(pod.cost_per_hour_micros, Some(740_000));
        assert_eq!(pod.desired_status, PodStatus::Other("CREATED".into()));
        assert!(!pod.runtime_up);
        assert!(parse_pod(json!({"id": "p", "costPerHr": "-1"})).is_err());
    }
}
