//! Exposure scope of an address.
//!
//! [`classify`] says what kind of address a bind address is; [`exposure`] says how widely
//! a socket bound to it can be reached on this host: a wildcard bind is as exposed as the
//! widest interface address of the host.

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
    /// Every scope, narrowest first.
    pub const ALL: [Scope; 5] = [
        Scope::Loopback,
        Scope::LinkLocal,
        Scope::Private,
        Scope::Public,
        Scope::Wildcard,
    ];

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

crate::named_enum!(Scope, "scope");

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
    if a.is_unspecified() {
        return Scope::Wildcard;
    }
    class_of(IpAddr::V4(a))
}

fn classify_v6(a: Ipv6Addr) -> Scope {
    if a.is_unspecified() {
        return Scope::Wildcard;
    }
    class_of(IpAddr::V6(a))
}

/// The class of a specified address (not a wildcard, not IPv4-mapped), from the tables.
fn class_of(addr: IpAddr) -> Scope {
    let within = |blocks: &[AddressBlock]| blocks.iter().any(|b| b.contains(addr));
    if within(&LOOPBACK) {
        Scope::Loopback
    } else if within(&LINK_LOCAL) {
        Scope::LinkLocal
    } else if within(&PRIVATE) {
        Scope::Private
    } else {
        Scope::Public
    }
}

/// A block of addresses of one family: an address is in it when its bits under `mask`
/// equal `bits`. A network (`fe80::/10`) is a block whose mask is a prefix; multicast
/// scopes (`ffX2::/16` whatever the flags nibble `X`) need a mask with a hole.
///
/// The tables [`LOOPBACK`], [`LINK_LOCAL`] and [`PRIVATE`] are what [`classify`] decides
/// by, exported so that other renderings of the same classes (the rules' SQL) are built
/// from them and cannot drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressBlock {
    /// IPv4 addresses, as 32-bit numbers.
    V4 {
        /// The bits an address must have under `mask`.
        bits: u32,
        /// Which bits are compared.
        mask: u32,
    },
    /// IPv6 addresses, as 128-bit numbers.
    V6 {
        /// The bits an address must have under `mask`.
        bits: u128,
        /// Which bits are compared.
        mask: u128,
    },
}

impl AddressBlock {
    /// The IPv4 network `a.b.c.d/prefix_len` (`prefix_len` at most 32).
    pub const fn v4(octets: [u8; 4], prefix_len: u32) -> AddressBlock {
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len)
        };
        AddressBlock::V4 {
            bits: u32::from_be_bytes(octets) & mask,
            mask,
        }
    }

    /// The IPv6 network whose first 16-bit group is `first_group` and whose other
    /// groups are zero, `/prefix_len` (at least 1, at most 128).
    pub const fn v6(first_group: u16, prefix_len: u32) -> AddressBlock {
        let mask = u128::MAX << (128 - prefix_len);
        AddressBlock::V6 {
            bits: ((first_group as u128) << 112) & mask,
            mask,
        }
    }

    /// IPv6 multicast of scope `scope` (the fourth hex digit: 1 interface-local,
    /// 2 link-local, 5 site-local, 8 organisation-local), whatever its flags.
    pub const fn v6_multicast(scope: u8) -> AddressBlock {
        AddressBlock::V6 {
            bits: (0xff00 | (scope as u128 & 0xf)) << 112,
            mask: 0xff0f << 112,
        }
    }

    /// True when `addr` is of the block's family and in it. IPv4-mapped IPv6 addresses
    /// are IPv6 here: [`classify`] unmaps them first.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (*self, addr) {
            (AddressBlock::V4 { bits, mask }, IpAddr::V4(a)) => u32::from(a) & mask == bits,
            (AddressBlock::V6 { bits, mask }, IpAddr::V6(a)) => u128::from(a) & mask == bits,
            _ => false,
        }
    }
}

/// [`Scope::Loopback`]: 127.0.0.0/8 and ::1.
pub const LOOPBACK: [AddressBlock; 2] = [
    AddressBlock::v4([127, 0, 0, 0], 8),
    AddressBlock::V6 {
        bits: 1,
        mask: u128::MAX,
    },
];

/// [`Scope::LinkLocal`]: 169.254.0.0/16, 224.0.0.0/24 (link-local multicast),
/// fe80::/10, and IPv6 interface- and link-local multicast (`ffX1::/16`, `ffX2::/16`).
pub const LINK_LOCAL: [AddressBlock; 5] = [
    AddressBlock::v4([169, 254, 0, 0], 16),
    AddressBlock::v4([224, 0, 0, 0], 24),
    AddressBlock::v6(0xfe80, 10),
    AddressBlock::v6_multicast(2),
    AddressBlock::v6_multicast(1),
];

/// [`Scope::Private`]: RFC 1918, 100.64.0.0/10 (shared address space), 239.0.0.0/8
/// (administratively scoped multicast), fc00::/7, fec0::/10 (deprecated site-local), and
/// IPv6 site- and organisation-local multicast (`ffX5::/16`, `ffX8::/16`).
pub const PRIVATE: [AddressBlock; 9] = [
    AddressBlock::v4([10, 0, 0, 0], 8),
    AddressBlock::v4([172, 16, 0, 0], 12),
    AddressBlock::v4([192, 168, 0, 0], 16),
    AddressBlock::v4([100, 64, 0, 0], 10),
    AddressBlock::v4([239, 0, 0, 0], 8),
    AddressBlock::v6(0xfc00, 7),
    AddressBlock::v6(0xfec0, 10),
    AddressBlock::v6_multicast(5),
    AddressBlock::v6_multicast(8),
];

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
            ("febf::1", Scope::LinkLocal),
            ("fec0::1", Scope::Private),
            ("ff12::1", Scope::LinkLocal),
            ("ff01::1", Scope::LinkLocal),
            ("ff05::1:3", Scope::Private),
            ("ff0e::1", Scope::Public),
            ("224.0.1.1", Scope::Public),
            ("239.1.2.3", Scope::Private),
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

        /// The tables classify as the standard library and the address bits say.
        #[test]
        fn tables_agree_with_an_independent_oracle(a in any::<u32>(), b in any::<u128>(), g in any::<u16>()) {
            let v4 = Ipv4Addr::from(a);
            let o = v4.octets();
            let want4 = if v4.is_unspecified() {
                Scope::Wildcard
            } else if v4.is_loopback() {
                Scope::Loopback
            } else if v4.is_link_local() || (o[0] == 224 && o[1] == 0 && o[2] == 0) {
                Scope::LinkLocal
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) || o[0] == 239 {
                Scope::Private
            } else {
                Scope::Public
            };
            prop_assert_eq!(classify(IpAddr::V4(v4)), want4);
            // Random IPv6 addresses rarely hit a block: the first group is drawn alone too.
            for n in [b, (u128::from(g) << 112) | (b >> 16), u128::from(g) << 112, 1] {
                let v6 = Ipv6Addr::from(n);
                if v6.to_ipv4_mapped().is_some() {
                    continue;
                }
                let s = v6.segments();
                let want6 = if v6.is_unspecified() {
                    Scope::Wildcard
                } else if v6.is_loopback() {
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
                };
                prop_assert_eq!(classify(IpAddr::V6(v6)), want6, "{}", v6);
            }
        }

        #[test]
        fn mapped_v6_classifies_as_v4(a in any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), classify(IpAddr::V4(v4)));
        }
    }
}
