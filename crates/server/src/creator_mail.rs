//! Creators' e-mails (issue 11 item 6): when a LoRA becomes `completed` or `failed`, its owner is
//! e-mailed a link to it, unless they turned it off (`PUT /api/v1/me/notifications`) or the
//! service does not know their address. [`mail_creators`] is one steppable round with the time
//! passed in; each LoRA gets one `lora_finish_mails` row (sent, opted out, no address, failed),
//! written right after the send, so a LoRA is mailed once (twice at worst, after a crash between
//! the send and the row), never on every round. Failures are not retried (no storm on a broken
//! SMTP server); they are logged and kept on the row. Only LoRAs that changed within
//! `look_back` are considered, so turning e-mail on does not mail the whole history.

use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_db::{FinishedLora, Repository};
use loraforge_notify::Mailer;

/// What one round did, by LoRA id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CreatorMailReport {
    pub sent: Vec<String>,
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
    pub errors: Vec<String>,
}

/// The link to a LoRA's page.
pub fn lora_link(public_url: &url::Url, lora: &FinishedLora) -> String {
    format!(
        "{}/api/v1/lora-models/{}",
        public_url.as_str().trim_end_matches('/'),
        lora.lora_id
    )
}

/// The subject and body of the e-mail for a finished LoRA.
pub fn finish_mail(public_url: &url::Url, lora: &FinishedLora) -> (String, String) {
    let link = lora_link(public_url, lora);
    if lora.status == "completed" {
        (
            format!("Your LoRA \"{}\" is ready", lora.name),
            format!(
                "Your LoRA \"{}\" finished training and is in the library:\n{link}\n\n\
                 You can turn these e-mails off with PUT /api/v1/me/notifications {{\"email_on_finish\": false}}.\n",
                lora.name
            ),
        )
    } else {
        (
            format!("Your LoRA \"{}\" failed", lora.name),
            format!(
                "Training your LoRA \"{}\" failed: {}\n{link}\n\n\
                 You can turn these e-mails off with PUT /api/v1/me/notifications {{\"email_on_finish\": false}}.\n",
                lora.name,
                lora.error.as_deref().unwrap_or("no reason was recorded")
            ),
        )
    }
}

/// One round at `now`: mails every finished LoRA not handled yet (at most `batch`).
pub async fn mail_creators(
    repo: &dyn Repository,
    mailer: &Mailer,
    public_url: &url::Url,
    look_back: Duration,
    batch: u32,
    now: DateTime<Utc>,
) -> CreatorMailReport {
    let mut report = CreatorMailReport::default();
    let since = now - chrono::Duration::from_std(look_back).unwrap_or(chrono::Duration::MAX);
    let due = match repo.finished_unmailed(since, batch).await {
        Ok(due) => due,
        Err(e) => {
            report.errors.push(format!("reading finished LoRAs: {e}"));
            return report;
        }
    };
    for lora in due {
        let id = lora.lora_id.to_string();
        let (outcome, detail) = match (&lora.email, lora.email_on_finish) {
            (_, false) => ("opted_out", None),
            (None, true) => ("no_address", None),
            (Some(to), true) => {
                let (subject, body) = finish_mail(public_url, &lora);
                match mailer.send(to, &subject, &body).await {
                    Ok(()) => ("sent", None),
                    Err(e) => {
                        tracing::warn!(lora_id = %id, error = %e, "the creator's e-mail could not be sent");
                        ("failed", Some(e.to_string()))
                    }
                }
            }
        };
        match outcome {
            "sent" => report.sent.push(id.clone()),
            "failed" => report.failed.push(id.clone()),
            _ => report.skipped.push(id.clone()),
        }
        if let Err(e) = repo
            .record_finish_mail(lora.lora_id, &lora.status, outcome, detail.as_deref(), now)
            .await
        {
            report
                .errors
                .push(format!("recording the e-mail of {id}: {e}"));
            return report;
        }
    }
    report
}

/// Mails creators every `every` until `shutdown` resolves.
pub async fn run(
    repo: std::sync::Arc<dyn Repository>,
    clock: std::sync::Arc<dyn loraforge_domain::Clock>,
    mailer: Mailer,
    public_url: url::Url,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let holder = format!("replica-{}", uuid::Uuid::new_v4());
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {
                let now = clock.now();
                let lease = chrono::Duration::from_std(every * 4).unwrap_or(chrono::Duration::MAX);
                match repo.try_lease("creator_mail", &holder, now + lease, now).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "taking the creator mail lease failed");
                        continue;
                    }
                }
                let r = mail_creators(repo.as_ref(), &mailer, &public_url, Duration::from_secs(24 * 3600), 50, now).await;
                for e in &r.errors {
                    tracing::warn!(error = %e, "creator e-mails failed in part");
                }
            }
        }
    }
}
