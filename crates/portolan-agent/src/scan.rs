//! The host scanner: every TCP and UDP socket (IPv4 and IPv6) from netlink `sock_diag`,
//! listening Unix sockets, raw sockets and SCTP where the kernel has them
//! ([`protocols`]), the processes that own them from `/proc`, and the host facts exposure
//! depends on.
//!
//! ```no_run
//! use portolan_agent::scan::{ScanOptions, Scanner};
//!
//! let mut scanner = Scanner::new(ScanOptions::default());
//! let scan = scanner.scan()?;
//! println!("{} sockets", scan.stats.sockets);
//! let inventory = scan.inventory();
//! # Ok::<(), portolan_agent::scan::ScanError>(())
//! ```
//!
//! A scan fails only when the kernel cannot list sockets at all ([`ScanError`]). What
//! cannot be attributed (another user's process without the capabilities to read it, a
//! process that exited mid-scan) is said per socket in its [`Attribution`] and counted in
//! [`ScanStats`]; nothing in `/proc` aborts a scan.

mod host;
mod netns;
mod pods;
mod proc_interfaces;
mod procfs;
mod protocols;
mod sock_diag;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use portolan_core::inventory::ScannedSocket;
use portolan_core::{
    Attribution, HostState, Inventory, Process, Protocol, ScanStats, SocketKey, SocketState,
};

use self::procfs::{FdWalker, Users, WalkOutcome};
use self::sock_diag::{Dumper, RawSocket};

/// What a [`Scanner`] reads and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    /// Where procfs is mounted: `/proc`, or the host's procfs mounted into a container
    /// (`/host/proc`). Tests point it at a fake tree.
    pub proc_root: PathBuf,
    /// Walk `/proc/*/fd` to find the processes that own each socket. Off, every socket
    /// that is not kernel-held is reported as [`Attribution::Unknown`].
    pub attribute_processes: bool,
    /// The passwd file user names come from (`/etc/passwd`; the host's when the agent runs
    /// in a container).
    pub passwd_path: PathBuf,
    /// Which network namespaces to inventory.
    pub namespaces: Namespaces,
    /// The kubelet's pod log directories (`<namespace>_<name>_<uid>`), where pod names and
    /// namespaces are learnt without API rights; a missing directory means none are.
    pub pod_logs_dir: PathBuf,
}

/// Which network namespaces a scan inventories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespaces {
    /// The agent's own only (the host's, for an agent in the host namespace).
    #[default]
    Own,
    /// Every namespace some process under `proc_root` lives in: containers, pods and
    /// `ip netns` namespaces. Needs the host's PID namespace (`hostPID` in Kubernetes).
    All,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            proc_root: PathBuf::from("/proc"),
            attribute_processes: true,
            passwd_path: PathBuf::from("/etc/passwd"),
            namespaces: Namespaces::Own,
            pod_logs_dir: PathBuf::from("/var/log/pods"),
        }
    }
}

/// Why a scan was impossible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// No `NETLINK_SOCK_DIAG` socket could be opened.
    #[error(
        "cannot open a netlink sock_diag socket: {source} (the agent needs a Linux kernel with \
         `CONFIG_INET_DIAG`; under seccomp or in a sandbox, allow `AF_NETLINK` sockets)"
    )]
    NetlinkUnavailable {
        /// The `socket`/`bind` error.
        source: io::Error,
    },
    /// The kernel answered a socket dump with an error.
    #[error(
        "the kernel refused to list {table} sockets through sock_diag: {source} (load the \
         diag modules: `modprobe tcp_diag udp_diag`, or allow them in the security policy)"
    )]
    SockDiagRefused {
        /// Which dump: `tcp/ipv4`, `udp/ipv6`, …
        table: &'static str,
        /// The errno the kernel answered.
        source: io::Error,
    },
    /// Sending the request or reading the dump failed, or the dump was not understood.
    #[error(
        "cannot read the sock_diag dump of {table} sockets: {source} (retry; if it persists, \
         report it with the output of `uname -r`)"
    )]
    Netlink {
        /// Which dump: `tcp/ipv4`, `udp/ipv6`, …
        table: &'static str,
        /// What went wrong.
        source: io::Error,
    },
}

/// One scan's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Interface addresses and the ephemeral port range.
    pub host: HostState,
    /// Every socket the kernel listed, in dump order (TCP/IPv4, TCP/IPv6, UDP/IPv4,
    /// UDP/IPv6, Unix listeners, raw, SCTP; then the other namespaces').
    pub sockets: Vec<ScannedSocket>,
    /// The processes owning at least one of `sockets`, sorted by pid; fields that could
    /// not be read are empty.
    pub processes: Vec<Process>,
    /// Counts, attribution problems and duration.
    pub stats: ScanStats,
    /// Whether processes were attributed ([`ScanOptions::attribute_processes`]).
    pub processes_attributed: bool,
    /// Problems that did not stop the scan but make it less complete, as sentences for a
    /// person (`cannot read /proc: …`, `cannot list interface addresses: …`).
    pub warnings: Vec<String>,
}

impl Scan {
    /// The inventory: scopes resolved against the host's interfaces, connections folded
    /// into flows (see [`Inventory::from_scan`]).
    pub fn inventory(&self) -> Inventory {
        Inventory::from_scan(
            self.host.clone(),
            self.sockets.iter().cloned(),
            self.processes.iter().cloned(),
        )
    }

    /// The process with `pid`, if it owns a scanned socket.
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes
            .binary_search_by_key(&pid, |p| p.pid)
            .ok()
            .and_then(|i| self.processes.get(i))
    }
}

/// Scans the host; keeps buffers and the user-name cache from one scan to the next.
#[derive(Debug)]
pub struct Scanner {
    options: ScanOptions,
    dumper: Dumper,
    ns_dumper: Dumper,
    walker: FdWalker,
    users: Users,
    raw: Vec<RawSocket>,
}

impl Scanner {
    /// A scanner; opens nothing until [`Scanner::scan`].
    pub fn new(options: ScanOptions) -> Scanner {
        Scanner {
            users: Users::new(options.passwd_path.clone()),
            options,
            dumper: Dumper::default(),
            ns_dumper: Dumper::default(),
            walker: FdWalker::default(),
            raw: Vec::new(),
        }
    }

    /// The options this scanner was made with.
    pub fn options(&self) -> &ScanOptions {
        &self.options
    }

    /// Turns the /proc walk on or off for the next scans (the footprint guard turns it off
    /// when the agent is over its budget).
    pub fn set_attribute_processes(&mut self, on: bool) {
        self.options.attribute_processes = on;
    }

    /// Lists every socket, attributes it and reads the host facts.
    ///
    /// The `/proc` walk runs on a second thread while the kernel dumps sockets: the two
    /// are independent and take comparable time. Other network namespaces (with
    /// [`Namespaces::All`]) are read on a third thread, the only one that ever enters
    /// another namespace; it exits when done.
    pub fn scan(&mut self) -> Result<Scan, ScanError> {
        let started = Instant::now();
        let namespaces = match self.options.namespaces {
            Namespaces::Own => Vec::new(),
            Namespaces::All => netns::discover(&self.options.proc_root, netns::own_inode()),
        };
        let Scanner {
            options,
            dumper,
            ns_dumper,
            walker,
            raw,
            ..
        } = self;
        let proc_root = &options.proc_root;
        let attribute = options.attribute_processes;
        let (dumped, walked, others, more_warnings) = thread::scope(|scope| {
            let walk = if attribute {
                thread::Builder::new()
                    .name("portolan-proc-walk".into())
                    .spawn_scoped(scope, || walker.walk(proc_root))
                    .ok()
            } else {
                None
            };
            let read_others = if namespaces.is_empty() {
                None
            } else {
                thread::Builder::new()
                    .name("portolan-netns".into())
                    .spawn_scoped(scope, || {
                        netns::read_all(proc_root, &namespaces, ns_dumper, true)
                    })
                    .ok()
            };
            let mut more_warnings = Vec::new();
            let dumped = dumper.dump_all(raw).inspect(|()| {
                // The agent's own namespace: this thread never leaves it, and
                // /proc/self/net is the namespace of the process (its main thread).
                protocols::read(
                    dumper,
                    Path::new("/proc/self/net"),
                    protocols::UnixSource::SockDiag,
                    raw,
                    &mut more_warnings,
                );
            });
            let others = read_others.map(|handle| {
                handle.join().unwrap_or_else(|_| netns::Others {
                    warnings: vec!["reading the other network namespaces failed".into()],
                    ..netns::Others::default()
                })
            });
            let walked = walk.map(|handle| {
                handle.join().unwrap_or_else(|_| WalkOutcome {
                    unreadable: true,
                    vanished: false,
                    other_error: Some("the /proc walk failed".into()),
                })
            });
            (dumped, walked, others, more_warnings)
        });
        let others = match others {
            Some(others) => others,
            // No thread to be had: read them here, never entering a namespace on this
            // thread.
            None if !namespaces.is_empty() => {
                netns::read_all(proc_root, &namespaces, ns_dumper, false)
            }
            None => netns::Others::default(),
        };
        let mut others = others;
        others.warnings.extend(more_warnings);
        let walked = match walked {
            Some(walked) => Some(walked),
            // No thread to be had: walk after the dump.
            None if attribute => Some(walker.walk(proc_root)),
            None => None,
        };
        dumped?;
        self.raw.extend_from_slice(&others.sockets);
        Ok(self.finish(walked, others, started))
    }

    /// Everything after the socket dump and the fd walk: host facts, attribution, the
    /// owning processes' details and the statistics.
    fn finish(
        &mut self,
        walked: Option<WalkOutcome>,
        others: netns::Others,
        started: Instant,
    ) -> Scan {
        let mut warnings = Vec::new();
        let mut interfaces = host::interface_addresses().unwrap_or_else(|e| {
            warnings.push(format!(
                "cannot list interface addresses: {e} (wildcard listeners are reported as public)"
            ));
            Vec::new()
        });
        interfaces.extend(others.interfaces);
        interfaces.sort();
        interfaces.dedup();
        let host = HostState {
            interfaces,
            ephemeral_ports: host::ephemeral_ports(&self.options.proc_root),
        };
        warnings.extend(others.warnings);
        if let Some(error) = walked.as_ref().and_then(|w| w.other_error.as_ref()) {
            warnings.push(error.clone());
        }
        let (sockets, owners, mut stats) = attribute(&self.raw, &self.walker, walked.as_ref());
        if !owners.is_empty() {
            self.users.refresh();
        }
        let pods = pods::PodNames::read(&self.options.pod_logs_dir);
        let processes = owners
            .into_iter()
            .map(|pid| {
                let mut p = procfs::read_process(&self.options.proc_root, pid, &self.users);
                pods.fill(&mut p);
                p
            })
            .collect();
        stats.namespaces = 1 + others.read;
        stats.namespaces_from_procfs = others.from_procfs;
        stats.scan_duration_micros =
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        Scan {
            host,
            sockets,
            processes,
            stats,
            processes_attributed: walked.is_some(),
            warnings,
        }
    }
}

/// Turns the kernel's sockets into scanned sockets with owners and attribution, and
/// counts them. `walked` is `None` when processes were not attributed. Returns the
/// sockets, the owning pids (sorted, unique) and the statistics.
fn attribute(
    raw: &[RawSocket],
    walker: &FdWalker,
    walked: Option<&WalkOutcome>,
) -> (Vec<ScannedSocket>, Vec<u32>, ScanStats) {
    let unowned = match walked {
        Some(w) if w.unreadable => Attribution::NoPermission,
        Some(w) if w.vanished => Attribution::ProcessGone,
        _ => Attribution::Unknown,
    };
    let mut stats = ScanStats::default();
    let mut owners: Vec<u32> = Vec::new();
    let sockets = raw
        .iter()
        .map(|s| {
            let inode = u64::from(s.inode);
            let pids: Vec<u32> = if walked.is_some() && inode != 0 {
                walker.pids_of(inode).collect()
            } else {
                Vec::new()
            };
            let attribution = if !pids.is_empty() {
                Attribution::Owned
            } else if inode == 0 || s.state == SocketState::TimeWait {
                Attribution::Kernel
            } else {
                unowned
            };
            owners.extend_from_slice(&pids);
            let scanned = ScannedSocket {
                key: SocketKey {
                    protocol: s.protocol,
                    local_address: s.local_address,
                    local_port: s.local_port,
                    remote_address: s.remote_address,
                    remote_port: s.remote_port,
                    inode,
                    netns: s.netns,
                },
                state: s.state,
                uid: s.uid,
                pids,
                attribution,
                path: s.path.clone(),
            };
            count(&mut stats, &scanned);
            scanned
        })
        .collect();
    owners.sort_unstable();
    owners.dedup();
    (sockets, owners, stats)
}

/// True for listeners, as [`portolan_core::Socket::is_listener`] decides.
pub fn is_listener(socket: &ScannedSocket) -> bool {
    portolan_core::is_listener(&socket.key, socket.state)
}

fn count(stats: &mut ScanStats, s: &ScannedSocket) {
    stats.sockets += 1;
    if is_listener(s) {
        stats.listeners += 1;
    } else if s.key.remote_port != 0 {
        stats.connections += 1;
    }
    match s.attribution {
        Attribution::Owned => {}
        Attribution::Kernel => stats.kernel_owned += 1,
        Attribution::NoPermission => stats.unattributed_no_permission += 1,
        Attribution::ProcessGone => stats.unattributed_process_gone += 1,
        Attribution::Unknown => stats.unattributed_unknown += 1,
    }
    let state = match s.key.protocol {
        Protocol::Tcp => s.state.as_str(),
        Protocol::Udp => "UDP",
        Protocol::Raw => "RAW",
        Protocol::Unix => "UNIX",
        Protocol::Sctp => "SCTP",
    };
    bump(&mut stats.state_counts, state);
}

fn bump(counts: &mut BTreeMap<String, u32>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}
