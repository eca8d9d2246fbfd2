//! Validated rules.

use std::fmt;

use portolan_core::{Protocol, Scope, SocketState};

use crate::kind::{
    DriftParams, EphemeralPer, FlowPolicyParams, NewListenerParams, ScanBy, SharedBy,
    ephemeral_exhaustion, flow_policy, listener, new_listener, peer_drift, port_owner_change, scan,
    shared_port,
};

/// A validated rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    /// The rules, in file order; ids are unique.
    pub rules: Vec<Rule>,
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique id: ASCII letters, digits, `-`, `_` and `.`.
    pub id: String,
    /// How serious a finding is.
    pub severity: Severity,
    /// What the rule is for, for humans.
    pub description: String,
    /// Which hosts the rule looks at.
    pub hosts: HostSelector,
    /// Which sockets the rule looks at (kinds about listeners only).
    pub sockets: SocketPredicate,
    /// What the rule checks, with its parameters.
    pub kind: Kind,
    /// Line of the rule in its file.
    pub line: usize,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// For information.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The name used in rule files and findings.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

portolan_core::named_enum!(Severity, "severity");

/// A glob: `*` matches any run of characters, `?` one character; everything else
/// matches itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob(pub String);

/// Which hosts a rule looks at. Every given part must match; an empty selector matches
/// every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSelector {
    /// Labels the host must have, with a glob on each value.
    pub labels: Vec<(String, Glob)>,
    /// The hostname matches one of these globs (when not empty).
    pub hostname: Vec<Glob>,
    /// The host id is one of these (when not empty).
    pub host_id: Vec<String>,
}

impl HostSelector {
    /// True when it selects every host.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.hostname.is_empty() && self.host_id.is_empty()
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (`>= first`).
    pub last: u16,
}

/// Which sockets a rule looks at. Every given part must match; a list matches when any
/// element does; a glob on processes matches when any owning process matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketPredicate {
    /// Protocols (empty: any).
    pub protocol: Vec<Protocol>,
    /// Local ports (empty: any).
    pub ports: Vec<PortRange>,
    /// Socket states as the kernel names them (`LISTEN`, `ESTABLISHED`, …).
    pub state: Vec<SocketState>,
    /// Scopes: a socket matches when its bind address's scope (`wildcard` for `0.0.0.0`
    /// and `::`) or its exposure (the widest scope it is reachable from) is listed.
    pub exposure: Vec<Scope>,
    /// Process name.
    pub process: Vec<Glob>,
    /// Executable path.
    pub executable: Vec<Glob>,
    /// User name.
    pub user: Vec<Glob>,
    /// systemd unit.
    pub unit: Vec<Glob>,
    /// Container id (`"?*"`: in any container).
    pub container: Vec<Glob>,
    /// Kubernetes pod name (`web-*`), or `namespace/name` when the glob holds a `/`
    /// (`shop/web-*`); `"?*"`: in any pod whose name the agent learned.
    pub pod: Vec<Glob>,
    /// Kubernetes namespace of the pod.
    pub pod_namespace: Vec<Glob>,
    /// Network namespaces by inode; 0 is the agent's own (the host's, written `host`
    /// in rule files).
    pub netns: Vec<u64>,
}

impl SocketPredicate {
    /// True when it matches every socket.
    pub fn is_empty(&self) -> bool {
        *self == SocketPredicate::default()
    }
}

/// What a rule checks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Kind {
    /// `listener`: a matching listener exists. One finding per (host, protocol, address,
    /// port), however many sockets share it.
    Listener,
    /// `shared_port`: several programs, processes or sockets hold one listening port.
    /// Parameters: `distinct` (default `programs`), `min` (default 2).
    SharedPort {
        /// What is counted.
        distinct: SharedBy,
        /// A finding from this many on.
        min: u32,
    },
    /// `ephemeral_exhaustion`: outbound connections (each holds a local port of the
    /// ephemeral range) reach `share` of the host's `ip_local_port_range`, in total or
    /// toward one destination. Parameters: `share` (0 < share <= 1, default 0.8), `per`
    /// (`host` or `destination`, default `host`).
    EphemeralExhaustion {
        /// Fraction of the range.
        share: f64,
        /// In total or per destination.
        per: EphemeralPer,
    },
    /// `peer_drift`: a host listens on a (protocol, port) that most hosts sharing its
    /// value of `label` do not, or lacks one that all (or `common_share` of) its peers
    /// have. Parameters: `label` (required), `rare_share` (default 0.5), `common_share`
    /// (default 1.0), `min_peers` (group size including the host, default 3).
    PeerDrift(DriftParams),
    /// `new_listener`: a listener whose program was first seen within `window`.
    /// Parameters: `window` (default `7d`), `scope` (`host` or `fleet`), `allow` (a list of
    /// socket predicates that are never new).
    NewListener(NewListenerParams),
    /// `scan`: one remote address opened inbound connections to at least `min` distinct
    /// ports of one host (`by: ports`) or to `min` hosts of the fleet (`by: hosts`) within
    /// `window`. Parameters: `by` (required), `min` (required), `window` (default `10m`).
    Scan {
        /// What is counted.
        by: ScanBy,
        /// A finding from this many on.
        min: u32,
        /// Seconds looked back.
        window_secs: u64,
    },
    /// `flow_policy`: servers (the rule's `hosts`) accept connections on the matched
    /// service ports (the rule's `sockets`: protocol, ports, process, executable, user,
    /// unit, container, pod, pod_namespace, netns: of the server's end) only from clients matching `clients`, from `networks`, and (with
    /// `outside: allow`) from anywhere outside the fleet. A client address is joined to
    /// the fleet host that holds it on an interface. One finding per (server, protocol,
    /// port, client host or outside address). Parameters: `clients` (a host selector;
    /// absent: no fleet host, `{}`: every fleet host),
    /// `networks` (CIDRs), `outside` (`deny` or `allow`, default `deny`), `local` (`allow`
    /// or `deny` loopback connections, default `allow`).
    FlowPolicy(FlowPolicyParams),
    /// `port_owner_change`: within `window`, the program owning a listener (its
    /// executable, or its process name when the executable is unknown) went away and
    /// another program now holds the same protocol, address and port. A restart of the
    /// same program is not a change. Parameters: `window` (default `24h`).
    PortOwnerChange {
        /// Seconds looked back.
        window_secs: u64,
    },
}

impl Kind {
    /// The name used in rule files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Listener => listener::NAME,
            Kind::SharedPort { .. } => shared_port::NAME,
            Kind::EphemeralExhaustion { .. } => ephemeral_exhaustion::NAME,
            Kind::PeerDrift(_) => peer_drift::NAME,
            Kind::NewListener(_) => new_listener::NAME,
            Kind::Scan { .. } => scan::NAME,
            Kind::FlowPolicy(_) => flow_policy::NAME,
            Kind::PortOwnerChange { .. } => port_owner_change::NAME,
        }
    }
}

/// An IP network: an address and a prefix length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub address: std::net::IpAddr,
    /// The prefix length (at most 32 for IPv4, 128 for IPv6).
    pub prefix_len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host route); the host bits
    /// of the address must be zero.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let address: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`/{l}` is not a prefix length (0-{max})"))?,
            None => max,
        };
        let cidr = Cidr {
            address,
            prefix_len,
        };
        if cidr.first() != address {
            return Err(format!(
                "`{text}` has host bits set; the network is `{}/{prefix_len}`",
                cidr.first()
            ));
        }
        Ok(cidr)
    }

    /// The first address of the network.
    pub fn first(&self) -> std::net::IpAddr {
        self.bounds().0
    }

    /// The last address of the network.
    pub fn last(&self) -> std::net::IpAddr {
        self.bounds().1
    }

    fn bounds(&self) -> (std::net::IpAddr, std::net::IpAddr) {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        match self.address {
            IpAddr::V4(a) => {
                let host_bits = 32 - u32::from(self.prefix_len);
                let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                let n = u32::from(a);
                (
                    IpAddr::V4(Ipv4Addr::from(n & mask)),
                    IpAddr::V4(Ipv4Addr::from(n | !mask)),
                )
            }
            IpAddr::V6(a) => {
                let host_bits = 128 - u32::from(self.prefix_len);
                let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                let n = u128::from(a);
                (
                    IpAddr::V6(Ipv6Addr::from(n & mask)),
                    IpAddr::V6(Ipv6Addr::from(n | !mask)),
                )
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn networks_parse_with_their_bounds() {
        let n = Cidr::parse("192.168.4.0/22").expect("a network");
        assert_eq!(n.first().to_string(), "192.168.4.0");
        assert_eq!(n.last().to_string(), "192.168.7.255");
        let host = Cidr::parse("203.0.113.9").expect("a host");
        assert_eq!((host.first(), host.last()), (host.address, host.address));
        assert_eq!(
            Cidr::parse("0.0.0.0/0").expect("all").last().to_string(),
            "255.255.255.255"
        );
        assert_eq!(
            Cidr::parse("fd00::/8").expect("v6").last().to_string(),
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert!(
            Cidr::parse("10.0.0.1/8")
                .err()
                .unwrap_or_default()
                .contains("host bits")
        );
        assert!(
            Cidr::parse("10.0.0.0/33")
                .err()
                .unwrap_or_default()
                .contains("prefix length")
        );
        assert!(
            Cidr::parse("ten/8")
                .err()
                .unwrap_or_default()
                .contains("not an IP address")
        );
    }

    proptest! {
        #[test]
        fn an_address_is_inside_the_networks_that_contain_it(a in any::<u32>(), len in 0u8..=32) {
            let addr = std::net::Ipv4Addr::from(a);
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            let net = Cidr::parse(&format!("{}/{len}", std::net::Ipv4Addr::from(a & mask))).expect("a network");
            let (std::net::IpAddr::V4(first), std::net::IpAddr::V4(last)) = (net.first(), net.last()) else {
                panic!("v4 bounds");
            };
            prop_assert!(first <= addr && addr <= last);
            prop_assert_eq!(u64::from(u32::from(last)) - u64::from(u32::from(first)) + 1, 1u64 << (32 - u32::from(len)));
        }
    }
}
