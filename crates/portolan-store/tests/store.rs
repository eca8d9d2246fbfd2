//! The store against a real ClickHouse server: the managed one, started from the
//! `clickhouse-server` binary on the machine, one per test in a temporary directory, and
//! one database per test named after it.

mod support;
use support::Server;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use portolan_core::{
    Attribution, Delta, Direction, FlowKey, HostState, InterfaceAddress, Inventory, Process,
    Protocol, ScanStats, Scope, Socket, SocketKey, SocketState, apply, diff,
};
use portolan_store::acks::AckRecord;
use portolan_store::fleet::{FlowFilter, HostFilter, SocketFilter};
use portolan_store::history::{
    EventCursor, EventQuery, HistoryEvent, HostAsOf, flows_as_of, hosts_as_of, sockets_as_of,
};
use portolan_store::{
    ChangeKind, ClickHouseConfig, FlowEventKind, HostRecord, SocketEventKind, Store, StoreError,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn process(pid: u32, name: &str, unit: &str) -> Process {
    Process {
        pid,
        name: name.into(),
        executable: format!("/usr/sbin/{name}"),
        command_line: format!("/usr/sbin/{name} -D --flag='quoted value' \\ back\\slash"),
        uid: if name == "sshd" { 0 } else { 100 + pid % 50 },
        user: if name == "sshd" {
            "root".into()
        } else {
            name.into()
        },
        systemd_unit: unit.into(),
        container_id: String::new(),
        cgroup: format!("/system.slice/{unit}"),
        ..Process::default()
    }
}

fn listener(
    protocol: Protocol,
    addr: &str,
    port: u16,
    inode: u64,
    pids: &[u32],
    exposure: Scope,
) -> Socket {
    let local = ip(addr);
    let unspecified = if local.is_ipv4() {
        ip("0.0.0.0")
    } else {
        ip("::")
    };
    Socket {
        key: SocketKey {
            protocol,
            local_address: local,
            local_port: port,
            remote_address: unspecified,
            remote_port: 0,
            inode,
            netns: 0,
        },
        state: match protocol {
            Protocol::Udp => SocketState::Close,
            _ => SocketState::Listen,
        },
        uid: 0,
        pids: pids.to_vec(),
        attribution: if pids.is_empty() {
            Attribution::NoPermission
        } else {
            Attribution::Owned
        },
        scope: portolan_core::classify(local),
        exposure,
        path: String::new(),
    }
}

fn flow(
    protocol: Protocol,
    direction: Direction,
    local: &str,
    remote: &str,
    port: u16,
    state: SocketState,
    pid: u32,
) -> FlowKey {
    FlowKey {
        protocol,
        direction,
        local_address: ip(local),
        remote_address: ip(remote),
        service_port: port,
        state,
        pid,
        netns: 0,
    }
}

/// A database server: sshd, postgres with two pids, redis in a container on loopback,
/// dhclient, a socket whose owner could not be read; inbound, outbound and kernel-held
/// flows over v4 and v6, one owned by a process that could not be read.
fn inventory_a() -> Inventory {
    let mut redis = process(1200, "redis-server", "docker.service");
    redis.container_id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into();
    redis.cgroup = format!("/system.slice/docker-{}.scope", redis.container_id);
    let mut postgres_worker = process(813, "postgres", "postgresql@15-main.service");
    postgres_worker.command_line = "postgres: 15/main: checkpointer".into();
    let processes = [
        process(700, "sshd", "ssh.service"),
        process(812, "postgres", "postgresql@15-main.service"),
        postgres_worker,
        redis,
        process(900, "curl", "session-3.scope"),
        process(950, "dhclient", "networking.service"),
    ];
    let sockets = [
        listener(Protocol::Tcp, "0.0.0.0", 22, 1001, &[700], Scope::Public),
        listener(Protocol::Tcp, "::", 22, 1002, &[700], Scope::Public),
        listener(Protocol::Tcp, "::", 5432, 1003, &[812, 813], Scope::Public),
        listener(
            Protocol::Tcp,
            "127.0.0.1",
            6379,
            1004,
            &[1200],
            Scope::Loopback,
        ),
        listener(Protocol::Udp, "0.0.0.0", 68, 1005, &[950], Scope::Public),
        listener(
            Protocol::Udp,
            "fe80::1",
            546,
            1006,
            &[950],
            Scope::LinkLocal,
        ),
        listener(Protocol::Tcp, "10.0.0.5", 9100, 1007, &[], Scope::Private),
    ];
    let flows = [
        (
            flow(
                Protocol::Tcp,
                Direction::Inbound,
                "10.0.0.5",
                "10.0.0.9",
                5432,
                SocketState::Established,
                812,
            ),
            17,
        ),
        (
            flow(
                Protocol::Tcp,
                Direction::Inbound,
                "::ffff:10.0.0.5",
                "::ffff:10.0.0.10",
                22,
                SocketState::Established,
                700,
            ),
            1,
        ),
        (
            flow(
                Protocol::Tcp,
                Direction::Outbound,
                "10.0.0.5",
                "93.184.216.34",
                443,
                SocketState::Established,
                900,
            ),
            2,
        ),
        (
            flow(
                Protocol::Tcp,
                Direction::Outbound,
                "10.0.0.5",
                "93.184.216.34",
                443,
                SocketState::TimeWait,
                0,
            ),
            40,
        ),
        (
            flow(
                Protocol::Udp,
                Direction::Outbound,
                "2001:db8::5",
                "2606:4700::1111",
                53,
                SocketState::Established,
                901,
            ),
            3,
        ),
    ];
    let mut inventory = Inventory {
        host: HostState {
            interfaces: vec![
                iface("lo", "127.0.0.1", 8),
                iface("lo", "::1", 128),
                iface("eth0", "10.0.0.5", 24),
                iface("eth0", "2001:db8::5", 64),
                iface("eth0", "fe80::1", 64),
            ],
            ephemeral_ports: Some((32768, 60999)),
        },
        sockets: sockets.into_iter().map(|s| (s.key, s)).collect(),
        flows: flows.into_iter().collect(),
        processes: processes.into_iter().map(|p| (p.pid, p)).collect(),
    };
    inventory.retain_referenced_processes();
    inventory
}

fn iface(name: &str, addr: &str, prefix_len: u8) -> InterfaceAddress {
    InterfaceAddress {
        interface: name.into(),
        address: ip(addr),
        prefix_len,
        netns: 0,
    }
}

/// From a: redis stopped, sshd restarted with a new command line (its sockets change),
/// a new listener, flow counts changed and one flow gone, a new interface.
fn inventory_b() -> Inventory {
    let mut b = inventory_a();
    b.sockets.retain(|k, _| k.local_port != 6379);
    b.processes.get_mut(&700).expect("sshd").command_line =
        "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups".into();
    let web = listener(Protocol::Tcp, "0.0.0.0", 8080, 2001, &[1500], Scope::Public);
    b.sockets.insert(web.key, web);
    b.processes
        .insert(1500, process(1500, "python3", "webapp.service"));
    let inbound = flow(
        Protocol::Tcp,
        Direction::Inbound,
        "10.0.0.5",
        "10.0.0.9",
        5432,
        SocketState::Established,
        812,
    );
    b.flows.insert(inbound, 25);
    b.flows.retain(|k, _| k.pid != 900);
    b.host.interfaces.push(iface("docker0", "172.17.0.1", 16));
    b.retain_referenced_processes();
    b
}

/// From b: postgres down to one pid, the unreadable socket is now attributed, the
/// ephemeral range unknown, redis back (a new inode).
fn inventory_c() -> Inventory {
    let mut c = inventory_b();
    let pg = c
        .sockets
        .values_mut()
        .find(|s| s.key.local_port == 5432)
        .expect("postgres");
    pg.pids = vec![812];
    let node = c
        .sockets
        .values_mut()
        .find(|s| s.key.local_port == 9100)
        .expect("node exporter");
    node.pids = vec![1300];
    node.attribution = Attribution::Owned;
    node.uid = 65534;
    c.processes.insert(
        1300,
        process(1300, "node_exporter", "prometheus-node-exporter.service"),
    );
    let redis = listener(
        Protocol::Tcp,
        "127.0.0.1",
        6379,
        3001,
        &[1201],
        Scope::Loopback,
    );
    c.sockets.insert(redis.key, redis);
    c.processes
        .insert(1201, process(1201, "redis-server", "redis.service"));
    c.host.ephemeral_ports = None;
    c.retain_referenced_processes();
    c
}

fn stats(sockets: u32) -> ScanStats {
    ScanStats {
        sockets,
        listeners: 7,
        connections: sockets.saturating_sub(7),
        unattributed_no_permission: 1,
        kernel_owned: 40,
        scan_duration_micros: 1234,
        state_counts: [
            ("ESTABLISHED".to_string(), 23),
            ("LISTEN".to_string(), 5),
            ("UDP".to_string(), 2),
        ]
        .into_iter()
        .collect(),
        ..ScanStats::default()
    }
}

/// (seq, event, socket key) of every socket event a delta should produce.
fn expected_events(seq: u64, delta: &Delta) -> BTreeSet<(u64, &'static str, String)> {
    let rows = |sockets: &[Socket], event: SocketEventKind| {
        sockets
            .iter()
            .map(|s| (seq, event.as_str(), s.key.to_string()))
            .collect::<Vec<_>>()
    };
    rows(&delta.added, SocketEventKind::Added)
        .into_iter()
        .chain(rows(&delta.removed, SocketEventKind::Removed))
        .chain(rows(&delta.changed, SocketEventKind::Changed))
        .collect()
}

async fn stored_events(store: &Store, host: &str) -> Result<BTreeSet<(u64, &'static str, String)>> {
    Ok(store
        .socket_events(host)
        .await?
        .into_iter()
        .map(|e| (e.seq, e.event.as_str(), e.socket.key.to_string()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_server_starts_answers_stops_and_restarts_on_the_same_ports_and_data() -> Result<()>
{
    let mut server = Server::start("info").await?;
    let (http, tcp) = (server.clickhouse.http_port(), server.clickhouse.tcp_port());
    assert_ne!(http, tcp);
    assert_eq!(server.clickhouse.url(), format!("http://127.0.0.1:{http}"));
    assert!(
        server
            .clickhouse
            .log_path()
            .starts_with(server.clickhouse.dir())
    );

    let store = server
        .store("managed_server_starts_answers_stops_and_restarts_on_the_same_ports_and_data")
        .await?;
    assert!(store.server().legacy == (store.server().version < (21, 10, 0)));
    let a = inventory_a();
    store
        .write_change(
            "h1",
            1,
            ChangeKind::Snapshot,
            at(1_700_000_000),
            &diff(&Inventory::default(), &a),
            &stats(30),
        )
        .await?;

    server.clickhouse.stop().await?;
    assert!(server.clickhouse.pid().is_none());
    let err = store
        .last_seq("h1")
        .await
        .expect_err("the server is stopped");
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("cannot reach ClickHouse at http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("check `clickhouse.url`"), "{text}");

    server.clickhouse.start_again().await?;
    assert_eq!(server.clickhouse.http_port(), http);
    assert_eq!(server.clickhouse.tcp_port(), tcp);
    assert_eq!(
        store.last_seq("h1").await?,
        1,
        "the same data after a restart"
    );
    assert_eq!(store.load_current("h1").await?, a);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_says_what_to_check() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let err = Store::connect(&ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        database: "nothing".into(),
        user: None,
        password: None,
        tls: Default::default(),
    })
    .await
    .expect_err("nothing listens");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot reach ClickHouse at http://127.0.0.1:{port}: "
        )),
        "{err}"
    );
    let bad = Store::connect(&ClickHouseConfig {
        url: "http://127.0.0.1:1".into(),
        database: "bad-name".into(),
        user: None,
        password: None,
        tls: Default::default(),
    })
    .await
    .expect_err("invalid database name");
    assert!(bad.to_string().contains("`clickhouse.database`"), "{bad}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_to_run_concurrently() -> Result<()> {
    let server = Server::start("info").await?;
    let store =
        Store::connect(&server.config("migrate_is_idempotent_and_safe_to_run_concurrently"))
            .await?;
    let all: Vec<u32> = portolan_store::schema::migrations(store.server().flavor())
        .iter()
        .map(|m| m.version)
        .collect();
    let latest = *all.last().context("no migrations")?;
    // Before any migration the schema is behind, and readiness says so.
    let before = store.schema_status().await?;
    assert_eq!((before.applied, before.required), (0, latest));
    assert!(!before.is_current());
    let first = store.migrate().await?;
    assert_eq!(first.applied, all);
    let second = store.migrate().await?;
    assert!(second.applied.is_empty());
    assert_eq!(second.version, latest);
    let after = store.schema_status().await?;
    assert_eq!((after.applied, after.required), (latest, latest));
    assert!(after.is_current());

    // Two collectors starting at once on a fresh database.
    let config = server.config("migrate_is_idempotent_and_safe_to_run_concurrently_2");
    let (a, b) = tokio::join!(Store::connect(&config), Store::connect(&config));
    let (a, b) = (a?, b?);
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra?, rb?);
    assert_eq!((ra.version, rb.version), (latest, latest));
    let versions: Vec<u32> = a
        .client()
        .query("SELECT version FROM schema_migrations FINAL ORDER BY version")
        .fetch_all()
        .await?;
    assert_eq!(versions, all);
    a.migrate().await?;
    // The schema works after all that.
    let inv = inventory_a();
    b.write_change(
        "h",
        1,
        ChangeKind::Snapshot,
        at(1_700_000_000),
        &diff(&Inventory::default(), &inv),
        &stats(1),
    )
    .await?;
    assert_eq!(a.load_current("h").await?, inv);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_written_as_a_delta_from_empty_loads_back_equal() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("a_snapshot_written_as_a_delta_from_empty_loads_back_equal")
        .await?;
    let host = "0f3c2a9e6b5d4c1a8e7f6a5b4c3d2e1f";
    assert_eq!(store.last_seq(host).await?, 0);
    assert_eq!(store.load_current(host).await?, Inventory::default());

    let a = inventory_a();
    let delta = diff(&Inventory::default(), &a);
    let receipt = store
        .write_change(
            host,
            1,
            ChangeKind::Snapshot,
            at(1_700_000_000),
            &delta,
            &stats(30),
        )
        .await?;
    assert_eq!(receipt.socket_events, a.sockets.len() as u64);
    assert_eq!(receipt.sockets_current, a.sockets.len() as u64);
    assert_eq!(receipt.flow_events, a.flows.len() as u64);
    assert_eq!(receipt.flows_current, a.flows.len() as u64);
    assert_eq!(receipt.hosts, 1);
    assert_eq!(receipt.host_reports, 1);

    let loaded = store.load_current(host).await?;
    assert_eq!(loaded, a);
    assert!(diff(&loaded, &a).is_empty());
    assert_eq!(store.last_seq(host).await?, 1);

    // The rows a dashboard reads.
    let sockets = store.current_sockets(host).await?;
    let pg = sockets
        .iter()
        .find(|s| s.socket.key.local_port == 5432)
        .context("postgres")?;
    assert_eq!(pg.process_name(), Some("postgres"));
    assert_eq!(pg.processes.len(), 2);
    assert_eq!(pg.socket.exposure, Scope::Public);
    let unowned = sockets
        .iter()
        .find(|s| s.socket.key.local_port == 9100)
        .context("unowned")?;
    assert_eq!(unowned.process_name(), None);
    let flows = store.current_flows(host).await?;
    let unknown = flows
        .iter()
        .find(|f| f.flow.key.pid == 901)
        .context("pid 901")?;
    assert!(
        unknown.process.is_none(),
        "a pid whose process is unknown stays unknown"
    );
    let kernel = flows
        .iter()
        .find(|f| f.flow.key.pid == 0)
        .context("kernel flow")?;
    assert_eq!(kernel.flow.connections, 40);
    let reports = store.reports(host).await?;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].stats, stats(30));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_of_changes_loads_back_the_last_and_keeps_exact_history() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("a_sequence_of_changes_loads_back_the_last_and_keeps_exact_history")
        .await?;
    let host = "web-1";
    let (a, b, c) = (inventory_a(), inventory_b(), inventory_c());
    let steps = [
        (Inventory::default(), a.clone()),
        (a.clone(), b.clone()),
        (b.clone(), c.clone()),
    ];
    let mut expected = BTreeSet::new();
    for (i, (from, to)) in steps.iter().enumerate() {
        let seq = i as u64 + 1;
        let base = store.load_current(host).await?;
        assert_eq!(&base, from, "state before seq {seq}");
        let delta = diff(&base, to);
        assert_eq!(apply(&base, &delta).as_ref(), Ok(to));
        let kind = if i == 0 {
            ChangeKind::Snapshot
        } else {
            ChangeKind::Delta
        };
        store
            .write_change(
                host,
                seq,
                kind,
                at(1_700_000_000 + 10 * seq),
                &delta,
                &stats(30),
            )
            .await?;
        assert_eq!(
            &store.load_current(host).await?,
            to,
            "state after seq {seq}"
        );
        assert_eq!(store.last_seq(host).await?, seq);
        expected.extend(expected_events(seq, &delta));
    }
    assert_eq!(store.load_current(host).await?, c);
    assert_eq!(stored_events(&store, host).await?, expected);

    // Spot checks of what the history says.
    let events = store.socket_events(host).await?;
    let redis_removed = events
        .iter()
        .find(|e| e.event == SocketEventKind::Removed && e.socket.key.local_port == 6379)
        .context("redis removal")?;
    assert_eq!(redis_removed.seq, 2);
    assert_eq!(
        redis_removed.processes.first().map(|p| p.name.as_str()),
        Some("redis-server"),
        "a removal keeps the last-known owner"
    );
    let ssh_changes = events
        .iter()
        .filter(|e| e.event == SocketEventKind::Changed && e.socket.key.local_port == 22)
        .count();
    assert_eq!(ssh_changes, 2, "both sshd sockets changed with the process");
    let flow_events = store.flow_events(host).await?;
    let curl_gone = flow_events
        .iter()
        .find(|e| e.event == FlowEventKind::Removed && e.flow.key.pid == 900)
        .context("curl flow removal")?;
    assert_eq!(curl_gone.seq, 2);
    assert_eq!(
        curl_gone.process.as_ref().map(|p| p.name.as_str()),
        Some("curl")
    );

    // Host facts: the latest set, and the Hello facts survive host-fact changes.
    let stored = store.host(host).await?.context("host row")?;
    assert_eq!(stored.state, c.host);
    assert_eq!(stored.seq, 3);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_the_same_change_twice_changes_nothing_users_see() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("writing_the_same_change_twice_changes_nothing_users_see")
        .await?;
    let host = "db-1";
    let (a, b) = (inventory_a(), inventory_b());
    let d1 = diff(&Inventory::default(), &a);
    let d2 = diff(&a, &b);
    store
        .write_change(
            host,
            1,
            ChangeKind::Snapshot,
            at(1_700_000_000),
            &d1,
            &stats(30),
        )
        .await?;
    store
        .write_change(
            host,
            2,
            ChangeKind::Delta,
            at(1_700_000_010),
            &d2,
            &stats(31),
        )
        .await?;

    let before = (
        store.load_current(host).await?,
        store.socket_events(host).await?,
        store.flow_events(host).await?,
        store.current_sockets(host).await?,
        store.current_flows(host).await?,
        store.reports(host).await?,
        store.last_seq(host).await?,
    );
    // The agent replays both (it never saw the acks), then the latest once more.
    store
        .write_change(
            host,
            1,
            ChangeKind::Snapshot,
            at(1_700_000_000),
            &d1,
            &stats(30),
        )
        .await?;
    store
        .write_change(
            host,
            2,
            ChangeKind::Delta,
            at(1_700_000_010),
            &d2,
            &stats(31),
        )
        .await?;
    store
        .write_change(
            host,
            2,
            ChangeKind::Delta,
            at(1_700_000_010),
            &d2,
            &stats(31),
        )
        .await?;
    let after = (
        store.load_current(host).await?,
        store.socket_events(host).await?,
        store.flow_events(host).await?,
        store.current_sockets(host).await?,
        store.current_flows(host).await?,
        store.reports(host).await?,
        store.last_seq(host).await?,
    );
    assert_eq!(before, after);
    assert_eq!(after.0, b);

    // Counted the way a dashboard counts: distinct events per seq with FINAL.
    let counts: Vec<(u64, u64)> = store
        .client()
        .query("SELECT seq, count() FROM socket_events FINAL WHERE host_id = ? GROUP BY seq ORDER BY seq")
        .bind(host)
        .fetch_all()
        .await?;
    assert_eq!(
        counts,
        vec![
            (1, d1.added.len() as u64),
            (
                2,
                (d2.added.len() + d2.removed.len() + d2.changed.len()) as u64
            )
        ]
    );
    let listeners: u64 = store
        .client()
        .query("SELECT count() FROM sockets_current FINAL WHERE host_id = ? AND present = 1 AND listener = 1")
        .bind(host)
        .fetch_one()
        .await?;
    assert_eq!(listeners, b.listeners().count() as u64);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seq_tracks_changes_and_ignores_heartbeats() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("last_seq_tracks_changes_and_ignores_heartbeats")
        .await?;
    let host = "h";
    let a = inventory_a();
    store
        .write_change(
            host,
            7,
            ChangeKind::Snapshot,
            at(1_700_000_000),
            &diff(&Inventory::default(), &a),
            &stats(3),
        )
        .await?;
    assert_eq!(store.last_seq(host).await?, 7);
    store
        .write_heartbeat(host, 7, at(1_700_000_010), &stats(3))
        .await?;
    store
        .write_heartbeat(host, 9, at(1_700_000_020), &stats(3))
        .await?;
    assert_eq!(store.last_seq(host).await?, 7, "heartbeats commit nothing");
    store
        .write_change(
            host,
            8,
            ChangeKind::Delta,
            at(1_700_000_030),
            &Delta::default(),
            &stats(4),
        )
        .await?;
    assert_eq!(
        store.last_seq(host).await?,
        8,
        "an empty delta still commits its seq"
    );
    assert_eq!(store.last_seq("other").await?, 0);
    let kinds: Vec<(u64, String)> = store
        .reports(host)
        .await?
        .into_iter()
        .map(|r| (r.seq, r.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (7, "snapshot".into()),
            (7, "heartbeat".into()),
            (8, "delta".into()),
            (9, "heartbeat".into())
        ]
    );
    assert_eq!(store.load_current(host).await?, a);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_facts_and_host_facts_are_kept_apart() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("hello_facts_and_host_facts_are_kept_apart")
        .await?;
    let labels: BTreeMap<String, String> = [("env", "prod"), ("role", "db")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let record = HostRecord {
        host_id: "h".into(),
        hostname: "db-1.example".into(),
        labels: labels.clone(),
        agent_version: "0.1.0".into(),
        kernel: "6.1.0".into(),
        os: "Debian GNU/Linux 12".into(),
        scan_interval_ms: 10_000,
        collector: "collector-0".into(),
        host: inventory_b().host,
    };
    store.upsert_host(&record).await?;
    let first = store.host("h").await?.context("host")?;
    assert_eq!(
        first.state,
        inventory_b().host,
        "a new host's facts come with its record"
    );
    let a = inventory_a();
    store
        .write_change(
            "h",
            1,
            ChangeKind::Snapshot,
            at(1_700_000_001),
            &diff(&Inventory::default(), &a),
            &stats(1),
        )
        .await?;
    let host = store.host("h").await?.context("host")?;
    assert_eq!(host.hostname, "db-1.example");
    assert_eq!(host.labels, labels);
    assert_eq!(host.state, a.host, "facts from the snapshot");

    // A reconnect: new Hello facts; host facts change only with a committed change.
    store
        .upsert_host(&HostRecord {
            agent_version: "0.2.0".into(),
            collector: "collector-1".into(),
            host: inventory_c().host,
            ..record
        })
        .await?;
    let host = store.host("h").await?.context("host")?;
    assert_eq!(host.agent_version, "0.2.0");
    assert_eq!(host.collector, "collector-1");
    assert_eq!(host.state, a.host);
    assert_eq!(store.load_current("h").await?, a);

    // A replay of an older change does not bring old host facts back.
    let b = inventory_b();
    store
        .write_change(
            "h",
            2,
            ChangeKind::Delta,
            at(1_700_000_011),
            &diff(&a, &b),
            &stats(1),
        )
        .await?;
    store
        .write_change(
            "h",
            1,
            ChangeKind::Snapshot,
            at(1_700_000_001),
            &diff(&Inventory::default(), &a),
            &stats(1),
        )
        .await?;
    assert_eq!(store.load_current("h").await?, b);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_rolls_back_an_uncommitted_write_even_after_merges() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("recover_rolls_back_an_uncommitted_write_even_after_merges")
        .await?;
    let host = "h";
    let (a, b, c) = (inventory_a(), inventory_b(), inventory_c());
    store
        .write_change(
            host,
            1,
            ChangeKind::Snapshot,
            at(1_700_000_000),
            &diff(&Inventory::default(), &a),
            &stats(1),
        )
        .await?;
    let committed_events = stored_events(&store, host).await?;
    // Seq 2 written, but its commit marker lost (as when the server goes away between
    // the inserts of one change), and the table merged so that the committed versions
    // of the rows seq 2 touched are gone.
    store
        .write_change(
            host,
            2,
            ChangeKind::Delta,
            at(1_700_000_010),
            &diff(&a, &b),
            &stats(1),
        )
        .await?;
    let client = store.client();
    client
        .query("ALTER TABLE host_reports DELETE WHERE host_id = ? AND seq = 2")
        .bind(host)
        .execute()
        .await?;
    for _ in 0..100 {
        let left: u64 = client
            .query("SELECT count() FROM host_reports WHERE seq = 2")
            .fetch_one()
            .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in ["sockets_current", "flows_current", "hosts"] {
        client
            .query(&format!("OPTIMIZE TABLE {t} FINAL"))
            .execute()
            .await?;
    }
    assert_eq!(store.last_seq(host).await?, 1);

    let recovery = store.recover(host).await?;
    assert_eq!(recovery.last_seq, 1);
    assert!(recovery.rolled_back_rows > 0);
    assert!(recovery.restored_rows > 0, "{recovery:?}");
    assert_eq!(store.load_current(host).await?, a);
    assert_eq!(stored_events(&store, host).await?, committed_events);
    assert_eq!(
        store.recover(host).await?.rolled_back_rows,
        0,
        "nothing left"
    );

    // The agent resends seq 2 as a snapshot of what it sees now.
    let delta = diff(&store.load_current(host).await?, &c);
    store
        .write_change(
            host,
            2,
            ChangeKind::Snapshot,
            at(1_700_000_020),
            &delta,
            &stats(1),
        )
        .await?;
    assert_eq!(store.load_current(host).await?, c);
    let mut expected = committed_events;
    expected.extend(expected_events(2, &delta));
    assert_eq!(stored_events(&store, host).await?, expected);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_half_way_is_rolled_back_before_the_next_read() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("a_write_that_fails_half_way_is_rolled_back_before_the_next_read")
        .await?;
    let host = "h";
    let (a, b) = (inventory_a(), inventory_b());
    store
        .write_change(
            host,
            1,
            ChangeKind::Snapshot,
            at(1_700_000_000),
            &diff(&Inventory::default(), &a),
            &stats(1),
        )
        .await?;
    let committed_events = stored_events(&store, host).await?;
    // The commit marker's table goes away: every other insert of seq 2 succeeds.
    let client = store.client();
    client
        .query("RENAME TABLE host_reports TO host_reports_away")
        .execute()
        .await?;
    let err = store
        .write_change(
            host,
            2,
            ChangeKind::Delta,
            at(1_700_000_010),
            &diff(&a, &b),
            &stats(1),
        )
        .await
        .expect_err("no host_reports table");
    assert!(
        err.to_string()
            .starts_with("cannot insert into `host_reports`: "),
        "{err}"
    );
    client
        .query("RENAME TABLE host_reports_away TO host_reports")
        .execute()
        .await?;
    let partial: u64 = client
        .query("SELECT count() FROM socket_events WHERE host_id = ? AND seq = 2")
        .bind(host)
        .fetch_one()
        .await?;
    assert!(partial > 0, "seq 2 was half written");

    // The store remembers the failure and rolls seq 2 back before reading.
    assert_eq!(store.load_current(host).await?, a);
    assert_eq!(stored_events(&store, host).await?, committed_events);
    assert_eq!(store.last_seq(host).await?, 1);
    assert_eq!(store.host(host).await?.context("host")?.state, a.host);
    // And the same seq then stores cleanly.
    store
        .write_change(
            host,
            2,
            ChangeKind::Delta,
            at(1_700_000_010),
            &diff(&a, &b),
            &stats(1),
        )
        .await?;
    assert_eq!(store.load_current(host).await?, b);
    server.shutdown().await
}

/// The three inventories a → b → c written as seq 1, 2, 3 scanned at `T[0..3]`.
const T: [u64; 3] = [1_700_000_010, 1_700_000_020, 1_700_000_030];

async fn write_a_b_c(store: &Store, host: &str) -> Result<[Inventory; 3]> {
    let (a, b, c) = (inventory_a(), inventory_b(), inventory_c());
    store
        .upsert_host(&HostRecord {
            host_id: host.into(),
            hostname: format!("{host}.example"),
            labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            agent_version: "test".into(),
            kernel: String::new(),
            os: String::new(),
            scan_interval_ms: 10_000,
            collector: "test".into(),
            host: a.host.clone(),
        })
        .await?;
    let steps = [
        (Inventory::default(), a.clone()),
        (a.clone(), b.clone()),
        (b.clone(), c.clone()),
    ];
    for (i, (from, to)) in steps.iter().enumerate() {
        let kind = if i == 0 {
            ChangeKind::Snapshot
        } else {
            ChangeKind::Delta
        };
        store
            .write_change(
                host,
                i as u64 + 1,
                kind,
                at(T[i]),
                &diff(from, to),
                &stats(30),
            )
            .await?;
    }
    Ok([a, b, c])
}

/// The inventory of a host as of an instant, assembled like `load_current` does.
fn inventory_of(past: &HostAsOf) -> Inventory {
    let mut inv = Inventory {
        host: past
            .host
            .as_ref()
            .map(|h| h.state.clone())
            .unwrap_or_default(),
        ..Inventory::default()
    };
    // The newest row wins should two disagree on a process.
    let mut newest: BTreeMap<u32, u64> = BTreeMap::new();
    let mut keep = |inv: &mut Inventory, seq: u64, p: &Process| {
        if newest.get(&p.pid).is_none_or(|s| *s <= seq) {
            newest.insert(p.pid, seq);
            inv.processes.insert(p.pid, p.clone());
        }
    };
    for s in &past.sockets {
        for p in &s.processes {
            keep(&mut inv, s.seq, p);
        }
        inv.sockets.insert(s.socket.key, s.socket.clone());
    }
    for f in &past.flows {
        if let Some(p) = f.process.as_ref().filter(|p| p.pid != 0) {
            keep(&mut inv, f.seq, p);
        }
        inv.flows.insert(f.flow.key, f.flow.connections);
    }
    inv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_past_is_rebuilt_from_history_and_is_not_the_present() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("the_past_is_rebuilt_from_history_and_is_not_the_present")
        .await?;
    let host = "db-1";
    let [a, b, c] = write_a_b_c(&store, host).await?;

    // Before the first change: nothing. At and after each change: that state.
    let before = store.host_as_of(host, T[0] - 1, 100_000).await?;
    assert_eq!((before.seq, before.host.is_none()), (0, true));
    assert!(before.sockets.is_empty() && before.flows.is_empty());
    for (instant, want, seq) in [
        (T[0], &a, 1),
        (T[0] + 5, &a, 1),
        (T[1], &b, 2),
        (T[2] - 1, &b, 2),
        (T[2], &c, 3),
        (u64::MAX, &c, 3),
    ] {
        let past = store.host_as_of(host, instant, 100_000).await?;
        assert_eq!(past.seq, seq, "seq at {instant}");
        assert_eq!(&inventory_of(&past), want, "inventory at {instant}");
        assert!(!past.truncated);
        let stored = past.host.context("host as of")?;
        assert_eq!(stored.hostname, "db-1.example", "hello facts are today's");
        assert_eq!(
            stored.seq, seq,
            "host facts come from the change that set them"
        );
    }
    assert_ne!(a, c, "the past differs from the present");
    assert_eq!(store.load_current(host).await?, c);

    // The as-of tables are drop-in replacements of the current ones.
    #[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
    struct SocketCols {
        host_id: String,
        socket_key: String,
        seq: u64,
        present: u8,
        updated: u32,
        process: String,
        pids: Vec<u32>,
        exposure: String,
    }
    let socket_cols = "host_id, socket_key, seq, present, toUInt32(updated_at) AS updated, process, pids, exposure";
    let now: Vec<SocketCols> = store
        .client()
        .query(&format!(
            "SELECT {socket_cols} FROM sockets_current FINAL WHERE present = 1 ORDER BY socket_key"
        ))
        .fetch_all()
        .await?;
    let rebuilt: Vec<SocketCols> = store
        .client()
        .query(&format!(
            "SELECT {socket_cols} FROM {} WHERE present = 1 ORDER BY socket_key",
            sockets_as_of(u64::from(u32::MAX))
        ))
        .fetch_all()
        .await?;
    assert_eq!(rebuilt, now);
    type FlowCols = (String, String, u64, u8, u32, u32, String);
    let flow_cols = "host_id, flow_key, seq, present, toUInt32(updated_at), connections, process";
    let now: Vec<FlowCols> = store
        .client()
        .query(&format!(
            "SELECT {flow_cols} FROM flows_current FINAL WHERE present = 1 ORDER BY flow_key"
        ))
        .fetch_all()
        .await?;
    let rebuilt: Vec<FlowCols> = store
        .client()
        .query(&format!(
            "SELECT {flow_cols} FROM {} WHERE present = 1 ORDER BY flow_key",
            flows_as_of(u64::from(u32::MAX))
        ))
        .fetch_all()
        .await?;
    assert_eq!(rebuilt, now);
    #[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
    struct HostCols {
        host_id: String,
        hostname: String,
        label_keys: Vec<String>,
        interfaces: Vec<String>,
        ephemeral_known: u8,
        ephemeral_min: u16,
        ephemeral_max: u16,
        seq: u64,
    }
    let host_cols = "host_id, hostname, label_keys, interfaces, ephemeral_known, ephemeral_min, ephemeral_max, seq";
    let now: Vec<HostCols> = store
        .client()
        .query(&format!(
            "SELECT {host_cols} FROM hosts FINAL ORDER BY host_id"
        ))
        .fetch_all()
        .await?;
    let rebuilt: Vec<HostCols> = store
        .client()
        .query(&format!(
            "SELECT {host_cols} FROM {} ORDER BY host_id",
            hosts_as_of(u64::from(u32::MAX))
        ))
        .fetch_all()
        .await?;
    assert_eq!(rebuilt, now);
    let then: Vec<HostCols> = store
        .client()
        .query(&format!(
            "SELECT {host_cols} FROM {} ORDER BY host_id",
            hosts_as_of(T[0])
        ))
        .fetch_all()
        .await?;
    assert_eq!(then.len(), 1);
    assert_eq!(
        then[0].interfaces.len(),
        a.host.interfaces.len(),
        "a's interfaces"
    );
    let nobody: Vec<HostCols> = store
        .client()
        .query(&format!(
            "SELECT {host_cols} FROM {} ORDER BY host_id",
            hosts_as_of(T[0] - 1)
        ))
        .fetch_all()
        .await?;
    assert!(nobody.is_empty(), "no host had reported then");

    // Listing the past pages like the present: every socket once.
    for instant in [Some(T[0]), Some(T[1]), None] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = store
                .list_sockets(&SocketFilter {
                    hosts: HostFilter {
                        host_ids: vec![host.into()],
                        ..HostFilter::default()
                    },
                    at: instant,
                    after: after.clone(),
                    limit: 2,
                    ..SocketFilter::default()
                })
                .await?;
            assert!(page.len() <= 2);
            after = page.last().map(|s| s.cursor());
            seen.extend(page.into_iter().map(|s| s.socket.socket.key));
            if !more {
                break;
            }
        }
        let want: Vec<_> = match instant {
            Some(t) if t == T[0] => a.sockets.keys().copied().collect(),
            Some(_) => b.sockets.keys().copied().collect(),
            None => c.sockets.keys().copied().collect(),
        };
        let unique: BTreeSet<_> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no socket twice at {instant:?}");
        assert_eq!(
            unique,
            want.into_iter().collect(),
            "every socket at {instant:?}"
        );
    }

    // Flows too, one per page.
    for (instant, want) in [(Some(T[0]), &a), (None, &c)] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = store
                .list_flows(&FlowFilter {
                    at: instant,
                    after: after.clone(),
                    limit: 1,
                    ..FlowFilter::default()
                })
                .await?;
            after = page.last().map(|f| f.cursor());
            seen.extend(
                page.into_iter()
                    .map(|f| (f.flow.flow.key, f.flow.flow.connections)),
            );
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), want.flows.len(), "no flow twice at {instant:?}");
        assert_eq!(
            seen.into_iter().collect::<BTreeMap<_, _>>(),
            want.flows,
            "every flow at {instant:?}"
        );
    }

    // A rule evaluated over the past: redis on loopback was there at T0, gone at T1,
    // back (a new socket) at T2.
    let set = portolan_rules::parse(
        "past.yaml",
        "rules:\n  - id: redis-local\n    kind: listener\n    severity: low\n    sockets: {ports: [6379], exposure: [loopback]}\n",
    )?;
    let rule = set.rules.first().context("one rule")?;
    let past = |t: u64| portolan_rules::Sources {
        sockets: sockets_as_of(t),
        flows: flows_as_of(t),
        hosts: hosts_as_of(t),
        ..portolan_rules::Sources::current()
    };
    let mut fingerprints = Vec::new();
    for (t, want) in [(T[0], 1), (T[1], 0), (T[2], 1)] {
        let matches = store
            .run_rule(&portolan_rules::compile_with(rule, &past(t)))
            .await?;
        assert_eq!(matches.len(), want, "matches at {t}: {matches:?}");
        fingerprints.extend(matches.into_iter().map(|m| m.fingerprint));
    }
    assert_eq!(
        store.run_rule(&portolan_rules::compile(rule)).await?.len(),
        1,
        "now"
    );
    assert_eq!(fingerprints.len(), 2);
    // Every rule of the default pack runs over the past, unchanged but for its tables.
    let pack = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rules/default.yaml"),
    )?;
    let pack = portolan_rules::parse("default.yaml", &pack)?;
    for rule in &pack.rules {
        store
            .run_rule(&portolan_rules::compile_with(rule, &past(T[1])))
            .await
            .with_context(|| format!("rule `{}` over the past", rule.id))?;
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_every_event_once_in_both_orders() -> Result<()> {
    let server = Server::start("info").await?;
    let store = server
        .store("history_pages_through_every_event_once_in_both_orders")
        .await?;
    let host = "web-1";
    write_a_b_c(&store, host).await?;
    let sockets: Vec<EventCursor> = store
        .socket_events(host)
        .await?
        .into_iter()
        .map(|e| HistoryEvent::Socket(e).cursor())
        .collect();
    let flows: Vec<EventCursor> = store
        .flow_events(host)
        .await?
        .into_iter()
        .map(|e| HistoryEvent::Flow(e).cursor())
        .collect();
    assert!(!sockets.is_empty() && !flows.is_empty());

    let page_all = |query: EventQuery| {
        let store = &store;
        async move {
            let mut query = query;
            let mut out = Vec::new();
            loop {
                let (page, more) = store.events(&query).await?;
                anyhow::ensure!(page.len() <= query.limit as usize);
                query.after = page.last().map(HistoryEvent::cursor);
                out.extend(page.iter().map(HistoryEvent::cursor));
                if !more {
                    return Ok::<_, anyhow::Error>(out);
                }
            }
        }
    };
    for include_flows in [false, true] {
        let mut want: Vec<EventCursor> = sockets.clone();
        if include_flows {
            want.extend(flows.iter().cloned());
        }
        want.sort();
        for newest_first in [false, true] {
            let got = page_all(EventQuery {
                host_id: host.into(),
                include_flows,
                newest_first,
                limit: 3,
                ..EventQuery::default()
            })
            .await?;
            let mut expected = want.clone();
            if newest_first {
                expected.reverse();
            }
            assert_eq!(
                got, expected,
                "flows {include_flows}, newest first {newest_first}"
            );
        }
    }

    // [from, to): the second change only.
    let range = page_all(EventQuery {
        host_id: host.into(),
        from: Some(T[1]),
        to: Some(T[2]),
        include_flows: true,
        limit: 100,
        ..EventQuery::default()
    })
    .await?;
    assert!(
        !range.is_empty() && range.iter().all(|c| c.seq == 2),
        "{range:?}"
    );
    // One port: redis came, went and came back as a new socket.
    let redis = page_all(EventQuery {
        host_id: host.into(),
        port: Some(6379),
        newest_first: false,
        limit: 100,
        ..EventQuery::default()
    })
    .await?;
    assert_eq!(
        redis
            .iter()
            .map(|c| (c.seq, c.event.as_str()))
            .collect::<Vec<_>>(),
        [(1, "added"), (2, "removed"), (3, "added")]
    );
    // One socket by key: the first redis socket, added then removed.
    let first = redis.first().context("redis added")?;
    let one = page_all(EventQuery {
        host_id: host.into(),
        key: Some(first.key.clone()),
        newest_first: true,
        limit: 100,
        ..EventQuery::default()
    })
    .await?;
    assert_eq!(
        one.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    // Only changes after a seq, up to another (what a watch reads).
    let watched = page_all(EventQuery {
        host_id: host.into(),
        after_seq: 1,
        upto_seq: Some(2),
        limit: 100,
        ..EventQuery::default()
    })
    .await?;
    assert!(!watched.is_empty() && watched.iter().all(|c| c.seq == 2));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_latest_wins_and_lapse_with_the_status() -> Result<()> {
    use portolan_rules::lifecycle::{Finding, Match, Status};
    let server = Server::start("info").await?;
    let store = server
        .store("acknowledgements_latest_wins_and_lapse_with_the_status")
        .await?;
    let open = Finding {
        latest: Match {
            rule_id: "database-exposed".into(),
            host_id: "db-1".into(),
            fingerprint: "00FF00FF00FF00FF".into(),
            severity: "high".into(),
            subject: "tcp [::]:5432 postgres".into(),
            evidence: "exposure=public".into(),
        },
        status: Status::Open,
        first_seen: 1_700_000_000,
        last_seen: 1_700_000_000,
        resolved_at: 0,
        reopened: 0,
    };
    store.write_findings(std::slice::from_ref(&open), 1).await?;
    assert_eq!(store.finding("00FF00FF00FF00FF").await?, Some(open.clone()));
    assert_eq!(store.finding("nope").await?, None);
    assert!(store.finding_acks().await?.is_empty());

    let admin = "spiffe://portolan/operator/admin/alice";
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let record = |acked: bool, until: Option<u64>| AckRecord {
        finding: open.clone(),
        acked,
        acked_by: admin.into(),
        reason: if acked {
            "firewalled at the edge; it's \"fine\"".into()
        } else {
            String::new()
        },
        until,
    };
    let first = store.write_finding_ack(&record(true, None)).await?;
    let acks = store.finding_acks().await?;
    let stored = acks.get("00FF00FF00FF00FF").context("stored ack")?;
    assert_eq!(stored, &first);
    assert_eq!(stored.acked_by, admin);
    assert_eq!(stored.reason, "firewalled at the edge; it's \"fine\"");
    assert_eq!(stored.until, None);
    assert!(stored.in_force(&open, now));

    // Cleared, then acknowledged again until a time: each write wins over the last,
    // even written in the same nanosecond.
    let cleared = store.write_finding_ack(&record(false, None)).await?;
    assert!(cleared.version > first.version);
    let latest = store
        .finding_ack("00FF00FF00FF00FF")
        .await?
        .context("row")?;
    assert!(!latest.acked && !latest.in_force(&open, now));
    let until = store
        .write_finding_ack(&record(true, Some(now + 3600)))
        .await?;
    assert!(until.version > cleared.version);
    let latest = store
        .finding_ack("00FF00FF00FF00FF")
        .await?
        .context("row")?;
    assert_eq!(latest.until, Some(now + 3600));

    // An acknowledgement without `until` lapses when the finding resolves; one with
    // `until` holds whatever the finding does, until then.
    let resolved = Finding {
        status: Status::Resolved,
        resolved_at: 1_700_000_100,
        ..open.clone()
    };
    store
        .write_findings(std::slice::from_ref(&resolved), 2)
        .await?;
    assert_eq!(
        store.finding("00FF00FF00FF00FF").await?,
        Some(resolved.clone())
    );
    assert!(latest.in_force(&resolved, now));
    assert!(!latest.in_force(&resolved, now + 3600));
    let until_resolved = store.write_finding_ack(&record(true, None)).await?;
    assert!(!until_resolved.in_force(&resolved, now));
    server.shutdown().await
}

mod property {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            Just(ip("0.0.0.0")),
            Just(ip("127.0.0.1")),
            Just(ip("::")),
            Just(ip("::1")),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9_.-]{1,12}",
            "[ -~]{0,40}",
            "\\PC{0,12}",
        ]
    }

    fn process(pid: u32) -> impl Strategy<Value = Process> {
        (
            text(),
            text(),
            text(),
            any::<u32>(),
            text(),
            text(),
            text(),
            text(),
        )
            .prop_map(
                move |(
                    name,
                    executable,
                    command_line,
                    uid,
                    user,
                    systemd_unit,
                    container_id,
                    cgroup,
                )| Process {
                    pid,
                    name,
                    executable,
                    command_line,
                    uid,
                    user,
                    systemd_unit,
                    container_id,
                    cgroup,
                    ..Process::default()
                },
            )
    }

    fn scope() -> impl Strategy<Value = Scope> {
        prop_oneof![
            Just(Scope::Loopback),
            Just(Scope::LinkLocal),
            Just(Scope::Private),
            Just(Scope::Public),
            Just(Scope::Wildcard),
        ]
    }

    fn socket() -> impl Strategy<Value = Socket> {
        (
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
            addr(),
            any::<u16>(),
            addr(),
            any::<u64>(),
            proptest::sample::select(SocketState::ALL.to_vec()),
            any::<u32>(),
            proptest::collection::btree_set(1u32..12, 0..4),
            prop_oneof![
                Just(Attribution::Owned),
                Just(Attribution::Kernel),
                Just(Attribution::NoPermission),
                Just(Attribution::ProcessGone),
                Just(Attribution::Unknown),
            ],
            (scope(), scope()),
        )
            .prop_map(
                |(
                    protocol,
                    local_address,
                    local_port,
                    remote_address,
                    inode,
                    state,
                    uid,
                    pids,
                    attribution,
                    (scope, exposure),
                )| Socket {
                    key: SocketKey {
                        protocol,
                        local_address,
                        local_port,
                        remote_address,
                        remote_port: 0,
                        inode,
                        netns: 0,
                    },
                    state,
                    uid,
                    pids: pids.into_iter().collect(),
                    attribution,
                    scope,
                    exposure,
                    path: String::new(),
                },
            )
    }

    fn flow_key() -> impl Strategy<Value = FlowKey> {
        (
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
            prop_oneof![Just(Direction::Inbound), Just(Direction::Outbound)],
            addr(),
            addr(),
            any::<u16>(),
            proptest::sample::select(SocketState::ALL.to_vec()),
            0u32..12,
        )
            .prop_map(
                |(protocol, direction, local_address, remote_address, service_port, state, pid)| {
                    FlowKey {
                        protocol,
                        direction,
                        local_address,
                        remote_address,
                        service_port,
                        state,
                        pid,
                        netns: 0,
                    }
                },
            )
    }

    fn inventory() -> impl Strategy<Value = Inventory> {
        (
            proptest::collection::vec(socket(), 0..12),
            proptest::collection::btree_map(flow_key(), 1u32..1000, 0..10),
            // Pids 1..12 may own sockets and flows; only some of them are known.
            proptest::collection::vec((1u32..12).prop_flat_map(process), 0..8),
            proptest::collection::vec((text(), addr(), 0u8..=128), 0..4),
            proptest::option::of((any::<u16>(), any::<u16>())),
        )
            .prop_map(|(sockets, flows, processes, ifaces, ephemeral_ports)| {
                let mut inventory = Inventory {
                    host: HostState {
                        interfaces: ifaces
                            .into_iter()
                            .map(|(interface, address, prefix_len)| InterfaceAddress {
                                interface,
                                address,
                                prefix_len,
                                netns: 0,
                            })
                            .collect(),
                        ephemeral_ports,
                    },
                    sockets: sockets.into_iter().map(|s| (s.key, s)).collect(),
                    flows,
                    processes: processes.into_iter().map(|p| (p.pid, p)).collect(),
                };
                inventory.retain_referenced_processes();
                inventory
            })
    }

    /// Random inventories survive write_change/load_current, from empty and from each
    /// other.
    #[test]
    fn random_inventories_round_trip() -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let server = runtime.block_on(Server::start("info"))?;
        let store = runtime.block_on(server.store("random_inventories_round_trip"))?;
        let mut runner = TestRunner::new(Config {
            cases: 16,
            failure_persistence: None,
            ..Config::default()
        });
        let case = std::sync::atomic::AtomicU32::new(0);
        let result = runner.run(&(inventory(), inventory()), |(a, b)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let host = format!("host-{n}");
            let outcome: Result<(Inventory, Inventory)> = runtime.block_on(async {
                store
                    .write_change(
                        &host,
                        1,
                        ChangeKind::Snapshot,
                        at(1_700_000_000),
                        &diff(&Inventory::default(), &a),
                        &ScanStats::default(),
                    )
                    .await?;
                let loaded_a = store.load_current(&host).await?;
                store
                    .write_change(
                        &host,
                        2,
                        ChangeKind::Delta,
                        at(1_700_000_010),
                        &diff(&loaded_a, &b),
                        &ScanStats::default(),
                    )
                    .await?;
                Ok((loaded_a, store.load_current(&host).await?))
            });
            let (loaded_a, loaded_b) =
                outcome.map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            prop_assert_eq!(loaded_a, a);
            prop_assert_eq!(loaded_b, b);
            Ok(())
        });
        runtime.block_on(server.shutdown())?;
        result.map_err(|e| anyhow::anyhow!("{e}"))
    }
}
