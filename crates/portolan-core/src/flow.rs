//! Flows: connected sockets folded by endpoint.
//!
//! A busy server holds thousands of short-lived connections whose only difference is the
//! client's ephemeral port. Sending each one would flood the stream and the history with
//! noise; instead every connected socket is counted in the flow of its endpoints: (local
//! address, remote address, service port, protocol, state, owning process). The count is
//! exact at scan time, so the inventory still equals what the kernel holds, folded.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::socket::{Protocol, Socket, SocketState};

/// Which side of the connections this host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This host accepted the connections: the service port is local.
    Inbound,
    /// This host opened the connections: the service port is remote.
    Outbound,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    /// `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

crate::named_enum!(Direction, "direction");

/// The identity of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FlowKey {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Which side this host is.
    pub direction: Direction,
    /// This host's address.
    pub local_address: IpAddr,
    /// The peer's address.
    pub remote_address: IpAddr,
    /// The server's port: local for inbound flows, remote for outbound flows.
    pub service_port: u16,
    /// State of the connections counted.
    pub state: SocketState,
    /// Owning process (the lowest pid when several share the sockets); 0 when the kernel
    /// holds them without a process.
    pub pid: u32,
    /// Network namespace of this host's end ([`crate::socket::HOST_NETNS`] for the
    /// agent's own).
    pub netns: u64,
}

impl fmt::Display for FlowKey {
    /// Stable text form, used as a storage key; ` ns=<inode>` follows for a flow outside
    /// the host's namespace.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} pid={}",
            self.protocol,
            self.direction,
            self.local_address,
            self.remote_address,
            self.service_port,
            self.state,
            self.pid
        )?;
        if self.netns != crate::socket::HOST_NETNS {
            write!(f, " ns={}", self.netns)?;
        }
        Ok(())
    }
}

/// A flow and how many connections it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Identity.
    pub key: FlowKey,
    /// Connections in the flow at scan time (at least 1).
    pub connections: u32,
}

/// Folds connected sockets into flows. `listeners` tells which local (namespace,
/// protocol, address, port) accept connections: a connected socket on such a port of its
/// own namespace is inbound, any other is outbound. A listener on a wildcard address
/// covers every local address of its namespace.
pub fn fold_connections<'a>(
    connected: impl IntoIterator<Item = &'a Socket>,
    listeners: impl IntoIterator<Item = &'a Socket>,
) -> BTreeMap<FlowKey, u32> {
    let listening: HashSet<(u64, Protocol, IpAddr, u16)> = listeners
        .into_iter()
        .map(|s| {
            (
                s.key.netns,
                s.key.protocol,
                canonical(s.key.local_address),
                s.key.local_port,
            )
        })
        .collect();
    let is_listening = |netns: u64, protocol: Protocol, addr: IpAddr, port: u16| {
        let addr = canonical(addr);
        let wildcards: [IpAddr; 2] = [
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        ];
        listening.contains(&(netns, protocol, addr, port))
            || wildcards
                .iter()
                .any(|w| listening.contains(&(netns, protocol, *w, port)))
    };
    let mut flows = BTreeMap::new();
    for socket in connected {
        let k = &socket.key;
        let inbound = is_listening(k.netns, k.protocol, k.local_address, k.local_port);
        let key = FlowKey {
            protocol: k.protocol,
            direction: if inbound {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
            local_address: k.local_address,
            remote_address: k.remote_address,
            service_port: if inbound { k.local_port } else { k.remote_port },
            state: socket.state,
            pid: socket.pids.first().copied().unwrap_or(0),
            netns: k.netns,
        };
        *flows.entry(key).or_insert(0) += 1;
    }
    flows
}

/// IPv4-mapped IPv6 addresses compare equal to the IPv4 address they carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}
