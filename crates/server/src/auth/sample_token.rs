//! Tokens of workers that render a sample batch: audience `loraforge-sample-worker` (so a
//! training route refuses them and a sample route refuses a training token), `sub` the batch,
//! `attempt` the batch's attempt. Good only while that batch renders that attempt (checked by
//! `routes::worker_samples` against the repository).

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use loraforge_domain::SampleBatchId;

use super::{JwtKeys, bearer, claims, expiry};
use crate::error::ApiError;
use crate::state::AppState;

pub const SAMPLE_WORKER_AUDIENCE: &str = "loraforge-sample-worker";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SampleClaims {
    aud: String,
    /// The sample batch id.
    sub: String,
    attempt: u32,
    iat: i64,
    exp: i64,
}

/// A sample worker's verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleWorkerAuth {
    pub batch: SampleBatchId,
    pub attempt: u32,
    /// When the token expires (Unix seconds); links handed out expire with it.
    pub expires: i64,
}

impl JwtKeys {
    /// A worker's token for `attempt` of sample batch `batch`.
    pub fn issue_sample_worker(
        &self,
        batch: SampleBatchId,
        attempt: u32,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let c = SampleClaims {
            aud: SAMPLE_WORKER_AUDIENCE.to_owned(),
            sub: batch.to_string(),
            attempt,
            iat: now.timestamp(),
            exp: expiry(now, ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &self.encoding)
    }

    pub fn verify_sample_worker(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<SampleWorkerAuth, ApiError> {
        let c = self.decode(token)?;
        if claims::audiences(&c)?.as_deref() != Some(&[SAMPLE_WORKER_AUDIENCE.to_owned()][..]) {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "this route takes a sample worker's token",
            ));
        }
        claims::check_window(
            &c,
            now,
            "the sample token has expired; the batch will be retried",
        )?;
        let c: SampleClaims = serde_json::from_value(Value::Object(c)).map_err(|e| {
            ApiError::unauthorized(
                "invalid_token",
                format!("the sample token is incomplete: {e}"),
            )
        })?;
        let batch = c.sub.parse().map_err(|_| {
            ApiError::unauthorized(
                "invalid_token",
                "the sample token's `sub` must be a batch id",
            )
        })?;
        Ok(SampleWorkerAuth {
            batch,
            attempt: c.attempt,
            expires: c.exp,
        })
    }
}

impl FromRequestParts<AppState> for SampleWorkerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state
            .jwt()
            .verify_sample_worker(bearer(parts)?, state.now())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretSlice;

    use super::*;

    #[test]
    fn sample_tokens_and_job_tokens_do_not_mix() {
        let keys = JwtKeys::new(&SecretSlice::from(
            b"test-secret-test-secret-test-secret".to_vec(),
        ));
        let now: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().unwrap();
        let b = SampleBatchId::new();
        let t = keys
            .issue_sample_worker(b, 2, Duration::from_secs(60), now)
            .unwrap();
        let auth = keys.verify_sample_worker(&t, now).unwrap();
        assert_eq!((auth.batch, auth.attempt), (b, 2));
        assert!(keys.verify_worker(&t, now).is_err(), "not a job token");
        assert!(keys.verify(&t, now).is_err(), "not a user token");
        let job = keys
            .issue_worker(
                loraforge_domain::LoraId::new(),
                1,
                "e",
                Duration::from_secs(60),
                now,
            )
            .unwrap();
        assert!(keys.verify_sample_worker(&job, now).is_err());
        let later = now + chrono::Duration::seconds(600);
        assert!(keys.verify_sample_worker(&t, later).is_err(), "expired");
    }
}
