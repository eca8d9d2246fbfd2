//! Network namespaces: finding every one on the host and listing the sockets and
//! interface addresses of each.
//!
//! A namespace is found through `/proc/<pid>/ns/net` of the processes that live in it and
//! inventoried once per scan, through one representative process (the lowest pid). With
//! CAP_SYS_ADMIN a short-lived thread enters each namespace in turn (`setns`) and opens its
//! sock_diag and rtnetlink sockets there, so the namespace gets the same complete dump as
//! the agent's own. Without it, the namespace's `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` is
//! read instead (readable without extra capabilities when the PID namespace is shared),
//! and its interface addresses come from `/proc/<pid>/net/{fib_trie,if_inet6}`
//! ([`proc_interfaces`]), so wildcard binds there are scoped by the namespace's own
//! addresses either way.
//! Socket inodes are global, so the one `/proc/*/fd` walk attributes sockets of every
//! namespace.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use portolan_core::{InterfaceAddress, Protocol, SocketState};

use super::host;
use super::proc_interfaces;
use super::procfs::parse_u32;
use super::protocols::{self, UnixSource};
use super::sock_diag::{Dumper, RawSocket};

/// A network namespace and the process it is read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Namespace {
    /// Inode of `/proc/<pid>/ns/net`.
    pub(crate) inode: u64,
    /// The lowest pid living in it.
    pub(crate) pid: u32,
}

/// How a namespace was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Entered with `setns`: sock_diag and interface addresses.
    Entered,
    /// `/proc/<pid>/net/*`: sockets and interface addresses (IPv4 without names).
    Procfs,
}

/// `net:[4026531992]` → 4026531992.
pub(crate) fn netns_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"net:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The inode of the agent's own network namespace, `None` when `/proc/self/ns/net`
/// cannot be read.
pub(crate) fn own_inode() -> Option<u64> {
    let link = fs::read_link("/proc/thread-self/ns/net")
        .or_else(|_| fs::read_link("/proc/self/ns/net"))
        .ok()?;
    netns_inode(link.as_os_str().as_bytes())
}

/// Every network namespace some process under `proc_root` lives in, except `own`, each
/// with its lowest pid, sorted by inode. Processes that cannot be read are skipped: their
/// namespace is found through another process or, when none, missed (a kernel-only
/// namespace holds no process sockets anyway).
pub(crate) fn discover(proc_root: &Path, own: Option<u64>) -> Vec<Namespace> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut lowest: BTreeMap<u64, u32> = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = parse_u32(name.as_bytes()) else {
            continue;
        };
        let Ok(link) = fs::read_link(entry.path().join("ns/net")) else {
            continue;
        };
        let Some(inode) = netns_inode(link.as_os_str().as_bytes()) else {
            continue;
        };
        if Some(inode) == own {
            continue;
        }
        let slot = lowest.entry(inode).or_insert(pid);
        *slot = (*slot).min(pid);
    }
    lowest
        .into_iter()
        .map(|(inode, pid)| Namespace { inode, pid })
        .collect()
}

/// What reading the other namespaces gave.
#[derive(Debug, Default)]
pub(crate) struct Others {
    /// Their sockets, `netns` set.
    pub(crate) sockets: Vec<RawSocket>,
    /// Their interface addresses, `netns` set.
    pub(crate) interfaces: Vec<InterfaceAddress>,
    /// Namespaces read.
    pub(crate) read: u32,
    /// Among them, read through procfs.
    pub(crate) from_procfs: u32,
    /// Problems for the scan's warnings (one per kind, not one per namespace).
    pub(crate) warnings: Vec<String>,
}

/// Reads every namespace of `namespaces`: entered when `may_enter` and the kernel allows
/// it, else from procfs. A namespace that vanished mid-scan (its processes exited) is
/// skipped. `may_enter` must be false unless the calling thread is dedicated to this call
/// and exits after it: entering changes the thread's namespace for good.
pub(crate) fn read_all(
    proc_root: &Path,
    namespaces: &[Namespace],
    dumper: &mut Dumper,
    may_enter: bool,
) -> Others {
    let mut others = Others::default();
    let mut may_enter = may_enter;
    let mut buf = Vec::new();
    for ns in namespaces {
        let source = if may_enter {
            match enter(proc_root, ns) {
                Ok(()) => Source::Entered,
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32) => {
                    may_enter = false;
                    others.warnings.push(format!(
                        "cannot enter network namespaces ({e}): reading them from `/proc/<pid>/net` \
                         instead: every socket and interface address, but Unix sockets without their \
                         owners' uids (CAP_SYS_ADMIN lets the agent enter them)"
                    ));
                    Source::Procfs
                }
                // The process exited: the namespace may be gone with it.
                Err(_) => Source::Procfs,
            }
        } else {
            Source::Procfs
        };
        let before = others.sockets.len();
        let ok = match source {
            Source::Entered => {
                let dumped = dumper.dump_all(&mut buf);
                match dumped {
                    Ok(()) => {
                        others.sockets.append(&mut buf);
                        protocols::read(
                            dumper,
                            &proc_root.join(ns.pid.to_string()).join("net"),
                            UnixSource::SockDiag,
                            &mut others.sockets,
                            &mut others.warnings,
                        );
                        let interfaces = host::interface_addresses().map(|list| {
                            list.into_iter()
                                .map(|i| InterfaceAddress {
                                    netns: ns.inode,
                                    ..i
                                })
                                .collect()
                        });
                        others.add_interfaces(ns.inode, interfaces);
                        true
                    }
                    Err(e) => {
                        push_once(
                            &mut others.warnings,
                            format!(
                                "cannot list the sockets of network namespace {}: {e}",
                                ns.inode
                            ),
                        );
                        false
                    }
                }
            }
            Source::Procfs => match read_procfs(proc_root, ns.pid, &mut others.sockets) {
                Ok(()) => {
                    protocols::read(
                        dumper,
                        &proc_root.join(ns.pid.to_string()).join("net"),
                        UnixSource::Procfs,
                        &mut others.sockets,
                        &mut others.warnings,
                    );
                    let interfaces = proc_interfaces::read(proc_root, ns.pid, ns.inode);
                    others.add_interfaces(ns.inode, interfaces);
                    others.from_procfs += 1;
                    true
                }
                Err(_) => false,
            },
        };
        if ok {
            others.read += 1;
            for s in &mut others.sockets[before..] {
                s.netns = ns.inode;
            }
        } else {
            others.sockets.truncate(before);
        }
    }
    others
}

impl Others {
    /// The interface addresses of namespace `inode`, or a warning that they are missing.
    fn add_interfaces(
        &mut self,
        inode: u64,
        interfaces: Result<Vec<InterfaceAddress>, impl std::fmt::Display>,
    ) {
        match interfaces {
            Ok(list) => self.interfaces.extend(list),
            Err(e) => push_once(
                &mut self.warnings,
                format!(
                    "cannot read the interface addresses of network namespace {inode}: {e} \
                     (wildcard listeners there are reported as public)"
                ),
            ),
        }
    }
}

fn push_once(warnings: &mut Vec<String>, warning: String) {
    let kind = warning.split(" of network namespace").next().unwrap_or("");
    if !warnings.iter().any(|w| w.starts_with(kind)) {
        warnings.push(warning);
    }
}

/// Moves the calling thread into the network namespace of `ns.pid`. Only ever called on
/// the dedicated namespace thread, which exits when done: no other code runs in the
/// namespace it is left in.
fn enter(proc_root: &Path, ns: &Namespace) -> io::Result<()> {
    let file = fs::File::open(proc_root.join(ns.pid.to_string()).join("ns/net"))?;
    // The process may have moved or exited between discovery and now.
    let meta = file.metadata()?;
    if std::os::unix::fs::MetadataExt::ino(&meta) != ns.inode {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the process left the namespace",
        ));
    }
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Appends the TCP and UDP sockets of `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` (the other
/// protocols: [`protocols::read`]). One readable file is
/// enough (IPv6 may be disabled); fails when none could be read (the process exited).
pub(crate) fn read_procfs(proc_root: &Path, pid: u32, out: &mut Vec<RawSocket>) -> io::Result<()> {
    let dir = proc_root.join(pid.to_string()).join("net");
    let mut first_error = None;
    let mut read = 0;
    for (file, protocol) in [
        ("tcp", Protocol::Tcp),
        ("tcp6", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("udp6", Protocol::Udp),
    ] {
        match fs::read_to_string(dir.join(file)) {
            Ok(text) => {
                read += 1;
                out.extend(
                    text.lines()
                        .skip(1)
                        .filter_map(|l| parse_proc_net_line(l, protocol)),
                );
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if read == 0 => Err(e),
        _ => Ok(()),
    }
}

/// One line of `/proc/net/{tcp,udp}{,6}`:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`, addresses as hex
/// 32-bit words in host byte order. `None` for a malformed line or a state not reported.
pub(crate) fn parse_proc_net_line(line: &str, protocol: Protocol) -> Option<RawSocket> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let (local_address, local_port) = parse_hex_endpoint(f.next()?)?;
    let (remote_address, remote_port) = parse_hex_endpoint(f.next()?)?;
    let st = u8::from_str_radix(f.next()?, 16).ok()?;
    let _queues = f.next()?;
    let _timer = f.next()?;
    let _retransmits = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let _timeout = f.next()?;
    let inode = f.next()?.parse().ok()?;
    let state = match protocol {
        // UDP and raw: TCP_ESTABLISHED when connected, TCP_CLOSE when not.
        Protocol::Udp | Protocol::Raw if st == 1 => SocketState::Established,
        Protocol::Udp | Protocol::Raw => SocketState::Listen,
        _ => super::sock_diag::tcp_state(st)?,
    };
    Some(RawSocket {
        protocol,
        state,
        local_address,
        local_port,
        remote_address,
        remote_port,
        uid,
        inode,
        netns: 0,
        path: String::new(),
    })
}

fn parse_hex_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        // Each 32-bit word is printed as the host-order integer of network-order bytes.
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links() {
        assert_eq!(netns_inode(b"net:[4026531992]"), Some(4026531992));
        assert_eq!(netns_inode(b"net:[]"), None);
        assert_eq!(netns_inode(b"mnt:[4026531992]"), None);
        assert_eq!(netns_inode(b"net:[12x]"), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn proc_net_lines() {
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0";
        let s = parse_proc_net_line(listen, Protocol::Tcp).expect("parses");
        assert_eq!(s.local_address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(s.local_port, 8080);
        assert_eq!(s.state, SocketState::Listen);
        assert_eq!(s.uid, 1000);
        assert_eq!(s.inode, 4242);
        let v6 = "   1: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0";
        let s = parse_proc_net_line(v6, Protocol::Udp).expect("parses");
        assert_eq!(s.local_address, "::1".parse::<IpAddr>().expect("addr"));
        assert_eq!(s.local_port, 53);
        assert_eq!(s.state, SocketState::Listen);
        let estab = "   2: 0200000A:D431 0100000A:01BB 01 00000000:00000000 00:00000000 00000000     0        0 9 1";
        let s = parse_proc_net_line(estab, Protocol::Tcp).expect("parses");
        assert_eq!(s.remote_address, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(s.remote_port, 443);
        assert_eq!(s.state, SocketState::Established);
        assert_eq!(parse_proc_net_line("garbage", Protocol::Tcp), None);
        assert_eq!(
            parse_proc_net_line("  sl  local_address rem_address   st", Protocol::Tcp),
            None
        );
    }

    #[test]
    fn discovery_dedupes_by_inode_and_keeps_the_lowest_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = dir.path();
        for (pid, ns) in [(300, 7u64), (20, 7), (55, 9), (1, 1)] {
            let d = proc.join(pid.to_string()).join("ns");
            fs::create_dir_all(&d).expect("mkdir");
            std::os::unix::fs::symlink(format!("net:[{ns}]"), d.join("net")).expect("symlink");
        }
        fs::create_dir_all(proc.join("self")).expect("mkdir");
        assert_eq!(
            discover(proc, Some(1)),
            vec![
                Namespace { inode: 7, pid: 20 },
                Namespace { inode: 9, pid: 55 }
            ]
        );
    }
}
