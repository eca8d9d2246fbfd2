//! Socket listing through netlink `sock_diag` (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`).
//!
//! Spoken directly with `netlink-sys` and the message types of `netlink-packet-sock-diag`
//! rather than through `netstat2`, because `netstat2` 0.11:
//! - drops the remote address and port of UDP sockets (`UdpSocketInfo` has only the local
//!   end), so a connected UDP socket cannot be told from a bound one;
//! - ends a dump silently when the kernel answers with an error (`udp_diag` not loadable,
//!   a seccomp or LSM refusal), which would look like a host without UDP sockets;
//! - parses every attribute of every socket into an allocated list and reads 8 KiB per
//!   `recv`, where one fixed 64 KiB buffer and the fixed-size header are enough.
//!
//! Its process attribution (`iterate_sockets_info`) is not used either: it walks a
//! hard-coded `/proc`, panics when `/proc` is unreadable and cannot say why a socket has
//! no owner. `iterate_sockets_info_without_pids` would skip that walk, but the points
//! above stand.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseBuffer, SocketId, StateFlags,
};
use netlink_packet_sock_diag::{SOCK_DIAG_BY_FAMILY, SockDiagMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use portolan_core::{Protocol, SocketState};

use super::ScanError;

/// Receive buffer: the kernel fills dump messages up to 32 KiB once it has seen a large
/// enough `recv`, so 64 KiB never truncates.
const RECV_BUFFER: usize = 64 * 1024;

/// Kernel TCP states 1..=12 (`TCP_NEW_SYN_RECV` is reported as `SYN_RECV`). Not 13,
/// `TCP_BOUND_INACTIVE` (bound but neither listening nor connected): `ss -a` does not list
/// those either.
const ALL_STATES: u32 = 0x1ffe;

/// One `(family, protocol)` dump.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table {
    pub(crate) family: u8,
    pub(crate) protocol: Protocol,
}

impl Table {
    /// TCP and UDP over IPv4 and IPv6.
    pub(crate) const ALL: [Table; 4] = [
        Table {
            family: AF_INET,
            protocol: Protocol::Tcp,
        },
        Table {
            family: AF_INET6,
            protocol: Protocol::Tcp,
        },
        Table {
            family: AF_INET,
            protocol: Protocol::Udp,
        },
        Table {
            family: AF_INET6,
            protocol: Protocol::Udp,
        },
    ];

    /// `tcp/ipv4`, as error messages name it.
    pub(crate) fn name(self) -> &'static str {
        match (self.protocol, self.family) {
            (Protocol::Tcp, AF_INET) => "tcp/ipv4",
            (Protocol::Tcp, _) => "tcp/ipv6",
            (Protocol::Udp, AF_INET) => "udp/ipv4",
            (Protocol::Udp, _) => "udp/ipv6",
            (protocol, _) => protocol.as_str(),
        }
    }

    fn ip_protocol(self) -> u8 {
        match self.protocol {
            Protocol::Udp => IPPROTO_UDP,
            _ => IPPROTO_TCP,
        }
    }
}

/// One socket as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawSocket {
    pub(crate) protocol: Protocol,
    pub(crate) state: SocketState,
    pub(crate) local_address: IpAddr,
    pub(crate) local_port: u16,
    pub(crate) remote_address: IpAddr,
    pub(crate) remote_port: u16,
    pub(crate) uid: u32,
    pub(crate) inode: u32,
    /// Network namespace ([`portolan_core::HOST_NETNS`] for the agent's own).
    pub(crate) netns: u64,
    /// A Unix socket's path (`@name` for an abstract one); empty otherwise.
    pub(crate) path: String,
}

/// `AF_UNIX`, and the `unix_diag` request and attributes used (`linux/unix_diag.h`).
const AF_UNIX: u8 = 1;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_UID: u16 = 9;
/// `1 << TCP_LISTEN`: listening Unix sockets only.
const UNIX_LISTEN_STATES: u32 = 1 << 10;
/// `struct unix_diag_msg`.
const UNIX_DIAG_MSG_LEN: usize = 16;

/// Reusable state for dumps: the receive buffer.
#[derive(Debug)]
pub(crate) struct Dumper {
    buf: Vec<u8>,
}

impl Default for Dumper {
    fn default() -> Self {
        Dumper {
            buf: vec![0; RECV_BUFFER],
        }
    }
}

impl Dumper {
    /// Lists every TCP and UDP socket, IPv4 and IPv6, into `out` (cleared first).
    pub(crate) fn dump_all(&mut self, out: &mut Vec<RawSocket>) -> Result<(), ScanError> {
        out.clear();
        let mut socket = open().map_err(|source| ScanError::NetlinkUnavailable { source })?;
        for table in Table::ALL {
            self.dump(
                &mut socket,
                table.name(),
                &request(table),
                out,
                |payload, out| {
                    if let Some(socket) = parse_socket(payload, table)? {
                        out.push(socket);
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// Appends every listening Unix domain socket (stream and seqpacket) of the calling
    /// thread's network namespace to `out`, with its path and owner uid (`ss -xl`).
    pub(crate) fn dump_unix_listeners(
        &mut self,
        out: &mut Vec<RawSocket>,
    ) -> Result<(), ScanError> {
        let mut socket = open().map_err(|source| ScanError::NetlinkUnavailable { source })?;
        self.dump(&mut socket, "unix", &unix_request(), out, |payload, out| {
            if let Some(socket) = parse_unix(payload)? {
                out.push(socket);
            }
            Ok(())
        })
    }

    fn dump(
        &mut self,
        socket: &mut Socket,
        table: &'static str,
        request: &[u8],
        out: &mut Vec<RawSocket>,
        parse: impl Fn(&[u8], &mut Vec<RawSocket>) -> Result<(), DumpError>,
    ) -> Result<(), ScanError> {
        socket
            .send(request, 0)
            .map_err(|source| ScanError::Netlink { table, source })?;
        loop {
            let n = match socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ScanError::Netlink { table, source });
                }
            };
            let received = self.buf.get(..n).unwrap_or(&self.buf);
            match parse_messages_with(received, out, &parse) {
                Ok(Progress::More) => {}
                Ok(Progress::Done) => return Ok(()),
                Err(DumpError::Refused(source)) => {
                    return Err(ScanError::SockDiagRefused { table, source });
                }
                Err(DumpError::Malformed(reason)) => {
                    return Err(ScanError::Netlink {
                        table,
                        source: io::Error::new(io::ErrorKind::InvalidData, reason),
                    });
                }
            }
        }
    }
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// The `SOCK_DIAG_BY_FAMILY` dump request for one table.
fn request(table: Table) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: table.family,
            protocol: table.ip_protocol(),
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_truncate(ALL_STATES),
            socket_id: if table.family == AF_INET6 {
                SocketId::new_v6()
            } else {
                SocketId::new_v4()
            },
        })
        .into(),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// The `SOCK_DIAG_BY_FAMILY` dump request for listening Unix sockets: `nlmsghdr` and
/// `struct unix_diag_req`, with their names and owners' uids.
fn unix_request() -> Vec<u8> {
    const LEN: u32 = 16 + 24;
    let mut m = Vec::with_capacity(LEN as usize);
    m.extend_from_slice(&LEN.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // sequence number
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id
    m.extend_from_slice(&[AF_UNIX, 0, 0, 0]); // family, protocol, padding
    m.extend_from_slice(&UNIX_LISTEN_STATES.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // inode: ignored by dumps
    m.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_UID).to_ne_bytes());
    m.extend_from_slice(&[0xff; 8]); // cookie: none
    m
}

/// Parses one `unix_diag_msg` and its attributes; `None` for a socket that is not
/// listening.
fn parse_unix(payload: &[u8]) -> Result<Option<RawSocket>, DumpError> {
    let header = payload
        .get(..UNIX_DIAG_MSG_LEN)
        .ok_or_else(|| DumpError::Malformed(format!("unix_diag_msg of {} bytes", payload.len())))?;
    if header[2] != 10 {
        return Ok(None);
    }
    let inode = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let mut path = String::new();
    let mut uid = 0;
    let mut attributes = &payload[UNIX_DIAG_MSG_LEN..];
    while attributes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
        let value = attributes
            .get(4..len.max(4))
            .ok_or_else(|| DumpError::Malformed(format!("unix_diag attribute of {len} bytes")))?;
        match kind {
            UNIX_DIAG_NAME => path = unix_path(value),
            UNIX_DIAG_UID => {
                if let Ok(b) = <[u8; 4]>::try_from(value) {
                    uid = u32::from_ne_bytes(b);
                }
            }
            _ => {}
        }
        let aligned = (len.max(4) + 3) & !3;
        attributes = attributes.get(aligned..).unwrap_or_default();
    }
    Ok(Some(RawSocket {
        protocol: Protocol::Unix,
        state: SocketState::Listen,
        local_address: portolan_core::UNIX_ADDRESS,
        local_port: 0,
        remote_address: portolan_core::UNIX_ADDRESS,
        remote_port: 0,
        uid,
        inode,
        netns: portolan_core::HOST_NETNS,
        path,
    }))
}

/// A `sun_path` as `ss` prints it: an abstract name (leading NUL) as `@name`, every other
/// NUL of it as `@` too; bytes that are not UTF-8 replaced.
pub(crate) fn unix_path(raw: &[u8]) -> String {
    match raw.split_first() {
        Some((0, name)) => {
            let name: Vec<u8> = name
                .iter()
                .map(|b| if *b == 0 { b'@' } else { *b })
                .collect();
            format!("@{}", String::from_utf8_lossy(&name))
        }
        _ => {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

#[derive(Debug)]
enum DumpError {
    /// `NLMSG_ERROR` with an errno.
    Refused(io::Error),
    /// Bytes that are not netlink messages.
    Malformed(String),
}

/// Parses one datagram of a TCP or UDP dump (see [`parse_messages_with`]).
#[cfg(test)]
fn parse_messages(
    bytes: &[u8],
    table: Table,
    out: &mut Vec<RawSocket>,
) -> Result<Progress, DumpError> {
    parse_messages_with(bytes, out, &|payload: &[u8], out: &mut Vec<RawSocket>| {
        if let Some(socket) = parse_socket(payload, table)? {
            out.push(socket);
        }
        Ok(())
    })
}

/// Parses one datagram of a dump: zero or more socket messages, each handed to `parse`,
/// possibly ending with `NLMSG_DONE` or an error.
fn parse_messages_with(
    mut bytes: &[u8],
    out: &mut Vec<RawSocket>,
    parse: &impl Fn(&[u8], &mut Vec<RawSocket>) -> Result<(), DumpError>,
) -> Result<Progress, DumpError> {
    while !bytes.is_empty() {
        let message = NetlinkBuffer::new_checked(bytes)
            .map_err(|e| DumpError::Malformed(format!("bad netlink header: {e}")))?;
        let len = message.length() as usize;
        match message.message_type() {
            NLMSG_DONE => return Ok(Progress::Done),
            NLMSG_ERROR => {
                let error = ErrorBuffer::new_checked(message.payload())
                    .map_err(|e| DumpError::Malformed(format!("bad netlink error: {e}")))?;
                return match error.code() {
                    Some(code) => Err(DumpError::Refused(io::Error::from_raw_os_error(
                        code.get().wrapping_neg(),
                    ))),
                    // An acknowledgement: nothing more follows.
                    None => Ok(Progress::Done),
                };
            }
            SOCK_DIAG_BY_FAMILY => parse(message.payload(), out)?,
            // NLMSG_NOOP and anything unexpected: skip.
            _ => {}
        }
        // Messages are 4-byte aligned; the last one may end without padding.
        let aligned = (len + 3) & !3;
        bytes = bytes.get(aligned..).unwrap_or_default();
    }
    Ok(Progress::More)
}

/// Parses one `inet_diag_msg` without its attributes; `None` for a state this scanner
/// does not report.
fn parse_socket(payload: &[u8], table: Table) -> Result<Option<RawSocket>, DumpError> {
    let msg = InetResponseBuffer::new_checked(payload)
        .map_err(|e| DumpError::Malformed(format!("bad inet_diag_msg: {e}")))?;
    let id = msg.socket_id();
    let (local_address, remote_address) = match (msg.family(), id.get(4..20), id.get(20..36)) {
        (AF_INET, Some(src), Some(dst)) => (ipv4(src), ipv4(dst)),
        (AF_INET6, Some(src), Some(dst)) => (ipv6(src), ipv6(dst)),
        (family, _, _) => {
            return Err(DumpError::Malformed(format!(
                "unexpected address family {family}"
            )));
        }
    };
    let port = |range: std::ops::Range<usize>| {
        id.get(range)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or_default()
    };
    let state = match table.protocol {
        Protocol::Udp if msg.state() == 1 => SocketState::Established,
        // UDP: TCP_ESTABLISHED when connected, TCP_CLOSE when only bound.
        Protocol::Udp => SocketState::Listen,
        _ => match tcp_state(msg.state()) {
            Some(state) => state,
            None => return Ok(None),
        },
    };
    Ok(Some(RawSocket {
        protocol: table.protocol,
        state,
        local_address,
        local_port: port(0..2),
        remote_address,
        remote_port: port(2..4),
        uid: msg.uid(),
        inode: msg.inode(),
        netns: portolan_core::HOST_NETNS,
        path: String::new(),
    }))
}

fn ipv4(b: &[u8]) -> IpAddr {
    let mut octets = [0u8; 4];
    octets.copy_from_slice(&b[..4]);
    IpAddr::from(octets)
}

fn ipv6(b: &[u8]) -> IpAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&b[..16]);
    IpAddr::from(octets)
}

/// Kernel TCP state numbers (`include/net/tcp_states.h`).
pub(crate) fn tcp_state(n: u8) -> Option<SocketState> {
    Some(match n {
        1 => SocketState::Established,
        2 => SocketState::SynSent,
        3 | 12 => SocketState::SynRecv,
        4 => SocketState::FinWait1,
        5 => SocketState::FinWait2,
        6 => SocketState::TimeWait,
        7 => SocketState::Close,
        8 => SocketState::CloseWait,
        9 => SocketState::LastAck,
        10 => SocketState::Listen,
        11 => SocketState::Closing,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP4: Table = Table::ALL[0];

    /// An `nlmsghdr` + `inet_diag_msg` as the kernel sends it.
    fn diag_message(
        family: u8,
        state: u8,
        src: &[u8],
        sport: u16,
        dst: &[u8],
        dport: u16,
    ) -> Vec<u8> {
        let mut m = vec![0u8; 16 + 72 + 8];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let p = &mut m[16..];
        p[0] = family;
        p[1] = state;
        p[4..6].copy_from_slice(&sport.to_be_bytes());
        p[6..8].copy_from_slice(&dport.to_be_bytes());
        p[8..8 + src.len()].copy_from_slice(src);
        p[24..24 + dst.len()].copy_from_slice(dst);
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        p[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        // one attribute (INET_DIAG_SHUTDOWN) to check it is skipped
        p[72..74].copy_from_slice(&5u16.to_ne_bytes());
        p[74..76].copy_from_slice(&8u16.to_ne_bytes());
        m
    }

    fn done() -> Vec<u8> {
        let mut m = vec![0u8; 20];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        m
    }

    #[test]
    fn parses_sockets_then_done() {
        let mut bytes = diag_message(AF_INET, 10, &[127, 0, 0, 1], 8080, &[0, 0, 0, 0], 0);
        bytes.extend(diag_message(
            AF_INET,
            1,
            &[10, 0, 0, 1],
            40000,
            &[10, 0, 0, 2],
            443,
        ));
        let mut out = Vec::new();
        assert_eq!(
            parse_messages(&bytes, TCP4, &mut out).ok(),
            Some(Progress::More)
        );
        bytes.extend(done());
        out.clear();
        assert_eq!(
            parse_messages(&bytes, TCP4, &mut out).ok(),
            Some(Progress::Done)
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].state, SocketState::Listen);
        assert_eq!(out[0].local_address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(out[0].local_port, 8080);
        assert_eq!(out[0].uid, 1000);
        assert_eq!(out[0].inode, 4242);
        assert_eq!(out[1].remote_address, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(out[1].remote_port, 443);
        assert_eq!(out[1].state, SocketState::Established);
    }

    #[test]
    fn ipv6_and_udp_states() {
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        let udp6 = Table::ALL[3];
        let mut bytes = diag_message(AF_INET6, 7, &loopback, 53, &[0; 16], 0);
        bytes.extend(diag_message(AF_INET6, 1, &loopback, 5000, &loopback, 53));
        let mut out = Vec::new();
        assert!(parse_messages(&bytes, udp6, &mut out).is_ok());
        assert_eq!(
            out[0].local_address,
            "::1".parse::<IpAddr>().expect("address")
        );
        assert_eq!(out[0].state, SocketState::Listen);
        assert_eq!(out[1].state, SocketState::Established);
        assert_eq!(out[1].protocol, Protocol::Udp);
    }

    #[test]
    fn kernel_error_is_refusal() {
        let mut m = vec![0u8; 36];
        m[0..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        let mut out = Vec::new();
        match parse_messages(&m, TCP4, &mut out) {
            Err(DumpError::Refused(e)) => assert_eq!(e.raw_os_error(), Some(2)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut out = Vec::new();
        assert!(matches!(
            parse_messages(&[1, 2, 3], TCP4, &mut out),
            Err(DumpError::Malformed(_))
        ));
        let mut short = diag_message(AF_INET, 10, &[127, 0, 0, 1], 1, &[0; 4], 0);
        short.truncate(40);
        short[0..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(matches!(
            parse_messages(&short, TCP4, &mut out),
            Err(DumpError::Malformed(_))
        ));
    }

    /// An `nlmsghdr` + `unix_diag_msg` + `UNIX_DIAG_NAME` + `UNIX_DIAG_UID`.
    fn unix_message(state: u8, inode: u32, name: &[u8], uid: u32) -> Vec<u8> {
        let name_attr = 4 + name.len();
        let len = 16 + 16 + ((name_attr + 3) & !3) + 8;
        let mut m = vec![0u8; len];
        m[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let p = &mut m[16..];
        p[0] = AF_UNIX;
        p[1] = 1;
        p[2] = state;
        p[4..8].copy_from_slice(&inode.to_ne_bytes());
        p[16..18].copy_from_slice(&(name_attr as u16).to_ne_bytes());
        p[18..20].copy_from_slice(&UNIX_DIAG_NAME.to_ne_bytes());
        p[20..20 + name.len()].copy_from_slice(name);
        let at = 16 + ((name_attr + 3) & !3);
        p[at..at + 2].copy_from_slice(&8u16.to_ne_bytes());
        p[at + 2..at + 4].copy_from_slice(&UNIX_DIAG_UID.to_ne_bytes());
        p[at + 4..at + 8].copy_from_slice(&uid.to_ne_bytes());
        m
    }

    #[test]
    fn unix_listeners_with_paths_and_abstract_names() {
        let mut bytes = unix_message(10, 77, b"/run/a b.sock", 1000);
        bytes.extend(unix_message(10, 78, b"\0portolan\0x", 0));
        bytes.extend(unix_message(1, 79, b"/run/connected", 0));
        let mut out = Vec::new();
        let parse = |payload: &[u8], out: &mut Vec<RawSocket>| {
            out.extend(parse_unix(payload)?);
            Ok(())
        };
        assert!(parse_messages_with(&bytes, &mut out, &parse).is_ok());
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].inode, out[0].uid), (77, 1000));
        assert_eq!(out[0].path, "/run/a b.sock");
        assert_eq!(out[0].protocol, Protocol::Unix);
        assert_eq!(out[0].state, SocketState::Listen);
        assert_eq!(out[1].path, "@portolan@x");
        let mut short = unix_message(10, 77, b"/x", 0);
        short.truncate(24);
        short[0..4].copy_from_slice(&24u32.to_ne_bytes());
        assert!(matches!(
            parse_messages_with(&short, &mut out, &parse),
            Err(DumpError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_tcp_state_is_skipped() {
        let bytes = diag_message(AF_INET, 13, &[127, 0, 0, 1], 1, &[0; 4], 0);
        let mut out = Vec::new();
        assert!(parse_messages(&bytes, TCP4, &mut out).is_ok());
        assert!(out.is_empty());
    }
}
