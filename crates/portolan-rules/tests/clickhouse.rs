//! Compiled rules against a real ClickHouse server (the managed one, from the
//! `clickhouse-server` binary on the machine: Debian's 18.16 here), over a small fleet
//! seeded through the collector's store: exactly the expected findings, and stable
//! fingerprints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use portolan_core::{
    Attribution, Direction, FlowKey, HostState, InterfaceAddress, Inventory, Process, Protocol,
    ScanStats, Scope, Socket, SocketKey, SocketState, diff,
};
use portolan_rules::{compile, parse, sql_string};
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_store::{ChangeKind, HostRecord, Store};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, clickhouse::Row, serde::Deserialize)]
struct FindingRow {
    rule_id: String,
    host_id: String,
    fingerprint: String,
    severity: String,
    subject: String,
    evidence: String,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn process(pid: u32, name: &str, executable: &str, unit: &str) -> Process {
    Process {
        pid,
        name: name.into(),
        executable: executable.into(),
        command_line: format!("{executable} --it's \\ quoted"),
        uid: 100,
        user: name.into(),
        systemd_unit: unit.into(),
        container_id: String::new(),
        cgroup: format!("/system.slice/{unit}"),
        ..Process::default()
    }
}

fn listener(addr: &str, port: u16, inode: u64, pids: &[u32], exposure: Scope) -> Socket {
    let local = ip(addr);
    Socket {
        key: SocketKey {
            protocol: Protocol::Tcp,
            local_address: local,
            local_port: port,
            remote_address: if local.is_ipv4() {
                ip("0.0.0.0")
            } else {
                ip("::")
            },
            remote_port: 0,
            inode,
            netns: 0,
        },
        state: SocketState::Listen,
        uid: 0,
        pids: pids.to_vec(),
        attribution: Attribution::Owned,
        scope: portolan_core::classify(local),
        exposure,
        path: String::new(),
    }
}

fn flow(direction: Direction, local: &str, remote: &str, port: u16, state: SocketState) -> FlowKey {
    FlowKey {
        protocol: Protocol::Tcp,
        direction,
        local_address: ip(local),
        remote_address: ip(remote),
        service_port: port,
        state,
        pid: 0,
        netns: 0,
    }
}

fn iface(addr: &str, prefix_len: u8) -> InterfaceAddress {
    InterfaceAddress {
        interface: "eth0".into(),
        address: ip(addr),
        prefix_len,
        netns: 0,
    }
}

/// A host's inventory from its listeners (socket, process) and flows.
fn inventory(
    addr: &str,
    ephemeral: (u16, u16),
    listeners: Vec<(Socket, Vec<Process>)>,
    flows: Vec<(FlowKey, u32)>,
) -> Inventory {
    let mut inv = Inventory {
        host: HostState {
            interfaces: vec![iface("127.0.0.1", 8), iface(addr, 24)],
            ephemeral_ports: Some(ephemeral),
        },
        ..Inventory::default()
    };
    for (socket, processes) in listeners {
        inv.sockets.insert(socket.key, socket);
        for p in processes {
            inv.processes.insert(p.pid, p);
        }
    }
    inv.flows = flows.into_iter().collect();
    inv.retain_referenced_processes();
    inv
}

fn sshd(inode: u64) -> (Socket, Vec<Process>) {
    (
        listener("0.0.0.0", 22, inode, &[700], Scope::Private),
        vec![process(700, "sshd", "/usr/sbin/sshd", "ssh.service")],
    )
}

fn postgres(addr: &str, inode: u64, pids: [u32; 2], exposure: Scope) -> (Socket, Vec<Process>) {
    (
        listener(addr, 5432, inode, &pids, exposure),
        pids.iter()
            .map(|pid| {
                process(
                    *pid,
                    "postgres",
                    "/usr/lib/postgresql/15/bin/postgres",
                    "postgresql@15-main.service",
                )
            })
            .collect(),
    )
}

struct Fleet<'a> {
    store: &'a Store,
    now: SystemTime,
}

impl Fleet<'_> {
    fn ago(&self, secs: u64) -> SystemTime {
        self.now - Duration::from_secs(secs)
    }

    /// Registers a host and writes its history: `(age in seconds, inventory)`, oldest first.
    async fn host(
        &self,
        id: &str,
        hostname: &str,
        labels: &[(&str, &str)],
        history: Vec<(u64, Inventory)>,
    ) -> Result<()> {
        self.store
            .upsert_host(&HostRecord {
                host_id: id.into(),
                hostname: hostname.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                agent_version: "test".into(),
                kernel: "6.1".into(),
                os: "Debian".into(),
                scan_interval_ms: 5000,
                collector: "test".into(),
                host: history
                    .first()
                    .map(|(_, inv)| inv.host.clone())
                    .unwrap_or_default(),
            })
            .await?;
        let mut prev = Inventory::default();
        for (seq, (age, inv)) in history.into_iter().enumerate() {
            let kind = if seq == 0 {
                ChangeKind::Snapshot
            } else {
                ChangeKind::Delta
            };
            self.store
                .write_change(
                    id,
                    seq as u64 + 1,
                    kind,
                    self.ago(age),
                    &diff(&prev, &inv),
                    &ScanStats::default(),
                )
                .await
                .with_context(|| format!("writing {id} seq {}", seq + 1))?;
            prev = inv;
        }
        Ok(())
    }
}

const DAY: u64 = 86_400;
const SCANNER: &str = "203.0.113.66";

/// Seeds the fleet:
/// - db1 (prod, db): postgres on `::` (public), redis on loopback, sshd; postgres restarted
///   2h ago (new pids and inode, same program); a web server appeared 1h ago.
/// - db2, db3 (prod, db): postgres on their private address, sshd.
/// - db4 (prod, db): only sshd: lacks the postgres all its peers have.
/// - cache1 (prod, cache): redis on loopback only.
/// - lb1 (lb): haproxy and envoy both on 0.0.0.0:443 (SO_REUSEPORT); nginx master and
///   worker on one socket of port 80.
/// - app1 (app): 850 outbound connections of a 1000-port ephemeral range, 800 of them
///   toward one database; app2: 100.
/// - web1 (web): 25 dev servers; the scanner touched all 25 ports two minutes ago and
///   port 22 of six other hosts; a client touched two ports; an old scan two days ago.
async fn seed(fleet: &Fleet<'_>) -> Result<()> {
    let scan_flows = |local: &str, ports: &[u16]| -> Vec<(FlowKey, u32)> {
        ports
            .iter()
            .map(|p| {
                (
                    flow(
                        Direction::Inbound,
                        local,
                        &format!("::ffff:{SCANNER}"),
                        *p,
                        SocketState::SynRecv,
                    ),
                    1,
                )
            })
            .collect()
    };
    let eph = (32768, 60999);

    // db1
    let web = (
        listener("0.0.0.0", 8080, 1009, &[1500], Scope::Public),
        vec![process(
            1500,
            "python3",
            "/usr/bin/python3.11",
            "webapp.service",
        )],
    );
    let redis = (
        listener("127.0.0.1", 6379, 1004, &[1200], Scope::Loopback),
        vec![process(
            1200,
            "redis-server",
            "/usr/bin/redis-server",
            "redis.service",
        )],
    );
    let db1_base = || {
        vec![
            (
                listener("0.0.0.0", 22, 1001, &[700], Scope::Public),
                vec![process(700, "sshd", "/usr/sbin/sshd", "ssh.service")],
            ),
            redis.clone(),
        ]
    };
    let v1 = inventory(
        "198.51.100.10",
        eph,
        [
            db1_base(),
            vec![postgres("::", 1003, [812, 813], Scope::Public)],
        ]
        .concat(),
        vec![],
    );
    let v2 = inventory(
        "198.51.100.10",
        eph,
        [
            db1_base(),
            vec![postgres("::", 1103, [912, 913], Scope::Public)],
        ]
        .concat(),
        vec![],
    );
    let v3 = inventory(
        "198.51.100.10",
        eph,
        [
            db1_base(),
            vec![postgres("::", 1103, [912, 913], Scope::Public), web.clone()],
        ]
        .concat(),
        vec![],
    );
    let mut v4 = v3.clone();
    v4.flows = scan_flows("198.51.100.10", &[22]).into_iter().collect();
    fleet
        .host(
            "db1",
            "db-1",
            &[("env", "prod"), ("role", "db")],
            vec![(30 * DAY, v1), (7200, v2), (3600, v3), (120, v4)],
        )
        .await?;

    for (id, addr) in [("db2", "10.0.0.2"), ("db3", "10.0.0.3")] {
        let inv = inventory(
            addr,
            eph,
            vec![sshd(2001), postgres(addr, 2002, [812, 813], Scope::Private)],
            vec![],
        );
        let mut later = inv.clone();
        later.flows = scan_flows(addr, &[22]).into_iter().collect();
        if id == "db2" {
            // Clients of db2's postgres: the app tier (allowed, one through an
            // IPv4-mapped address), web1 (another tier), allowed networks, itself over
            // loopback, and addresses outside the fleet; and an outside client of ssh.
            for (remote, port) in [
                ("10.0.1.1", 5432),
                ("::ffff:10.0.1.2", 5432),
                ("10.0.2.1", 5432),
                ("203.0.113.50", 5432),
                ("192.0.2.200", 5432),
                ("2001:db8:77::5", 5432),
                ("127.0.0.1", 5432),
                ("2001:db8:99::5", 5432),
                ("203.0.113.50", 22),
            ] {
                let local = if remote.starts_with("2001:") {
                    "2001:db8:1::2"
                } else {
                    addr
                };
                let key = flow(
                    Direction::Inbound,
                    local,
                    remote,
                    port,
                    SocketState::Established,
                );
                later.flows.insert(key, 2);
            }
        }
        fleet
            .host(
                id,
                &format!("db-{}", &id[2..]),
                &[("env", "prod"), ("role", "db")],
                vec![(30 * DAY, inv), (120, later)],
            )
            .await?;
    }
    let db4 = inventory("10.0.0.4", eph, vec![sshd(2001)], vec![]);
    let mut db4_later = db4.clone();
    db4_later.flows = scan_flows("10.0.0.4", &[22]).into_iter().collect();
    fleet
        .host(
            "db4",
            "db-4",
            &[("env", "prod"), ("role", "db")],
            vec![(30 * DAY, db4), (120, db4_later)],
        )
        .await?;

    let cache = inventory("10.0.0.7", eph, vec![sshd(3001), redis.clone()], vec![]);
    let mut cache_later = cache.clone();
    cache_later.flows = scan_flows("10.0.0.7", &[22]).into_iter().collect();
    fleet
        .host(
            "cache1",
            "cache-1",
            &[("env", "prod"), ("role", "cache")],
            vec![(30 * DAY, cache), (120, cache_later)],
        )
        .await?;

    let lb = inventory(
        "198.51.100.20",
        eph,
        vec![
            sshd(4001),
            (
                listener("0.0.0.0", 443, 4002, &[2001], Scope::Public),
                vec![process(
                    2001,
                    "haproxy",
                    "/usr/sbin/haproxy",
                    "haproxy.service",
                )],
            ),
            (
                listener("0.0.0.0", 443, 4003, &[2002], Scope::Public),
                vec![process(2002, "envoy", "/usr/bin/envoy", "envoy.service")],
            ),
            (
                listener("0.0.0.0", 80, 4004, &[2101, 2102], Scope::Public),
                vec![
                    process(2101, "nginx", "/usr/sbin/nginx", "nginx.service"),
                    process(2102, "nginx", "/usr/sbin/nginx", "nginx.service"),
                ],
            ),
        ],
        vec![],
    );
    let mut lb_later = lb.clone();
    lb_later.flows = scan_flows("198.51.100.20", &[22]).into_iter().collect();
    fleet
        .host(
            "lb1",
            "lb-1",
            &[("role", "lb")],
            vec![(30 * DAY, lb), (120, lb_later)],
        )
        .await?;

    let small = (32768, 33767);
    let out = |remote: &str, port: u16, state: SocketState| {
        flow(Direction::Outbound, "10.0.1.1", remote, port, state)
    };
    let app1 = inventory(
        "10.0.1.1",
        small,
        vec![sshd(5001)],
        vec![
            (out("10.0.0.2", 5432, SocketState::Established), 650),
            (out("10.0.0.2", 5432, SocketState::TimeWait), 150),
            (out("10.0.0.7", 6379, SocketState::Established), 50),
        ],
    );
    fleet
        .host("app1", "app-1", &[("role", "app")], vec![(600, app1)])
        .await?;
    let app2 = inventory(
        "10.0.1.2",
        small,
        vec![sshd(5001)],
        vec![(out("10.0.0.2", 5432, SocketState::Established), 100)],
    );
    fleet
        .host("app2", "app-2", &[("role", "app")], vec![(600, app2)])
        .await?;

    // mail1: exim gave port 25 to postfix 30 minutes ago (within the 1h window) and port
    // 587 three hours ago (outside it); dovecot restarted (same program).
    let exim = |inode: u64, port: u16| {
        (
            listener("0.0.0.0", port, inode, &[800], Scope::Public),
            vec![process(800, "exim4", "/usr/sbin/exim4", "exim4.service")],
        )
    };
    let postfix = |inode: u64, port: u16| {
        (
            listener("0.0.0.0", port, inode, &[900], Scope::Public),
            vec![process(
                900,
                "master",
                "/usr/lib/postfix/sbin/master",
                "postfix@-.service",
            )],
        )
    };
    let dovecot = |inode: u64, pid: u32| {
        (
            listener("0.0.0.0", 143, inode, &[pid], Scope::Public),
            vec![process(
                pid,
                "dovecot",
                "/usr/sbin/dovecot",
                "dovecot.service",
            )],
        )
    };
    let mail_old = inventory(
        "10.0.3.1",
        eph,
        vec![exim(7001, 25), exim(7002, 587), dovecot(7003, 850)],
        vec![],
    );
    let mail_587 = inventory(
        "10.0.3.1",
        eph,
        vec![exim(7001, 25), postfix(7102, 587), dovecot(7003, 850)],
        vec![],
    );
    let mail_now = inventory(
        "10.0.3.1",
        eph,
        vec![postfix(7201, 25), postfix(7102, 587), dovecot(7203, 870)],
        vec![],
    );
    fleet
        .host(
            "mail1",
            "mail-1",
            &[("role", "mail")],
            vec![(30 * DAY, mail_old), (3 * 3600, mail_587), (1800, mail_now)],
        )
        .await?;

    let ports: Vec<u16> = (8000..8025).collect();
    let dev: Vec<(Socket, Vec<Process>)> = ports
        .iter()
        .map(|p| {
            (
                listener("0.0.0.0", *p, 6000 + u64::from(*p), &[3000], Scope::Private),
                vec![process(3000, "node", "/usr/bin/node", "dev.service")],
            )
        })
        .collect();
    let web0 = inventory("10.0.2.1", eph, [vec![sshd(6001)], dev].concat(), vec![]);
    let mut old_scan = web0.clone();
    old_scan.flows = ports
        .iter()
        .map(|p| {
            (
                flow(
                    Direction::Inbound,
                    "10.0.2.1",
                    "192.0.2.99",
                    *p,
                    SocketState::SynRecv,
                ),
                1,
            )
        })
        .collect();
    let quiet = web0.clone();
    let mut scanned = web0.clone();
    scanned.flows = [
        scan_flows("10.0.2.1", &ports),
        scan_flows("10.0.2.1", &[22]),
        vec![
            (
                flow(
                    Direction::Inbound,
                    "10.0.2.1",
                    "198.51.100.7",
                    8000,
                    SocketState::Established,
                ),
                3,
            ),
            (
                flow(
                    Direction::Inbound,
                    "10.0.2.1",
                    "198.51.100.7",
                    8001,
                    SocketState::Established,
                ),
                1,
            ),
        ],
    ]
    .concat()
    .into_iter()
    .collect();
    fleet
        .host(
            "web1",
            "web-1",
            &[("role", "web")],
            vec![
                (30 * DAY, web0),
                (2 * DAY, old_scan),
                (2 * DAY - 60, quiet),
                (120, scanned),
            ],
        )
        .await?;
    Ok(())
}

const RULES: &str = r#"
version: 1
rules:
  - id: db-exposed-prod
    kind: listener
    severity: high
    description: databases on public or wildcard addresses in prod
    hosts:
      labels: {env: prod}
    sockets:
      protocol: tcp
      ports: [5432, 3306, 6379, "9200-9300"]
      exposure: [public, wildcard]
  - id: ssh-on-db-hosts
    kind: listener
    severity: low
    hosts:
      hostname: ["db-*"]
      host_id: [db1, db2, db4]
    sockets:
      ports: [22]
      process: "ssh?"
      executable: "/usr/sbin/*"
      user: [sshd]
  - id: nasty-strings
    kind: listener
    severity: info
    hosts:
      labels: {"it's": "a \\' trap?*"}
      hostname: "x'); DROP TABLE hosts; --"
    sockets:
      process: "\\'*?"
      container: "?*"
  - id: shared
    kind: shared_port
    severity: medium
  - id: shared-sockets
    kind: shared_port
    severity: info
    distinct: sockets
    min: 2
  - id: ephemeral-host
    kind: ephemeral_exhaustion
    severity: high
    share: 0.8
  - id: ephemeral-destination
    kind: ephemeral_exhaustion
    severity: high
    per: destination
    share: 0.5
  - id: drift
    kind: peer_drift
    severity: low
    label: role
    sockets:
      exposure: [private, public, wildcard]
  - id: new
    kind: new_listener
    severity: medium
    window: 7d
    allow:
      - process: [sshd]
  - id: new-in-fleet
    kind: new_listener
    severity: medium
    scope: fleet
    window: 7d
  - id: scan-ports
    kind: scan
    severity: high
    by: ports
    min: 20
    window: 10m
  - id: scan-hosts
    kind: scan
    severity: high
    by: hosts
    min: 5
    window: 10m
  - id: db-clients
    kind: flow_policy
    severity: high
    hosts: {labels: {role: db}}
    sockets: {protocol: tcp, ports: [5432]}
    clients: {labels: {role: app}}
    networks: ["192.0.2.128/25", "2001:db8:77::/48"]
  - id: db-clients-local-denied
    kind: flow_policy
    severity: low
    hosts: {host_id: [db2]}
    sockets: {ports: [5432]}
    clients: {}
    outside: allow
    local: deny
  - id: owner-changed
    kind: port_owner_change
    severity: medium
    window: 1h
"#;

fn expected() -> BTreeSet<(String, String, String)> {
    [
        ("db-exposed-prod", "db1", "tcp [::]:5432"),
        ("ssh-on-db-hosts", "db1", "tcp 0.0.0.0:22"),
        ("ssh-on-db-hosts", "db2", "tcp 0.0.0.0:22"),
        ("ssh-on-db-hosts", "db4", "tcp 0.0.0.0:22"),
        ("shared", "lb1", "tcp port 443"),
        ("shared-sockets", "lb1", "tcp port 443"),
        ("ephemeral-host", "app1", "ephemeral ports"),
        (
            "ephemeral-destination",
            "app1",
            "ephemeral ports toward tcp 10.0.0.2:5432",
        ),
        ("drift", "db1", "rare tcp port 8080"),
        ("drift", "db4", "missing tcp port 5432"),
        ("new", "db1", "tcp 0.0.0.0:8080"),
        ("new-in-fleet", "db1", "tcp 0.0.0.0:8080"),
        ("scan-ports", "web1", SCANNER),
        ("scan-hosts", "", SCANNER),
        ("db-clients", "db2", "tcp port 5432 from web-1"),
        (
            "db-clients",
            "db2",
            "tcp port 5432 from 203.0.113.50 (outside the fleet)",
        ),
        (
            "db-clients",
            "db2",
            "tcp port 5432 from 2001:db8:99::5 (outside the fleet)",
        ),
        (
            "db-clients-local-denied",
            "db2",
            "tcp port 5432 from 127.0.0.1 (this host)",
        ),
        ("owner-changed", "mail1", "tcp 0.0.0.0:25"),
        // Postfix is new on mail1 and in the fleet, on both ports; dovecot restarted.
        ("new", "mail1", "tcp 0.0.0.0:25"),
        ("new", "mail1", "tcp 0.0.0.0:587"),
        ("new-in-fleet", "mail1", "tcp 0.0.0.0:25"),
        ("new-in-fleet", "mail1", "tcp 0.0.0.0:587"),
    ]
    .into_iter()
    .map(|(r, h, s)| (r.to_string(), h.to_string(), s.to_string()))
    .collect()
}

async fn evaluate(store: &Store, sql: &[(String, String)]) -> Result<Vec<FindingRow>> {
    let mut all = Vec::new();
    for (id, q) in sql {
        let rows = store
            .client()
            .query(q)
            .fetch_all::<FindingRow>()
            .await
            .with_context(|| format!("rule `{id}`:\n{q}"))?;
        all.extend(rows);
    }
    Ok(all)
}

/// Runs `test` against a migrated store in `database` of a managed server of its own,
/// and stops the server whatever the test's outcome.
async fn on_a_fresh_server(
    database: &str,
    test: impl AsyncFnOnce(&Store) -> Result<()>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clickhouse = ManagedClickHouse::start(ManagedOptions {
        state_dir: dir.path().to_path_buf(),
        binary: None,
    })
    .await?;
    let store = clickhouse.migrated_store(database).await?;
    let result = test(&store).await;
    clickhouse.shutdown().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_rules_find_exactly_the_seeded_exposures() -> Result<()> {
    on_a_fresh_server("compiled_rules_find_exactly_the_seeded_exposures", run).await
}

async fn run(store: &Store) -> Result<()> {
    // Literals hold exactly their string on the server.
    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct One {
        s: String,
    }
    for s in [
        "it's",
        "back\\slash",
        "\\'",
        "'; DROP TABLE hosts; --",
        "new\nline\ttab\u{1}\u{7f}",
        "question?",
        "ünïcödé ✓",
        "",
    ] {
        let got = store
            .client()
            .query(&format!("SELECT {} AS s", sql_string(s)))
            .fetch_one::<One>()
            .await?;
        assert_eq!(got.s, s);
    }

    let fleet = Fleet {
        store,
        now: SystemTime::now(),
    };
    seed(&fleet).await?;

    let rules = parse("rules.yaml", RULES)?;
    let sql: Vec<(String, String)> = rules
        .rules
        .iter()
        .map(|r| (r.id.clone(), compile(r)))
        .collect();
    let first = evaluate(store, &sql).await?;
    let got: BTreeSet<(String, String, String)> = first
        .iter()
        .map(|f| (f.rule_id.clone(), f.host_id.clone(), f.subject.clone()))
        .collect();
    let want = expected();
    assert_eq!(
        got,
        want,
        "findings:\n{}",
        first
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(first.len(), want.len(), "one row per finding: {first:#?}");
    for f in &first {
        assert_eq!(f.fingerprint.len(), 16, "{f:?}");
        assert!(
            f.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
            "{f:?}"
        );
        let rule = rules
            .rules
            .iter()
            .find(|r| r.id == f.rule_id)
            .context("rule")?;
        assert_eq!(f.severity, rule.severity.as_str());
    }
    let by_subject: BTreeMap<_, _> = first
        .iter()
        .map(|f| ((f.rule_id.as_str(), f.host_id.as_str()), f))
        .collect();
    let lb = by_subject[&("shared", "lb1")];
    assert!(
        lb.evidence
            .contains("programs=/usr/bin/envoy,/usr/sbin/haproxy"),
        "{lb:?}"
    );
    let app = by_subject[&("ephemeral-host", "app1")];
    assert!(
        app.evidence.contains("used=850 range=32768-33767"),
        "{app:?}"
    );
    let drift = by_subject.get(&("drift", "db4")).context("drift")?;
    assert!(drift.evidence.contains("holders=3 peers=4"), "{drift:?}");
    let owner = by_subject[&("owner-changed", "mail1")];
    assert!(
        owner
            .evidence
            .starts_with("owner=/usr/lib/postfix/sbin/master previous=/usr/sbin/exim4 changed_at="),
        "{owner:?}"
    );
    let web_client = first
        .iter()
        .find(|f| f.rule_id == "db-clients" && f.subject.ends_with("web-1"))
        .context("web-1 as a client of db2")?;
    assert!(
        web_client
            .evidence
            .starts_with("client_host=web1 addresses=10.0.2.1 connections=2 "),
        "{web_client:?}"
    );

    // What must not fire, said outright (the exact set above implies it too):
    let fired = |rule: &str, host: &str, subject: &str| {
        got.contains(&(rule.to_string(), host.to_string(), subject.to_string()))
    };
    // a restarted program (new pids and inode) is not a new listener, nor a new owner;
    assert!(!fired("new", "db1", "tcp [::]:5432"));
    assert!(!fired("new", "mail1", "tcp 0.0.0.0:143"));
    assert!(!fired("owner-changed", "mail1", "tcp 0.0.0.0:143"));
    // an owner change older than the window is not reported;
    assert!(!fired("owner-changed", "mail1", "tcp 0.0.0.0:587"));
    // listeners older than the baseline window are not new;
    assert!(!got.iter().any(|(r, h, _)| r == "new" && h == "web1"));
    // a client touching two ports, and a scan two days old, are not scans;
    assert!(
        !got.iter()
            .any(|(_, _, s)| s == "198.51.100.7" || s == "192.0.2.99")
    );
    // allowed clients: the app tier, allowed networks, loopback by default.
    for allowed in [
        "app-1",
        "app-2",
        "192.0.2.200",
        "2001:db8:77::5",
        "127.0.0.1",
    ] {
        assert!(
            !got.iter()
                .any(|(r, _, s)| r == "db-clients" && s.contains(allowed)),
            "{allowed} is allowed: {got:#?}"
        );
    }

    // Fingerprints are stable across evaluations.
    let second = evaluate(store, &sql).await?;
    let prints = |rows: &[FindingRow]| -> BTreeSet<(String, String)> {
        rows.iter()
            .map(|f| (f.rule_id.clone(), f.fingerprint.clone()))
            .collect()
    };
    assert_eq!(prints(&first), prints(&second));
    let distinct: BTreeSet<&str> = first.iter().map(|f| f.fingerprint.as_str()).collect();
    assert_eq!(
        distinct.len(),
        first.len(),
        "fingerprints differ per finding"
    );

    // The default pack runs here too.
    let pack = parse(
        "deploy/rules/default.yaml",
        include_str!("../../../deploy/rules/default.yaml"),
    )?;
    let pack_sql: Vec<(String, String)> = pack
        .rules
        .iter()
        .map(|r| (r.id.clone(), compile(r)))
        .collect();
    let found = evaluate(store, &pack_sql).await?;
    let got: BTreeSet<(&str, &str, &str)> = found
        .iter()
        .map(|f| (f.rule_id.as_str(), f.host_id.as_str(), f.subject.as_str()))
        .collect();
    for want in [
        ("database-exposed", "db1", "tcp [::]:5432"),
        ("remote-admin-public", "db1", "tcp 0.0.0.0:22"),
        ("shared-port", "lb1", "tcp port 443"),
        ("ephemeral-exhaustion", "app1", "ephemeral ports"),
        ("horizontal-scan-ports", "web1", SCANNER),
        ("new-listener", "db1", "tcp 0.0.0.0:8080"),
    ] {
        assert!(got.contains(&want), "{want:?} not in {got:#?}");
    }
    assert!(
        !got.iter()
            .any(|(r, h, _)| *r == "cache-exposed" || (*r == "database-exposed" && *h != "db1")),
        "{got:#?}"
    );
    Ok(())
}

/// A process of a pod: its container and pod, as the agent attributes them.
fn pod_process(pid: u32, name: &str, container: char, pod: (&str, &str)) -> Process {
    Process {
        container_id: std::iter::repeat_n(container, 64).collect(),
        pod_uid: format!("uid-{}", pod.1),
        pod_namespace: pod.0.into(),
        pod_name: pod.1.into(),
        ..process(pid, name, &format!("/usr/bin/{name}"), "")
    }
}

fn in_netns(mut socket: Socket, netns: u64) -> Socket {
    socket.key.netns = netns;
    socket
}

const POD_RULES: &str = r#"
rules:
  - {id: web-pods, kind: listener, severity: high, sockets: {pod: "web-*", ports: [80]}}
  - {id: shop-pods, kind: listener, severity: high, sockets: {pod: "shop/*", ports: [80]}}
  - {id: billing-namespace, kind: listener, severity: high, sockets: {pod_namespace: [billing]}}
  - {id: node-itself, kind: listener, severity: low, sockets: {netns: host, ports: [80]}}
  - {id: by-container, kind: listener, severity: low, sockets: {container: "aaaa*"}}
  - {id: shared, kind: shared_port, severity: low, distinct: sockets}
  - {id: pod-db-clients, kind: flow_policy, severity: high, sockets: {ports: [5432], pod: "shop/db-*"}}
"#;

/// Rules select sockets and flows by pod, pod namespace, container and network
/// namespace on the real server: each fires for its pod's socket and not for another
/// pod's, and the same `0.0.0.0:80` in three namespaces of one node is three findings
/// (and no shared port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_selectors_fire_for_their_pod_only() -> Result<()> {
    on_a_fresh_server("pod_selectors_fire_for_their_pod_only", run_pods).await
}

async fn run_pods(store: &Store) -> Result<()> {
    let fleet = Fleet {
        store,
        now: SystemTime::now(),
    };
    let (web_ns, api_ns, db_ns) = (4_026_532_001u64, 4_026_532_002, 4_026_532_003);
    let web = pod_process(10, "nginx", 'a', ("shop", "web-a"));
    let api = pod_process(20, "envoy", 'b', ("billing", "api-b"));
    let db = pod_process(30, "postgres", 'c', ("shop", "db-0"));
    let mut inv = inventory(
        "10.0.0.1",
        (32768, 60999),
        vec![
            (
                listener("0.0.0.0", 80, 1, &[1], Scope::Private),
                vec![process(1, "nginx", "/usr/sbin/nginx", "nginx.service")],
            ),
            (
                in_netns(listener("0.0.0.0", 80, 2, &[10], Scope::Private), web_ns),
                vec![web],
            ),
            (
                in_netns(listener("0.0.0.0", 80, 3, &[20], Scope::Private), api_ns),
                vec![api],
            ),
            (
                in_netns(listener("0.0.0.0", 5432, 4, &[30], Scope::Private), db_ns),
                vec![db],
            ),
        ],
        Vec::new(),
    );
    // Both the database pod and the api pod accept connections on 5432 from outside.
    for (netns, pid, local) in [(db_ns, 30, "10.244.0.3"), (api_ns, 20, "10.244.0.2")] {
        let mut key = flow(
            Direction::Inbound,
            local,
            "203.0.113.50",
            5432,
            SocketState::Established,
        );
        key.netns = netns;
        key.pid = pid;
        inv.flows.insert(key, 1);
    }
    fleet.host("node1", "node-1", &[], vec![(60, inv)]).await?;

    let rules = parse("pods.yaml", POD_RULES)?;
    let sql: Vec<(String, String)> = rules
        .rules
        .iter()
        .map(|r| (r.id.clone(), compile(r)))
        .collect();
    let found = evaluate(store, &sql).await?;
    let got: BTreeSet<(String, String)> = found
        .iter()
        .map(|f| (f.rule_id.clone(), f.subject.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("web-pods", "tcp 0.0.0.0:80 in pod shop/web-a"),
        ("shop-pods", "tcp 0.0.0.0:80 in pod shop/web-a"),
        ("billing-namespace", "tcp 0.0.0.0:80 in pod billing/api-b"),
        ("node-itself", "tcp 0.0.0.0:80"),
        ("by-container", "tcp 0.0.0.0:80 in pod shop/web-a"),
        (
            "pod-db-clients",
            "tcp port 5432 from 203.0.113.50 (outside the fleet)",
        ),
    ]
    .into_iter()
    .map(|(r, s)| (r.to_string(), s.to_string()))
    .collect();
    assert_eq!(got, want, "{found:#?}");
    assert_eq!(found.len(), want.len(), "one row per finding: {found:#?}");
    let web_finding = found
        .iter()
        .find(|f| f.rule_id == "web-pods")
        .context("web-pods")?;
    assert!(
        web_finding
            .evidence
            .ends_with(&format!(" netns={web_ns} pod=shop/web-a")),
        "{web_finding:?}"
    );
    let clients = found
        .iter()
        .find(|f| f.rule_id == "pod-db-clients")
        .context("pod-db-clients")?;
    assert!(
        clients.evidence.contains("server_processes=postgres"),
        "the database pod's flow, not the api pod's: {clients:?}"
    );
    // The node's own listener keeps the fingerprint it had before namespaces: the
    // plain hash of (rule, host, protocol, address, port).
    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Print {
        p: String,
    }
    let node = found
        .iter()
        .find(|f| f.rule_id == "node-itself")
        .context("node-itself")?;
    let plain = store
        .client()
        .query("SELECT substring(concat('0000000000000000', hex(cityHash64('node-itself', 'node1', 'tcp', '0.0.0.0', '80'))), length(hex(cityHash64('node-itself', 'node1', 'tcp', '0.0.0.0', '80'))) + 1, 16) AS p")
        .fetch_one::<Print>()
        .await?;
    assert_eq!(node.fingerprint, plain.p);
    Ok(())
}
