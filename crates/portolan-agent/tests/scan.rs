//! The scanner against the real kernel: sockets this test process opens must be found with
//! the right state, addresses and owner, agree with `ss`, and show up in the binary's
//! JSON output.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use portolan_agent::scan::{Scan, ScanOptions, Scanner};
use portolan_core::inventory::ScannedSocket;
use portolan_core::{Attribution, Protocol, SocketState};

/// Tests in this binary share one process: each takes this lock so that no other test
/// opens or closes sockets of this process while it compares.
static SOCKETS: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    SOCKETS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sockets held open for the length of a test.
struct Fixture {
    tcp4: TcpListener,
    tcp6: TcpListener,
    udp: UdpSocket,
    udp_connected: UdpSocket,
    client: TcpStream,
    server: TcpStream,
}

impl Fixture {
    fn open() -> Fixture {
        let tcp4 = TcpListener::bind("127.0.0.1:0").expect("bind tcp 127.0.0.1");
        let tcp6 = TcpListener::bind("[::1]:0").expect("bind tcp [::1] (is IPv6 enabled?)");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let udp_connected = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        udp_connected
            .connect(udp.local_addr().expect("udp address"))
            .expect("connect udp");
        let client = TcpStream::connect(tcp4.local_addr().expect("tcp address")).expect("connect");
        let (server, _) = tcp4.accept().expect("accept");
        Fixture {
            tcp4,
            tcp6,
            udp,
            udp_connected,
            client,
            server,
        }
    }

    /// `(protocol, local, remote, state)` of every fixture socket.
    fn expected(&self) -> BTreeSet<(Protocol, SocketAddr, SocketAddr, SocketState)> {
        let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        let addr = |r: std::io::Result<SocketAddr>| r.expect("socket address");
        BTreeSet::from([
            (
                Protocol::Tcp,
                addr(self.tcp4.local_addr()),
                any4,
                SocketState::Listen,
            ),
            (
                Protocol::Tcp,
                addr(self.tcp6.local_addr()),
                any6,
                SocketState::Listen,
            ),
            (
                Protocol::Udp,
                addr(self.udp.local_addr()),
                any4,
                SocketState::Listen,
            ),
            (
                Protocol::Udp,
                addr(self.udp_connected.local_addr()),
                addr(self.udp.local_addr()),
                SocketState::Established,
            ),
            (
                Protocol::Tcp,
                addr(self.client.local_addr()),
                addr(self.client.peer_addr()),
                SocketState::Established,
            ),
            (
                Protocol::Tcp,
                addr(self.server.local_addr()),
                addr(self.server.peer_addr()),
                SocketState::Established,
            ),
        ])
    }
}

fn scan() -> Scan {
    Scanner::new(ScanOptions::default())
        .scan()
        .expect("scan (needs netlink sock_diag)")
}

fn tuple(s: &ScannedSocket) -> (Protocol, SocketAddr, SocketAddr, SocketState) {
    (
        s.key.protocol,
        SocketAddr::new(s.key.local_address, s.key.local_port),
        SocketAddr::new(s.key.remote_address, s.key.remote_port),
        s.state,
    )
}

fn my_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read /proc/self/comm")
        .trim_end()
        .to_string()
}

#[test]
fn finds_this_process_sockets_with_state_addresses_and_owner() {
    let _lock = exclusive();
    let fixture = Fixture::open();
    let scan = scan();
    let me = std::process::id();
    for want in fixture.expected() {
        let found = scan
            .sockets
            .iter()
            .find(|s| tuple(s) == want)
            .unwrap_or_else(|| panic!("{want:?} not in the scan"));
        assert_eq!(found.pids, vec![me], "{want:?}");
        assert_eq!(found.attribution, Attribution::Owned, "{want:?}");
        assert_ne!(found.key.inode, 0, "{want:?}");
    }
    let process = scan.process(me).expect("this process in the scan");
    assert_eq!(process.name, my_comm());
    assert!(!process.executable.is_empty());
    assert!(!process.command_line.is_empty());

    let st = &scan.stats;
    assert!(
        st.sockets >= 6 && st.listeners >= 3 && st.connections >= 3,
        "{st:?}"
    );
    assert!(
        st.state_counts.get("UDP").copied().unwrap_or(0) >= 2,
        "{st:?}"
    );
    assert!(
        scan.host
            .interfaces
            .iter()
            .any(|i| i.address == IpAddr::from(Ipv4Addr::LOCALHOST)),
        "{:?}",
        scan.host
    );
    // the inventory keeps the listeners individually and folds the connections
    let inventory = scan.inventory();
    let listener = fixture.tcp4.local_addr().expect("address");
    assert!(
        inventory
            .listeners()
            .any(|s| s.key.local_port == listener.port() && s.pids == vec![me])
    );
    drop(fixture);
}

/// One line of `ss -tunapH`, reduced to what both tools report.
#[derive(Debug)]
struct SsLine {
    socket: (Protocol, SocketAddr, SocketAddr, SocketState),
    pids: BTreeSet<u32>,
}

fn ss_state(protocol: Protocol, name: &str) -> Option<SocketState> {
    Some(match (protocol, name) {
        (Protocol::Udp, "UNCONN") => SocketState::Listen,
        (_, "ESTAB") => SocketState::Established,
        (_, "LISTEN") => SocketState::Listen,
        (_, "SYN-SENT") => SocketState::SynSent,
        (_, "SYN-RECV") => SocketState::SynRecv,
        (_, "FIN-WAIT-1") => SocketState::FinWait1,
        (_, "FIN-WAIT-2") => SocketState::FinWait2,
        (_, "TIME-WAIT") => SocketState::TimeWait,
        (_, "UNCONN" | "CLOSE") => SocketState::Close,
        (_, "CLOSE-WAIT") => SocketState::CloseWait,
        (_, "LAST-ACK") => SocketState::LastAck,
        (_, "CLOSING") => SocketState::Closing,
        _ => return None,
    })
}

/// `127.0.0.1:80`, `[::1]:80`, `127.0.0.53%lo:53`, `0.0.0.0:*`, `[::]:*`, `*:*`.
fn ss_endpoint(text: &str, family_of: Option<IpAddr>) -> Option<SocketAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.split('%').next()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = if port == "*" { 0 } else { port.parse().ok()? };
    let ip: IpAddr = match (host, family_of) {
        ("*", Some(IpAddr::V6(_))) => Ipv6Addr::UNSPECIFIED.into(),
        ("*", _) => Ipv4Addr::UNSPECIFIED.into(),
        (h, _) => h.parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

fn parse_ss(output: &str) -> Vec<SsLine> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let protocol = match *fields.first()? {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            let state = ss_state(protocol, fields.get(1)?)?;
            let local = ss_endpoint(fields.get(4)?, None)?;
            let remote = ss_endpoint(fields.get(5)?, Some(local.ip()))?;
            let pids = fields
                .get(6..)
                .unwrap_or_default()
                .join(" ")
                .split("pid=")
                .skip(1)
                .filter_map(|rest| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .collect();
            Some(SsLine {
                socket: (protocol, local, remote, state),
                pids,
            })
        })
        .collect()
}

#[test]
fn agrees_with_ss_on_this_process_sockets() {
    let _lock = exclusive();
    let fixture = Fixture::open();
    let me = std::process::id();
    let output = Command::new("ss")
        .arg("-tunapH")
        .output()
        .expect("run `ss -tunapH` (install iproute2)");
    assert!(output.status.success(), "ss failed: {output:?}");
    let scan = scan();

    let from_ss: BTreeSet<_> = parse_ss(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .filter(|l| l.pids.contains(&me))
        .map(|l| {
            assert_eq!(l.pids, BTreeSet::from([me]), "{l:?}");
            l.socket
        })
        .collect();
    let from_scan: BTreeSet<_> = scan
        .sockets
        .iter()
        .filter(|s| s.pids.contains(&me))
        .map(|s| {
            assert_eq!(s.pids, vec![me], "{s:?}");
            tuple(s)
        })
        .collect();
    assert_eq!(from_scan, from_ss);
    assert!(fixture.expected().is_subset(&from_scan));
}

#[test]
fn binary_prints_a_listener_of_this_process_as_json() {
    let _lock = exclusive();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let output = Command::new(env!("CARGO_BIN_EXE_portolan-agent"))
        .args(["scan", "--output", "json", "--listening"])
        .output()
        .expect("run portolan-agent");
    assert!(output.status.success(), "{output:?}");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json document");
    let sockets = doc["sockets"].as_array().expect("sockets");
    let mine = sockets
        .iter()
        .find(|s| s["protocol"] == "tcp" && s["local_port"] == port)
        .unwrap_or_else(|| panic!("listener on port {port} missing"));
    assert_eq!(mine["state"], "LISTEN");
    assert_eq!(mine["local_address"], "127.0.0.1");
    assert_eq!(mine["scope"], "loopback");
    assert_eq!(mine["exposure"], "loopback");
    assert_eq!(mine["listener"], true);
    assert_eq!(mine["attribution"], "owned");
    assert_eq!(mine["processes"][0]["pid"], std::process::id());
    assert_eq!(mine["processes"][0]["name"], my_comm());
    assert!(sockets.iter().all(|s| s["listener"] == true));
    assert!(doc["stats"]["sockets"].as_u64().unwrap_or(0) >= 1);
    assert!(doc["host"]["interfaces"].is_array());
    drop(listener);
}

#[test]
fn binary_table_and_closed_stdout() {
    let _lock = exclusive();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let output = Command::new(env!("CARGO_BIN_EXE_portolan-agent"))
        .arg("scan")
        .output()
        .expect("run portolan-agent");
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    let row = table
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port} ")))
        .unwrap_or_else(|| panic!("no row for port {port}:\n{table}"));
    assert!(row.starts_with("tcp") && row.contains("LISTEN") && row.contains("loopback"));
    assert!(row.contains(&format!("{}/", std::process::id())), "{row}");
    assert!(table.lines().any(|l| l.contains("listening")), "{table}");

    // a reader that goes away (`| head`) is success, not a panic
    let mut child = Command::new(env!("CARGO_BIN_EXE_portolan-agent"))
        .args(["scan", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portolan-agent");
    drop(child.stdout.take());
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).expect("read stderr");
    }
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // bad usage exits 64
    let bad = Command::new(env!("CARGO_BIN_EXE_portolan-agent"))
        .args(["scan", "--output", "yaml"])
        .output()
        .expect("run portolan-agent");
    assert_eq!(bad.status.code(), Some(64));
    drop(listener);
}
