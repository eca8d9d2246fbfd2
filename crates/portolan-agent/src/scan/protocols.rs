//! Sockets beyond TCP and UDP, each listed only where the kernel has them: listening Unix
//! domain sockets (sock_diag, or `/proc/<pid>/net/unix` for a namespace read through
//! procfs), raw IP sockets (`/proc/<pid>/net/raw{,6}`) and SCTP endpoints and associations
//! (`/proc/<pid>/net/sctp/{eps,assocs}`, present only while the `sctp` module is loaded).
//!
//! Raw sockets are read from procfs rather than sock_diag because `raw_diag` is an
//! optional module (`CONFIG_INET_RAW_DIAG`) that many kernels do not build, while
//! `/proc/net/raw` is always there (`ss -w` falls back to it the same way); a host holds
//! few raw sockets, so the text costs nothing measurable. Every `/proc/<pid>/net` file
//! shows the network namespace of that process.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use portolan_core::{HOST_NETNS, Protocol, SocketState, UNIX_ADDRESS};

use super::netns::parse_proc_net_line;
use super::sock_diag::{Dumper, RawSocket};

/// How a namespace's Unix sockets are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnixSource {
    /// sock_diag in the calling thread's namespace (paths and owner uids); procfs when
    /// the kernel refuses it.
    SockDiag,
    /// `net_dir/unix` only (no owner uids: they are reported as 0).
    Procfs,
}

/// Appends the Unix listeners, raw sockets and SCTP sockets of one network namespace to
/// `out`; `net_dir` is `/proc/<pid>/net` of a process in it. A file that does not exist
/// means the protocol is not there and is skipped silently; other problems become
/// warnings.
pub(crate) fn read(
    dumper: &mut Dumper,
    net_dir: &Path,
    unix: UnixSource,
    out: &mut Vec<RawSocket>,
    warnings: &mut Vec<String>,
) {
    let from_procfs = match unix {
        UnixSource::SockDiag => match dumper.dump_unix_listeners(out) {
            Ok(()) => false,
            Err(e) => {
                warnings.push(format!(
                    "{e}; reading Unix sockets from `{}` instead, without their owners' uids",
                    net_dir.join("unix").display()
                ));
                true
            }
        },
        UnixSource::Procfs => true,
    };
    let mut read_file = |name: &str, parse: &dyn Fn(&str, &mut Vec<RawSocket>)| {
        let path = net_dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => parse(&text, out),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warnings.push(format!("cannot read `{}`: {e}", path.display())),
        }
    };
    if from_procfs {
        read_file("unix", &|text, out| out.extend(parse_unix_listeners(text)));
    }
    for file in ["raw", "raw6"] {
        read_file(file, &|text, out| {
            out.extend(
                text.lines()
                    .skip(1)
                    .filter_map(|l| parse_proc_net_line(l, Protocol::Raw)),
            );
        });
    }
    read_file("sctp/eps", &|text, out| {
        out.extend(parse_sctp_endpoints(text))
    });
    read_file("sctp/assocs", &|text, out| {
        out.extend(parse_sctp_associations(text));
    });
}

/// The listening sockets of `/proc/net/unix`:
/// `Num RefCount Protocol Flags Type St Inode Path`, listening when `Flags` has
/// `__SO_ACCEPTCON` (0x10000). The path is the rest of the line (it may hold spaces); the
/// kernel already prints an abstract name with a leading `@`.
pub(crate) fn parse_unix_listeners(text: &str) -> Vec<RawSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut rest = line.trim_start();
            let mut field = || {
                let (f, r) = rest.split_once(' ').unwrap_or((rest, ""));
                rest = r.trim_start();
                f
            };
            let _num = field();
            let _refs = field();
            let _protocol = field();
            let flags = u32::from_str_radix(field(), 16).ok()?;
            let _kind = field();
            let _state = field();
            let inode = field().parse().ok()?;
            (flags & 0x10000 != 0).then(|| unix_socket(inode, 0, rest.trim_end().to_string()))
        })
        .collect()
}

fn unix_socket(inode: u32, uid: u32, path: String) -> RawSocket {
    RawSocket {
        protocol: Protocol::Unix,
        state: SocketState::Listen,
        local_address: UNIX_ADDRESS,
        local_port: 0,
        remote_address: UNIX_ADDRESS,
        remote_port: 0,
        uid,
        inode,
        netns: HOST_NETNS,
        path,
    }
}

/// `/proc/net/sctp/eps` (`net/sctp/proc.c`, `sctp_eps_seq_show`):
/// `ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS…`. One socket per local address of
/// the endpoint (a multi-homed endpoint is reachable on each); `SST` is the socket state
/// in TCP numbering (10 listening).
pub(crate) fn parse_sctp_endpoints(text: &str) -> Vec<RawSocket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = (|| {
            let state = super::sock_diag::tcp_state(f.get(3)?.parse().ok()?)?;
            let port = f.get(5)?.parse().ok()?;
            let uid = f.get(6)?.parse().ok()?;
            let inode = f.get(7)?.parse().ok()?;
            let addresses: Vec<IpAddr> =
                f.get(8..)?.iter().filter_map(|a| sctp_address(a)).collect();
            Some((state, port, uid, inode, addresses))
        })();
        let Some((state, port, uid, inode, addresses)) = parsed else {
            continue;
        };
        for address in addresses {
            out.push(RawSocket {
                protocol: Protocol::Sctp,
                state,
                local_address: address,
                local_port: port,
                remote_address: unspecified_like(address),
                remote_port: 0,
                uid,
                inode,
                netns: HOST_NETNS,
                path: String::new(),
            });
        }
    }
    out
}

/// `/proc/net/sctp/assocs` (`sctp_assocs_seq_show`):
/// `ASSOC SOCK STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT LADDRS…
/// <-> RADDRS… HBINT …`. One socket per association, between the primary addresses
/// (marked `*`; the first address when none is); `ST` is the association state.
pub(crate) fn parse_sctp_associations(text: &str) -> Vec<RawSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let state = sctp_association_state(f.get(4)?.parse().ok()?)?;
            let uid = f.get(9)?.parse().ok()?;
            let inode = f.get(10)?.parse().ok()?;
            let local_port = f.get(11)?.parse().ok()?;
            let remote_port = f.get(12)?.parse().ok()?;
            let arrow = f.iter().position(|t| *t == "<->")?;
            let local = primary(f.get(13..arrow)?)?;
            let remote = primary(f.get(arrow + 1..)?)?;
            Some(RawSocket {
                protocol: Protocol::Sctp,
                state,
                local_address: local,
                local_port,
                remote_address: remote,
                remote_port,
                uid,
                inode,
                netns: HOST_NETNS,
                path: String::new(),
            })
        })
        .collect()
}

/// The address marked `*` among `tokens`, else the first address; stops at the first
/// token that is not an address (the counters after the remote addresses).
fn primary(tokens: &[&str]) -> Option<IpAddr> {
    let addresses = tokens.iter().map_while(|t| {
        let marked = t.starts_with('*');
        sctp_address(t).map(|a| (marked, a))
    });
    let mut first = None;
    for (marked, address) in addresses {
        if marked {
            return Some(address);
        }
        first.get_or_insert(address);
    }
    first
}

/// `10.0.0.1`, `*10.0.0.1`, `fe80:0000:…:0001` (`%pI6`, uncompressed).
fn sctp_address(token: &str) -> Option<IpAddr> {
    token.trim_start_matches('*').parse().ok()
}

fn unspecified_like(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// `sctp_state_t` (`include/net/sctp/constants.h`) in the TCP names the inventory uses.
fn sctp_association_state(n: u8) -> Option<SocketState> {
    Some(match n {
        0 => SocketState::Close,
        1 | 2 => SocketState::SynSent,
        3 => SocketState::Established,
        4 | 5 => SocketState::FinWait1,
        6 => SocketState::CloseWait,
        7 => SocketState::LastAck,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::sock_diag::unix_path;
    use super::*;

    #[test]
    fn unix_listeners_from_procfs() {
        // Captured from this kernel's /proc/net/unix: a stream listener on a path, an
        // unbound datagram socket, an abstract seqpacket listener whose name has a space.
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000a4a7ef: 00000002 00000000 00010000 0001 01 4072765 /tmp/proto-x.sock\n\
00000000b752beb6: 00000002 00000000 00000000 0002 01 4072767 /tmp/proto-d.sock\n\
0000000054b951db: 00000002 00000000 00010000 0005 01 4072766 @proto abs\n\
00000000deadbeef: 00000003 00000000 00000000 0001 03 4072768\n";
        let got = parse_unix_listeners(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].inode, got[0].path.as_str()),
            (4072765, "/tmp/proto-x.sock")
        );
        assert_eq!(
            (got[1].inode, got[1].path.as_str()),
            (4072766, "@proto abs")
        );
        assert!(got.iter().all(|s| s.protocol == Protocol::Unix));
        assert_eq!(unix_path(b"\0proto abs"), "@proto abs");
        assert_eq!(unix_path(b"/tmp/proto-x.sock\0"), "/tmp/proto-x.sock");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn raw_sockets_from_procfs() {
        // Captured from this kernel's /proc/net/raw: ICMP on the wildcard, UDP bound to
        // loopback, TCP connected to 127.0.0.2.
        let lines = [
            " 188: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4072761 2 00000000580d74ba 0",
            " 217: 0100007F:0011 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4072763 2 00000000b540d2b5 0",
            "  90: 0100007F:0006 0200007F:0000 01 00000000:00000000 00:00000000 00000000     0        0 4072764 2 00000000c519b74d 0",
        ];
        let got: Vec<RawSocket> = lines
            .iter()
            .filter_map(|l| parse_proc_net_line(l, Protocol::Raw))
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].local_port, got[0].state), (1, SocketState::Listen));
        assert!(got[0].local_address.is_unspecified());
        assert_eq!(got[1].local_port, 17);
        assert_eq!(got[2].state, SocketState::Established);
        assert_eq!(got[2].remote_address, IpAddr::from([127, 0, 0, 2]));
    }

    /// The formats of `net/sctp/proc.c` (`sctp_eps_seq_show`, `sctp_assocs_seq_show`):
    /// this machine's kernel is built without SCTP, so these lines are written from the
    /// kernel's format strings (`%8p %8p %-3d %-3d %-4d %-5d %5u %5llu ` then each local
    /// address as `%pI4 `/`%pI6 `, the primary marked `*` in assocs) rather than captured.
    #[test]
    fn sctp_endpoints_and_associations() {
        let eps = " ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n\
00000000c0ffee00 00000000c0ffee80 1   10  29   5060      0 31337 10.0.0.1 192.0.2.7 \n\
00000000c0ffee01 00000000c0ffee81 2   10  30   3868   1000 31338 0000:0000:0000:0000:0000:0000:0000:0000 \n\
00000000c0ffee02 00000000c0ffee82 1   7   31   2905      0 31339 127.0.0.1 \n";
        let got = parse_sctp_endpoints(eps);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].local_address, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(got[1].local_address, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(
            (got[0].local_port, got[0].inode, got[0].state),
            (5060, 31337, SocketState::Listen)
        );
        assert!(got[2].local_address.is_unspecified() && got[2].local_address.is_ipv6());
        assert_eq!(got[2].uid, 1000);
        assert_eq!(got[3].state, SocketState::Close);
        assert!(
            got.iter()
                .all(|s| s.protocol == Protocol::Sctp && s.remote_port == 0)
        );

        let assocs = " ASSOC     SOCK   STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT LADDRS <-> RADDRS HBINT INS OUTS MAXRT T1X T2X RTXC wmema wmemq sndbuf rcvbuf\n\
00000000feed0000 00000000c0ffee80 1   1   3  0       2        0        0     0 31340 5060  40001 10.0.0.1 *192.0.2.7 <-> *198.51.100.9 198.51.100.10 \t    30000    10    10   10    0    0        0        1        0   212992   212992\n\
00000000feed0001 00000000c0ffee80 1   1   1  0       3        0        0     0 31341 40002  5060 10.0.0.1 <-> 10.0.0.2 \t    30000    10    10   10    0    0        0        1        0   212992   212992\n";
        let got = parse_sctp_associations(assocs);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].local_address, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(got[0].remote_address, IpAddr::from([198, 51, 100, 9]));
        assert_eq!((got[0].local_port, got[0].remote_port), (5060, 40001));
        assert_eq!(
            (got[0].state, got[0].inode),
            (SocketState::Established, 31340)
        );
        assert_eq!(got[1].state, SocketState::SynSent);
        assert_eq!(got[1].remote_address, IpAddr::from([10, 0, 0, 2]));
        assert!(parse_sctp_associations("garbage\nmore garbage").is_empty());
    }
}
