//! Why a URL could not be downloaded. Every message names the URL and says what to do.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error(
        "downloading images from URLs is turned off on this server: no hosts are allowed. The operator must set image_url_allowed_hosts (LORAFORGE_IMAGE_URL_ALLOWED_HOSTS) to the hosts to trust, e.g. *.supabase.co"
    )]
    Disabled,
    #[error("{url} is not a valid URL ({reason}); send an absolute http(s) URL")]
    InvalidUrl { url: String, reason: String },
    #[error("{url} uses the {scheme}: scheme; only http and https URLs can be downloaded")]
    UnsupportedScheme { url: String, scheme: String },
    #[error(
        "{url} is on host {host}, which this server does not download from; host the image on an allowed host (the operator lists them in image_url_allowed_hosts)"
    )]
    HostNotAllowed { url: String, host: String },
    #[error("{url} leads to {addr}, {reason}, which is never downloaded from; use a public URL")]
    ForbiddenAddress {
        url: String,
        addr: IpAddr,
        reason: &'static str,
    },
    #[error("{url} could not be resolved ({reason}); check the host name")]
    Unresolvable { url: String, reason: String },
    #[error(
        "{url} could not be downloaded: HTTP {status}; check that the link is public and has not expired"
    )]
    Status { url: String, status: u16 },
    #[error("{url} could not be downloaded after {attempts} attempts: {cause}")]
    Exhausted {
        url: String,
        attempts: u32,
        cause: String,
    },
    /// One attempt's transient failure (connect, timeout, broken body); retried.
    #[error("{url} could not be downloaded: {cause}")]
    Transport { url: String, cause: String },
    #[error("{url} is larger than the {} limit; images must be at most that — link a smaller export", megabytes(*.max))]
    TooLarge { url: String, max: u64 },
    #[error("{url} redirects more than {max} times; link the image itself")]
    TooManyRedirects { url: String, max: u32 },
    #[error("{url} answered with a redirect but no usable Location; link the image itself")]
    BadRedirect { url: String },
    #[error("the HTTP client could not be set up: {0}")]
    Client(String),
}

impl FetchError {
    /// Stable snake_case code for API and CLI output.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Disabled => "url_intake_disabled",
            Self::InvalidUrl { .. } => "invalid_url",
            Self::UnsupportedScheme { .. } => "unsupported_scheme",
            Self::HostNotAllowed { .. } => "host_not_allowed",
            Self::ForbiddenAddress { .. } => "forbidden_address",
            Self::Unresolvable { .. } => "unresolvable_host",
            Self::Status { .. } | Self::Exhausted { .. } | Self::Transport { .. } => {
                "download_failed"
            }
            Self::TooLarge { .. } => "too_large_file",
            Self::TooManyRedirects { .. } | Self::BadRedirect { .. } => "bad_redirect",
            Self::Client(_) => "internal_error",
        }
    }

    /// Whether another attempt may succeed: connect errors, timeouts, a broken body, 5xx, 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether the request was refused by policy before or instead of connecting.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Self::Disabled
                | Self::UnsupportedScheme { .. }
                | Self::HostNotAllowed { .. }
                | Self::ForbiddenAddress { .. }
        )
    }

    /// A failure of ours rather than of the URL.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Client(_))
    }

    /// The retryable error of the last attempt, as the final error after `attempts` tries.
    pub(crate) fn exhausted(self, attempts: u32) -> Self {
        match self {
            Self::Transport { url, cause } => Self::Exhausted {
                url,
                attempts,
                cause,
            },
            Self::Status { url, status } => Self::Exhausted {
                url,
                attempts,
                cause: format!("HTTP {status}"),
            },
            other => other,
        }
    }
}

/// `10 MB`, `0.5 MB`: binary megabytes without needless decimals.
fn megabytes(n: u64) -> String {
    let mb = n as f64 / (1024.0 * 1024.0);
    let s = format!("{mb:.1}");
    format!("{} MB", s.strip_suffix(".0").unwrap_or(&s))
}
