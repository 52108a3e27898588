//! HTTP senders: a Slack incoming webhook and a generic JSON webhook.

use std::time::Duration;

use crate::NotifyError;

/// The most of a receiver's error body kept in an error (they can be whole HTML pages).
const BODY_LIMIT: usize = 300;

fn client(timeout: Duration) -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| NotifyError::Config(loraforge_stdx::http_error_text(e)))
}

fn parse_url(url: &str, what: &str) -> Result<url::Url, NotifyError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| NotifyError::Config(format!("{what} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(NotifyError::Config(format!(
            "{what} must be an http(s) URL, not {}:",
            parsed.scheme()
        )));
    }
    Ok(parsed)
}

async fn post_json(
    client: &reqwest::Client,
    url: &url::Url,
    body: &serde_json::Value,
) -> Result<(), NotifyError> {
    let response = client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| NotifyError::Transport(loraforge_stdx::http_error_text(e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let mut text = response.text().await.unwrap_or_default();
    if text.len() > BODY_LIMIT {
        let mut end = BODY_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    Err(NotifyError::Status {
        status: status.as_u16(),
        body: text,
    })
}

/// A Slack incoming webhook: posts `{"text": …}`.
#[derive(Debug, Clone)]
pub struct SlackSender {
    client: reqwest::Client,
    url: url::Url,
}

impl SlackSender {
    /// `url` is the webhook's URL (a secret); every call gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, NotifyError> {
        Ok(Self {
            client: client(timeout)?,
            url: parse_url(url, "the Slack webhook URL")?,
        })
    }

    pub async fn send(&self, text: &str) -> Result<(), NotifyError> {
        post_json(
            &self.client,
            &self.url,
            &serde_json::json!({ "text": text }),
        )
        .await
    }
}

/// A generic JSON webhook: posts the body it is given.
#[derive(Debug, Clone)]
pub struct JsonWebhookSender {
    client: reqwest::Client,
    url: url::Url,
}

impl JsonWebhookSender {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, NotifyError> {
        Ok(Self {
            client: client(timeout)?,
            url: parse_url(url, "the webhook URL")?,
        })
    }

    pub async fn send(&self, body: &serde_json::Value) -> Result<(), NotifyError> {
        post_json(&self.client, &self.url, body).await
    }
}
