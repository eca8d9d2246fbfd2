//! Attribution against a fake `/proc` tree: fd symlinks to `socket:[N]`, processes that
//! vanish, fd directories that cannot be read.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use portolan_core::{Attribution, Protocol, SocketState};

use super::procfs::{WalkOutcome, record};
use super::sock_diag::RawSocket;
use super::{ScanOptions, Scanner};

const CONTAINER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct FakeProc {
    _dir: tempfile::TempDir,
    root: PathBuf,
    passwd: PathBuf,
}

impl FakeProc {
    fn new() -> FakeProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("proc");
        fs::create_dir_all(root.join("sys/net/ipv4")).expect("mkdir");
        fs::write(
            root.join("sys/net/ipv4/ip_local_port_range"),
            "1024\t65000\n",
        )
        .expect("write");
        fs::create_dir_all(root.join("not-a-pid/fd")).expect("mkdir");
        symlink("100", root.join("self")).expect("symlink");
        let passwd = dir.path().join("passwd");
        fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n",
        )
        .expect("write");
        FakeProc {
            _dir: dir,
            root,
            passwd,
        }
    }

    fn process(
        &self,
        pid: u32,
        comm: &str,
        uid: u32,
        cgroup: &str,
        fds: &[(u32, &str)],
    ) -> PathBuf {
        let dir = self.root.join(pid.to_string());
        fs::create_dir_all(dir.join("fd")).expect("mkdir");
        for (fd, target) in fds {
            symlink(target, dir.join("fd").join(fd.to_string())).expect("symlink");
        }
        fs::write(dir.join("comm"), format!("{comm}\n")).expect("write");
        fs::write(
            dir.join("cmdline"),
            format!("/usr/sbin/{comm}\0-g\0daemon off;\0"),
        )
        .expect("write");
        fs::write(
            dir.join("status"),
            format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"),
        )
        .expect("write");
        fs::write(dir.join("cgroup"), cgroup).expect("write");
        symlink(format!("/usr/sbin/{comm}"), dir.join("exe")).expect("symlink");
        dir
    }

    fn scanner(&self) -> Scanner {
        Scanner::new(ScanOptions {
            proc_root: self.root.clone(),
            attribute_processes: true,
            passwd_path: self.passwd.clone(),
            ..ScanOptions::default()
        })
    }
}

fn raw(protocol: Protocol, state: SocketState, port: u16, inode: u32) -> RawSocket {
    let any: IpAddr = [0, 0, 0, 0].into();
    RawSocket {
        protocol,
        state,
        local_address: [127, 0, 0, 1].into(),
        local_port: port,
        remote_address: if state == SocketState::Listen {
            any
        } else {
            [127, 0, 0, 1].into()
        },
        remote_port: if state == SocketState::Listen {
            0
        } else {
            40000
        },
        uid: 33,
        inode,
        netns: 0,
        path: String::new(),
    }
}

/// Runs the attribution half of a scan over `sockets` against the fake tree.
fn scan_with(fake: &FakeProc, sockets: Vec<RawSocket>) -> (super::Scan, WalkOutcome) {
    let mut scanner = fake.scanner();
    scanner.raw = sockets;
    let walked = scanner.walker.walk(&fake.root);
    (
        scanner.finish(Some(walked.clone()), Default::default(), Instant::now()),
        walked,
    )
}

fn by_port(scan: &super::Scan, port: u16) -> &portolan_core::inventory::ScannedSocket {
    scan.sockets
        .iter()
        .find(|s| s.key.local_port == port)
        .expect("socket in scan")
}

#[test]
fn owners_found_with_process_details() {
    let fake = FakeProc::new();
    fake.process(
        100,
        "nginx",
        33,
        "0::/system.slice/nginx.service\n",
        &[
            (3, "socket:[1001]"),
            (4, "/dev/null"),
            (5, "socket:[1002]"),
            (6, "pipe:[77]"),
        ],
    );
    fake.process(
        200,
        "nginx",
        33,
        &format!("12:pids:/docker/{CONTAINER}\n11:cpu:/docker/{CONTAINER}\n"),
        // a forked worker shares the listener; the same socket twice in one process
        &[(7, "socket:[1001]"), (8, "socket:[1001]")],
    );
    fake.process(
        300,
        "idle",
        0,
        "0::/\n",
        &[(0, "/dev/null"), (1, "socket:[9999]")],
    );

    let (scan, walked) = scan_with(
        &fake,
        vec![
            raw(Protocol::Tcp, SocketState::Listen, 80, 1001),
            raw(Protocol::Udp, SocketState::Listen, 53, 1002),
            raw(Protocol::Tcp, SocketState::TimeWait, 81, 0),
            raw(Protocol::Tcp, SocketState::Established, 82, 4242),
        ],
    );
    assert_eq!(walked, WalkOutcome::default());
    assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);

    let listener = by_port(&scan, 80);
    assert_eq!(listener.pids, vec![100, 200]);
    assert_eq!(listener.attribution, Attribution::Owned);
    assert_eq!(by_port(&scan, 53).pids, vec![100]);
    assert_eq!(by_port(&scan, 81).attribution, Attribution::Kernel);
    assert_eq!(by_port(&scan, 82).attribution, Attribution::Unknown);

    // only owners are read: 300 holds no scanned socket
    let pids: Vec<u32> = scan.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![100, 200]);
    let nginx = &scan.processes[0];
    assert_eq!(nginx.name, "nginx");
    assert_eq!(nginx.executable, "/usr/sbin/nginx");
    assert_eq!(nginx.command_line, "/usr/sbin/nginx -g daemon off;");
    assert_eq!(nginx.uid, 33);
    assert_eq!(nginx.user, "www-data");
    assert_eq!(nginx.systemd_unit, "nginx.service");
    assert_eq!(nginx.cgroup, "/system.slice/nginx.service");
    assert_eq!(scan.processes[1].container_id, CONTAINER);
    assert_eq!(scan.processes[1].cgroup, format!("/docker/{CONTAINER}"));

    assert_eq!(scan.host.ephemeral_ports, Some((1024, 65000)));
    let st = &scan.stats;
    assert_eq!((st.sockets, st.listeners, st.connections), (4, 2, 2));
    assert_eq!((st.kernel_owned, st.unattributed_unknown), (1, 1));
    assert_eq!(st.state_counts.get("LISTEN"), Some(&1));
    assert_eq!(st.state_counts.get("UDP"), Some(&1));
    assert_eq!(st.state_counts.get("TIME_WAIT"), Some(&1));
    assert_eq!(st.state_counts.get("ESTABLISHED"), Some(&1));
}

#[test]
fn unknown_uid_is_shown_as_number() {
    let fake = FakeProc::new();
    fake.process(100, "app", 4711, "0::/\n", &[(3, "socket:[1]")]);
    let (scan, _) = scan_with(&fake, vec![raw(Protocol::Tcp, SocketState::Listen, 80, 1)]);
    assert_eq!(scan.processes[0].user, "4711");
}

#[test]
fn vanished_process_makes_unowned_sockets_process_gone() {
    let fake = FakeProc::new();
    fake.process(100, "app", 0, "0::/\n", &[(3, "socket:[1]")]);
    // a pid directory whose fd directory is gone: the process exited mid-walk
    fs::create_dir_all(fake.root.join("300")).expect("mkdir");
    let (scan, walked) = scan_with(
        &fake,
        vec![
            raw(Protocol::Tcp, SocketState::Listen, 80, 1),
            raw(Protocol::Tcp, SocketState::Established, 81, 2),
        ],
    );
    assert!(walked.vanished && !walked.unreadable, "{walked:?}");
    assert_eq!(by_port(&scan, 80).attribution, Attribution::Owned);
    assert_eq!(by_port(&scan, 81).attribution, Attribution::ProcessGone);
    assert_eq!(scan.stats.unattributed_process_gone, 1);
}

#[test]
fn vanished_owner_details_stay_empty_without_failing() {
    let fake = FakeProc::new();
    let dir = fake.process(100, "app", 0, "0::/\n", &[(3, "socket:[1]")]);
    let mut scanner = fake.scanner();
    scanner.raw = vec![raw(Protocol::Tcp, SocketState::Listen, 80, 1)];
    let walked = scanner.walker.walk(&fake.root);
    // the owner exits between the walk and the detail reads
    fs::remove_dir_all(&dir).expect("rm");
    let scan = scanner.finish(Some(walked), Default::default(), Instant::now());
    assert_eq!(scan.sockets[0].pids, vec![100]);
    assert_eq!(scan.processes.len(), 1);
    assert_eq!(scan.processes[0].pid, 100);
    assert_eq!(scan.processes[0].name, "");
}

#[test]
fn unreadable_fd_directory_makes_unowned_sockets_no_permission() {
    let fake = FakeProc::new();
    fake.process(100, "app", 0, "0::/\n", &[(3, "socket:[1]")]);
    // an fd "directory" that cannot be listed (as root, EACCES cannot be provoked with
    // permissions; ENOTDIR takes the same path)
    fs::create_dir_all(fake.root.join("400")).expect("mkdir");
    fs::write(fake.root.join("400/fd"), "").expect("write");
    let (scan, walked) = scan_with(
        &fake,
        vec![
            raw(Protocol::Tcp, SocketState::Listen, 80, 1),
            raw(Protocol::Udp, SocketState::Listen, 81, 2),
        ],
    );
    assert!(walked.unreadable);
    assert_eq!(by_port(&scan, 81).attribution, Attribution::NoPermission);
    assert_eq!(scan.stats.unattributed_no_permission, 1);
    assert!(
        scan.warnings.iter().any(|w| w.contains("400/fd")),
        "{:?}",
        scan.warnings
    );
}

#[test]
fn missing_proc_root_is_no_permission_with_a_warning() {
    let fake = FakeProc::new();
    let mut scanner = Scanner::new(ScanOptions {
        proc_root: fake.root.join("missing"),
        ..ScanOptions::default()
    });
    scanner.raw = vec![raw(Protocol::Tcp, SocketState::Listen, 80, 1)];
    let walked = scanner.walker.walk(&fake.root.join("missing"));
    let scan = scanner.finish(Some(walked), Default::default(), Instant::now());
    assert_eq!(scan.sockets[0].attribution, Attribution::NoPermission);
    assert_eq!(scan.host.ephemeral_ports, None);
    assert_eq!(scan.warnings.len(), 1, "{:?}", scan.warnings);
}

#[test]
fn without_attribution_nothing_is_walked() {
    let fake = FakeProc::new();
    fake.process(100, "app", 0, "0::/\n", &[(3, "socket:[1]")]);
    let mut scanner = fake.scanner();
    scanner.raw = vec![raw(Protocol::Tcp, SocketState::Listen, 80, 1)];
    let scan = scanner.finish(None, Default::default(), Instant::now());
    assert!(!scan.processes_attributed);
    assert!(scan.sockets[0].pids.is_empty());
    assert_eq!(scan.sockets[0].attribution, Attribution::Unknown);
    assert!(scan.processes.is_empty());
}

#[test]
fn errors_are_classified() {
    let path = Path::new("/proc/1/fd");
    let classify = |errno: Errno| {
        let mut outcome = WalkOutcome::default();
        record(
            &io::Error::from_raw_os_error(errno as i32),
            path,
            &mut outcome,
        );
        outcome
    };
    assert!(classify(Errno::EACCES).unreadable);
    assert!(classify(Errno::EPERM).unreadable);
    assert!(classify(Errno::EACCES).other_error.is_none());
    assert!(classify(Errno::ENOENT).vanished);
    assert!(classify(Errno::ESRCH).vanished);
    let emfile = classify(Errno::EMFILE);
    assert!(emfile.unreadable && emfile.other_error.is_some());
}

#[test]
fn real_proc_walk_finds_this_process() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut walker = super::procfs::FdWalker::default();
    let outcome = walker.walk(Path::new("/proc"));
    let me = std::process::id();
    assert!(
        walker.owners.iter().any(|(_, pid)| *pid == me),
        "{outcome:?}"
    );
    drop(listener);
}

/// A real process whose command line is longer than the limit, read by the scan's real
/// `/proc` code: its command line comes out cut at a character boundary (the argument is
/// made of 2-byte characters, so a byte cut at the limit would split one), within the
/// limit, a prefix of the whole, and marked. One just under the limit comes out whole.
#[test]
fn a_long_command_line_is_cut_and_marked() {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};

    use portolan_core::limit::{MARKER, MAX_COMMAND_LINE_BYTES};

    let spawn = |argument: &str| {
        // `read` keeps the shell alive, with its arguments, until stdin closes; its
        // first line says it runs (its command line is the shell's, not the test's).
        let mut child = Command::new("sh")
            .args(["-c", "echo ready; read line", "portolan-test", argument])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sh");
        let mut ready = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out)
                .read_line(&mut ready)
                .expect("read from sh");
        }
        assert_eq!(ready, "ready\n");
        child
    };
    let users = super::procfs::Users::new(PathBuf::from("/etc/passwd"));
    for (argument, cut) in [
        ("é".repeat(MAX_COMMAND_LINE_BYTES), true),
        ("x".repeat(MAX_COMMAND_LINE_BYTES - 100), false),
    ] {
        let whole = format!("sh -c echo ready; read line portolan-test {argument}");
        let mut child = spawn(&argument);
        let process = super::procfs::read_process(Path::new("/proc"), child.id(), &users);
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = child.wait();
        let line = process.command_line;
        assert!(line.len() <= MAX_COMMAND_LINE_BYTES, "{} bytes", line.len());
        if cut {
            let kept = line.strip_suffix(MARKER).unwrap_or_else(|| {
                let end: String = line.chars().rev().take(8).collect();
                panic!("no marker at the end of the command line (reversed: {end:?})")
            });
            assert!(whole.starts_with(kept), "{kept:?} is not a prefix");
            assert!(
                kept.len() > MAX_COMMAND_LINE_BYTES - 8,
                "{} bytes",
                kept.len()
            );
        } else {
            assert!(
                line == whole,
                "a command line of {} bytes came out as {} bytes",
                whole.len(),
                line.len()
            );
        }
    }
}

/// Unix listeners on a path and on an abstract name, a raw ICMP socket and a raw socket
/// bound to loopback, opened by this process: the scan finds each with the right
/// protocol, path or protocol number, state and owner, and `ss -xl` / `ss -w` list the
/// same sockets (by inode for Unix, by address and protocol number for raw).
#[test]
fn unix_listeners_and_raw_sockets_of_this_process() {
    use std::os::fd::AsRawFd;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, socket,
    };
    use portolan_core::Scope;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portolan test.sock");
    let on_path = UnixListener::bind(&path).expect("bind a unix listener on a path");
    let name = format!("portolan-test-{}", std::process::id());
    let abstract_address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let on_name = UnixListener::bind_addr(&abstract_address).expect("bind an abstract listener");
    // Bound but not listening: not in the inventory (`ss -xl` lists it as UNCONN).
    let datagram = UnixDatagram::bind(dir.path().join("dgram.sock")).expect("bind a datagram");
    let icmp = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .expect("open a raw ICMP socket (the test runs as root)");
    let udp_raw = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Udp,
    )
    .expect("open a raw UDP socket");
    bind(udp_raw.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind to loopback");

    let scan = Scanner::new(ScanOptions::default()).scan().expect("scan");
    let inventory = scan.inventory();
    let me = std::process::id();
    let inode_of = |fd: i32| -> u64 {
        let link = fs::read_link(format!("/proc/self/fd/{fd}")).expect("fd link");
        super::procfs::socket_inode(link.as_os_str().as_encoded_bytes()).expect("socket link")
    };

    // Unix: path, abstract name, state, owner, host-local exposure.
    let unix: Vec<_> = inventory
        .sockets
        .values()
        .filter(|s| s.key.protocol == Protocol::Unix && s.pids.contains(&me))
        .collect();
    let wanted = [
        (inode_of(on_path.as_raw_fd()), path.display().to_string()),
        (inode_of(on_name.as_raw_fd()), format!("@{name}")),
    ];
    for (inode, want) in &wanted {
        let s = unix
            .iter()
            .find(|s| s.key.inode == *inode)
            .unwrap_or_else(|| panic!("unix listener {want} (inode {inode}) in {unix:?}"));
        assert_eq!(&s.path, want);
        assert_eq!(s.state, SocketState::Listen);
        assert!(s.is_listener());
        assert_eq!(s.attribution, Attribution::Owned);
        assert_eq!((s.scope, s.exposure), (Scope::Loopback, Scope::Loopback));
    }
    let datagram_inode = inode_of(datagram.as_raw_fd());
    assert!(unix.iter().all(|s| s.key.inode != datagram_inode));
    assert_eq!(unix.len(), 2, "{unix:?}");
    let me_process = scan.process(me).expect("this process is an owner");
    assert!(!me_process.name.is_empty());

    // ss -xl in the same namespace: the same listeners with the same paths and owner.
    let ss = run(&["-xlpH"]);
    let ss_unix = portolan_testkit::ss::parse_ss_unix_output(&ss).expect("ss -xl parses");
    for (inode, want) in &wanted {
        let line = ss_unix
            .iter()
            .find(|u| u.inode == *inode)
            .unwrap_or_else(|| panic!("ss -xl lists inode {inode}:\n{ss}"));
        assert_eq!(&line.path, want);
        assert!(line.listening);
        assert_eq!(line.pids, vec![me]);
    }
    let scanned_inodes: std::collections::BTreeSet<u64> = inventory
        .sockets
        .values()
        .filter(|s| s.key.protocol == Protocol::Unix)
        .map(|s| s.key.inode)
        .collect();
    let ss_inodes: std::collections::BTreeSet<u64> = ss_unix
        .iter()
        .filter(|u| u.listening)
        .map(|u| u.inode)
        .collect();
    assert!(
        ss_inodes.is_subset(&scanned_inodes),
        "every listener of ss -xl is scanned: {:?} missing",
        ss_inodes.difference(&scanned_inodes).collect::<Vec<_>>()
    );

    // Raw: the IP protocol number as the port, wildcard bind exposed like a listener.
    let raw = |inode: u64| {
        inventory
            .sockets
            .values()
            .find(|s| s.key.protocol == Protocol::Raw && s.key.inode == inode)
            .unwrap_or_else(|| panic!("raw socket {inode} in the inventory"))
    };
    let on_icmp = raw(inode_of(icmp.as_raw_fd()));
    assert_eq!(on_icmp.key.local_port, 1);
    assert!(on_icmp.key.local_address.is_unspecified());
    assert_eq!(on_icmp.scope, Scope::Wildcard);
    assert_eq!(
        on_icmp.exposure,
        portolan_core::exposure(on_icmp.key.local_address, &scan.host.interfaces)
    );
    assert!(on_icmp.is_listener());
    assert_eq!(on_icmp.pids, vec![me]);
    let on_udp = raw(inode_of(udp_raw.as_raw_fd()));
    assert_eq!(on_udp.key.local_address, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(on_udp.key.local_port, 17);
    assert_eq!(
        (on_udp.scope, on_udp.exposure),
        (Scope::Loopback, Scope::Loopback)
    );

    // ss -w: the same raw sockets, owned by this process.
    let ss = run(&["-wanpH"]);
    let ss_raw = portolan_testkit::ss::parse_ss_raw_output(&ss).expect("ss -w parses");
    for s in [on_icmp, on_udp] {
        let line = ss_raw
            .iter()
            .find(|r| {
                r.local.port() == s.key.local_port
                    && (r.local.ip() == s.key.local_address
                        || (r.local.ip().is_unspecified() && s.key.local_address.is_unspecified()))
                    && r.pids.contains(&me)
            })
            .unwrap_or_else(|| panic!("ss -w lists {}:\n{ss}", s.key));
        assert_eq!(line.protocol, Protocol::Raw);
        assert_eq!(line.state, s.state);
    }
    let raw_count = |pids: &[u32]| pids.contains(&me);
    assert_eq!(
        inventory
            .sockets
            .values()
            .filter(|s| s.key.protocol == Protocol::Raw && raw_count(&s.pids))
            .count(),
        ss_raw.iter().filter(|r| raw_count(&r.pids)).count()
    );
    drop((on_path, on_name, datagram, icmp, udp_raw));
}

/// Runs `ss` with `args` in this namespace and returns its output.
pub(super) fn run(args: &[&str]) -> String {
    let out = std::process::Command::new("ss")
        .args(args)
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
