//! Rule evaluation against a real ClickHouse: a finding opens when a rule matches,
//! resolves (kept, not deleted) when it no longer does, and reopens with the same
//! fingerprint and first_seen when it returns.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use portolan_collector::evaluate::{CompiledRule, Evaluator, check_rules, dry_run, load_rules};
use portolan_core::{
    Attribution, HostState, InterfaceAddress, Inventory, Process, Protocol, ScanStats, Scope,
    Socket, SocketKey, SocketState, diff,
};
use portolan_rules::lifecycle::Status;
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_store::{ChangeKind, HostRecord};

fn postgres(inode: u64) -> (Socket, Process) {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let socket = Socket {
        key: SocketKey {
            protocol: Protocol::Tcp,
            local_address: any,
            local_port: 5432,
            remote_address: any,
            remote_port: 0,
            inode,
            netns: 0,
        },
        state: SocketState::Listen,
        uid: 0,
        pids: vec![4242],
        attribution: Attribution::Owned,
        scope: Scope::Wildcard,
        exposure: Scope::Private,
        path: String::new(),
    };
    let process = Process {
        pid: 4242,
        name: "postgres".into(),
        executable: "/usr/bin/postgres".into(),
        ..Process::default()
    };
    (socket, process)
}

fn inventory(with_postgres: Option<u64>) -> Inventory {
    let mut inv = Inventory {
        host: HostState {
            interfaces: vec![InterfaceAddress {
                interface: "eth0".into(),
                address: "10.0.0.5".parse().expect("address"),
                prefix_len: 24,
                netns: 0,
            }],
            ephemeral_ports: Some((32768, 60999)),
        },
        ..Inventory::default()
    };
    if let Some(inode) = with_postgres {
        let (s, p) = postgres(inode);
        inv.sockets.insert(s.key, s);
        inv.processes.insert(p.pid, p);
    }
    inv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_open_resolve_and_reopen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clickhouse = ManagedClickHouse::start(ManagedOptions {
        state_dir: dir.path().to_path_buf(),
        binary: None,
    })
    .await?;
    let store = clickhouse.migrated_store("evaluate").await?;
    let store = Arc::new(store);
    let record = HostRecord {
        host_id: "db-1".into(),
        hostname: "db-1".into(),
        labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        agent_version: "test".into(),
        kernel: String::new(),
        os: String::new(),
        scan_interval_ms: 10_000,
        collector: "test".into(),
        host: inventory(None).host,
    };
    store.upsert_host(&record).await?;

    // The default pack, as shipped.
    let rules =
        load_rules(&[std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/rules/default.yaml")])
        .map_err(anyhow::Error::msg)?;
    // Every rule of the pack runs on this server; one it cannot run is refused by name.
    check_rules(&store, &rules)
        .await
        .map_err(anyhow::Error::msg)?;
    let broken = CompiledRule {
        id: "needs-a-newer-server".into(),
        description: String::new(),
        sql: "SELECT 'x' AS rule_id, '' AS host_id, '' AS fingerprint, '' AS severity, '' AS subject, toString(portolanNoSuchFunction(1)) AS evidence".into(),
    };
    let refused = check_rules(&store, &[rules[0].clone(), broken])
        .await
        .expect_err("a rule this server cannot run is refused");
    assert!(
        refused.starts_with("rule `needs-a-newer-server`: "),
        "{refused}"
    );
    assert_eq!(refused.lines().count(), 1, "{refused}");
    let evaluator = Evaluator::new(store.clone(), rules);
    let change = |seq: u64, from: &Inventory, to: &Inventory| {
        let (store, delta) = (store.clone(), diff(from, to));
        async move {
            store
                .write_change(
                    "db-1",
                    seq,
                    ChangeKind::Delta,
                    SystemTime::now(),
                    &delta,
                    &ScanStats::default(),
                )
                .await
        }
    };
    let empty = inventory(None);
    store
        .write_change(
            "db-1",
            1,
            ChangeKind::Snapshot,
            SystemTime::now(),
            &diff(&Inventory::default(), &empty),
            &ScanStats::default(),
        )
        .await?;

    // postgres on a wildcard address: `database-exposed` opens.
    let with = inventory(Some(100));
    change(2, &empty, &with).await?;
    let report = evaluator.evaluate_once().await?;
    println!("evaluation 1: {report:?}");
    assert_eq!(report.rules_failed, 0, "{report:?}");
    let findings = store.findings().await?;
    let db = findings
        .iter()
        .find(|f| f.latest.rule_id == "database-exposed")
        .expect("database-exposed opened");
    assert_eq!(
        (
            db.status,
            db.latest.host_id.as_str(),
            db.latest.severity.as_str()
        ),
        (Status::Open, "db-1", "high")
    );
    let (fingerprint, first_seen) = (db.latest.fingerprint.clone(), db.first_seen);

    // Evaluating again changes nothing about it.
    evaluator.evaluate_once().await?;
    let again = store.findings().await?;
    let db = again
        .iter()
        .find(|f| f.latest.fingerprint == fingerprint)
        .expect("still there");
    assert_eq!(
        (db.status, db.first_seen, db.reopened),
        (Status::Open, first_seen, 0)
    );

    // The listener closes: resolved, kept.
    change(3, &with, &empty).await?;
    let report = evaluator.evaluate_once().await?;
    println!("evaluation 3: {report:?}");
    assert!(report.resolved >= 1, "{report:?}");
    let db = store
        .findings()
        .await?
        .into_iter()
        .find(|f| f.latest.fingerprint == fingerprint)
        .expect("kept after resolving");
    assert_eq!(db.status, Status::Resolved);
    assert!(db.resolved_at >= first_seen);

    // It returns (a restarted postgres: new inode and pid): the same finding reopens.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = inventory(Some(200));
    change(4, &empty, &back).await?;
    let report = evaluator.evaluate_once().await?;
    println!("evaluation 4: {report:?}");
    assert!(report.reopened >= 1, "{report:?}");
    let db = store
        .findings()
        .await?
        .into_iter()
        .find(|f| f.latest.fingerprint == fingerprint)
        .expect("reopened");
    assert_eq!(
        (db.status, db.first_seen, db.reopened, db.resolved_at),
        (Status::Open, first_seen, 1, 0)
    );
    clickhouse.shutdown().await?;
    Ok(())
}

/// `portolan rules test`: the default pack over a past where postgres listened on the
/// wildcard address from 3 h to 1 h ago finds exactly that, at the right instants, and
/// writes no finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_finds_what_would_have_fired_and_writes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clickhouse = ManagedClickHouse::start(ManagedOptions {
        state_dir: dir.path().to_path_buf(),
        binary: None,
    })
    .await?;
    let store = clickhouse.migrated_store("dry_run").await?;
    store
        .upsert_host(&HostRecord {
            host_id: "db-1".into(),
            hostname: "db-1".into(),
            labels: BTreeMap::new(),
            agent_version: "test".into(),
            kernel: String::new(),
            os: String::new(),
            scan_interval_ms: 10_000,
            collector: "test".into(),
            host: inventory(None).host,
        })
        .await?;
    let now = SystemTime::now();
    let ago = |h: u64| now - Duration::from_secs(h * 3600);
    let (empty, with) = (inventory(None), inventory(Some(100)));
    for (seq, at, from, to) in [
        (1, ago(5), &Inventory::default(), &empty),
        (2, ago(3), &empty, &with),
        (3, ago(1), &with, &empty),
    ] {
        let kind = if seq == 1 {
            ChangeKind::Snapshot
        } else {
            ChangeKind::Delta
        };
        store
            .write_change(
                "db-1",
                seq,
                kind,
                at,
                &diff(from, to),
                &ScanStats::default(),
            )
            .await?;
    }
    let pack = portolan_rules::parse(
        "default.yaml",
        include_str!("../../../deploy/rules/default.yaml"),
    )?;
    let now_secs = now.duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    let instants =
        portolan_rules::dry_run::instants(now_secs, 4 * 3600, 1800).map_err(anyhow::Error::msg)?;
    let run = dry_run(&store, &pack.rules, &instants).await;
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert_eq!(run.instants.len(), 9);
    let db: Vec<_> = run
        .fired
        .iter()
        .filter(|f| f.rule_id == "database-exposed")
        .collect();
    assert_eq!(db.len(), 1, "{:#?}", run.fired);
    let db = db[0];
    // Open at the instants 3 h, 2.5 h … 1.5 h ago (1 h ago it had closed).
    let start = now_secs - 4 * 3600;
    assert_eq!(
        (
            db.first_at,
            db.last_at,
            db.instants,
            db.episodes,
            db.open_at_end
        ),
        (start + 3600, start + 3 * 3600 - 1800, 4, 1, false),
        "{db:#?}"
    );
    assert_eq!(db.subject, "tcp 0.0.0.0:5432");
    assert!(
        store.findings().await?.is_empty(),
        "a dry run writes nothing"
    );
    clickhouse.shutdown().await?;
    Ok(())
}
