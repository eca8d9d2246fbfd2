//! Conversions between the domain and the `portolan.v1` protocol.
//!
//! Domain → wire is infallible. Wire → domain validates everything that comes from the
//! network (address lengths, port ranges, enum values, string lengths) and fails with a
//! [`WireError`] that names the field. Single items (sockets, flows, processes, host facts,
//! enums) convert here; whole inventories, snapshot parts and deltas in `wire/snapshot.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portolan_proto::v1 as pb;

use crate::flow::{Direction, Flow, FlowKey};
use crate::host::{HostState, InterfaceAddress, ScanStats};
use crate::process::Process;
use crate::scope::Scope;
use crate::socket::{Attribution, Protocol, Socket, SocketKey, SocketState};

mod snapshot;

pub use self::snapshot::{
    AssemblyError, EncodedInventory, SnapshotAssembly, delta_from_wire, delta_to_wire,
    process_index, snapshot_parts,
};

/// Longest string accepted in any field (command lines are the longest legitimate ones).
pub const MAX_STRING_BYTES: usize = 8192;

/// A message from the network that does not describe a valid inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// An address is neither 4 nor 16 bytes.
    #[error("`{field}` is {len} bytes; an address is 4 (IPv4) or 16 (IPv6) bytes")]
    AddressLength {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A port is over 65535.
    #[error("`{field}` is {value}, over 65535")]
    Port {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// An enum field holds an unknown or unspecified value.
    #[error("`{field}` holds {value}, which is not a valid value")]
    Enum {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i32,
    },
    /// A string is longer than its limit ([`MAX_STRING_BYTES`], [`MAX_NAME_BYTES`]).
    #[error("`{field}` is {len} bytes, over the limit of {limit}")]
    StringTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A flow counts no connection.
    #[error("flow `{0}` counts 0 connections; a flow holds at least one")]
    EmptyFlow(String),
    /// The same socket or flow appears twice.
    #[error("`{0}` appears twice in one message")]
    Duplicate(String),
    /// The bytes are not a protobuf message of the expected type.
    #[error("cannot decode the message: {0}")]
    Decode(String),
}

fn addr_to_wire(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn addr_from_wire(field: &'static str, bytes: &[u8]) -> Result<IpAddr, WireError> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        Err(WireError::AddressLength {
            field,
            len: bytes.len(),
        })
    }
}

fn port_from_wire(field: &'static str, value: u32) -> Result<u16, WireError> {
    u16::try_from(value).map_err(|_| WireError::Port { field, value })
}

fn string_from_wire(field: &'static str, s: String) -> Result<String, WireError> {
    string_within(field, s, MAX_STRING_BYTES)
}

/// Longest pod UID, pod name or pod namespace accepted (Kubernetes names are at most 253
/// bytes).
pub const MAX_NAME_BYTES: usize = 253;

/// A Kubernetes name or UID: at most [`MAX_NAME_BYTES`].
fn short_string_from_wire(field: &'static str, s: String) -> Result<String, WireError> {
    string_within(field, s, MAX_NAME_BYTES)
}

fn string_within(field: &'static str, s: String, limit: usize) -> Result<String, WireError> {
    if s.len() > limit {
        return Err(WireError::StringTooLong {
            field,
            len: s.len(),
            limit,
        });
    }
    Ok(s)
}

impl From<Protocol> for pb::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
            Protocol::Raw => pb::Protocol::Raw,
            Protocol::Unix => pb::Protocol::Unix,
            Protocol::Sctp => pb::Protocol::Sctp,
        }
    }
}

/// Decodes a protocol; unspecified or unknown values are an error naming `protocol`.
pub fn protocol_from_wire(value: i32) -> Result<Protocol, WireError> {
    match pb::Protocol::try_from(value) {
        Ok(pb::Protocol::Tcp) => Ok(Protocol::Tcp),
        Ok(pb::Protocol::Udp) => Ok(Protocol::Udp),
        Ok(pb::Protocol::Raw) => Ok(Protocol::Raw),
        Ok(pb::Protocol::Unix) => Ok(Protocol::Unix),
        Ok(pb::Protocol::Sctp) => Ok(Protocol::Sctp),
        _ => Err(WireError::Enum {
            field: "protocol",
            value,
        }),
    }
}

impl From<SocketState> for pb::SocketState {
    fn from(s: SocketState) -> Self {
        match s {
            SocketState::Established => pb::SocketState::Established,
            SocketState::SynSent => pb::SocketState::SynSent,
            SocketState::SynRecv => pb::SocketState::SynRecv,
            SocketState::FinWait1 => pb::SocketState::FinWait1,
            SocketState::FinWait2 => pb::SocketState::FinWait2,
            SocketState::TimeWait => pb::SocketState::TimeWait,
            SocketState::Close => pb::SocketState::Close,
            SocketState::CloseWait => pb::SocketState::CloseWait,
            SocketState::LastAck => pb::SocketState::LastAck,
            SocketState::Listen => pb::SocketState::Listen,
            SocketState::Closing => pb::SocketState::Closing,
        }
    }
}

fn state_from_wire(value: i32) -> Result<SocketState, WireError> {
    Ok(match pb::SocketState::try_from(value) {
        Ok(pb::SocketState::Established) => SocketState::Established,
        Ok(pb::SocketState::SynSent) => SocketState::SynSent,
        Ok(pb::SocketState::SynRecv) => SocketState::SynRecv,
        Ok(pb::SocketState::FinWait1) => SocketState::FinWait1,
        Ok(pb::SocketState::FinWait2) => SocketState::FinWait2,
        Ok(pb::SocketState::TimeWait) => SocketState::TimeWait,
        Ok(pb::SocketState::Close) => SocketState::Close,
        Ok(pb::SocketState::CloseWait) => SocketState::CloseWait,
        Ok(pb::SocketState::LastAck) => SocketState::LastAck,
        Ok(pb::SocketState::Listen) => SocketState::Listen,
        Ok(pb::SocketState::Closing) => SocketState::Closing,
        _ => {
            return Err(WireError::Enum {
                field: "state",
                value,
            });
        }
    })
}

impl From<Scope> for pb::Scope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Loopback => pb::Scope::Loopback,
            Scope::LinkLocal => pb::Scope::LinkLocal,
            Scope::Private => pb::Scope::Private,
            Scope::Public => pb::Scope::Public,
            Scope::Wildcard => pb::Scope::Wildcard,
        }
    }
}

/// Decodes a scope; unspecified or unknown values are an error naming `field`.
pub fn scope_from_wire(field: &'static str, value: i32) -> Result<Scope, WireError> {
    Ok(match pb::Scope::try_from(value) {
        Ok(pb::Scope::Loopback) => Scope::Loopback,
        Ok(pb::Scope::LinkLocal) => Scope::LinkLocal,
        Ok(pb::Scope::Private) => Scope::Private,
        Ok(pb::Scope::Public) => Scope::Public,
        Ok(pb::Scope::Wildcard) => Scope::Wildcard,
        _ => return Err(WireError::Enum { field, value }),
    })
}

impl From<Attribution> for pb::Attribution {
    fn from(a: Attribution) -> Self {
        match a {
            Attribution::Owned => pb::Attribution::Owned,
            Attribution::Kernel => pb::Attribution::Kernel,
            Attribution::NoPermission => pb::Attribution::NoPermission,
            Attribution::ProcessGone => pb::Attribution::ProcessGone,
            Attribution::Unknown => pb::Attribution::Unknown,
        }
    }
}

fn attribution_from_wire(value: i32) -> Result<Attribution, WireError> {
    Ok(match pb::Attribution::try_from(value) {
        Ok(pb::Attribution::Owned) => Attribution::Owned,
        Ok(pb::Attribution::Kernel) => Attribution::Kernel,
        Ok(pb::Attribution::NoPermission) => Attribution::NoPermission,
        Ok(pb::Attribution::ProcessGone) => Attribution::ProcessGone,
        Ok(pb::Attribution::Unknown) => Attribution::Unknown,
        _ => {
            return Err(WireError::Enum {
                field: "attribution",
                value,
            });
        }
    })
}

impl From<&Socket> for pb::Socket {
    fn from(s: &Socket) -> Self {
        pb::Socket {
            protocol: pb::Protocol::from(s.key.protocol) as i32,
            local_address: addr_to_wire(s.key.local_address),
            local_port: u32::from(s.key.local_port),
            remote_address: addr_to_wire(s.key.remote_address),
            remote_port: u32::from(s.key.remote_port),
            state: pb::SocketState::from(s.state) as i32,
            inode: s.key.inode,
            uid: s.uid,
            pids: s.pids.clone(),
            attribution: pb::Attribution::from(s.attribution) as i32,
            scope: pb::Scope::from(s.scope) as i32,
            exposure: pb::Scope::from(s.exposure) as i32,
            netns_inode: s.key.netns,
            path: s.path.clone(),
        }
    }
}

impl TryFrom<pb::Socket> for Socket {
    type Error = WireError;

    fn try_from(s: pb::Socket) -> Result<Self, WireError> {
        let mut pids = s.pids;
        pids.sort_unstable();
        pids.dedup();
        Ok(Socket {
            key: SocketKey {
                protocol: protocol_from_wire(s.protocol)?,
                local_address: addr_from_wire("local_address", &s.local_address)?,
                local_port: port_from_wire("local_port", s.local_port)?,
                remote_address: addr_from_wire("remote_address", &s.remote_address)?,
                remote_port: port_from_wire("remote_port", s.remote_port)?,
                inode: s.inode,
                netns: s.netns_inode,
            },
            state: state_from_wire(s.state)?,
            uid: s.uid,
            pids,
            attribution: attribution_from_wire(s.attribution)?,
            scope: scope_from_wire("scope", s.scope)?,
            exposure: scope_from_wire("exposure", s.exposure)?,
            path: string_from_wire("path", s.path)?,
        })
    }
}

impl From<&Flow> for pb::Flow {
    fn from(f: &Flow) -> Self {
        let k = &f.key;
        pb::Flow {
            protocol: pb::Protocol::from(k.protocol) as i32,
            direction: match k.direction {
                Direction::Inbound => pb::FlowDirection::Inbound,
                Direction::Outbound => pb::FlowDirection::Outbound,
            } as i32,
            local_address: addr_to_wire(k.local_address),
            remote_address: addr_to_wire(k.remote_address),
            service_port: u32::from(k.service_port),
            state: pb::SocketState::from(k.state) as i32,
            pid: k.pid,
            connections: f.connections,
            netns_inode: k.netns,
        }
    }
}

impl TryFrom<pb::Flow> for Flow {
    type Error = WireError;

    fn try_from(f: pb::Flow) -> Result<Self, WireError> {
        let direction = match pb::FlowDirection::try_from(f.direction) {
            Ok(pb::FlowDirection::Inbound) => Direction::Inbound,
            Ok(pb::FlowDirection::Outbound) => Direction::Outbound,
            _ => {
                return Err(WireError::Enum {
                    field: "direction",
                    value: f.direction,
                });
            }
        };
        let key = FlowKey {
            protocol: protocol_from_wire(f.protocol)?,
            direction,
            local_address: addr_from_wire("local_address", &f.local_address)?,
            remote_address: addr_from_wire("remote_address", &f.remote_address)?,
            service_port: port_from_wire("service_port", f.service_port)?,
            state: state_from_wire(f.state)?,
            pid: f.pid,
            netns: f.netns_inode,
        };
        if f.connections == 0 {
            return Err(WireError::EmptyFlow(key.to_string()));
        }
        Ok(Flow {
            key,
            connections: f.connections,
        })
    }
}

impl From<&Process> for pb::Process {
    fn from(p: &Process) -> Self {
        pb::Process {
            pid: p.pid,
            name: p.name.clone(),
            executable: p.executable.clone(),
            command_line: p.command_line.clone(),
            uid: p.uid,
            user: p.user.clone(),
            systemd_unit: p.systemd_unit.clone(),
            container_id: p.container_id.clone(),
            cgroup: p.cgroup.clone(),
            pod_uid: p.pod_uid.clone(),
            pod_name: p.pod_name.clone(),
            pod_namespace: p.pod_namespace.clone(),
        }
    }
}

impl TryFrom<pb::Process> for Process {
    type Error = WireError;

    fn try_from(p: pb::Process) -> Result<Self, WireError> {
        Ok(Process {
            pid: p.pid,
            name: string_from_wire("process.name", p.name)?,
            executable: string_from_wire("process.executable", p.executable)?,
            command_line: string_from_wire("process.command_line", p.command_line)?,
            uid: p.uid,
            user: string_from_wire("process.user", p.user)?,
            systemd_unit: string_from_wire("process.systemd_unit", p.systemd_unit)?,
            container_id: string_from_wire("process.container_id", p.container_id)?,
            cgroup: string_from_wire("process.cgroup", p.cgroup)?,
            pod_uid: short_string_from_wire("process.pod_uid", p.pod_uid)?,
            pod_name: short_string_from_wire("process.pod_name", p.pod_name)?,
            pod_namespace: short_string_from_wire("process.pod_namespace", p.pod_namespace)?,
        })
    }
}

impl From<&HostState> for pb::HostState {
    fn from(h: &HostState) -> Self {
        let (min, max) = h.ephemeral_ports.unwrap_or((0, 0));
        pb::HostState {
            interfaces: h
                .interfaces
                .iter()
                .map(|i| pb::InterfaceAddress {
                    interface: i.interface.clone(),
                    address: addr_to_wire(i.address),
                    prefix_len: u32::from(i.prefix_len),
                    netns_inode: i.netns,
                })
                .collect(),
            ephemeral_port_min: u32::from(min),
            ephemeral_port_max: u32::from(max),
        }
    }
}

impl TryFrom<pb::HostState> for HostState {
    type Error = WireError;

    fn try_from(h: pb::HostState) -> Result<Self, WireError> {
        let mut interfaces = h
            .interfaces
            .into_iter()
            .map(|i| {
                Ok(InterfaceAddress {
                    interface: string_from_wire("interface", i.interface)?,
                    address: addr_from_wire("interface.address", &i.address)?,
                    prefix_len: u8::try_from(i.prefix_len.min(128)).unwrap_or(128),
                    netns: i.netns_inode,
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        interfaces.sort();
        let min = port_from_wire("ephemeral_port_min", h.ephemeral_port_min)?;
        let max = port_from_wire("ephemeral_port_max", h.ephemeral_port_max)?;
        Ok(HostState {
            interfaces,
            ephemeral_ports: (min != 0 || max != 0).then_some((min, max)),
        })
    }
}

impl From<&ScanStats> for pb::ScanStats {
    fn from(s: &ScanStats) -> Self {
        pb::ScanStats {
            sockets: s.sockets,
            listeners: s.listeners,
            connections: s.connections,
            unattributed_no_permission: s.unattributed_no_permission,
            unattributed_process_gone: s.unattributed_process_gone,
            unattributed_unknown: s.unattributed_unknown,
            kernel_owned: s.kernel_owned,
            scan_duration_micros: s.scan_duration_micros,
            state_counts: s
                .state_counts
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            namespaces: s.namespaces,
            namespaces_from_procfs: s.namespaces_from_procfs,
        }
    }
}

impl From<pb::ScanStats> for ScanStats {
    fn from(s: pb::ScanStats) -> Self {
        ScanStats {
            sockets: s.sockets,
            listeners: s.listeners,
            connections: s.connections,
            unattributed_no_permission: s.unattributed_no_permission,
            unattributed_process_gone: s.unattributed_process_gone,
            unattributed_unknown: s.unattributed_unknown,
            kernel_owned: s.kernel_owned,
            scan_duration_micros: s.scan_duration_micros,
            state_counts: s
                .state_counts
                .into_iter()
                .filter(|(k, _)| k.len() <= 32)
                .take(32)
                .collect(),
            namespaces: s.namespaces,
            namespaces_from_procfs: s.namespaces_from_procfs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;

    fn listener(port: u16, pid: u32) -> Socket {
        Socket {
            key: SocketKey {
                protocol: Protocol::Tcp,
                local_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                local_port: port,
                remote_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                remote_port: 0,
                inode: u64::from(port),
                netns: 0,
            },
            state: SocketState::Listen,
            uid: 0,
            pids: vec![pid],
            attribution: Attribution::Owned,
            scope: Scope::Wildcard,
            exposure: Scope::Private,
            path: String::new(),
        }
    }

    #[test]
    fn every_protocol_and_a_unix_path_round_trip() {
        for protocol in Protocol::ALL {
            let mut s = listener(80, 1);
            s.key.protocol = protocol;
            if protocol == Protocol::Unix {
                s.path = "@/tmp/.X11-unix/X0".into();
            }
            let back = Socket::try_from(pb::Socket::from(&s)).expect("valid socket");
            assert_eq!(back, s);
        }
        let mut long = pb::Socket::from(&listener(80, 1));
        long.path = "x".repeat(MAX_STRING_BYTES + 1);
        assert!(matches!(
            Socket::try_from(long),
            Err(WireError::StringTooLong { field: "path", .. })
        ));
    }

    #[test]
    fn encoded_inventories_decode_to_themselves() {
        for n in [0, 1, 100] {
            let inv = inventory(n);
            let encoded = EncodedInventory::encode(&inv);
            assert!(!encoded.is_empty());
            assert_eq!(encoded.decode().expect("decodes"), inv);
        }
        let garbage = EncodedInventory {
            bytes: vec![0xff, 0xff, 0xff],
        };
        assert!(garbage.decode().is_err());
    }

    fn inventory(n: u16) -> Inventory {
        let mut inv = Inventory::default();
        inv.host.ephemeral_ports = Some((32768, 60999));
        for port in 1..=n {
            let s = listener(port, u32::from(port % 7) + 1);
            inv.sockets.insert(s.key, s);
        }
        for pid in 1..=7 {
            inv.processes.insert(
                pid,
                Process {
                    pid,
                    name: format!("p{pid}"),
                    ..Process::default()
                },
            );
        }
        inv.retain_referenced_processes();
        inv
    }

    #[test]
    fn snapshot_round_trips_through_parts() {
        for n in [0u16, 1, 9, 10, 11, 95] {
            let inv = inventory(n);
            let parts = snapshot_parts(&inv, 7, 0, &ScanStats::default(), 10);
            assert_eq!(parts.len(), (usize::from(n).div_ceil(10)).max(1));
            let mut asm = SnapshotAssembly::default();
            let mut done = None;
            for p in parts {
                done = asm.push(p, 1000).expect("valid part");
            }
            assert_eq!(done, Some((7, inv)));
        }
    }

    #[test]
    fn bad_address_is_refused_with_the_field_name() {
        let mut s = pb::Socket::from(&listener(80, 1));
        s.local_address = vec![1, 2, 3];
        let err = Socket::try_from(s).expect_err("3-byte address");
        assert_eq!(
            err.to_string(),
            "`local_address` is 3 bytes; an address is 4 (IPv4) or 16 (IPv6) bytes"
        );
    }

    #[test]
    fn unspecified_enum_is_refused() {
        let mut s = pb::Socket::from(&listener(80, 1));
        s.protocol = 0;
        assert!(matches!(
            Socket::try_from(s),
            Err(WireError::Enum {
                field: "protocol",
                ..
            })
        ));
    }

    #[test]
    fn oversized_snapshot_is_refused() {
        let inv = inventory(30);
        let mut asm = SnapshotAssembly::default();
        let mut result = Ok(None);
        for p in snapshot_parts(&inv, 1, 0, &ScanStats::default(), 10) {
            result = asm.push(p, 25);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(AssemblyError::TooLarge(25)));
    }
}
