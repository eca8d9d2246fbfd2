//! Host facts and scan statistics.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

/// One address of one network interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct InterfaceAddress {
    /// Interface name (`eth0`).
    pub interface: String,
    /// The address.
    pub address: IpAddr,
    /// Prefix length of the interface's network.
    pub prefix_len: u8,
    /// Network namespace the interface belongs to ([`crate::socket::HOST_NETNS`] for the
    /// agent's own). Wildcard binds are scoped by the interfaces of their own namespace.
    pub netns: u64,
}

/// Host facts that change rarely and travel with snapshots, and with deltas only when
/// they changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HostState {
    /// Interface addresses of every inventoried namespace, sorted.
    pub interfaces: Vec<InterfaceAddress>,
    /// `net.ipv4.ip_local_port_range`, `None` when unknown.
    pub ephemeral_ports: Option<(u16, u16)>,
}

/// What a scan saw and what it could not attribute. Informational: not part of the
/// inventory's identity, not diffed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ScanStats {
    /// Every socket the kernel listed.
    pub sockets: u32,
    /// Listeners among them.
    pub listeners: u32,
    /// Connected sockets among them.
    pub connections: u32,
    /// Sockets without owner because some `/proc/<pid>/fd` was unreadable.
    pub unattributed_no_permission: u32,
    /// Sockets whose owner exited during the scan.
    pub unattributed_process_gone: u32,
    /// Sockets without owner for no known reason.
    pub unattributed_unknown: u32,
    /// Sockets the kernel holds without a process (TIME_WAIT, orphans).
    pub kernel_owned: u32,
    /// How long the scan took, in microseconds.
    pub scan_duration_micros: u64,
    /// Sockets per TCP state name; UDP sockets counted under `UDP`.
    pub state_counts: BTreeMap<String, u32>,
    /// Network namespaces inventoried (1 when only the agent's own).
    pub namespaces: u32,
    /// Among them, namespaces read from `/proc/<pid>/net/*` because the agent could not
    /// enter them (no CAP_SYS_ADMIN): without interface addresses, wildcard binds there
    /// count as public.
    pub namespaces_from_procfs: u32,
}
