//! The SSRF rules for URLs a user gives us to call later (client webhooks), as functions and a
//! client: the same [`forbidden_reason`] and [`VettingResolver`] the downloader uses, without its
//! host allow-list (a webhook may point at any public host).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

use crate::policy::forbidden_reason;
use crate::resolver::VettingResolver;

/// Checks `url` for being called: http or https, no user name or password, a host, and — unless
/// `allow_private` — a literal address, or every address its name resolves to now, that is
/// public. The error says what is wrong, for people. The resolver of [`vetted_client`] checks
/// names again at every connection, so a name that later resolves elsewhere is still refused.
pub async fn vet_url(url: &Url, allow_private: bool) -> Result<(), String> {
    check_shape(url, allow_private)?;
    if allow_private {
        return Ok(());
    }
    if let Some(Host::Domain(name)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("{name} does not resolve: {e}"))?
            .map(|a| a.ip())
            .collect();
        if addrs.is_empty() {
            return Err(format!("{name} has no addresses"));
        }
        if let Some((ip, reason)) = addrs
            .iter()
            .find_map(|ip| forbidden_reason(*ip).map(|r| (*ip, r)))
        {
            return Err(format!("{name} resolves to {ip}, {reason}"));
        }
    }
    Ok(())
}

/// The checks of [`vet_url`] that need no DNS: scheme, credentials, host, a literal address.
/// Run before every connection, since the client's resolver is not asked about literal addresses.
pub fn check_shape(url: &Url, allow_private: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the URL must start with https:// or http://, not {}://",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry a user name or password".into());
    }
    let ip = match url.host() {
        None => return Err("the URL has no host".into()),
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    match forbidden_reason(ip) {
        Some(reason) if !allow_private => Err(format!("{ip} is {reason}")),
        _ => Ok(()),
    }
}

/// An HTTP client for URLs passed by [`vet_url`]: names resolved only through the vetting
/// resolver (the address checked is the address connected to), no redirects, no proxy, `timeout`
/// per request.
pub fn vetted_client(allow_private: bool, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(VettingResolver::new(allow_private)))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("loraforge-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[tokio::test]
    async fn private_literal_and_odd_urls_are_refused() {
        for bad in [
            "ftp://example.com/hook",
            "https://user:pw@example.com/hook",
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/hook",
            "http://[::1]/hook",
            "http://[::ffff:192.168.0.1]/hook",
            "http://localhost/hook",
        ] {
            assert!(vet_url(&url(bad), false).await.is_err(), "{bad}");
        }
        // The test switch lets loopback through, never another scheme or credentials.
        assert!(
            vet_url(&url("http://127.0.0.1:8080/hook"), true)
                .await
                .is_ok()
        );
        assert!(vet_url(&url("http://localhost/hook"), true).await.is_ok());
        assert!(vet_url(&url("ftp://127.0.0.1/"), true).await.is_err());
        assert!(vet_url(&url("http://a:b@127.0.0.1/"), true).await.is_err());
        assert!(check_shape(&url("https://93.184.216.34/hook"), false).is_ok());
    }
}
