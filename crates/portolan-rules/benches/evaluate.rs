//! Rule evaluation benchmark: the default rule pack over a synthetic fleet of 10,000
//! hosts × 50 sockets in a real ClickHouse (the managed one, from the `clickhouse-server`
//! binary on the machine), each rule's time as a ratio to one pass over the fleet's
//! current sockets (`SELECT count() FROM sockets_current FINAL`) measured in the same run.
//!
//! `cargo bench -p portolan-rules --bench evaluate [-- HOSTS]`; `PORTOLAN_BENCH_HOSTS`
//! (default 10000) and `PORTOLAN_BENCH_ROUNDS` (default 3, the median is kept) also set
//! them. The fleet is made of 20 template hosts written through the collector's store
//! (a snapshot ten days ago and a delta an hour ago: a new program, an owner change,
//! flows from the app tier and from outside) and then copied in ClickHouse under new
//! host ids. Prints a table and writes the same figures to `<target>/bench/rules.json`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use portolan_core::{
    Attribution, Direction, FlowKey, HostState, InterfaceAddress, Inventory, Process, Protocol,
    ScanStats, Socket, SocketKey, SocketState, diff,
};
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_store::{ChangeKind, HostRecord, Store};

const TEMPLATES: usize = 20;
const LISTENERS: usize = 35;
const FLOWS: usize = 15;
const ROLES: [&str; 4] = ["db", "app", "web", "cache"];

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn setting(name: &str, arg: Option<usize>, default: usize) -> usize {
    arg.or_else(|| std::env::var(name).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}

async fn bench() -> Result<()> {
    let arg = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok());
    let hosts = setting("PORTOLAN_BENCH_HOSTS", arg, 10_000).max(TEMPLATES);
    let rounds = setting("PORTOLAN_BENCH_ROUNDS", None, 3).max(1);
    let dir = tempfile::tempdir()?;
    let clickhouse = ManagedClickHouse::start(ManagedOptions {
        state_dir: dir.path().to_path_buf(),
        binary: None,
    })
    .await
    .context("starting a managed clickhouse-server (install Debian's clickhouse-server)")?;
    let result = match clickhouse.migrated_store("bench_rules").await {
        Ok(store) => run(&store, hosts, rounds).await,
        Err(e) => Err(e.into()),
    };
    clickhouse.shutdown().await?;
    result
}

async fn run(store: &Store, hosts: usize, rounds: usize) -> Result<()> {
    let server = store.server();

    let seeding = Instant::now();
    for t in 0..TEMPLATES {
        seed_template(store, t).await?;
    }
    let copies = hosts.div_ceil(TEMPLATES) - 1;
    copy_fleet(store, copies).await?;
    let seeded = seeding.elapsed();
    let sockets: u64 = count(
        store,
        "SELECT count() FROM sockets_current FINAL WHERE present = 1",
    )
    .await?;
    let fleet_hosts: u64 = count(store, "SELECT count() FROM hosts FINAL").await?;

    let reference = median(rounds, || async {
        let started = Instant::now();
        count(
            store,
            "SELECT count() FROM sockets_current FINAL WHERE present = 1",
        )
        .await?;
        Ok(started.elapsed())
    })
    .await?;

    let pack = portolan_rules::parse(
        "deploy/rules/default.yaml",
        include_str!("../../../deploy/rules/default.yaml"),
    )?;
    let mut rows = Vec::new();
    let mut total = Duration::ZERO;
    for rule in &pack.rules {
        let sql = portolan_rules::compile(rule);
        let mut findings = 0usize;
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let found = store
                .run_rule(&sql)
                .await
                .with_context(|| format!("rule `{}`", rule.id))?;
            times.push(started.elapsed());
            findings = found.len();
        }
        times.sort();
        let took = times[times.len() / 2];
        total += took;
        rows.push((rule.id.clone(), rule.kind.as_str(), findings, took));
    }

    println!(
        "rule evaluation: default pack ({} rules) over {fleet_hosts} hosts, {sockets} current sockets; ClickHouse {}.{}.{}; seeded in {:.1} s",
        pack.rules.len(),
        server.version.0,
        server.version.1,
        server.version.2,
        seeded.as_secs_f64()
    );
    println!(
        "reference: one pass over current sockets (SELECT count() FROM sockets_current FINAL) = {:.1} ms, median of {rounds}",
        ms(reference)
    );
    println!(
        "{:<34} {:<22} {:>9} {:>10} {:>14}",
        "rule", "kind", "findings", "ms", "× reference"
    );
    for (id, kind, findings, took) in &rows {
        println!(
            "{id:<34} {kind:<22} {findings:>9} {:>10.1} {:>14.2}",
            ms(*took),
            ratio(*took, reference)
        );
    }
    println!(
        "{:<34} {:<22} {:>9} {:>10.1} {:>14.2}",
        "whole pack",
        "",
        rows.iter().map(|r| r.2).sum::<usize>(),
        ms(total),
        ratio(total, reference)
    );

    // The common table row (one per bench part; each rule's figure stays under `rules`).
    let table = vec![serde_json::json!({
        "measure": format!("rules: default pack ({} rules), {fleet_hosts} hosts × ({LISTENERS} listeners + {FLOWS} flows), {sockets} current sockets", pack.rules.len()),
        "figure": format!("{:.0} ms", ms(total)),
        "reference": format!("one pass over current sockets: {:.1} ms", ms(reference)),
        "ratio": ratio(total, reference),
        "target": null,
        "met": null,
    })];
    let json = serde_json::json!({
        "bench": "rules",
        "table": table,
        "benchmark": "rules",
        "hosts": fleet_hosts,
        "current_sockets": sockets,
        "clickhouse": format!("{}.{}.{}", server.version.0, server.version.1, server.version.2),
        "rounds": rounds,
        "reference": "SELECT count() FROM sockets_current FINAL WHERE present = 1",
        "reference_ms": ms(reference),
        "rules": rows.iter().map(|(id, kind, findings, took)| serde_json::json!({
            "id": id, "kind": kind, "findings": findings, "ms": ms(*took),
            "ratio_to_reference": ratio(*took, reference),
        })).collect::<Vec<_>>(),
        "pack_ms": ms(total),
        "pack_ratio_to_reference": ratio(total, reference),
    });
    let dir = target_dir().join("bench");
    let path = dir.join("rules.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{json:#}\n")))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(d: Duration, reference: Duration) -> f64 {
    d.as_secs_f64() / reference.as_secs_f64().max(1e-9)
}

async fn median<F, Fut>(rounds: usize, mut f: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Duration>>,
{
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        times.push(f().await?);
    }
    times.sort();
    Ok(times[times.len() / 2])
}

async fn count(store: &Store, sql: &str) -> Result<u64> {
    store
        .client()
        .query(sql)
        .fetch_one::<u64>()
        .await
        .with_context(|| sql.to_string())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn ip(s: &str) -> Result<IpAddr> {
    s.parse().with_context(|| format!("address `{s}`"))
}

/// Template host `t`: 35 listeners (a third on the wildcard address) and 15 flows, with
/// a history: a snapshot ten days ago, then a delta an hour ago where one program is new
/// and another port changed owner.
async fn seed_template(store: &Store, t: usize) -> Result<()> {
    let role = ROLES[t % ROLES.len()];
    let host_id = format!("h{t:02}");
    let addr = format!("10.60.{}.{}", t / 200, t % 200 + 10);
    let now = SystemTime::now();
    let mut inv = Inventory {
        host: HostState {
            interfaces: vec![
                InterfaceAddress {
                    interface: "lo".into(),
                    address: ip("127.0.0.1")?,
                    prefix_len: 8,
                    netns: 0,
                },
                InterfaceAddress {
                    interface: "eth0".into(),
                    address: ip(&addr)?,
                    prefix_len: 16,
                    netns: 0,
                },
            ],
            ephemeral_ports: Some((32768, 60999)),
        },
        ..Inventory::default()
    };
    let ports: [u16; LISTENERS] = [
        22, 25, 53, 80, 111, 123, 443, 631, 1433, 2049, 2379, 3000, 3306, 4222, 5432, 5672, 6379,
        6443, 7000, 8000, 8080, 8081, 8125, 8443, 9000, 9090, 9092, 9100, 9200, 9300, 10250, 11211,
        15672, 27017, 50051,
    ];
    for (i, port) in ports.iter().enumerate() {
        // Each host keeps a slightly different set, so peers drift a little.
        let port = if i == t % LISTENERS {
            20_000 + *port
        } else {
            *port
        };
        let local = match i % 3 {
            0 => "0.0.0.0".to_string(),
            1 => addr.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let pid = 1000 + u32::try_from(i).unwrap_or(0);
        add_listener(
            &mut inv,
            &local,
            port,
            100 + i as u64,
            pid,
            &format!("svc{i}"),
        )?;
    }
    for i in 0..FLOWS {
        let (direction, remote, port) = match i % 3 {
            0 => (Direction::Outbound, format!("10.60.0.{}", 10 + i), 5432),
            1 => (
                Direction::Inbound,
                format!("10.60.0.{}", 10 + (i + t) % TEMPLATES),
                443,
            ),
            _ => (Direction::Inbound, format!("203.0.113.{}", i + t), 5432),
        };
        inv.flows.insert(
            FlowKey {
                protocol: Protocol::Tcp,
                direction,
                local_address: ip(&addr)?,
                remote_address: ip(&remote)?,
                service_port: port,
                state: SocketState::Established,
                pid: 1000,
                netns: 0,
            },
            3,
        );
    }
    inv.retain_referenced_processes();

    let mut later = inv.clone();
    // A new program, and port 443 taken over by another program.
    add_listener(&mut later, "0.0.0.0", 4444, 900, 4444, "newcomer")?;
    let old_8080: Vec<SocketKey> = later
        .sockets
        .keys()
        .filter(|k| k.local_port == 443)
        .copied()
        .collect();
    for k in old_8080 {
        later.sockets.remove(&k);
    }
    add_listener(&mut later, "0.0.0.0", 443, 901, 4445, "usurper")?;
    later.retain_referenced_processes();

    store
        .upsert_host(&HostRecord {
            host_id: host_id.clone(),
            hostname: format!("{role}-{t}"),
            labels: [
                ("role".to_string(), role.to_string()),
                (
                    "env".to_string(),
                    if t.is_multiple_of(2) {
                        "prod"
                    } else {
                        "staging"
                    }
                    .to_string(),
                ),
            ]
            .into_iter()
            .collect(),
            agent_version: "bench".into(),
            kernel: "6.1".into(),
            os: "Debian".into(),
            scan_interval_ms: 10_000,
            collector: "bench".into(),
            host: inv.host.clone(),
        })
        .await?;
    let stats = ScanStats::default();
    store
        .write_change(
            &host_id,
            1,
            ChangeKind::Snapshot,
            now - Duration::from_secs(10 * 86_400),
            &diff(&Inventory::default(), &inv),
            &stats,
        )
        .await?;
    store
        .write_change(
            &host_id,
            2,
            ChangeKind::Delta,
            now - Duration::from_secs(3600),
            &diff(&inv, &later),
            &stats,
        )
        .await?;
    Ok(())
}

fn add_listener(
    inv: &mut Inventory,
    local: &str,
    port: u16,
    inode: u64,
    pid: u32,
    program: &str,
) -> Result<()> {
    let local = ip(local)?;
    let socket = Socket {
        key: SocketKey {
            protocol: Protocol::Tcp,
            local_address: local,
            local_port: port,
            remote_address: ip("0.0.0.0")?,
            remote_port: 0,
            inode,
            netns: 0,
        },
        state: SocketState::Listen,
        uid: 0,
        pids: vec![pid],
        attribution: Attribution::Owned,
        scope: portolan_core::classify(local),
        exposure: portolan_core::classify(local),
        path: String::new(),
    };
    inv.sockets.insert(socket.key, socket);
    inv.processes.insert(
        pid,
        Process {
            pid,
            name: program.into(),
            executable: format!("/usr/bin/{program}"),
            command_line: format!("/usr/bin/{program} --serve"),
            uid: 0,
            user: "root".into(),
            systemd_unit: format!("{program}.service"),
            container_id: String::new(),
            cgroup: format!("/system.slice/{program}.service"),
            ..Process::default()
        },
    );
    Ok(())
}

/// Copies every host-keyed table `copies` times under new host ids (`<id>-<n>`), column
/// by column as the server lists them, so that the copy follows the schema.
async fn copy_fleet(store: &Store, copies: usize) -> Result<()> {
    if copies == 0 {
        return Ok(());
    }
    for table in [
        "hosts",
        "host_reports",
        "sockets_current",
        "socket_events",
        "flows_current",
        "flow_events",
    ] {
        let columns: Vec<String> = store
            .client()
            .query(&format!(
                "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = '{table}'"
            ))
            .fetch_all::<String>()
            .await
            .with_context(|| format!("listing the columns of `{table}`"))?;
        let select: Vec<String> = columns
            .iter()
            .map(|c| match c.as_str() {
                "host_id" => "concat(host_id, '-', toString(number)) AS host_id".to_string(),
                "hostname" => "concat(hostname, '-', toString(number)) AS hostname".to_string(),
                other => other.to_string(),
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {table} CROSS JOIN (SELECT number + 1 AS number FROM system.numbers LIMIT {copies}) AS copies",
            columns.join(", "),
            select.join(", ")
        );
        store
            .client()
            .query(&sql)
            .execute()
            .await
            .with_context(|| format!("copying `{table}`"))?;
    }
    Ok(())
}
