//! The typed client: create, get, list (cursor pages), cancel, and the account's webhook secret
//! (api-contracts.md §3).

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use crate::error::{ReplicateError, Result, detail, truncate_body};
use crate::http::{self, Answer};
use crate::retry::{Idempotency, RetrySettings};
use crate::types::{CreateTraining, ModelRef, Page, Training};

/// How the token is presented. Replicate documents `Bearer`; the legacy `Token` scheme "will be
/// supported indefinitely".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthScheme {
    #[default]
    Bearer,
    Token,
}

pub struct ReplicateSettings {
    /// Default `https://api.replicate.com/v1`.
    pub base_url: Url,
    pub token: SecretString,
    pub auth: AuthScheme,
    /// Per attempt, connect to last byte (default 30 s).
    pub timeout: Duration,
    pub retry: RetrySettings,
    /// Pages of `GET /trainings` read when looking for a training by its tag (default 5: the
    /// most recent few hundred trainings; a lost create is looked for right away).
    pub search_pages: usize,
}

impl ReplicateSettings {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.replicate.com/v1";

    pub fn new(token: SecretString) -> Self {
        Self {
            base_url: Url::parse(Self::DEFAULT_BASE_URL).expect("static URL"),
            token,
            auth: AuthScheme::Bearer,
            timeout: Duration::from_secs(30),
            retry: RetrySettings::default(),
            search_pages: 5,
        }
    }
}

impl fmt::Debug for ReplicateSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicateSettings")
            .field("base_url", &self.base_url.as_str())
            .field("token", &"[redacted]")
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("search_pages", &self.search_pages)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct ReplicateClient {
    http: reqwest::Client,
    settings: std::sync::Arc<ReplicateSettings>,
}

impl ReplicateClient {
    pub fn new(settings: ReplicateSettings) -> Result<Self> {
        Ok(Self {
            http: http::build_client(settings.timeout)?,
            settings: std::sync::Arc::new(settings),
        })
    }

    pub fn settings(&self) -> &ReplicateSettings {
        &self.settings
    }

    fn authorization(&self) -> String {
        let scheme = match self.settings.auth {
            AuthScheme::Bearer => "Bearer",
            AuthScheme::Token => "Token",
        };
        format!("{scheme} {}", self.settings.token.expose_secret())
    }

    /// `base_url` with `segments` appended (each percent-encoded).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.settings.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A `next` link is followed only on Replicate's own origin: the token goes with it.
    fn same_origin(&self, link: &str) -> Result<Url> {
        let url = Url::parse(link)
            .map_err(|_| ReplicateError::Decode("a `next` link is not a URL".to_owned()))?;
        if url.origin() != self.settings.base_url.origin() {
            return Err(ReplicateError::Decode(
                "a `next` link points outside the API's origin".to_owned(),
            ));
        }
        Ok(url)
    }

    async fn get(&self, op: &'static str, url: Url) -> Result<Answer> {
        http::send(op, &self.settings.retry, Idempotency::Idempotent, || {
            self.http
                .get(url.clone())
                .header(reqwest::header::AUTHORIZATION, self.authorization())
        })
        .await
    }

    /// `POST /models/{owner}/{name}/versions/{version}/trainings`: 201 with the training. Sent
    /// once (see [`crate::retry`]); prefer [`Self::create_training_once`].
    pub async fn create_training(
        &self,
        model: &ModelRef,
        create: &CreateTraining,
    ) -> Result<Training> {
        let url = self.url(&[
            "models",
            &model.owner,
            &model.name,
            "versions",
            &model.version,
            "trainings",
        ]);
        let mut body = json!({"destination": create.destination, "input": create.input});
        if let Some(webhook) = &create.webhook {
            body["webhook"] = json!(webhook);
            body["webhook_events_filter"] = json!(create.webhook_events_filter);
        }
        let answer = http::send(
            "create_training",
            &self.settings.retry,
            Idempotency::Create,
            || {
                self.http
                    .post(url.clone())
                    .header(reqwest::header::AUTHORIZATION, self.authorization())
                    .json(&body)
            },
        )
        .await?;
        match answer.status {
            200 | 201 => decode(&answer.body),
            404 => Err(ReplicateError::Missing(detail(&answer.body))),
            status => Err(ReplicateError::Rejected {
                status,
                detail: detail(&answer.body),
            }),
        }
    }

    /// Creates the training tagged `tag` unless one exists: with `look_first` (an earlier
    /// attempt may have been created after all) the recent trainings are searched before
    /// creating; a create whose effect is unknown (timeout, dropped connection, 5xx) is followed
    /// by a search, so a training created behind a lost answer is returned, not created twice.
    /// `create.input` must carry `tag` under [`crate::INSTANCE_TAG`].
    pub async fn create_training_once(
        &self,
        model: &ModelRef,
        create: &CreateTraining,
        tag: &str,
        look_first: bool,
    ) -> Result<Training> {
        if look_first && let Some(found) = self.find_by_tag(tag).await? {
            tracing::info!(training = %found.id, tag, "found the training an earlier create made");
            return Ok(found);
        }
        match self.create_training(model, create).await {
            Ok(training) => Ok(training),
            Err(error @ (ReplicateError::Transport(_) | ReplicateError::Server { .. })) => {
                match self.find_by_tag(tag).await {
                    Ok(Some(found)) => {
                        tracing::info!(training = %found.id, tag, "a create's answer was lost; found its training");
                        Ok(found)
                    }
                    // Not there (or cannot look): the caller tries again later, looking first.
                    _ => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// `GET /trainings/{id}`; `None` when Replicate does not know it.
    pub async fn training(&self, id: &str) -> Result<Option<Training>> {
        let answer = self.get("training", self.url(&["trainings", id])).await?;
        match answer.status {
            200 => decode(&answer.body).map(Some),
            404 => Ok(None),
            status => Err(ReplicateError::Rejected {
                status,
                detail: detail(&answer.body),
            }),
        }
    }

    /// `GET /trainings`: the first page, newest first.
    pub async fn list_trainings(&self) -> Result<Page> {
        self.page(self.url(&["trainings"])).await
    }

    /// The page a `next` (or `previous`) link names; only links on the API's origin.
    pub async fn list_page(&self, link: &str) -> Result<Page> {
        let url = self.same_origin(link)?;
        self.page(url).await
    }

    async fn page(&self, url: Url) -> Result<Page> {
        let answer = self.get("list_trainings", url).await?;
        match answer.status {
            200 => decode(&answer.body),
            404 => Err(ReplicateError::NotFound),
            status => Err(ReplicateError::Rejected {
                status,
                detail: detail(&answer.body),
            }),
        }
    }

    /// Every training on the first `pages` pages whose tag `keep` accepts, newest first.
    pub async fn list_tagged(
        &self,
        pages: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<Training>> {
        let mut found = Vec::new();
        let mut page = self.list_trainings().await?;
        for read in 1.. {
            found.extend(
                page.results
                    .drain(..)
                    .filter(|t| t.instance_tag().is_some_and(&keep)),
            );
            let Some(next) = page.next.take().filter(|_| read < pages) else {
                break;
            };
            page = self.list_page(&next).await?;
        }
        Ok(found)
    }

    /// The newest training tagged `tag` within the configured search pages.
    pub async fn find_by_tag(&self, tag: &str) -> Result<Option<Training>> {
        let found = self
            .list_tagged(self.settings.search_pages, |t| t == tag)
            .await?;
        Ok(found.into_iter().next())
    }

    /// `POST /trainings/{id}/cancel`; idempotent (a terminal training keeps its state). `None`
    /// when Replicate does not know it.
    pub async fn cancel(&self, id: &str) -> Result<Option<Training>> {
        let url = self.url(&["trainings", id, "cancel"]);
        let answer = http::send(
            "cancel",
            &self.settings.retry,
            Idempotency::Idempotent,
            || {
                self.http
                    .post(url.clone())
                    .header(reqwest::header::AUTHORIZATION, self.authorization())
            },
        )
        .await?;
        match answer.status {
            200 => decode(&answer.body).map(Some),
            404 => Ok(None),
            status => Err(ReplicateError::Rejected {
                status,
                detail: detail(&answer.body),
            }),
        }
    }

    /// `GET /webhooks/default/secret`: the `whsec_…` key webhooks are signed with.
    pub async fn webhook_secret(&self) -> Result<SecretString> {
        let answer = self
            .get(
                "webhook_secret",
                self.url(&["webhooks", "default", "secret"]),
            )
            .await?;
        if answer.status != 200 {
            return Err(ReplicateError::Rejected {
                status: answer.status,
                detail: detail(&answer.body),
            });
        }
        let value: Value = decode(&answer.body)?;
        value
            .get("key")
            .and_then(Value::as_str)
            .map(|k| SecretString::from(k.to_owned()))
            .ok_or_else(|| ReplicateError::Decode("the secret answer has no `key`".to_owned()))
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| ReplicateError::Decode(format!("{e}: {}", truncate_body(body))))
}
