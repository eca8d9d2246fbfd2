//! Kernel sockets.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::scope::Scope;

/// Protocol of a socket. The address family is carried by the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// A raw IP socket: its ports carry the IP protocol number (1 for ICMP), as `ss -w`
    /// prints it. Unconnected, it is [`SocketState::Listen`] like a bound UDP socket.
    Raw,
    /// A Unix domain socket (only listening ones are inventoried). Its addresses are
    /// [`UNIX_ADDRESS`] and its ports 0; [`Socket::path`] and the inode identify it.
    Unix,
    /// SCTP: endpoints ([`SocketState::Listen`] when listening) and associations.
    Sctp,
}

/// The address a Unix socket's key carries in place of an IP address (`0.0.0.0`). Its
/// scope and exposure are not derived from it: a Unix socket is host-local
/// ([`Scope::Loopback`]).
pub const UNIX_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 5] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Raw,
        Protocol::Unix,
        Protocol::Sctp,
    ];

    /// Lowercase name: `tcp`, `udp`, `raw`, `unix`, `sctp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Raw => "raw",
            Protocol::Unix => "unix",
            Protocol::Sctp => "sctp",
        }
    }

    /// The protocol named `name` ([`Protocol::as_str`]), `None` for any other name
    /// (`FromStr` says which names are accepted).
    pub fn from_name(name: &str) -> Option<Protocol> {
        crate::names::parse_name(name).ok()
    }
}

crate::named_enum!(Protocol, "protocol");

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

crate::named_enum!(SocketState, "socket state");

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
    /// Every attribution.
    pub const ALL: [Attribution; 5] = [
        Attribution::Owned,
        Attribution::Kernel,
        Attribution::NoPermission,
        Attribution::ProcessGone,
        Attribution::Unknown,
    ];

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

crate::named_enum!(Attribution, "attribution");

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

impl SocketKey {
    /// The scope of the bind address and the widest scope the socket is reachable on,
    /// against the interfaces of its own namespace ([`crate::exposure_in`]). A Unix
    /// socket is host-local: [`Scope::Loopback`] for both, whatever its key's address.
    pub fn scopes(&self, interfaces: &[crate::InterfaceAddress]) -> (Scope, Scope) {
        if self.protocol == Protocol::Unix {
            return (Scope::Loopback, Scope::Loopback);
        }
        (
            crate::classify(self.local_address),
            crate::exposure_in(self.local_address, self.netns, interfaces),
        )
    }
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
    /// The path of a Unix domain socket, an abstract name with a leading `@` as `ss`
    /// prints it; empty for every other protocol.
    pub path: String,
}

impl Socket {
    /// True for TCP, SCTP and Unix LISTEN sockets, bound unconnected UDP sockets and
    /// unconnected raw sockets.
    pub fn is_listener(&self) -> bool {
        is_listener(&self.key, self.state)
    }
}

/// Whether a socket with `key` in `state` is a listener (see [`Socket::is_listener`]).
pub fn is_listener(key: &SocketKey, state: SocketState) -> bool {
    match key.protocol {
        Protocol::Tcp | Protocol::Sctp | Protocol::Unix => state == SocketState::Listen,
        Protocol::Udp => key.remote_port == 0,
        // A raw socket's ports are its IP protocol: only a peer address says connected.
        Protocol::Raw => key.remote_address.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_name(p.as_str()), Some(p));
        }
        assert_eq!(Protocol::from_name("TCP"), None);
        assert_eq!(Protocol::from_name("icmp"), None);
    }

    #[test]
    fn raw_listens_until_connected() {
        let mut key = SocketKey {
            protocol: Protocol::Raw,
            local_address: UNIX_ADDRESS,
            local_port: 1,
            remote_address: UNIX_ADDRESS,
            remote_port: 0,
            inode: 7,
            netns: HOST_NETNS,
        };
        assert!(is_listener(&key, SocketState::Listen));
        key.remote_address = IpAddr::from([10, 0, 0, 1]);
        assert!(!is_listener(&key, SocketState::Established));
        key.protocol = Protocol::Unix;
        assert!(!is_listener(&key, SocketState::Close));
    }
}
