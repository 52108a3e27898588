//! Helpers shared by the client tests: clients pointed at a fake, with fast retries, and polling.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use loraforge_runpod::{
    GraphqlClient, GraphqlSettings, RetrySettings, ServerlessClient, ServerlessSettings,
};
use secrecy::SecretString;
use url::Url;

pub const KEY: &str = "rpa_test_key_0123456789";

/// Retries as in production but 200 times faster (10 ms, 20 ms, 40 ms).
pub fn fast_retry() -> RetrySettings {
    RetrySettings {
        max_retries: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
    }
}

pub fn graphql(url: &str, key: &str) -> GraphqlClient {
    GraphqlClient::new(GraphqlSettings {
        url: Url::parse(url).unwrap(),
        api_key: SecretString::from(key.to_owned()),
        timeout: Duration::from_secs(5),
        retry: fast_retry(),
    })
}

pub fn serverless(base_url: &str, endpoint: &str, key: &str) -> ServerlessClient {
    ServerlessClient::new(ServerlessSettings {
        base_url: Url::parse(base_url).unwrap(),
        endpoint_id: endpoint.to_owned(),
        api_key: SecretString::from(key.to_owned()),
        timeout: Duration::from_secs(5),
        retry: fast_retry(),
    })
}

/// Polls `check` every 20 ms until it gives `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name's closing parenthesis.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().filter(|s| !s.is_empty())
}
