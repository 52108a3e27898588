//! Alert delivery (issue 11 item 6): every configured channel (Slack incoming webhook, a JSON
//! webhook, e-mail) gets each new alert once. [`deliver_alerts`] is one steppable round with the
//! time passed in: per channel, the alerts due (never delivered, not given up, not acknowledged,
//! first seen within [`DeliveryPolicy::look_back`], their retry time reached), each sent within
//! the sender's timeout; a failure is retried after the policy's backoff (1 min, 5 min, 30 min,
//! 2 h by default) and given up (logged) after `max_attempts`. [`run`] repeats it in its own task
//! under a `maintenance_leases` lease (one replica sends), so no API call ever waits on a sender.
//! Deduplication happens where alerts are raised (`AlertStore::raise_alert`): an occurrence
//! folded into an open alert is not a new row, so it is not sent again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_db::{AlertRecord, DeliveryAttempt, Repository};
use loraforge_domain::Clock;
use loraforge_notify::{JsonWebhookSender, Mailer, NotifyError, SlackSender};

/// The channels, each optional.
#[derive(Debug, Clone, Default)]
pub struct AlertChannels {
    pub slack: Option<SlackSender>,
    pub webhook: Option<JsonWebhookSender>,
    /// The mailer and the operators' addresses (`LORAFORGE_ALERT_EMAIL_TO`).
    pub email: Option<(Mailer, Vec<String>)>,
}

impl AlertChannels {
    pub fn is_empty(&self) -> bool {
        self.slack.is_none() && self.webhook.is_none() && self.email.is_none()
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.slack.is_some() {
            names.push("slack");
        }
        if self.webhook.is_some() {
            names.push("webhook");
        }
        if self.email.is_some() {
            names.push("email");
        }
        names
    }
}

/// Retries and limits of delivery.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// The pause after the 1st, 2nd, … failure (the last one repeats).
    pub backoff: Vec<Duration>,
    /// Attempts per alert and channel before giving up.
    pub max_attempts: u32,
    /// Alerts first seen longer ago than this are not sent (a channel configured today does not
    /// receive last year's alerts).
    pub look_back: Duration,
    /// Alerts per channel per round.
    pub batch: u32,
    /// Hard limit per send, above the senders' own timeouts.
    pub call_timeout: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            backoff: vec![
                Duration::from_secs(60),
                Duration::from_secs(5 * 60),
                Duration::from_secs(30 * 60),
                Duration::from_secs(2 * 3600),
            ],
            max_attempts: 5,
            look_back: Duration::from_secs(24 * 3600),
            batch: 50,
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// What one round did, per `(alert id, channel)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Whether this replica held the delivery lease (only with [`deliver_alerts_leased`]).
    pub held: bool,
    pub delivered: Vec<(i64, &'static str)>,
    pub failed: Vec<(i64, &'static str)>,
    pub gave_up: Vec<(i64, &'static str)>,
    /// Repository errors (the round stops at the first).
    pub errors: Vec<String>,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The Slack text of an alert.
pub fn slack_text(a: &AlertRecord) -> String {
    let repeat = if a.count > 1 {
        format!(" (×{})", a.count)
    } else {
        String::new()
    };
    format!(
        ":rotating_light: loraforge alert `{}`{repeat} on `{}`: {}",
        a.kind, a.subject, a.message
    )
}

/// The JSON webhook's body of an alert.
pub fn webhook_body(a: &AlertRecord) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "kind": a.kind,
        "subject": a.subject,
        "message": a.message,
        "count": a.count,
        "first_seen": a.first_seen,
        "last_seen": a.last_seen,
    })
}

/// The e-mail's subject and body of an alert.
pub fn email_text(a: &AlertRecord) -> (String, String) {
    (
        format!("[loraforge] {}: {}", a.kind, a.subject),
        format!(
            "{}\n\nkind: {}\nsubject: {}\nalert id: {}\noccurrences: {}\nfirst seen: {}\nlast seen: {}\n\n\
             Acknowledge it with POST /api/v1/admin/alerts/{}/ack.\n",
            a.message,
            a.kind,
            a.subject,
            a.id,
            a.count,
            a.first_seen.to_rfc3339(),
            a.last_seen.to_rfc3339(),
            a.id
        ),
    )
}

async fn send(channels: &AlertChannels, channel: &str, a: &AlertRecord) -> Result<(), NotifyError> {
    match channel {
        "slack" => match &channels.slack {
            Some(s) => s.send(&slack_text(a)).await,
            None => Ok(()),
        },
        "webhook" => match &channels.webhook {
            Some(w) => w.send(&webhook_body(a)).await,
            None => Ok(()),
        },
        _ => match &channels.email {
            Some((mailer, to)) => {
                let (subject, body) = email_text(a);
                for address in to {
                    mailer.send(address, &subject, &body).await?;
                }
                Ok(())
            }
            None => Ok(()),
        },
    }
}

/// One delivery round at `now` (see the module docs).
pub async fn deliver_alerts(
    repo: &dyn Repository,
    channels: &AlertChannels,
    policy: &DeliveryPolicy,
    now: DateTime<Utc>,
) -> DeliveryReport {
    let mut report = DeliveryReport::default();
    let since = now - chrono(policy.look_back);
    for channel in channels.names() {
        let due = match repo.due_deliveries(channel, since, now, policy.batch).await {
            Ok(due) => due,
            Err(e) => {
                report.errors.push(format!("reading due alerts: {e}"));
                return report;
            }
        };
        for d in due {
            let id = d.alert.id;
            let result =
                match tokio::time::timeout(policy.call_timeout, send(channels, channel, &d.alert))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(NotifyError::Transport(format!(
                        "timed out after {:?}",
                        policy.call_timeout
                    ))),
                };
            let attempt = match result {
                Ok(()) => {
                    report.delivered.push((id, channel));
                    DeliveryAttempt::Delivered
                }
                Err(e) => {
                    let n = d.attempts + 1;
                    if n >= policy.max_attempts || !e.is_retryable() {
                        tracing::error!(alert = id, channel, attempts = n, error = %e,
                            "operator alert could not be delivered; giving up on this channel");
                        report.gave_up.push((id, channel));
                        DeliveryAttempt::GaveUp {
                            error: e.to_string(),
                        }
                    } else {
                        let pause = policy
                            .backoff
                            .get(n as usize - 1)
                            .or(policy.backoff.last())
                            .copied()
                            .unwrap_or(Duration::from_secs(60));
                        tracing::warn!(alert = id, channel, attempts = n, error = %e, retry_in = ?pause,
                            "operator alert delivery failed; retrying");
                        report.failed.push((id, channel));
                        DeliveryAttempt::Failed {
                            error: e.to_string(),
                            retry_at: now + chrono(pause),
                        }
                    }
                }
            };
            if let Err(e) = repo.record_delivery(id, channel, &attempt, now).await {
                report.errors.push(format!("recording a delivery: {e}"));
                return report;
            }
        }
    }
    report
}

/// [`deliver_alerts`] if this replica (`holder`) holds the delivery lease (taken for `lease`).
pub async fn deliver_alerts_leased(
    repo: &dyn Repository,
    channels: &AlertChannels,
    policy: &DeliveryPolicy,
    holder: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> DeliveryReport {
    match repo
        .try_lease("alert_delivery", holder, now + chrono(lease), now)
        .await
    {
        Ok(true) => {}
        Ok(false) => return DeliveryReport::default(),
        Err(e) => {
            return DeliveryReport {
                errors: vec![format!("taking the delivery lease: {e}")],
                ..DeliveryReport::default()
            };
        }
    }
    let mut report = deliver_alerts(repo, channels, policy, now).await;
    report.held = true;
    report
}

/// Delivers every `every` until `shutdown` resolves; does nothing without channels.
pub async fn run(
    repo: Arc<dyn Repository>,
    clock: Arc<dyn Clock>,
    channels: AlertChannels,
    policy: DeliveryPolicy,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if channels.is_empty() {
        return;
    }
    tokio::pin!(shutdown);
    let holder = format!("replica-{}", uuid::Uuid::new_v4());
    let lease = (every * 4).max(policy.call_timeout * 2);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {
                let r = deliver_alerts_leased(repo.as_ref(), &channels, &policy, &holder, lease, clock.now()).await;
                for e in &r.errors {
                    tracing::warn!(error = %e, "alert delivery round failed");
                }
            }
        }
    }
}
