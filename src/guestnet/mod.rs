//! The guest's network policy (`--net internet`, the default): which destinations a
//! job may reach, written as one nftables ruleset for the VM's private namespace.
//! Owns the policy and its rules; must not know the CLI, QEMU's argv or processes.
//!
//! How it holds (DEVELOPMENT.md, "Guest network"): QEMU's user networking runs in
//! a user+network namespace of its own ([`sandbox`]), so the guest's gateway
//! 10.0.2.2 leads to that namespace's empty loopback, not the host's. The only way
//! out of the namespace is slirp4netns (host sockets, host loopback disabled), and
//! every packet that leaves first passes the filter below: the host's own
//! addresses, loopback, link-local (metadata services), private, shared, multicast
//! and reserved ranges are refused unless `--net-allow` opens a range (never the
//! host itself: that is what `--net-forward` is for).

pub mod forward;
pub mod sandbox;

use std::net::IpAddr;

pub use ipnet::IpNet;

/// IPv4 ranges a job may not reach unless `--net-allow` opens them.
pub const DENY_V4: &[&str] = &[
    "0.0.0.0/8",      // "this network"
    "10.0.0.0/8",     // private
    "100.64.0.0/10",  // shared address space (carrier NAT, some clouds' metadata)
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local: cloud metadata services
    "172.16.0.0/12",  // private
    "192.168.0.0/16", // private
    "192.0.0.0/24",   // IETF protocol assignments
    "198.18.0.0/15",  // benchmarking
    "224.0.0.0/3",    // multicast, reserved, broadcast
];

/// IPv6 ranges a job may not reach unless `--net-allow` opens them.
pub const DENY_V6: &[&str] = &[
    "::/127",         // unspecified, loopback
    "::ffff:0:0/96",  // IPv4-mapped: the IPv4 rules in IPv6 clothes
    "64:ff9b::/96",   // NAT64: any IPv4 address, private ones included
    "64:ff9b:1::/48", // local-use NAT64
    "2001::/32",      // Teredo (IPv4 inside)
    "2002::/16",      // 6to4 (IPv4 inside)
    "fc00::/7",       // unique local (private)
    "fe80::/10",      // link-local: metadata services (fd00:ec2::254 is in fc00::/7)
    "fec0::/10",      // site-local (deprecated, still routed by some)
    "ff00::/8",       // multicast
];

/// What a job may reach: the internet, plus the ranges the operator opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--net-allow CIDR`: private or link-local ranges opened on purpose.
    pub allow: Vec<IpNet>,
}

/// `--net-allow CIDR`: an address or a range, IPv4 or IPv6.
pub fn parse_allow(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("--net-allow {s:?}: expected an address or CIDR range, e.g. 192.168.10.0/24 or fd12::/64")
        })?;
    if net.prefix_len() == 0 {
        return Err(format!(
            "--net-allow {s}: opens every address, the host's own included; name the ranges jobs need"
        ));
    }
    Ok(net.trunc())
}

impl Policy {
    /// The nftables ruleset for a VM's namespace: `host` are the host's own
    /// addresses (always refused), `internal` the connector's own addresses in
    /// the namespace (its gateway and DNS: always refused), `onlink` the
    /// networks the host's interfaces are on (its LAN neighbours, public or not:
    /// refused unless allowed).
    pub fn ruleset(&self, host: &[IpAddr], internal: &[IpAddr], onlink: &[IpNet]) -> String {
        let (mut host4, mut host6) = (vec![], vec![]);
        for a in host.iter().chain(internal) {
            match a {
                IpAddr::V4(v) => host4.push(v.to_string()),
                IpAddr::V6(v) => host6.push(v.to_string()),
            }
        }
        let (mut allow4, mut allow6) = (vec![], vec![]);
        for n in &self.allow {
            match n {
                IpNet::V4(v) => allow4.push(v.to_string()),
                IpNet::V6(v) => allow6.push(v.to_string()),
            }
        }
        let set = |name: &str, ty: &str, items: &[String]| {
            let elements = if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            };
            format!("  set {name} {{ type {ty}; flags interval; auto-merge;{elements} }}\n")
        };
        let mut deny4: Vec<String> = DENY_V4.iter().map(|s| s.to_string()).collect();
        let mut deny6: Vec<String> = DENY_V6.iter().map(|s| s.to_string()).collect();
        for n in onlink {
            match n {
                IpNet::V4(v) => deny4.push(v.trunc().to_string()),
                IpNet::V6(v) => deny6.push(v.trunc().to_string()),
            }
        }
        let mut r = String::from("table inet ghrm {\n");
        r += &set("host4", "ipv4_addr", &host4);
        r += &set("host6", "ipv6_addr", &host6);
        r += &set("allow4", "ipv4_addr", &allow4);
        r += &set("allow6", "ipv6_addr", &allow6);
        r += &set("deny4", "ipv4_addr", &deny4);
        r += &set("deny6", "ipv6_addr", &deny6);
        // Output, not forward: QEMU's user networking opens ordinary sockets in
        // the namespace, so every guest connection is a locally generated packet.
        r += "  chain out {\n    type filter hook output priority 0; policy accept;\n";
        // The namespace's own loopback holds nothing but QEMU's internal socket
        // pairs (one per forwarded connection): not the host's.
        r += "    oif lo accept\n";
        r += "    ip daddr @host4 goto refuse\n    ip6 daddr @host6 goto refuse\n";
        r += "    ip daddr @allow4 accept\n    ip6 daddr @allow6 accept\n";
        r += "    ip daddr @deny4 goto refuse\n    ip6 daddr @deny6 goto refuse\n  }\n";
        // A refusal that answers at once: a job's connect fails, it does not hang.
        r += "  chain refuse {\n    meta l4proto tcp reject with tcp reset\n    reject with icmpx type admin-prohibited\n  }\n";
        r += "}\n";
        r
    }
}

impl Policy {
    /// Does the filter refuse `ip` (the same order as [`Policy::ruleset`])?
    pub fn refuses(&self, ip: IpAddr, host: &HostNets) -> bool {
        let ip = match ip {
            IpAddr::V6(v) => v.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if host.addresses.contains(&ip) {
            return true;
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        DENY_V4
            .iter()
            .chain(DENY_V6)
            .filter_map(|d| d.parse::<IpNet>().ok())
            .chain(host.onlink.iter().copied())
            .any(|n| n.contains(&ip))
    }
}

/// This host as the guest must not see it: every address of its interfaces
/// (loopback included; refused whatever range they are in) and the network each
/// is on (its on-link neighbours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNets {
    /// The host's own addresses.
    pub addresses: Vec<IpAddr>,
    /// The networks its interfaces are on, loopback's left out.
    pub onlink: Vec<IpNet>,
}

/// Read the host's interfaces now (each VM start: addresses come and go).
pub fn host_nets() -> std::io::Result<HostNets> {
    let mut h = HostNets::default();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let (Some(a), mask) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let (ip, prefix) = if let Some(v4) = a.as_sockaddr_in() {
            let p = mask.and_then(|m| m.as_sockaddr_in().map(|m| u32::from(m.ip()).count_ones()));
            (IpAddr::V4(v4.ip()), p)
        } else if let Some(v6) = a.as_sockaddr_in6() {
            let p = mask.and_then(|m| m.as_sockaddr_in6().map(|m| u128::from(m.ip()).count_ones()));
            (IpAddr::V6(v6.ip()), p)
        } else {
            continue;
        };
        h.addresses.push(ip);
        if let Some(net) = prefix.and_then(|p| IpNet::new(ip, p as u8).ok()) {
            if !ip.is_loopback() && net.prefix_len() > 0 {
                h.onlink.push(net.trunc());
            }
        }
    }
    h.addresses.sort();
    h.addresses.dedup();
    h.onlink.sort();
    h.onlink.dedup();
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_takes_addresses_and_ranges_and_refuses_everything() {
        assert_eq!(
            parse_allow("192.168.10.7/24").unwrap().to_string(),
            "192.168.10.0/24"
        );
        assert_eq!(parse_allow("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_allow("fd12::/64").unwrap().to_string(), "fd12::/64");
        for bad in ["0.0.0.0/0", "::/0", "10.0.0.0/33", "example.com", ""] {
            let e = parse_allow(bad).unwrap_err();
            assert!(e.contains("--net-allow"), "{bad}: {e}");
        }
    }

    #[test]
    fn ruleset_refuses_the_host_before_it_allows_and_denies_private_ranges() {
        let p = Policy {
            allow: vec![
                parse_allow("192.168.10.0/24").unwrap(),
                parse_allow("fd12::/64").unwrap(),
            ],
        };
        let host: Vec<IpAddr> = vec!["192.168.10.5".parse().unwrap(), "fd00::2".parse().unwrap()];
        let onlink = vec![
            parse_allow("192.168.10.0/24").unwrap(),
            parse_allow("203.0.113.0/26").unwrap(),
        ];
        let r = p.ruleset(&host, &["10.0.3.2".parse().unwrap()], &onlink);
        assert!(r.contains("set host4 { type ipv4_addr; flags interval; auto-merge; elements = { 192.168.10.5, 10.0.3.2 }; }"), "{r}");
        assert!(r.contains("elements = { fd00::2 }"), "{r}");
        assert!(r.contains("elements = { 192.168.10.0/24 }"), "{r}");
        for d in DENY_V4.iter().chain(DENY_V6) {
            assert!(r.contains(d), "{d} missing:\n{r}");
        }
        // A public on-link neighbour network is denied like a private range.
        assert!(r.contains("203.0.113.0/26"), "{r}");
        // Order is the policy: the host's own addresses, then the allowed, then
        // the denied ranges.
        let at = |s: &str| r.find(s).unwrap();
        assert!(at("ip daddr @host4") < at("ip daddr @allow4"));
        assert!(at("ip daddr @allow4") < at("ip daddr @deny4"));
        assert!(at("ip6 daddr @host6") < at("ip6 daddr @allow6"));
        assert!(at("ip6 daddr @allow6") < at("ip6 daddr @deny6"));
    }

    #[test]
    fn refuses_follows_the_ruleset_order() {
        let p = Policy {
            allow: vec![parse_allow("192.168.10.0/24").unwrap()],
        };
        let host = HostNets {
            addresses: vec!["192.168.10.5".parse().unwrap()],
            onlink: vec![parse_allow("203.0.113.0/26").unwrap()],
        };
        let r = |a: &str| p.refuses(a.parse().unwrap(), &host);
        assert!(
            r("192.168.10.5"),
            "the host itself, although in an allowed range"
        );
        assert!(!r("192.168.10.53"));
        assert!(r("192.168.11.1") && r("10.0.0.1") && r("169.254.169.254") && r("127.0.0.53"));
        assert!(r("203.0.113.7"), "an on-link neighbour");
        assert!(r("::ffff:10.0.0.1") && r("fd00::1") && r("64:ff9b::a00:1"));
        assert!(!r("1.1.1.1") && !r("2606:4700:4700::1111") && !r("198.51.100.10"));
    }

    #[test]
    fn empty_sets_have_no_elements_clause() {
        let r = Policy::default().ruleset(&[], &[], &[]);
        assert!(
            r.contains("set allow4 { type ipv4_addr; flags interval; auto-merge; }"),
            "{r}"
        );
    }

    #[test]
    fn host_nets_include_loopback_but_not_its_network() {
        let h = host_nets().unwrap();
        assert!(h.addresses.contains(&"127.0.0.1".parse().unwrap()), "{h:?}");
        assert!(h.onlink.iter().all(|n| !n.addr().is_loopback()), "{h:?}");
    }
}
