//! Exposure scope of an address.
//!
//! [`classify`] says what kind of address a bind address is; [`exposure`] says how widely
//! a socket bound to it can be reached on this host: a wildcard bind is as exposed as the
//! widest interface address of the host.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::host::InterfaceAddress;

/// Exposure scope, ordered from narrowest to widest reach; [`Scope::Wildcard`] is a bind
/// to every address and sorts last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16, fe80::/10, link-local multicast.
    LinkLocal,
    /// RFC 1918, 100.64.0.0/10 (shared address space), fc00::/7, admin-scoped multicast.
    Private,
    /// Anything else.
    Public,
    /// 0.0.0.0 or ::: every address of the host.
    Wildcard,
}

impl Scope {
    /// snake_case name as used in rules, storage and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Loopback => "loopback",
            Scope::LinkLocal => "link_local",
            Scope::Private => "private",
            Scope::Public => "public",
            Scope::Wildcard => "wildcard",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies one address. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are classified
/// as the IPv4 address they carry.
pub fn classify(addr: IpAddr) -> Scope {
    match addr {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(a),
        },
    }
}

fn classify_v4(a: Ipv4Addr) -> Scope {
    let o = a.octets();
    if a.is_unspecified() {
        Scope::Wildcard
    } else if a.is_loopback() {
        Scope::Loopback
    } else if a.is_link_local() || (o[0] == 224 && o[1] == 0 && o[2] == 0) {
        Scope::LinkLocal
    } else if a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) || o[0] == 239 {
        Scope::Private
    } else {
        Scope::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> Scope {
    let s = a.segments();
    if a.is_unspecified() {
        Scope::Wildcard
    } else if a.is_loopback() {
        Scope::Loopback
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xff0f) == 0xff02 || (s[0] & 0xff0f) == 0xff01 {
        Scope::LinkLocal
    } else if (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xff0f) == 0xff05
        || (s[0] & 0xff0f) == 0xff08
        || (s[0] & 0xffc0) == 0xfec0
    {
        Scope::Private
    } else {
        Scope::Public
    }
}

/// How widely a socket bound to `bind` can be reached on a host with `interfaces` (the
/// interfaces of the socket's own network namespace: see [`exposure_in`]).
///
/// A specific address is as exposed as its own class. A wildcard bind is as exposed as
/// the widest interface address it covers: IPv4 interfaces for `0.0.0.0`, IPv4 and IPv6
/// interfaces for `::` (dual-stack, the Linux default). With no interface addresses known
/// a wildcard bind counts as [`Scope::Public`]: unknown is never reported as safe.
pub fn exposure(bind: IpAddr, interfaces: &[InterfaceAddress]) -> Scope {
    let class = classify(bind);
    if class != Scope::Wildcard {
        return class;
    }
    let covers = |iface: &IpAddr| match bind {
        IpAddr::V4(_) => iface.is_ipv4(),
        IpAddr::V6(_) => true,
    };
    interfaces
        .iter()
        .map(|i| i.address)
        .filter(covers)
        .map(classify)
        .filter(|s| *s != Scope::Wildcard)
        .max()
        .unwrap_or(Scope::Public)
}

/// [`exposure`] of a socket in network namespace `netns`, against the interfaces of that
/// namespace only: a wildcard bind inside a pod reaches the pod's addresses, not the
/// node's.
pub fn exposure_in(bind: IpAddr, netns: u64, interfaces: &[InterfaceAddress]) -> Scope {
    if classify(bind) != Scope::Wildcard {
        return classify(bind);
    }
    let own: Vec<InterfaceAddress> = interfaces
        .iter()
        .filter(|i| i.netns == netns)
        .cloned()
        .collect();
    exposure(bind, &own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn iface(s: &str) -> InterfaceAddress {
        InterfaceAddress {
            interface: "eth0".into(),
            address: ip(s),
            prefix_len: 24,
            netns: 0,
        }
    }

    #[test]
    fn classes() {
        let cases = [
            ("0.0.0.0", Scope::Wildcard),
            ("::", Scope::Wildcard),
            ("127.0.0.1", Scope::Loopback),
            ("127.8.9.1", Scope::Loopback),
            ("::1", Scope::Loopback),
            ("169.254.1.1", Scope::LinkLocal),
            ("fe80::1", Scope::LinkLocal),
            ("224.0.0.251", Scope::LinkLocal),
            ("ff02::fb", Scope::LinkLocal),
            ("10.1.2.3", Scope::Private),
            ("172.16.0.1", Scope::Private),
            ("172.31.255.1", Scope::Private),
            ("192.168.1.1", Scope::Private),
            ("100.64.0.1", Scope::Private),
            ("fd00::1", Scope::Private),
            ("172.32.0.1", Scope::Public),
            ("100.128.0.1", Scope::Public),
            ("8.8.8.8", Scope::Public),
            ("2001:db8::1", Scope::Public),
            ("::ffff:10.0.0.1", Scope::Private),
            ("::ffff:127.0.0.1", Scope::Loopback),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn wildcard_takes_the_widest_interface_of_its_family() {
        let ifaces = [iface("127.0.0.1"), iface("10.0.0.2"), iface("2001:db8::5")];
        assert_eq!(exposure(ip("0.0.0.0"), &ifaces), Scope::Private);
        assert_eq!(exposure(ip("::"), &ifaces), Scope::Public);
        assert_eq!(exposure(ip("10.0.0.2"), &ifaces), Scope::Private);
        assert_eq!(
            exposure(ip("0.0.0.0"), &[iface("127.0.0.1")]),
            Scope::Loopback
        );
    }

    #[test]
    fn wildcard_in_a_namespace_takes_only_that_namespace_s_interfaces() {
        let at = |s: &str, netns: u64| InterfaceAddress { netns, ..iface(s) };
        // The node has a public address; the pod only loopback and a pod address.
        let ifaces = [
            at("203.0.113.7", 0),
            at("127.0.0.1", 0),
            at("127.0.0.1", 4026532999),
            at("10.244.1.5", 4026532999),
            at("127.0.0.1", 4026533000),
        ];
        assert_eq!(exposure_in(ip("0.0.0.0"), 0, &ifaces), Scope::Public);
        assert_eq!(
            exposure_in(ip("0.0.0.0"), 4026532999, &ifaces),
            Scope::Private
        );
        assert_eq!(
            exposure_in(ip("0.0.0.0"), 4026533000, &ifaces),
            Scope::Loopback
        );
        // A namespace the agent knows no interface of: unknown is never safe.
        assert_eq!(exposure_in(ip("0.0.0.0"), 1, &ifaces), Scope::Public);
        assert_eq!(exposure_in(ip("10.0.0.1"), 1, &ifaces), Scope::Private);
    }

    #[test]
    fn wildcard_without_interfaces_is_public() {
        assert_eq!(exposure(ip("0.0.0.0"), &[]), Scope::Public);
    }

    proptest! {
        #[test]
        fn exposure_of_specific_address_is_its_class(a in any::<u32>(), ifs in proptest::collection::vec(any::<u32>(), 0..4)) {
            let addr = IpAddr::V4(Ipv4Addr::from(a));
            let ifaces: Vec<_> = ifs.into_iter().map(|i| InterfaceAddress { interface: "x".into(), address: IpAddr::V4(Ipv4Addr::from(i)), prefix_len: 8, netns: 0 }).collect();
            let e = exposure(addr, &ifaces);
            if addr.is_unspecified() {
                prop_assert_ne!(e, Scope::Wildcard);
                for i in &ifaces {
                    let c = classify(i.address);
                    if c != Scope::Wildcard { prop_assert!(e >= c); }
                }
            } else {
                prop_assert_eq!(e, classify(addr));
            }
        }

        #[test]
        fn mapped_v6_classifies_as_v4(a in any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), classify(IpAddr::V4(v4)));
        }
    }
}
