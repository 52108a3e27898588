//! The delivery step: due deliveries are leased, POSTed with Standard Webhooks headers signed
//! under the owner's secret (`crate::webhook::WebhookKey`, the same code that verifies
//! Replicate's), and their attempt logged: 2xx delivered; anything else tried again after
//! `domain::webhooks::retry_delay` until 24 hours after the delivery was made, then failed.

use std::error::Error as _;
use std::time::Instant;

use chrono::{DateTime, Utc};

use loraforge_db::{AttemptNext, DueDelivery, Repository, WebhookAttempt};
use loraforge_domain::webhooks::{RETRY_FOR, retry_delay};

use crate::webhook::WebhookKey;

/// Deliveries attempted per round (at once).
pub const PER_ROUND: u32 = 32;
/// How long a claimed delivery is held by one sender (longer than an attempt may take).
pub const LEASE: chrono::Duration = chrono::Duration::seconds(120);
/// At most this much of an answer is read (then the connection is dropped).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest error text kept with an attempt.
const MAX_ERROR_CHARS: usize = 500;

/// What one round did.
#[derive(Debug, Default)]
pub struct DeliverReport {
    pub delivered: usize,
    pub retrying: usize,
    pub failed: usize,
    /// A repository failure that ended the round early.
    pub error: Option<loraforge_db::DbError>,
}

/// One round: claims due deliveries for `holder` and attempts each once, concurrently.
/// `allow_private` must match the client's resolver (literal addresses are checked here).
pub async fn deliver_webhooks(
    repo: &dyn Repository,
    client: &reqwest::Client,
    allow_private: bool,
    holder: &str,
    now: DateTime<Utc>,
) -> DeliverReport {
    let mut report = DeliverReport::default();
    let due = match repo
        .claim_webhook_deliveries(holder, now + LEASE, now, PER_ROUND)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    let results = futures::future::join_all(
        due.iter()
            .map(|d| attempt(repo, client, allow_private, holder, d, now)),
    )
    .await;
    for r in results {
        match r {
            Ok(Some(AttemptNext::Delivered)) => report.delivered += 1,
            Ok(Some(AttemptNext::RetryAt(_))) => report.retrying += 1,
            Ok(Some(AttemptNext::Failed)) => report.failed += 1,
            Ok(None) => {}
            Err(e) => report.error = Some(e),
        }
    }
    report
}

/// What to do after an attempt made at `now` of a delivery made at `created_at` that had
/// `attempts` earlier attempts.
pub fn next_after(
    ok: bool,
    attempts: u32,
    created_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> AttemptNext {
    if ok {
        return AttemptNext::Delivered;
    }
    let wait = chrono::Duration::from_std(retry_delay(attempts + 1)).unwrap_or_default();
    let give_up = created_at + chrono::Duration::from_std(RETRY_FOR).unwrap_or_default();
    if now + wait > give_up {
        AttemptNext::Failed
    } else {
        AttemptNext::RetryAt(now + wait)
    }
}

async fn attempt(
    repo: &dyn Repository,
    client: &reqwest::Client,
    allow_private: bool,
    holder: &str,
    d: &DueDelivery,
    now: DateTime<Utc>,
) -> loraforge_db::Result<Option<AttemptNext>> {
    let secret = repo
        .webhook_secret(d.owner, &super::new_secret(), now)
        .await?;
    let started = Instant::now();
    let (status_code, error) = match WebhookKey::parse(&secret) {
        Ok(key) => send(client, allow_private, &key, d, now).await,
        Err(e) => (None, Some(e)),
    };
    let ok = status_code.is_some_and(|c| (200..300).contains(&c));
    let next = next_after(ok, d.attempts, d.created_at, now);
    let log = WebhookAttempt {
        attempt: d.attempts + 1,
        at: now,
        status_code,
        error: if ok { None } else { error },
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    let result = match next {
        AttemptNext::Delivered => "delivered",
        AttemptNext::RetryAt(_) => "retry",
        AttemptNext::Failed => "failed",
    };
    metrics::counter!("loraforge_webhook_deliveries_total", "result" => result).increment(1);
    match &next {
        AttemptNext::Delivered => {
            tracing::info!(webhook_id = %d.id, lora_id = %d.lora_id, event = d.event.as_str(), attempt = log.attempt, "webhook delivered")
        }
        _ => {
            tracing::warn!(webhook_id = %d.id, lora_id = %d.lora_id, event = d.event.as_str(), attempt = log.attempt, status = ?status_code, error = ?log.error, result, "webhook not delivered")
        }
    }
    let recorded = repo
        .record_webhook_attempt(&d.id, holder, &log, next)
        .await?;
    Ok(recorded.then_some(next))
}

/// POSTs the delivery; the answer's status, or why there is none / why it is not a success.
async fn send(
    client: &reqwest::Client,
    allow_private: bool,
    key: &WebhookKey,
    d: &DueDelivery,
    now: DateTime<Utc>,
) -> (Option<u16>, Option<String>) {
    let url = match url::Url::parse(&d.url) {
        Ok(u) => u,
        Err(e) => return (None, Some(format!("the stored URL is not a URL: {e}"))),
    };
    // The resolver vets names at connect time; literal addresses are vetted here.
    if let Err(why) = loraforge_fetch::check_shape(&url, allow_private) {
        return (None, Some(format!("refused: {why}")));
    }
    let timestamp = now.timestamp();
    let signature = key.sign(&d.id, timestamp, d.body.as_bytes());
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(d.body.clone())
        .send()
        .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => return (None, Some(error_text(&e))),
    };
    let status = resp.status().as_u16();
    // Read a little of the answer (a receiver may wait for it to be read), never all of it.
    let mut read = 0usize;
    while read < MAX_ANSWER_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => read += c.len(),
            _ => break,
        }
    }
    let error = (!(200..300).contains(&status)).then(|| format!("the receiver answered {status}"));
    (Some(status), error)
}

/// A transport error's text with its causes, without the URL (it may carry a token).
fn error_text(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn retries_back_off_and_stop_after_a_day() {
        assert_eq!(next_after(true, 7, at(0), at(9000)), AttemptNext::Delivered);
        assert_eq!(
            next_after(false, 0, at(0), at(0)),
            AttemptNext::RetryAt(at(5))
        );
        assert_eq!(
            next_after(false, 1, at(0), at(5)),
            AttemptNext::RetryAt(at(15))
        );
        assert_eq!(
            next_after(false, 20, at(0), at(80_000)),
            AttemptNext::RetryAt(at(83_600))
        );
        assert_eq!(
            next_after(false, 20, at(0), at(84_000)),
            AttemptNext::Failed
        );
    }
}
