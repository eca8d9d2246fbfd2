//! The store against a real ClickHouse server: the managed one, started from the
//! `clickhouse-server` binary on the machine, one per test in a temporary directory, and
//! one database per test named after it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use portolan_collector::managed_clickhouse::{ManagedClickHouse, ManagedOptions};
use portolan_collector::store::{
    ChangeKind, ClickHouseConfig, FlowEventKind, HostRecord, SocketEventKind, Store, StoreError,
};
use portolan_core::{
    Attribution, Delta, Direction, FlowKey, HostState, InterfaceAddress, Inventory, Process,
    Protocol, ScanStats, Scope, Socket, SocketKey, SocketState, apply, diff,
};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
}

/// A managed server in a temporary directory (removed after the server stops).
struct Server {
    clickhouse: ManagedClickHouse,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Result<Server> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let clickhouse = ManagedClickHouse::start(ManagedOptions {
            state_dir: dir.path().to_path_buf(),
            binary: None,
        })
        .await?;
        Ok(Server {
            clickhouse,
            _dir: dir,
        })
    }

    fn config(&self, database: &str) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.clickhouse.url(),
            database: database.to_string(),
            user: None,
            password: None,
        }
    }

    /// A migrated store in its own database.
    async fn store(&self, database: &str) -> Result<Store> {
        let store = Store::connect(&self.config(database)).await?;
        store.migrate().await?;
        Ok(store)
    }

    async fn shutdown(self) -> Result<()> {
        self.clickhouse.shutdown().await?;
        Ok(())
    }
}

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
        },
        state: match protocol {
            Protocol::Tcp => SocketState::Listen,
            Protocol::Udp => SocketState::Close,
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
    let mut server = Server::start().await?;
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
    })
    .await
    .expect_err("invalid database name");
    assert!(bad.to_string().contains("`clickhouse.database`"), "{bad}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_to_run_concurrently() -> Result<()> {
    let server = Server::start().await?;
    let store =
        Store::connect(&server.config("migrate_is_idempotent_and_safe_to_run_concurrently"))
            .await?;
    let all: Vec<u32> = portolan_collector::store::schema::migrations(store.server().flavor())
        .iter()
        .map(|m| m.version)
        .collect();
    let latest = *all.last().context("no migrations")?;
    let first = store.migrate().await?;
    assert_eq!(first.applied, all);
    let second = store.migrate().await?;
    assert!(second.applied.is_empty());
    assert_eq!(second.version, latest);

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
    let server = Server::start().await?;
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
    let server = Server::start().await?;
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
    let server = Server::start().await?;
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
    let server = Server::start().await?;
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
    let server = Server::start().await?;
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
    let server = Server::start().await?;
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
    let server = Server::start().await?;
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
                    },
                    state,
                    uid,
                    pids: pids.into_iter().collect(),
                    attribution,
                    scope,
                    exposure,
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
        let server = runtime.block_on(Server::start())?;
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
