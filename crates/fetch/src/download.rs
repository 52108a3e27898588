//! One URL to bytes: vet → (cache) → attempts with exponential backoff → redirects followed by
//! hand and re-vetted → body streamed under a size cap.

use std::error::Error as _;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use url::{Host, Url};

use crate::resolver::{NoAddress, RefusedAddress};
use crate::{FetchError, Fetcher, Result, forbidden_reason};

/// Longest URL accepted, characters.
pub const MAX_URL_CHARS: usize = 2048;

/// A downloaded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: Vec<u8>,
    /// Served from the download cache without contacting the host.
    pub from_cache: bool,
}

impl Fetcher {
    /// Downloads `url`, refusing bodies over `max_bytes`. Tries `attempts` times, retrying only
    /// transient failures ([`FetchError::is_retryable`]).
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Downloaded> {
        if !self.settings.is_enabled() {
            return Err(FetchError::Disabled);
        }
        let parsed = self.vet(url, url)?;
        let key = parsed.as_str().to_owned();
        if let Some(cache) = &self.cache
            && let Some(bytes) = cache.get(&key, self.clock.now()).await
            && bytes.len() as u64 <= max_bytes
        {
            tracing::debug!(url = %redact(&parsed), "download cache hit");
            return Ok(Downloaded {
                bytes,
                from_cache: true,
            });
        }
        let attempts = self.settings.attempts.max(1);
        let mut attempt = 1;
        let bytes = loop {
            match self.attempt(url, parsed.clone(), max_bytes).await {
                Ok(b) => break b,
                Err(e) if e.is_retryable() && attempt < attempts => {
                    let wait = backoff(self.settings.backoff_base, attempt);
                    tracing::info!(url = %redact(&parsed), attempt, error = e.code(), wait_ms = wait.as_millis() as u64, "download failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) if e.is_retryable() => return Err(e.exhausted(attempts)),
                Err(e) => return Err(e),
            }
        };
        if let Some(cache) = &self.cache {
            cache.put(&key, &bytes, self.clock.now()).await;
        }
        Ok(Downloaded {
            bytes,
            from_cache: false,
        })
    }

    /// Scheme, allow-list and literal-address checks for one hop. `shown` is the URL the user
    /// sent, used in messages.
    fn vet(&self, shown: &str, raw: &str) -> Result<Url> {
        let invalid = |reason: &str| FetchError::InvalidUrl {
            url: clip(shown),
            reason: reason.to_owned(),
        };
        if raw.chars().count() > MAX_URL_CHARS {
            return Err(invalid("longer than 2048 characters"));
        }
        let url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
        vet_url(
            shown,
            url,
            &self.settings.allowed_hosts,
            self.settings.allow_private_addresses,
        )
    }

    /// One attempt: follow at most `max_redirects` redirects, each re-vetted, then stream the body.
    async fn attempt(&self, shown: &str, mut url: Url, max_bytes: u64) -> Result<Vec<u8>> {
        let mut hops = 0;
        let mut resp = loop {
            let resp = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| transport(shown, &e))?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                break resp;
            }
            hops += 1;
            if hops > self.settings.max_redirects {
                return Err(FetchError::TooManyRedirects {
                    url: clip(shown),
                    max: self.settings.max_redirects,
                });
            }
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| url.join(loc).ok())
                .ok_or_else(|| FetchError::BadRedirect { url: clip(shown) })?;
            url = vet_url(
                shown,
                next,
                &self.settings.allowed_hosts,
                self.settings.allow_private_addresses,
            )?;
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: clip(shown),
                status: status.as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: clip(shown),
            max: max_bytes,
        };
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large());
        }
        // Never hold more than the cap: the body is refused as soon as it would pass it.
        let capacity = resp.content_length().unwrap_or(64 * 1024).min(max_bytes);
        let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(shown, &e))? {
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The checks every hop passes before a connection: http(s), a host on the allow-list, and —
/// for literal IP hosts, which skip the resolver — a permitted address.
fn vet_url(
    shown: &str,
    url: Url,
    allowed: &[crate::HostPattern],
    allow_private: bool,
) -> Result<Url> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme {
            url: clip(shown),
            scheme: url.scheme().to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::InvalidUrl {
            url: clip(shown),
            reason: "it carries a user name or password".to_owned(),
        });
    }
    let host = url.host().ok_or_else(|| FetchError::InvalidUrl {
        url: clip(shown),
        reason: "it has no host".to_owned(),
    })?;
    let (name, literal): (String, Option<IpAddr>) = match host {
        Host::Domain(d) => (d.to_owned(), None),
        Host::Ipv4(a) => (a.to_string(), Some(IpAddr::V4(a))),
        Host::Ipv6(a) => (a.to_string(), Some(IpAddr::V6(a))),
    };
    if !allowed.iter().any(|p| p.matches(&name)) {
        return Err(FetchError::HostNotAllowed {
            url: clip(shown),
            host: name,
        });
    }
    if let Some(addr) = literal
        && !allow_private
        && let Some(reason) = forbidden_reason(addr)
    {
        return Err(FetchError::ForbiddenAddress {
            url: clip(shown),
            addr,
            reason,
        });
    }
    Ok(url)
}

/// `base × 2^(attempt-1)`: the wait after failed attempt number `attempt` (1-based).
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << (attempt - 1).min(16))
}

/// Maps a reqwest failure: a refusal from our resolver is final, everything else is transient.
fn transport(shown: &str, e: &reqwest::Error) -> FetchError {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<RefusedAddress>() {
            return FetchError::ForbiddenAddress {
                url: clip(shown),
                addr: r.addr,
                reason: r.reason,
            };
        }
        if let Some(n) = s.downcast_ref::<NoAddress>() {
            return FetchError::Unresolvable {
                url: clip(shown),
                reason: n.0.clone(),
            };
        }
        source = s.source();
    }
    let cause = if e.is_timeout() {
        "the connection timed out".to_owned()
    } else if e.is_connect() {
        "the host could not be reached".to_owned()
    } else {
        "the connection broke off".to_owned()
    };
    FetchError::Transport {
        url: clip(shown),
        cause,
    }
}

/// URLs in messages: as sent, at most 300 characters.
fn clip(url: &str) -> String {
    let url = url.trim();
    if url.chars().count() <= 300 {
        url.to_owned()
    } else {
        format!("{}…", url.chars().take(300).collect::<String>())
    }
}

/// URLs in logs lose their query (signed URLs carry tokens there).
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles() {
        let b = Duration::from_millis(100);
        assert_eq!(
            [1, 2, 3].map(|a| backoff(b, a)),
            [100, 200, 400].map(Duration::from_millis)
        );
    }
}
