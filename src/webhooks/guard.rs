//! The SSRF guard: which addresses a webhook may reach. Names are resolved here, inside the
//! sender's HTTP client ([`GuardedResolver`]), and only vetted addresses are handed to the
//! connector, so the address checked is the address connected to: a name that answers a
//! public address to a check and a private one to the connection (DNS rebinding) cannot
//! slip past. No connection is opened by anything in this file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::model::Cidr;

/// Whether `ip` is refused by default: loopback, private, link-local (cloud metadata
/// included), CGNAT, `0/8`, multicast, broadcast, documentation, benchmarking and reserved
/// IPv4; IPv6 unspecified, loopback, ULA, link-local, site-local, multicast, documentation,
/// discard and IETF-protocol ranges; and the IPv4-mapped, IPv4-compatible, NAT64 and 6to4
/// forms of refused IPv4 addresses.
pub fn refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn refused_v4(ip: Ipv4Addr) -> bool {
    const RANGES: [([u8; 4], u32); 15] = [
        ([0, 0, 0, 0], 8),       // "this network"
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast included
    ];
    RANGES.iter().any(|(net, bits)| in_v4(ip, *net, *bits))
}

fn in_v6(ip: Ipv6Addr, net: u128, bits: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    u128::from(ip) & mask == net & mask
}

fn embedded_v4(bits: u128) -> Ipv4Addr {
    Ipv4Addr::from((bits & 0xffff_ffff) as u32)
}

fn refused_v6(ip: Ipv6Addr) -> bool {
    let n = u128::from(ip);
    // IPv4-mapped (::ffff:0:0/96) and NAT64 (64:ff9b::/96): judged as the IPv4 address.
    if in_v6(ip, 0xffff_0000_0000, 96) || in_v6(ip, 0x0064_ff9b << 96, 96) {
        return refused_v4(embedded_v4(n));
    }
    // 6to4 (2002::/16) carries an IPv4 address in bits 16..48.
    if in_v6(ip, 0x2002 << 112, 16) {
        return refused_v4(Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32));
    }
    const RANGES: [(u128, u32); 10] = [
        (0, 96),                      // unspecified, loopback, IPv4-compatible
        (0x0064_ff9b_0001 << 80, 48), // local-use NAT64
        (0x0100 << 112, 64),          // discard
        (0x2001 << 112, 23),          // IETF protocol assignments (Teredo included)
        (0x2001_0db8 << 96, 32),      // documentation
        (0xfc00 << 112, 7),           // unique local
        (0xfe80 << 112, 10),          // link-local
        (0xfec0 << 112, 10),          // site-local (deprecated)
        (0xff00 << 112, 8),           // multicast
        (0x3fff << 112, 20),          // documentation (RFC 9637)
    ];
    RANGES.iter().any(|(net, bits)| in_v6(ip, *net, *bits))
}

/// The addresses a webhook may reach: the public ones, and refused ones that an entry of
/// `webhooks.allow_networks` contains (an IPv4-mapped address counts as its IPv4 one).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub allow: Arc<[Cidr]>,
}

impl Policy {
    pub fn permits(&self, ip: IpAddr) -> bool {
        !refused(ip) || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// The error of a name whose every address is refused; the sender reports it as
/// `"address not allowed"`.
#[derive(Debug)]
pub struct NotAllowed(pub String);

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "address not allowed: {}", self.0)
    }
}

impl std::error::Error for NotAllowed {}

/// The sender's resolver: the system's answer, less the refused addresses.
pub struct GuardedResolver {
    pub policy: Policy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let vetted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if vetted.is_empty() {
                return Err(Box::new(NotAllowed(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(vetted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn every_refused_ipv4_range_is_refused() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused(ip(a)), "{a} should be refused");
        }
    }

    #[test]
    fn public_ipv4_passes() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.3.1",
            "198.20.0.1",
            "223.255.255.255",
        ] {
            assert!(!refused(ip(a)), "{a} should pass");
        }
    }

    #[test]
    fn every_refused_ipv6_range_is_refused() {
        for a in [
            "::",
            "::1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
            "64:ff9b:1::1",
            "3fff::1",
        ] {
            assert!(refused(ip(a)), "{a} should be refused");
        }
    }

    #[test]
    fn mapped_nat64_and_6to4_forms_are_judged_as_their_ipv4_address() {
        for a in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::192.168.0.1",
            "2002:7f00:0001::1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(refused(ip(a)), "{a} should be refused");
        }
        for a in ["::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:0808:0808::1"] {
            assert!(!refused(ip(a)), "{a} should pass");
        }
    }

    #[test]
    fn public_ipv6_passes() {
        for a in ["2606:4700:4700::1111", "2a00:1450:4001::1", "2400:cb00::1"] {
            assert!(!refused(ip(a)), "{a} should pass");
        }
    }

    #[test]
    fn allow_networks_lets_refused_addresses_through() {
        let policy = Policy {
            allow: vec!["127.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())].into(),
        };
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(!policy.permits(ip("::1")));
        assert!(!policy.permits(ip("10.0.0.1")));
        assert!(policy.permits(ip("8.8.8.8")));
        assert!(!Policy::default().permits(ip("127.0.0.1")));
    }
}
