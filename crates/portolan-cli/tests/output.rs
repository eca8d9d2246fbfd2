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

use portolan_cli::output::stream::Lines;
use portolan_cli::output::{self, Context, Format, Record};
use portolan_cli::rows::{
    EventRow, FindingChangeRow, FindingRow, FlowRow, HostDetail, HostRow, RulesTestReport,
    SnapshotDoc, SocketRow,
};
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

/// One socket row; the pairs are (protocol, state) and (scope, exposure).
fn socket(
    (protocol, state): (pb::Protocol, pb::SocketState),
    local: (Vec<u8>, u32),
    remote: (Vec<u8>, u32),
    (scope, exposure): (pb::Scope, pb::Scope),
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
            (P::Tcp, St::Listen),
            (vec![0, 0, 0, 0], 5432),
            (vec![0, 0, 0, 0], 0),
            (S::Wildcard, S::Public),
            A::Owned,
            vec![postgres()],
        ),
        socket(
            (P::Tcp, St::Listen),
            (vec![0; 16], 22),
            (vec![0; 16], 0),
            (S::Wildcard, S::Private),
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
            (P::Udp, St::Listen),
            (vec![127, 0, 0, 53], 53),
            (vec![0, 0, 0, 0], 0),
            (S::Loopback, S::Loopback),
            A::Kernel,
            vec![],
        ),
        socket(
            (P::Tcp, St::Established),
            (vec![10, 0, 1, 5], 5432),
            (vec![10, 0, 2, 7], 51_944),
            (S::Private, S::Private),
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
            // The client is a pod on web-1: its pod IP is on the pod's namespace.
            peer_netns_inode: 4_026_532_999,
            peer_pod_uid: "0a1b2c3d-0000-4000-8000-00000000000a".into(),
            peer_pod_namespace: "shop".into(),
            peer_pod_name: "checkout-7d9f8".into(),
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
            ack: Some(pb::FindingAck {
                acked_by: "spiffe://portolan/operator/admin/alice".into(),
                reason: "firewalled upstream, see TICKET-123".into(),
                until_unix: ago(-4 * 3_600),
                at_unix: ago(600),
                ..Default::default()
            }),
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
            // Until the status changes: a resolved finding's lapses when it reopens.
            ack: Some(pb::FindingAck {
                acked_by: "spiffe://portolan/operator/admin/bob".into(),
                reason: "pen test, scheduled".into(),
                until_unix: 0,
                at_unix: ago(79_500),
                ..Default::default()
            }),
            ..Default::default()
        },
        pb::Finding {
            fingerprint: "0c3e99d1a2b4c5f6".into(),
            rule_id: "telnet-anywhere".into(),
            host_id: "web-1".into(),
            hostname: "web-1".into(),
            severity: "medium".into(),
            subject: "tcp [::]:23 (inetd)".into(),
            evidence: "exposure=private,process=inetd".into(),
            status: pb::FindingStatus::Open as i32,
            first_seen_unix: ago(3_600),
            last_seen_unix: ago(10),
            ..Default::default()
        },
    ]
}

/// A host's history: a listener that came and went, one that changed owner, flows.
fn events() -> Vec<pb::HostEvent> {
    let host_id = "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071";
    let listener = |port: u32, pids: Vec<u32>| pb::Socket {
        protocol: pb::Protocol::Tcp as i32,
        local_address: vec![0, 0, 0, 0],
        local_port: port,
        remote_address: vec![0, 0, 0, 0],
        remote_port: 0,
        state: pb::SocketState::Listen as i32,
        inode: 48_213,
        uid: 105,
        pids,
        attribution: pb::Attribution::Owned as i32,
        scope: pb::Scope::Wildcard as i32,
        exposure: pb::Scope::Public as i32,
        ..Default::default()
    };
    let flow = |direction: pb::FlowDirection, remote: Vec<u8>, port: u32, n: u32| pb::Flow {
        protocol: pb::Protocol::Tcp as i32,
        direction: direction as i32,
        local_address: vec![10, 0, 1, 5],
        remote_address: remote,
        service_port: port,
        state: pb::SocketState::Established as i32,
        pid: 812,
        connections: n,
        ..Default::default()
    };
    use pb::host_event::Subject;
    vec![
        pb::HostEvent {
            host_id: host_id.into(),
            seq: 4_211,
            at_unix: ago(120),
            kind: pb::EventKind::Removed as i32,
            key: "tcp 0.0.0.0:8080 0.0.0.0:0 #48213".into(),
            subject: Some(Subject::Socket(listener(8080, vec![4_410]))),
            processes: vec![process(
                4_410,
                "java",
                "/usr/lib/jvm/java-17/bin/java",
                "java -jar /opt/admin/admin.jar --port 8080",
                "app",
                "admin.service",
            )],
            ..Default::default()
        },
        pb::HostEvent {
            host_id: host_id.into(),
            seq: 4_210,
            at_unix: ago(180),
            kind: pb::EventKind::Upserted as i32,
            key: "flow tcp in 10.0.1.5 10.0.2.7:5432 established".into(),
            subject: Some(Subject::Flow(flow(
                pb::FlowDirection::Inbound,
                vec![10, 0, 2, 7],
                5432,
                12,
            ))),
            processes: vec![postgres()],
            ..Default::default()
        },
        pb::HostEvent {
            host_id: host_id.into(),
            seq: 4_209,
            at_unix: ago(240),
            kind: pb::EventKind::Removed as i32,
            key: "flow tcp out 10.0.1.5 192.0.2.10:443 established".into(),
            subject: Some(Subject::Flow(pb::Flow {
                pid: 0,
                ..flow(pb::FlowDirection::Outbound, vec![192, 0, 2, 10], 443, 1)
            })),
            processes: vec![],
            ..Default::default()
        },
        pb::HostEvent {
            host_id: host_id.into(),
            seq: 4_100,
            at_unix: ago(3 * 3_600),
            kind: pb::EventKind::Changed as i32,
            key: "tcp 0.0.0.0:5432 0.0.0.0:0 #48213".into(),
            subject: Some(Subject::Socket(listener(5432, vec![812, 9_001]))),
            processes: vec![
                postgres(),
                process(
                    9_001,
                    "pgbouncer",
                    "/usr/sbin/pgbouncer",
                    "pgbouncer /etc/pgbouncer/pgbouncer.ini",
                    "postgres",
                    "pgbouncer.service",
                ),
            ],
            ..Default::default()
        },
        pb::HostEvent {
            host_id: host_id.into(),
            seq: 3_990,
            at_unix: ago(26 * 3_600),
            kind: pb::EventKind::Added as i32,
            key: "tcp 0.0.0.0:8080 0.0.0.0:0 #48213".into(),
            subject: Some(Subject::Socket(listener(8080, vec![4_410]))),
            processes: vec![process(
                4_410,
                "java",
                "/usr/lib/jvm/java-17/bin/java",
                "java -jar /opt/admin/admin.jar --port 8080",
                "app",
                "admin.service",
            )],
            ..Default::default()
        },
    ]
}

/// `portolan at`: db-1 three hours ago.
fn snapshot(flows_too: bool) -> SnapshotDoc {
    let answer = pb::GetSnapshotResponse {
        host: hosts().into_iter().next(),
        state: host().state,
        seq: 4_100,
        seq_at_unix: ago(3 * 3_600 + 40),
        // The collector's order, by local port: the listeners come first in the document.
        sockets: {
            let mut s = sockets();
            s.sort_by_key(|s| s.socket.as_ref().map_or(0, |s| s.local_port));
            s
        },
        flows: flows(),
        truncated: false,
        ..Default::default()
    };
    SnapshotDoc::new(
        "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071",
        ago(3 * 3_600),
        flows_too,
        &answer,
    )
}

/// `portolan rules test`: two findings, one rule the collector could not run.
fn rules_test() -> RulesTestReport {
    let step = 3_600;
    let instants: Vec<i64> = (0..=168).map(|i| ago((168 - i) * step)).collect();
    let answer = pb::TestRulesResponse {
        instants_unix: instants,
        findings: vec![
            pb::TestedFinding {
                rule_id: "database-exposed".into(),
                host_id: "3f2a9c0e4b6d4e0f8a1b2c3d4e5f6071".into(),
                hostname: "db-1".into(),
                fingerprint: "a41f0c9d2e7b5a11".into(),
                severity: "high".into(),
                subject: "tcp 0.0.0.0:5432 (postgres)".into(),
                evidence: "exposure=public,bind=0.0.0.0,process=postgres".into(),
                first_unix: ago(6 * 86_400),
                last_unix: ago(0),
                instants: 120,
                episodes: 2,
                open_now: true,
                ..Default::default()
            },
            pb::TestedFinding {
                rule_id: "new-listener".into(),
                host_id: "web-1".into(),
                hostname: String::new(),
                fingerprint: "5e0d11aa0b9c8d7e".into(),
                severity: "medium".into(),
                subject: "tcp 0.0.0.0:8080 (java)".into(),
                evidence: "program=/usr/lib/jvm/java-17/bin/java,window=7d".into(),
                first_unix: ago(26 * 3_600),
                last_unix: ago(3_600),
                instants: 26,
                episodes: 1,
                open_now: false,
                ..Default::default()
            },
        ],
        failures: vec![pb::RuleFailure {
            rule_id: "ephemeral-exhaustion".into(),
            message: "Code: 62. DB::Exception: Syntax error".into(),
            ..Default::default()
        }],
        rules: 3,
        ..Default::default()
    };
    RulesTestReport::new("my-rules.yaml", Duration::from_secs(7 * 86_400), &answer)
}

/// What `portolan watch findings` prints for a few changes.
fn finding_changes() -> Vec<FindingChangeRow> {
    let f = findings();
    let change = |change: pb::FindingChange, finding: &pb::Finding, secs: i64| {
        FindingChangeRow::from_message(&pb::WatchFindingsResponse {
            change: change as i32,
            finding: Some(finding.clone()),
            observed_unix: ago(secs),
            ..Default::default()
        })
        .expect("a change about a finding")
    };
    let synced = pb::WatchFindingsResponse {
        change: pb::FindingChange::Synced as i32,
        finding: None,
        observed_unix: ago(100),
        ..Default::default()
    };
    assert!(FindingChangeRow::from_message(&synced).is_none());
    let unacked = pb::Finding {
        ack: None,
        ..f[0].clone()
    };
    vec![
        change(pb::FindingChange::Opened, &f[2], 60),
        change(pb::FindingChange::Acked, &f[0], 30),
        change(pb::FindingChange::Unacked, &unacked, 5),
    ]
}

/// Rows printed one at a time, as `portolan watch` prints them.
fn streamed<R: Record>(format: Format, width: Option<usize>, rows: &[R]) -> String {
    let ctx = Context::new(format, width, false, now());
    let mut out = Vec::new();
    let mut lines = Lines::<R>::new();
    lines.start(&mut out, &ctx).expect("writes to a Vec");
    for row in rows {
        lines.write(&mut out, &ctx, row).expect("writes to a Vec");
    }
    String::from_utf8(out).expect("utf-8")
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

/// A document (`at`, `rules test`) in one format: (stdout, stderr).
fn document(
    format: Format,
    width: Option<usize>,
    write: impl Fn(&mut Vec<u8>, &mut Vec<u8>, &Context),
) -> (String, String) {
    let ctx = Context::new(format, width, false, now());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    write(&mut out, &mut err, &ctx);
    (
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

fn write_at(doc: &SnapshotDoc) -> impl Fn(&mut Vec<u8>, &mut Vec<u8>, &Context) + '_ {
    move |out, _, ctx| doc.write(out, ctx).expect("writes to a Vec")
}

fn write_report(report: &RulesTestReport) -> impl Fn(&mut Vec<u8>, &mut Vec<u8>, &Context) + '_ {
    move |out, err, ctx| report.write(out, err, ctx).expect("writes to a Vec")
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

    // history: a list of events.
    let events: Vec<EventRow> = events().iter().map(EventRow::from).collect();
    all.extend(formats("history", &events));

    // ack and unack print the finding as one record (every column for people).
    all.push(("ack.txt".into(), one(Format::Wide, Some(100), &findings[0])));
    all.push(("ack.json".into(), one(Format::Json, None, &findings[0])));

    // at: a document with a header line for people.
    let at = snapshot(true);
    all.push((
        "at.json".into(),
        document(Format::Json, None, write_at(&at)).0,
    ));
    let sockets_only = snapshot(false);
    all.push((
        "at.csv".into(),
        document(Format::Csv, None, write_at(&sockets_only)).0,
    ));
    all.push((
        "at.table.txt".into(),
        document(Format::Table, Some(100), write_at(&at)).0,
    ));
    all.push((
        "at.wide.txt".into(),
        document(Format::Wide, None, write_at(&sockets_only)).0,
    ));
    let unreported = SnapshotDoc::new(
        "web-1",
        ago(86_400),
        false,
        &pb::GetSnapshotResponse::default(),
    );
    all.push((
        "at-unreported.table.txt".into(),
        document(Format::Table, Some(100), write_at(&unreported)).0,
    ));

    // rules test: a document; the summary and failures go to stderr.
    let report = rules_test();
    for (name, format, width) in [
        ("rules-test.json", Format::Json, None),
        ("rules-test.csv", Format::Csv, None),
        ("rules-test.table.txt", Format::Table, Some(100)),
        ("rules-test.wide.txt", Format::Wide, None),
    ] {
        let (out, err) = document(format, width, write_report(&report));
        all.push((name.into(), format!("{out}--- stderr ---\n{err}")));
    }
    let nothing = RulesTestReport {
        findings: Vec::new(),
        failures: Vec::new(),
        ..report.clone()
    };
    let (out, err) = document(Format::Table, Some(100), write_report(&nothing));
    all.push((
        "rules-test-nothing.table.txt".into(),
        format!("{out}--- stderr ---\n{err}"),
    ));

    // watch: a line per change, printed as it arrives.
    let changes = finding_changes();
    all.push((
        "watch-findings.ndjson".into(),
        streamed(Format::Json, None, &changes),
    ));
    all.push((
        "watch-findings.csv".into(),
        streamed(Format::Csv, None, &changes),
    ));
    all.push((
        "watch-findings.table.txt".into(),
        streamed(Format::Table, Some(100), &changes),
    ));
    all.push((
        "watch-findings.wide.txt".into(),
        streamed(Format::Wide, None, &changes),
    ));
    all.push((
        "watch-host.ndjson".into(),
        streamed(Format::Json, None, &events),
    ));
    all.push((
        "watch-host.table.txt".into(),
        streamed(Format::Table, Some(100), &events),
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
    // Findings carry nine columns since acknowledgements: an 80-column terminal wraps.
    for width in [100, 120] {
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

#[test]
fn watch_json_is_one_object_per_line() {
    let changes = finding_changes();
    let text = streamed(Format::Json, Some(80), &changes);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), changes.len(), "{text}");
    for line in lines {
        let doc: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        assert!(doc["finding"]["fingerprint"].is_string(), "{line}");
    }
    let events: Vec<EventRow> = events().iter().map(EventRow::from).collect();
    let text = streamed(Format::Json, None, &events);
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["kind"], "removed");
    assert_eq!(first["socket"]["local_port"], 8080);
    assert!(first["flow"].is_null());
}

#[test]
fn watch_lines_fit_the_terminal() {
    let events: Vec<EventRow> = events().iter().map(EventRow::from).collect();
    for width in [120, 140] {
        let text = streamed(Format::Table, Some(width), &events);
        assert!(widest(&text) <= width, "{width}:\n{text}");
        assert_eq!(
            text.lines().count(),
            events.len() + 1,
            "header and a line each"
        );
    }
}

#[test]
fn acknowledgements_show_who_why_and_until() {
    let findings: Vec<FindingRow> = findings().iter().map(FindingRow::from).collect();
    let table = list(Format::Table, Some(140), false, &findings);
    let first = table.lines().nth(1).expect("a row");
    assert!(
        first.contains("alice") && first.contains("in 4h"),
        "{table}"
    );
    let second = table.lines().nth(2).expect("a row");
    assert!(
        second.contains("bob") && second.contains("reopened"),
        "{table}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&list(Format::Json, None, false, &findings)).expect("JSON");
    assert_eq!(
        doc[0]["ack"]["acked_by"],
        "spiffe://portolan/operator/admin/alice"
    );
    assert_eq!(doc[0]["ack"]["until_unix"], NOW + 4 * 3_600);
    assert!(doc[2]["ack"].is_null());
    let wide = list(Format::Wide, None, false, &findings);
    assert!(
        wide.contains("firewalled upstream, see TICKET-123"),
        "{wide}"
    );
}

#[test]
fn at_puts_listeners_first_and_says_when() {
    let doc = snapshot(true);
    let states: Vec<&str> = doc.sockets.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["listen", "listen", "listen", "established"]);
    let ctx = Context::new(Format::Table, None, false, now());
    let header = doc.header(&ctx);
    assert!(
        header.starts_with(
            "db-1 at 2023-11-14T19:13:20Z (3h ago): last change at or before it scanned 2023-11-14T19:12:40Z (40s earlier, seq 4100)"
        ),
        "{header}"
    );
}

#[test]
fn rules_test_summary_counts() {
    let report = rules_test();
    assert_eq!(
        report.summary(),
        "3 rules × 169 evaluations over 7d: 2 findings would have fired (1 open now)"
    );
    assert_eq!(report.step_seconds, 3_600);
}
