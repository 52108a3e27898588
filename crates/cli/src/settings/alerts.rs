//! Alert and e-mail settings (issue 11): the dedup cooldown, the delivery channels (Slack
//! incoming webhook, JSON webhook, e-mail to operators) and the SMTP mailer creators' e-mails
//! share. Each channel is optional; every URL here is a secret.

use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use super::Settings;

/// Time per notification call (HTTP or SMTP).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(15);

/// A duration as `3600`, `90s`, `30m`, `1h` or `2d`.
pub fn parse_duration(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("{raw:?} is not a duration like 3600, 90s, 30m, 1h or 2d"))?;
    let unit = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("{raw:?}: unknown unit {other:?}; use s, m, h or d"),
    };
    Ok(Duration::from_secs(n.saturating_mul(unit)))
}

fn set(s: &Option<secrecy::SecretString>) -> Option<&str> {
    s.as_ref()
        .map(|v| v.expose_secret().trim())
        .filter(|v| !v.is_empty())
}

impl Settings {
    /// `alert_cooldown` (default 1 h).
    pub fn alert_cooldown(&self) -> anyhow::Result<Duration> {
        match self
            .alert_cooldown
            .as_deref()
            .filter(|c| !c.trim().is_empty())
        {
            Some(c) => parse_duration(c).context("alert_cooldown"),
            None => Ok(loraforge_db::alerts::DEFAULT_ALERT_COOLDOWN),
        }
    }

    /// The operators' addresses (`alert_email_to`, comma-separated).
    pub fn alert_email_to(&self) -> Vec<String> {
        self.alert_email_to
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// The SMTP mailer (`smtp_url`, `mail_from`), when `smtp_url` is set.
    pub fn mailer(&self) -> anyhow::Result<Option<loraforge_notify::Mailer>> {
        let Some(url) = set(&self.smtp_url) else {
            return Ok(None);
        };
        let from = self
            .mail_from
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .context(
                "smtp_url is set but mail_from (LORAFORGE_MAIL_FROM) is not: name the sender",
            )?;
        Ok(Some(
            loraforge_notify::Mailer::new(url, from, NOTIFY_TIMEOUT)
                .map_err(|e| anyhow::anyhow!("smtp_url / mail_from: {e}"))?,
        ))
    }

    /// The alert delivery channels that are configured.
    pub fn alert_channels(&self) -> anyhow::Result<loraforge_server::alerts::AlertChannels> {
        let mut channels = loraforge_server::alerts::AlertChannels::default();
        if let Some(url) = set(&self.alert_slack_webhook_url) {
            channels.slack = Some(
                loraforge_notify::SlackSender::new(url, NOTIFY_TIMEOUT)
                    .map_err(|e| anyhow::anyhow!("alert_slack_webhook_url: {e}"))?,
            );
        }
        if let Some(url) = set(&self.alert_webhook_url) {
            channels.webhook = Some(
                loraforge_notify::JsonWebhookSender::new(url, NOTIFY_TIMEOUT)
                    .map_err(|e| anyhow::anyhow!("alert_webhook_url: {e}"))?,
            );
        }
        let to = self.alert_email_to();
        if !to.is_empty() {
            let mailer = self.mailer()?.context(
                "alert_email_to is set but smtp_url (LORAFORGE_SMTP_URL) is not: e-mail needs an SMTP server",
            )?;
            channels.email = Some((mailer, to));
        }
        Ok(channels)
    }

    /// The operator monitors' thresholds.
    pub fn monitor_settings(&self) -> anyhow::Result<loraforge_server::monitors::MonitorSettings> {
        use loraforge_domain::MicroUsd;
        let d = loraforge_server::monitors::MonitorSettings::default();
        let duration = |v: &Option<String>, name: &str, default: Duration| match v
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        {
            Some(v) => parse_duration(v).with_context(|| name.to_owned()),
            None => Ok(default),
        };
        let dollars = |v: &Option<String>, name: &str, default: MicroUsd| match v
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        {
            Some(v) => MicroUsd::parse_dollars(v.trim())
                .map_err(|e| anyhow::anyhow!("{name} must be decimal dollars like 2.50: {e}")),
            None => Ok(default),
        };
        let s = loraforge_server::monitors::MonitorSettings {
            training_alert_after: duration(
                &self.monitor_training_alert_after,
                "monitor_training_alert_after",
                d.training_alert_after,
            )?,
            training_cancel_after: duration(
                &self.monitor_training_cancel_after,
                "monitor_training_cancel_after",
                d.training_cancel_after,
            )?,
            failure_rate_percent: self
                .monitor_failure_rate_percent
                .unwrap_or(d.failure_rate_percent),
            failure_min_samples: self
                .monitor_failure_min_samples
                .unwrap_or(d.failure_min_samples),
            max_avg_cost: dollars(
                &self.monitor_max_avg_cost,
                "monitor_max_avg_cost",
                d.max_avg_cost,
            )?,
            loras_per_month: self.monitor_loras_per_month.unwrap_or(d.loras_per_month),
            storage_price_per_gb_month: self.storage_price()?,
            max_storage_cost: dollars(
                &self.monitor_max_storage_cost,
                "monitor_max_storage_cost",
                d.max_storage_cost,
            )?,
            cleanup_failures: self.monitor_cleanup_failures.unwrap_or(d.cleanup_failures),
            cooldown: self.alert_cooldown()?,
        };
        if s.training_cancel_after < s.training_alert_after {
            bail!(
                "monitor_training_cancel_after must not be shorter than monitor_training_alert_after"
            );
        }
        Ok(s)
    }

    /// Checks the alert settings (called by `Settings::load`).
    pub(super) fn check_alerts(&self) -> anyhow::Result<()> {
        self.alert_cooldown()?;
        self.monitor_settings()?;
        self.alert_channels()?;
        self.mailer()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
