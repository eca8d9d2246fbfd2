//! Validated rules.

use std::fmt;

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

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// `tcp` or `udp` (empty: both).
    pub protocol: Vec<String>,
    /// Local ports (empty: any).
    pub ports: Vec<PortRange>,
    /// Socket states as the kernel names them (`LISTEN`, `ESTABLISHED`, …).
    pub state: Vec<String>,
    /// Scopes: a socket matches when its bind address's scope (`wildcard` for `0.0.0.0`
    /// and `::`) or its exposure (the widest scope it is reachable from) is listed.
    pub exposure: Vec<String>,
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
}

impl Kind {
    /// The name used in rule files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::SharedPort { .. } => "shared_port",
            Kind::EphemeralExhaustion { .. } => "ephemeral_exhaustion",
            Kind::PeerDrift(_) => "peer_drift",
            Kind::NewListener(_) => "new_listener",
            Kind::Scan { .. } => "scan",
        }
    }
}

/// What `shared_port` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedBy {
    /// Distinct executables (forked workers of one program count once).
    Programs,
    /// Distinct pids.
    Processes,
    /// Distinct sockets (inodes).
    Sockets,
}

/// What `ephemeral_exhaustion` sums over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EphemeralPer {
    /// All outbound connections of a host.
    Host,
    /// Outbound connections toward one (protocol, address, port).
    Destination,
}

/// Parameters of `peer_drift`.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftParams {
    /// The label whose value makes peers.
    pub label: String,
    /// A listener is rare when fewer than this share of the other peers have it.
    pub rare_share: f64,
    /// A listener is missing when at least this share of the other peers have it.
    pub common_share: f64,
    /// Groups smaller than this (the host included) are not judged.
    pub min_peers: u32,
}

/// Parameters of `new_listener`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewListenerParams {
    /// Seconds looked back.
    pub window_secs: u64,
    /// New on the host, or new in the whole fleet.
    pub scope: BaselineScope,
    /// Listeners that are never reported.
    pub allow: Vec<SocketPredicate>,
}

/// Where `new_listener` looks for an earlier sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineScope {
    /// The same host.
    Host,
    /// Any host of the fleet.
    Fleet,
}

/// What `scan` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanBy {
    /// Distinct ports of one host.
    Ports,
    /// Distinct hosts.
    Hosts,
}
