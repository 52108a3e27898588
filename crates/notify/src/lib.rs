//! Outbound notifications, each optional and each with a timeout per call: [`SlackSender`]
//! (Slack incoming webhook, `{"text": …}`), [`JsonWebhookSender`] (any JSON body to a URL) and
//! [`Mailer`] (plain-text e-mail over SMTP with lettre: `smtp://host:port` is unencrypted,
//! `smtp://…?tls=required` STARTTLS, `smtps://user:pass@host:465` TLS; rustls, no OpenSSL).
//! None retries: the caller (the alert deliverer) keeps delivery state and retries with backoff.
//! Errors never carry a webhook URL or SMTP credentials (both are secrets).

mod mail;
mod webhook;

pub use mail::Mailer;
pub use webhook::{JsonWebhookSender, SlackSender};

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A setting is unusable (a URL that does not parse, an address that is not one).
    #[error("invalid notification setting: {0}")]
    Config(String),
    /// The receiver answered with a non-2xx status.
    #[error("the receiver answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// The connection failed or timed out.
    #[error("{0}")]
    Transport(String),
    /// The SMTP server refused or the exchange failed.
    #[error("smtp: {0}")]
    Smtp(String),
}

impl NotifyError {
    /// Whether a later try may succeed (everything but a bad setting or a 4xx other than 408/429).
    pub fn is_retryable(&self) -> bool {
        match self {
            NotifyError::Config(_) => false,
            NotifyError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            NotifyError::Transport(_) | NotifyError::Smtp(_) => true,
        }
    }
}
