//! E-mail over SMTP (lettre, tokio, rustls).

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::NotifyError;

/// Sends plain-text e-mails from one sender through one SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `scheme://host:port`, without credentials, for logs.
    server: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl Mailer {
    /// `url`: `smtp://host:port` (unencrypted), `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS) or `smtps://user:pass@host:465`; `from` the sender (`Name <addr>` or `addr`);
    /// each send gives up after `timeout`.
    pub fn new(url: &str, from: &str, timeout: Duration) -> Result<Self, NotifyError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| NotifyError::Config(format!("the SMTP URL is not a URL: {e}")))?;
        let server = format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or(""),
            parsed
                .port()
                .map_or_else(|| "default".to_owned(), |p| p.to_string())
        );
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| NotifyError::Config(format!("the SMTP URL {server}: {e}")))?
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| NotifyError::Config(format!("the sender address {from:?}: {e}")))?;
        Ok(Self {
            transport,
            from,
            server,
        })
    }

    /// The server, without credentials.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends a plain-text message to `to`.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), NotifyError> {
        let to = to
            .parse::<Mailbox>()
            .map_err(|e| NotifyError::Config(format!("the address {to:?}: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| NotifyError::Config(format!("the message: {e}")))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| NotifyError::Smtp(e.to_string()))
    }
}
