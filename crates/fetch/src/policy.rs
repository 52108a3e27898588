//! Which URLs may be fetched: the host allow-list and the address classes that are never
//! connected to. Pure functions, so the SSRF rules are unit-tested without a network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An allowed host: `images.example.com` (exactly that host) or `*.example.com` (any host
/// under `example.com`, not `example.com` itself). Case-insensitive; a trailing dot is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    /// Parses one allow-list entry; the error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = normalize_host(raw.trim());
        let (suffix, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, s),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
            && !name.starts_with('.')
            && !name.contains("..");
        if !valid {
            return Err(format!(
                "{raw:?} is not a host pattern; use a host name such as images.example.com or *.example.com"
            ));
        }
        Ok(if suffix {
            Self::Suffix(name)
        } else {
            Self::Exact(name)
        })
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = normalize_host(host);
        match self {
            Self::Exact(h) => host == *h,
            Self::Suffix(s) => {
                host.len() > s.len() + 1
                    && host.ends_with(s.as_str())
                    && host[..host.len() - s.len()].ends_with('.')
            }
        }
    }
}

fn normalize_host(h: &str) -> String {
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Why connecting to `ip` is refused, or `None` for a public unicast address.
///
/// Covers loopback, RFC 1918 private, CGNAT (100.64/10), link-local (169.254/16, which holds
/// the 169.254.169.254 metadata service, and fe80::/10), unique-local (fc00::/7), unspecified,
/// multicast, broadcast and reserved ranges, and the same IPv4 ranges written as IPv4-mapped,
/// IPv4-compatible or NAT64 IPv6 addresses.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "the cloud metadata service"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private network address"
    } else if a == 100 && (64..128).contains(&b) {
        "a carrier-grade NAT address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if ip.is_unspecified() || a == 0 {
        "an unspecified address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if a >= 240 {
        "a reserved address"
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        "an IETF protocol address"
    } else if a == 198 && (b == 18 || b == 19) {
        "a benchmarking network address"
    } else {
        return None;
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    // IPv4 written as IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64 (64:ff9b::/96).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return v4_reason(embedded_v4(seg));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(embedded_v4(seg));
    }
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if seg[0] & 0xfe00 == 0xfc00 {
        "a unique-local (private) address"
    } else if seg[0] & 0xffc0 == 0xfe80 {
        "a link-local address"
    } else if seg[0] & 0xffc0 == 0xfec0 {
        "a site-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else {
        return None;
    })
}

fn embedded_v4(seg: [u16; 8]) -> Ipv4Addr {
    let [a, b] = seg[6].to_be_bytes();
    let [c, d] = seg[7].to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        forbidden_reason(s.parse().unwrap()).is_some()
    }

    #[test]
    fn every_non_public_class_is_refused() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(ip), "{ip} is public");
        }
        assert_eq!(
            forbidden_reason("169.254.169.254".parse().unwrap()),
            Some("the cloud metadata service")
        );
    }

    #[test]
    fn host_patterns_match_exactly_or_by_subdomain() {
        let exact = HostPattern::parse("Images.Example.com").unwrap();
        assert!(exact.matches("images.example.com") && exact.matches("IMAGES.example.com."));
        assert!(!exact.matches("x.images.example.com") && !exact.matches("example.com"));
        let suffix = HostPattern::parse("*.supabase.co").unwrap();
        assert!(suffix.matches("abc.supabase.co") && suffix.matches("a.b.supabase.co"));
        assert!(
            !suffix.matches("supabase.co")
                && !suffix.matches("evilsupabase.co")
                && !suffix.matches("supabase.co.evil.com")
        );
        for bad in ["", "*.", "a b", "http://x.com", "*.*.x.com", ".x.com"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HostPattern::parse("127.0.0.1").unwrap(),
            HostPattern::Exact("127.0.0.1".into())
        );
        assert!(HostPattern::parse("[::1]").unwrap().matches("::1"));
    }
}
