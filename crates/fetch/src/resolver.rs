//! The DNS resolver given to reqwest: it resolves a name and hands back only addresses that
//! pass [`forbidden_reason`], so the address checked is the address connected to — a name that
//! re-resolves to 127.0.0.1 between a check and the connect (DNS rebinding) cannot slip through.

use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::policy::forbidden_reason;

/// A refusal raised inside the resolver; the downloader finds it in the error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {addr}, {reason}")]
pub(crate) struct RefusedAddress {
    pub host: String,
    pub addr: IpAddr,
    pub reason: &'static str,
}

/// No address at all for a name.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NoAddress(pub String);

#[derive(Debug)]
pub(crate) struct VettingResolver {
    allow_private: bool,
}

impl VettingResolver {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| NoAddress(e.to_string()))?
                .collect();
            if addrs.is_empty() {
                return Err(NoAddress(format!("{host} has no addresses")).into());
            }
            if !allow_private {
                // One bad answer refuses the name: a record mixing public and private
                // addresses is an attack or a misconfiguration either way.
                if let Some((addr, reason)) = addrs
                    .iter()
                    .find_map(|a| forbidden_reason(a.ip()).map(|r| (a.ip(), r)))
                {
                    return Err(RefusedAddress { host, addr, reason }.into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}
