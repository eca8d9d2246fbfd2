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
