//! Bearer-token auth: HS256 JWTs with Supabase-style claims. `sub` is the user's UUID; admin is
//! `role = "admin"` or `app_metadata.role = "admin"`. `exp` and `nbf` are checked against the
//! injected clock; `aud` against the operator's [`AudiencePolicy`] (Supabase access tokens carry
//! `aud: "authenticated"`). Any other algorithm, `alg: none` included, is refused.

mod claims;
mod sample_token;

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use chrono::{DateTime, Utc};
use loraforge_domain::{LoraId, UserId};

pub use claims::{AudiencePolicy, LEEWAY_SECS};
pub use sample_token::{SAMPLE_WORKER_AUDIENCE, SampleWorkerAuth};

use crate::error::ApiError;
use crate::state::AppState;

/// The claims of the tokens this service issues to users (`loraforge token`, tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_metadata: Option<AppMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

/// The `aud` of a worker's per-attempt token.
pub const WORKER_AUDIENCE: &str = "loraforge-worker";

/// Claims of a worker token: good for one LoRA's attempt, while one engine holds its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerClaims {
    aud: String,
    /// The LoRA (job) id.
    sub: String,
    attempt: u32,
    /// The engine (worker id) that started the attempt.
    wid: String,
    iat: i64,
    exp: i64,
}

/// The `aud` of a dataset zip link's signature (`routes/dataset_zip.rs`): a JWT under the same
/// secret as worker tokens, good only for downloading one attempt's dataset.
pub const DATASET_LINK_AUDIENCE: &str = "loraforge-dataset-zip";

/// Claims of a dataset zip link: the attempt it was handed to, until its token expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DatasetLinkClaims {
    aud: String,
    /// The LoRA (job) id.
    sub: String,
    attempt: u32,
    wid: String,
    exp: i64,
}

/// The caller of a `/api/v1/worker` route: one attempt of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerAuth {
    pub lora_id: LoraId,
    pub attempt: u32,
    pub worker_id: String,
    /// When the token expires (Unix seconds); links handed to this attempt expire with it.
    pub expires: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The caller of an `/api/v1` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub id: UserId,
    pub email: Option<String>,
    pub is_admin: bool,
}

/// Signs and checks tokens with one HS256 secret.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    audience: AudiencePolicy,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

impl JwtKeys {
    /// Keys with the default [`AudiencePolicy`].
    pub fn new(secret: &SecretSlice<u8>) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.expose_secret()),
            decoding: DecodingKey::from_secret(secret.expose_secret()),
            audience: AudiencePolicy::default(),
        }
    }

    /// The audiences users' tokens may carry.
    #[must_use]
    pub fn with_audience(mut self, audience: AudiencePolicy) -> Self {
        self.audience = audience;
        self
    }

    /// A token for `user`, valid for `ttl` from `now`, for the first accepted audience.
    pub fn issue(
        &self,
        user: UserId,
        email: Option<String>,
        admin: bool,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user.to_string(),
            iat: Some(now.timestamp()),
            exp: expiry(now, ttl),
            email,
            role: Some(if admin { "admin" } else { "authenticated" }.to_owned()),
            app_metadata: None,
            aud: self.audience.issued().map(Value::from),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// A worker's token for `attempt` of job `lora`, started by engine `worker_id`.
    pub fn issue_worker(
        &self,
        lora: LoraId,
        attempt: u32,
        worker_id: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = WorkerClaims {
            aud: WORKER_AUDIENCE.to_owned(),
            sub: lora.to_string(),
            attempt,
            wid: worker_id.to_owned(),
            iat: now.timestamp(),
            exp: expiry(now, ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks a worker's bearer token.
    pub fn verify_worker(&self, token: &str, now: DateTime<Utc>) -> Result<WorkerAuth, ApiError> {
        let c = self.decode(token)?;
        // The audience first: a user's token here is told so, not called malformed.
        if claims::audiences(&c)?.as_deref() != Some(&[WORKER_AUDIENCE.to_owned()][..]) {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "this route takes a worker's job token, not a user's token",
            ));
        }
        claims::check_window(
            &c,
            now,
            "the job token has expired; the job will be retried",
        )?;
        let c: WorkerClaims = serde_json::from_value(Value::Object(c)).map_err(|e| {
            ApiError::unauthorized("invalid_token", format!("the job token is incomplete: {e}"))
        })?;
        let lora_id = c.sub.parse::<LoraId>().map_err(|_| {
            ApiError::unauthorized("invalid_token", "the job token's `sub` must be a LoRA id")
        })?;
        Ok(WorkerAuth {
            lora_id,
            attempt: c.attempt,
            worker_id: c.wid,
            expires: c.exp,
        })
    }

    /// The signature of a dataset zip link for `auth`'s attempt, expiring with its token.
    pub fn sign_dataset_link(
        &self,
        auth: &WorkerAuth,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = DatasetLinkClaims {
            aud: DATASET_LINK_AUDIENCE.to_owned(),
            sub: auth.lora_id.to_string(),
            attempt: auth.attempt,
            wid: auth.worker_id.clone(),
            exp: auth.expires,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks a dataset zip link's signature at `now` and returns the attempt it was handed to.
    /// 403 `invalid_signature` for anything but a link this server signed (a worker's or a
    /// user's token included), 403 `link_expired` from its expiry on (no leeway: the link is
    /// re-issued with every `GET` of the job).
    pub fn verify_dataset_link(
        &self,
        sig: &str,
        now: DateTime<Utc>,
    ) -> Result<WorkerAuth, ApiError> {
        let invalid = || {
            ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "invalid_signature",
                "this dataset link's signature is not valid; take the link from the worker job",
            )
        };
        let c = self.decode(sig).map_err(|_| invalid())?;
        if claims::audiences(&c).ok().flatten().as_deref()
            != Some(&[DATASET_LINK_AUDIENCE.to_owned()][..])
        {
            return Err(invalid());
        }
        let c: DatasetLinkClaims =
            serde_json::from_value(Value::Object(c)).map_err(|_| invalid())?;
        let lora_id = c.sub.parse::<LoraId>().map_err(|_| invalid())?;
        if now.timestamp() >= c.exp {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "link_expired",
                "this dataset link has expired; the next GET of the worker job hands out a new one",
            ));
        }
        Ok(WorkerAuth {
            lora_id,
            attempt: c.attempt,
            worker_id: c.wid,
            expires: c.exp,
        })
    }

    /// Checks signature and algorithm and returns the claims as they are: every claim is read
    /// and checked by the caller (times against the injected clock, audiences by policy).
    fn decode(&self, token: &str) -> Result<Map<String, Value>, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        if header.alg != Algorithm::HS256 {
            return Err(ApiError::unauthorized(
                "invalid_token",
                format!(
                    "tokens must be signed with HS256, this one uses {:?}",
                    header.alg
                ),
            ));
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &v).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => ApiError::unauthorized(
                        "invalid_signature",
                        "the token's signature is not valid for this server",
                    ),
                    _ => malformed(),
                }
            })?;
        Ok(data.claims)
    }

    /// Checks a bearer token and returns who it is for.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AuthUser, ApiError> {
        let c = self.decode(token)?;
        self.audience.check(claims::audiences(&c)?.as_deref())?;
        claims::check_window(
            &c,
            now,
            "the token has expired; sign in again for a new one",
        )?;
        let id = claims::string(&c, "sub")?.parse::<UserId>().map_err(|_| {
            ApiError::unauthorized(
                "invalid_token",
                "the token's `sub` claim must be a user UUID",
            )
        })?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let role = text(c.get("role"));
        let app_role = text(c.get("app_metadata").and_then(|m| m.get("role")));
        let is_admin = role.as_deref() == Some("admin") || app_role.as_deref() == Some("admin");
        Ok(AuthUser {
            id,
            email: text(c.get("email")).filter(|e| !e.is_empty() && e.len() <= 320),
            is_admin,
        })
    }
}

/// `now + ttl` in seconds, at most the latest date a token may name (a ttl of centuries neither
/// wraps into the past nor makes a token this server would refuse).
fn expiry(now: DateTime<Utc>, ttl: Duration) -> i64 {
    now.timestamp()
        .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
        .min(claims::MAX_NUMERIC_DATE)
}

fn malformed() -> ApiError {
    ApiError::unauthorized("invalid_token", "the bearer token is not a valid JWT")
}

/// The bearer token of a request.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "send an `Authorization: Bearer <token>` header",
        )
    })?;
    let value = header.to_str().map_err(|_| malformed())?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_token",
                "the Authorization header must be `Bearer <token>`",
            )
        })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.jwt().verify(bearer(parts)?, state.now())
    }
}

impl FromRequestParts<AppState> for WorkerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.jwt().verify_worker(bearer(parts)?, state.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> JwtKeys {
        JwtKeys::new(&SecretSlice::from(
            b"test-secret-test-secret-test-secret".to_vec(),
        ))
    }
    fn now() -> DateTime<Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn issued_tokens_verify() {
        let k = keys();
        let u = UserId::new();
        let t = k
            .issue(
                u,
                Some("a@example.com".into()),
                true,
                Duration::from_secs(3600),
                now(),
            )
            .unwrap();
        let who = k.verify(&t, now()).unwrap();
        assert_eq!(
            who,
            AuthUser {
                id: u,
                email: Some("a@example.com".into()),
                is_admin: true
            }
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let k = keys();
        let t = k
            .issue(UserId::new(), None, false, Duration::from_secs(60), now())
            .unwrap();
        assert!(
            k.verify(&t, now() + chrono::Duration::seconds(60 + LEEWAY_SECS - 1))
                .is_ok()
        );
        let e = k
            .verify(&t, now() + chrono::Duration::seconds(60 + LEEWAY_SECS))
            .unwrap_err();
        assert_eq!(e.code, "token_expired");
    }

    #[test]
    fn wrong_secret_is_invalid_signature() {
        let t = keys()
            .issue(UserId::new(), None, false, Duration::from_secs(60), now())
            .unwrap();
        let other = JwtKeys::new(&SecretSlice::from(b"another-secret".to_vec()));
        assert_eq!(
            other.verify(&t, now()).unwrap_err().code,
            "invalid_signature"
        );
    }

    #[test]
    fn alg_none_and_garbage_are_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = b64(&format!(
            r#"{{"sub":"{}","exp":9999999999}}"#,
            UserId::new()
        ));
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), body);
        assert_eq!(keys().verify(&none, now()).unwrap_err().status, 401);
        for bad in ["", "abc", "a.b.c", "..."] {
            assert_eq!(
                keys().verify(bad, now()).unwrap_err().code,
                "invalid_token",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn worker_and_user_tokens_are_not_interchangeable() {
        let k = keys();
        let lora = LoraId::new();
        let t = k
            .issue_worker(lora, 2, "engine-a", Duration::from_secs(60), now())
            .unwrap();
        assert_eq!(
            k.verify_worker(&t, now()).unwrap(),
            WorkerAuth {
                lora_id: lora,
                attempt: 2,
                worker_id: "engine-a".into(),
                expires: now().timestamp() + 60,
            }
        );
        // A LoRA id is a UUID too, but a worker token is no user's token.
        assert_eq!(k.verify(&t, now()).unwrap_err().code, "invalid_audience");
        let user = k
            .issue(UserId::new(), None, true, Duration::from_secs(60), now())
            .unwrap();
        assert_eq!(
            k.verify_worker(&user, now()).unwrap_err().code,
            "invalid_token"
        );
        let later = now() + chrono::Duration::seconds(61 + LEEWAY_SECS);
        assert_eq!(
            k.verify_worker(&t, later).unwrap_err().code,
            "token_expired"
        );
        let other = JwtKeys::new(&SecretSlice::from(
            b"another-secret-another-secret-xx".to_vec(),
        ));
        assert_eq!(
            other.verify_worker(&t, now()).unwrap_err().code,
            "invalid_signature"
        );
    }

    #[test]
    fn dataset_links_open_one_attempt_until_its_token_expires() {
        let k = keys();
        let t = k
            .issue_worker(LoraId::new(), 3, "engine-a", Duration::from_secs(60), now())
            .unwrap();
        let auth = k.verify_worker(&t, now()).unwrap();
        let sig = k.sign_dataset_link(&auth).unwrap();
        assert_eq!(k.verify_dataset_link(&sig, now()).unwrap(), auth);
        let at_expiry = now() + chrono::Duration::seconds(60);
        assert_eq!(
            k.verify_dataset_link(&sig, at_expiry).unwrap_err().code,
            "link_expired"
        );
        // The link is no worker token, and neither a worker's nor a user's token is a link.
        assert_eq!(
            k.verify_worker(&sig, now()).unwrap_err().code,
            "invalid_token"
        );
        assert_eq!(
            k.verify_dataset_link(&t, now()).unwrap_err().code,
            "invalid_signature"
        );
        let user = k
            .issue(UserId::new(), None, true, Duration::from_secs(60), now())
            .unwrap();
        for bad in [user.as_str(), "", "x.y.z"] {
            let e = k.verify_dataset_link(bad, now()).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (403, "invalid_signature"));
        }
        let other = JwtKeys::new(&SecretSlice::from(
            b"another-secret-another-secret-xx".to_vec(),
        ));
        assert_eq!(
            other.verify_dataset_link(&sig, now()).unwrap_err().code,
            "invalid_signature"
        );
    }

    #[test]
    fn admin_via_app_metadata_and_non_uuid_sub() {
        let k = keys();
        let claims = Claims {
            sub: UserId::new().to_string(),
            exp: now().timestamp() + 60,
            iat: None,
            email: None,
            role: Some("authenticated".into()),
            app_metadata: Some(AppMetadata {
                role: Some("admin".into()),
            }),
            aud: None,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert!(k.verify(&t, now()).unwrap().is_admin);
        let claims = Claims {
            sub: "not-a-uuid".into(),
            app_metadata: None,
            ..claims
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert_eq!(k.verify(&t, now()).unwrap_err().code, "invalid_token");
    }
}
