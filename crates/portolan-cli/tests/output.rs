//! Snapshot tests of what every query verb prints: fixed answers of the query API go
//! through the same rows and output code as the binary's, into JSON, CSV, a table fitted
//! to 100 columns and wide, and are compared with `tests/snapshots/output/*`. A change to
//! a JSON shape (a contract for scripts, see `docs/json-output.md`) or to a table shows
//! up as a diff, so it is deliberate. Run with `PORTOLAN_BLESS=1` to accept.

// Fixtures end in `..Default::default()`: the query API gains fields, and a new field
// must not break these tests (its snapshot shows whether the output changed).
#![allow(clippy::needless_update)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portolan_cli::output::{self, Context, Format, Record};
use portolan_cli::rows::{FindingRow, FlowRow, HostDetail, HostRow, SocketRow};
use portolan_proto::v1 as pb;

/// The time the answers are looked at: 2023-11-14T22:13:20Z.
const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn ago(secs: i64) -> i64 {
    NOW as i64 - secs
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn hosts() -> Vec<pb::HostSummary> {
    vec![
        pb::HostSummary {
            host_id: "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071".into(),
            hostname: "db-1".into(),
            labels: labels(&[("role", "db"), ("env", "prod"), ("dc", "fra1")]),
            agent_version: "0.1.0".into(),
            kernel: "6.1.0-18-amd64".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            collector: "collector-0".into(),
            scan_interval_ms: 10_000,
            last_seen_unix: ago(7),
            last_seq: 4_211,
            stale: false,
            listeners: 4,
            flows: 17,
            ..Default::default()
        },
        pb::HostSummary {
            host_id: "web-1".into(),
            hostname: "web-1.fra1.example.net".into(),
            labels: labels(&[("role", "app"), ("env", "prod")]),
            agent_version: "0.1.0".into(),
            kernel: "6.1.0-18-amd64".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            collector: "collector-1".into(),
            scan_interval_ms: 10_000,
            last_seen_unix: ago(3_725),
            last_seq: 90,
            stale: true,
            listeners: 2,
            flows: 0,
            ..Default::default()
        },
    ]
}

fn host() -> pb::GetHostResponse {
    pb::GetHostResponse {
        host: hosts().into_iter().next(),
        state: Some(pb::HostState {
            interfaces: vec![
                pb::InterfaceAddress {
                    interface: "lo".into(),
                    address: vec![127, 0, 0, 1],
                    prefix_len: 8,
                    ..Default::default()
                },
                pb::InterfaceAddress {
                    interface: "eth0".into(),
                    address: vec![10, 0, 1, 5],
                    prefix_len: 24,
                    ..Default::default()
                },
                pb::InterfaceAddress {
                    interface: "eth0".into(),
                    address: vec![
                        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x2, 0x16, 0x3e, 0xff, 0xfe, 0, 0, 1,
                    ],
                    prefix_len: 64,
                    ..Default::default()
                },
            ],
            ephemeral_port_min: 32_768,
            ephemeral_port_max: 60_999,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn process(pid: u32, name: &str, exe: &str, cmd: &str, user: &str, unit: &str) -> pb::Process {
    pb::Process {
        pid,
        name: name.into(),
        executable: exe.into(),
        command_line: cmd.into(),
        uid: if user == "root" { 0 } else { 105 },
        user: user.into(),
        systemd_unit: unit.into(),
        container_id: String::new(),
        cgroup: format!("/system.slice/{unit}"),
        ..Default::default()
    }
}

fn postgres() -> pb::Process {
    process(
        812,
        "postgres",
        "/usr/lib/postgresql/15/bin/postgres",
        "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main -c config_file=/etc/postgresql/15/main/postgresql.conf",
        "postgres",
        "postgresql@15-main.service",
    )
}

#[allow(clippy::too_many_arguments)]
fn socket(
    protocol: pb::Protocol,
    state: pb::SocketState,
    local: (Vec<u8>, u32),
    remote: (Vec<u8>, u32),
    scope: pb::Scope,
    exposure: pb::Scope,
    attribution: pb::Attribution,
    processes: Vec<pb::Process>,
) -> pb::HostSocket {
    pb::HostSocket {
        host_id: "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071".into(),
        hostname: "db-1".into(),
        socket: Some(pb::Socket {
            protocol: protocol as i32,
            local_address: local.0,
            local_port: local.1,
            remote_address: remote.0,
            remote_port: remote.1,
            state: state as i32,
            inode: 48_213,
            uid: processes.first().map_or(0, |p| p.uid),
            pids: processes.iter().map(|p| p.pid).collect(),
            attribution: attribution as i32,
            scope: scope as i32,
            exposure: exposure as i32,
            ..Default::default()
        }),
        processes,
        updated_unix: ago(300),
        ..Default::default()
    }
}

fn sockets() -> Vec<pb::HostSocket> {
    use pb::{Attribution as A, Protocol as P, Scope as S, SocketState as St};
    vec![
        socket(
            P::Tcp,
            St::Listen,
            (vec![0, 0, 0, 0], 5432),
            (vec![0, 0, 0, 0], 0),
            S::Wildcard,
            S::Public,
            A::Owned,
            vec![postgres()],
        ),
        socket(
            P::Tcp,
            St::Listen,
            (vec![0; 16], 22),
            (vec![0; 16], 0),
            S::Wildcard,
            S::Private,
            A::Owned,
            vec![
                process(
                    701,
                    "sshd",
                    "/usr/sbin/sshd",
                    "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
                    "root",
                    "ssh.service",
                ),
                process(
                    9_120,
                    "sshd",
                    "/usr/sbin/sshd",
                    "sshd: ana [priv]",
                    "root",
                    "ssh.service",
                ),
            ],
        ),
        socket(
            P::Udp,
            St::Listen,
            (vec![127, 0, 0, 53], 53),
            (vec![0, 0, 0, 0], 0),
            S::Loopback,
            S::Loopback,
            A::Kernel,
            vec![],
        ),
        socket(
            P::Tcp,
            St::Established,
            (vec![10, 0, 1, 5], 5432),
            (vec![10, 0, 2, 7], 51_944),
            S::Private,
            S::Private,
            A::Owned,
            vec![process(
                4_410,
                "postgres",
                "/usr/lib/postgresql/15/bin/postgres",
                // A hostile command line: a quote, a comma, a newline and an escape sequence.
                "postgres: app \"orders\", 10.0.2.7(51944) idle\n\x1b[31mred",
                "postgres",
                "postgresql@15-main.service",
            )],
        ),
    ]
}

fn flows() -> Vec<pb::HostFlow> {
    vec![
        pb::HostFlow {
            host_id: "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071".into(),
            hostname: "db-1".into(),
            flow: Some(pb::Flow {
                protocol: pb::Protocol::Tcp as i32,
                direction: pb::FlowDirection::Inbound as i32,
                local_address: vec![10, 0, 1, 5],
                remote_address: vec![10, 0, 2, 7],
                service_port: 5432,
                state: pb::SocketState::Established as i32,
                pid: 812,
                connections: 12,
                ..Default::default()
            }),
            process: Some(postgres()),
            peer: pb::Peer::Inside as i32,
            peer_host_id: "web-1".into(),
            peer_hostname: "web-1.fra1.example.net".into(),
            updated_unix: ago(40),
            ..Default::default()
        },
        pb::HostFlow {
            host_id: "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071".into(),
            hostname: "db-1".into(),
            flow: Some(pb::Flow {
                protocol: pb::Protocol::Tcp as i32,
                direction: pb::FlowDirection::Outbound as i32,
                local_address: vec![10, 0, 1, 5],
                remote_address: vec![
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0x43,
                ],
                service_port: 443,
                state: pb::SocketState::TimeWait as i32,
                pid: 0,
                connections: 3,
                ..Default::default()
            }),
            process: None,
            peer: pb::Peer::Outside as i32,
            peer_host_id: String::new(),
            peer_hostname: String::new(),
            updated_unix: ago(95_000),
            ..Default::default()
        },
    ]
}

fn findings() -> Vec<pb::Finding> {
    vec![
        pb::Finding {
            fingerprint: "a41f0c9d2e7b5a11".into(),
            rule_id: "database-exposed".into(),
            host_id: "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071".into(),
            hostname: "db-1".into(),
            severity: "high".into(),
            subject: "tcp 0.0.0.0:5432 (postgres)".into(),
            evidence: "exposure=public,bind=0.0.0.0,process=postgres,unit=postgresql@15-main.service,labels=env=prod".into(),
            status: pb::FindingStatus::Open as i32,
            first_seen_unix: ago(2 * 86_400 + 3 * 3_600),
            last_seen_unix: ago(10),
            resolved_at_unix: 0,
            reopened: 1,
            ..Default::default()
        },
        pb::Finding {
            fingerprint: "77c2e01b9f3d4a08".into(),
            rule_id: "horizontal-scan".into(),
            host_id: String::new(),
            hostname: String::new(),
            severity: "critical".into(),
            subject: "203.0.113.9 touched 48 ports on 6 hosts".into(),
            evidence: "remote=203.0.113.9,ports=48,hosts=6,window=5m".into(),
            status: pb::FindingStatus::Resolved as i32,
            first_seen_unix: ago(86_400),
            last_seen_unix: ago(80_000),
            resolved_at_unix: ago(79_000),
            reopened: 0,
            ..Default::default()
        },
    ]
}

/// Renders `rows` in one format.
fn list<R: Record>(format: Format, width: Option<usize>, color: bool, rows: &[R]) -> String {
    let ctx = Context::new(format, width, color, now());
    let mut out = Vec::new();
    output::write_list(&mut out, &ctx, rows).expect("writes to a Vec");
    String::from_utf8(out).expect("utf-8")
}

fn one<R: Record>(format: Format, width: Option<usize>, row: &R) -> String {
    let ctx = Context::new(format, width, false, now());
    let mut out = Vec::new();
    output::write_one(&mut out, &ctx, row).expect("writes to a Vec");
    String::from_utf8(out).expect("utf-8")
}

/// Every format of a list verb: (file name, text).
fn formats<R: Record>(verb: &str, rows: &[R]) -> Vec<(String, String)> {
    vec![
        (
            format!("{verb}.json"),
            list(Format::Json, Some(80), true, rows),
        ),
        (
            format!("{verb}.csv"),
            list(Format::Csv, Some(80), true, rows),
        ),
        (
            format!("{verb}.table.txt"),
            list(Format::Table, Some(100), false, rows),
        ),
        (
            format!("{verb}.wide.txt"),
            list(Format::Wide, Some(80), false, rows),
        ),
    ]
}

fn snapshots() -> Vec<(String, String)> {
    let hosts: Vec<HostRow> = hosts().iter().map(HostRow::from).collect();
    let sockets: Vec<SocketRow> = sockets().iter().map(SocketRow::from).collect();
    let listeners: Vec<SocketRow> = sockets[..1].to_vec();
    let flows: Vec<FlowRow> = flows().iter().map(FlowRow::from).collect();
    let findings: Vec<FindingRow> = findings().iter().map(FindingRow::from).collect();
    let detail = HostDetail::from_response(&host()).expect("a host in the answer");
    let mut all = Vec::new();
    all.extend(formats("hosts", &hosts));
    all.extend(formats("sockets", &sockets));
    all.extend(formats("who-listens", &listeners));
    all.extend(formats("flows", &flows));
    all.extend(formats("findings", &findings));
    all.push(("host.json".into(), one(Format::Json, Some(80), &detail)));
    all.push(("host.csv".into(), one(Format::Csv, Some(80), &detail)));
    all.push((
        "host.table.txt".into(),
        one(Format::Table, Some(60), &detail),
    ));
    all.push(("host.wide.txt".into(), one(Format::Wide, Some(60), &detail)));
    // A narrow terminal, unlimited width (a pipe) and colour (a terminal), once each.
    all.push((
        "sockets.table-80.txt".into(),
        list(Format::Table, Some(80), false, &sockets),
    ));
    all.push((
        "sockets.table-unlimited.txt".into(),
        list(Format::Table, None, false, &sockets),
    ));
    all.push((
        "findings.table-color.txt".into(),
        list(Format::Table, Some(120), true, &findings),
    ));
    all
}

#[test]
fn output_matches_the_snapshots() -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/output");
    let bless = std::env::var_os("PORTOLAN_BLESS").is_some();
    if bless {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut stale = Vec::new();
    for (name, text) in snapshots() {
        let path = dir.join(&name);
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        if text != stored {
            if bless {
                std::fs::write(&path, &text)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            } else {
                stale.push(name);
            }
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the output of {} changed; check the difference and accept it with `PORTOLAN_BLESS=1 cargo test -p portolan-cli --test output`",
            stale.join(", ")
        ))
    }
}

/// The longest line, in characters.
fn widest(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[test]
fn tables_fit_the_width_and_keep_the_key_columns() {
    let sockets: Vec<SocketRow> = sockets().iter().map(SocketRow::from).collect();
    let findings: Vec<FindingRow> = findings().iter().map(FindingRow::from).collect();
    let hosts: Vec<HostRow> = hosts().iter().map(HostRow::from).collect();
    let flows: Vec<FlowRow> = flows().iter().map(FlowRow::from).collect();
    for width in [90, 100, 120] {
        let table = list(Format::Table, Some(width), false, &sockets);
        assert!(widest(&table) <= width, "{width}:\n{table}");
        assert!(
            table.contains("0.0.0.0:5432") && table.contains("10.0.2.7:51944"),
            "{table}"
        );
    }
    for width in [100, 120] {
        let table = list(Format::Table, Some(width), false, &flows);
        assert!(widest(&table) <= width, "{width}:\n{table}");
    }
    for width in [80, 100] {
        let table = list(Format::Table, Some(width), false, &findings);
        assert!(widest(&table) <= width, "{width}:\n{table}");
        assert!(table.contains("database-exposed") && table.contains("horizontal-scan"));
    }
    // Below what the key columns need, free columns stop at their floor and the terminal
    // wraps: keys are still whole.
    let table = list(Format::Table, Some(40), false, &hosts);
    assert!(
        table.contains("3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071"),
        "{table}"
    );
    // Wide ignores the width.
    let wide = list(Format::Wide, Some(40), false, &sockets);
    assert!(
        wide.contains("config_file=/etc/postgresql/15/main/postgresql.conf"),
        "{wide}"
    );
}

#[test]
fn json_lists_are_arrays_and_host_is_an_object() {
    let sockets: Vec<SocketRow> = sockets().iter().map(SocketRow::from).collect();
    let doc: serde_json::Value =
        serde_json::from_str(&list(Format::Json, None, true, &sockets)).expect("JSON");
    assert!(doc.is_array());
    assert_eq!(doc[0]["exposure"], "public");
    let none: Vec<SocketRow> = Vec::new();
    assert_eq!(list(Format::Json, None, false, &none), "[]\n");
    let detail = HostDetail::from_response(&host()).expect("a host");
    let doc: serde_json::Value =
        serde_json::from_str(&one(Format::Json, None, &detail)).expect("JSON");
    assert_eq!(doc["hostname"], "db-1");
    assert_eq!(doc["interfaces"][1]["address"], "10.0.1.5");
}

#[test]
fn csv_and_json_never_carry_escape_sequences_of_their_own() {
    let findings: Vec<FindingRow> = findings().iter().map(FindingRow::from).collect();
    for format in [Format::Csv, Format::Json] {
        let text = list(format, Some(80), true, &findings);
        assert!(!text.contains('\x1b'), "{format:?}: {text}");
    }
}
