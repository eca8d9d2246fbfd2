//! Kernel sockets.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::scope::Scope;

/// Transport protocol of a socket. The address family is carried by the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Lowercase name: `tcp`, `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Socket state as the kernel names it. UDP sockets are [`SocketState::Listen`] when
/// bound and unconnected, [`SocketState::Established`] when connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum SocketState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
}

impl SocketState {
    /// All states, in kernel order.
    pub const ALL: [SocketState; 11] = [
        SocketState::Established,
        SocketState::SynSent,
        SocketState::SynRecv,
        SocketState::FinWait1,
        SocketState::FinWait2,
        SocketState::TimeWait,
        SocketState::Close,
        SocketState::CloseWait,
        SocketState::LastAck,
        SocketState::Listen,
        SocketState::Closing,
    ];

    /// The name `ss` prints (`ESTAB` is spelled out as `ESTABLISHED`).
    pub fn as_str(self) -> &'static str {
        match self {
            SocketState::Established => "ESTABLISHED",
            SocketState::SynSent => "SYN_SENT",
            SocketState::SynRecv => "SYN_RECV",
            SocketState::FinWait1 => "FIN_WAIT1",
            SocketState::FinWait2 => "FIN_WAIT2",
            SocketState::TimeWait => "TIME_WAIT",
            SocketState::Close => "CLOSE",
            SocketState::CloseWait => "CLOSE_WAIT",
            SocketState::LastAck => "LAST_ACK",
            SocketState::Listen => "LISTEN",
            SocketState::Closing => "CLOSING",
        }
    }
}

impl fmt::Display for SocketState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a socket has, or lacks, an owning process. Missing data is never silent: a socket
/// without owner says why, so that it is not mistaken for a socket nobody holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// Owner(s) found.
    Owned,
    /// Held by the kernel without a process (TIME_WAIT, orphaned sockets).
    Kernel,
    /// Some `/proc/<pid>/fd` could not be read: the owner may be among them.
    NoPermission,
    /// The owner exited between the socket listing and the process walk.
    ProcessGone,
    /// No owner found although every process was readable.
    Unknown,
}

impl Attribution {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Owned => "owned",
            Attribution::Kernel => "kernel",
            Attribution::NoPermission => "no_permission",
            Attribution::ProcessGone => "process_gone",
            Attribution::Unknown => "unknown",
        }
    }
}

/// The stable identity of a socket: what stays the same for as long as the socket lives.
/// Two sockets with equal keys are the same kernel socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SocketKey {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Local (bind) address.
    pub local_address: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address; unspecified for listeners.
    pub remote_address: IpAddr,
    /// Remote port; 0 for listeners.
    pub remote_port: u16,
    /// Socket inode (0 when the kernel reports none).
    pub inode: u64,
    /// Network namespace the socket lives in: the inode of its `/proc/<pid>/ns/net`, or
    /// [`HOST_NETNS`] for the agent's own namespace (the host's, as before namespaces
    /// were inventoried). Two pods may both listen on `0.0.0.0:80`: the namespace tells
    /// them apart.
    pub netns: u64,
}

/// The namespace id of the agent's own network namespace (the host's).
pub const HOST_NETNS: u64 = 0;

impl fmt::Display for SocketKey {
    /// `tcp 10.0.0.1:5432 0.0.0.0:0 #12345`, IPv6 addresses in brackets, followed by
    /// ` ns=<inode>` for a socket outside the host's namespace. Stable: used as a key in
    /// storage (a host-namespace socket keeps the key it had before namespaces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} #{}",
            self.protocol,
            Endpoint(self.local_address, self.local_port),
            Endpoint(self.remote_address, self.remote_port),
            self.inode
        )?;
        if self.netns != HOST_NETNS {
            write!(f, " ns={}", self.netns)?;
        }
        Ok(())
    }
}

/// An address and port printed as `ss` does: `10.0.0.1:80`, `[::1]:80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub IpAddr, pub u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

/// One kernel socket that is kept individually in the inventory: a listener (TCP LISTEN,
/// or a bound unconnected UDP socket) or another unconnected socket. Connected sockets
/// are folded into [`crate::Flow`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Socket {
    /// Identity.
    pub key: SocketKey,
    /// Current state.
    pub state: SocketState,
    /// Owner uid as the kernel reports it.
    pub uid: u32,
    /// Owning processes, sorted and without duplicates.
    pub pids: Vec<u32>,
    /// Why the owners are what they are.
    pub attribution: Attribution,
    /// Scope of the bind address.
    pub scope: Scope,
    /// Widest scope the socket is reachable on (see [`crate::exposure`]).
    pub exposure: Scope,
}

impl Socket {
    /// True for TCP LISTEN sockets and bound, unconnected UDP sockets.
    pub fn is_listener(&self) -> bool {
        match self.key.protocol {
            Protocol::Tcp => self.state == SocketState::Listen,
            Protocol::Udp => self.key.remote_port == 0,
        }
    }
}
