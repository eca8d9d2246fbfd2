//! `just bench`, ingest: rows per second the collector writes into ClickHouse from many
//! agents over real mutual TLS, against `clickhouse-client` inserting the same rows into
//! tables of the same schema, in the same run, on the same server.
//!
//! `INGEST_AGENTS` (50) simulated agents ([`fleet`]), each with its own certificate and
//! stream and its changes made beforehand, connect to a real collector; then all at once send a snapshot of
//! `INGEST_SOCKETS` (2,000) sockets and `INGEST_DELTAS` (20) deltas replacing
//! `INGEST_CHURN_PERCENT` (1)% of the sockets each, up to the collector's
//! `max_in_flight` (16) sent ahead of their acknowledgements (the ack latencies include
//! the time a change waits behind that window). The collector's time runs from the first snapshot to
//! the last Ack; its rows are what the tables gained. Merges keep running (stopped, the
//! parts of thousands of small inserts exhaust ClickHouse's open files): a merge may fold
//! a replaced row of `sockets_current` away, which only undercounts the collector.
//!
//! The reference: every table the collector wrote to is exported with
//! `SELECT * … FORMAT Native` twice, in the order the rows were written (`ORDER BY seq,
//! host_id`) and sorted by the table's key (as merges leave them), and `clickhouse-client --query "INSERT INTO <copy> FORMAT
//! Native" < file` inserts it into a copy (`CREATE TABLE <copy> AS <table>`): one bulk
//! insert per table, timed, minus the client's start-up (timed with `SELECT 1`), once
//! no merge runs; the median of three rounds of each order, the faster of the two.
//! Target: the collector at ≥ 0.7× the raw insert's rows per second. Writes
//! `<target>/bench/ingest.json`.

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

#[allow(dead_code)]
mod fleet;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portolan_tls::pki::Ca;
use serde_json::json;

use fleet::{AgentShape, Fleet, Pace, cpu_seconds, env_float, env_number, quantile_ms};
use support::{Cluster, Limits};

const TARGET_RATIO: f64 = 0.7;
/// Rounds of the reference insert; the median counts.
const REFERENCE_ROUNDS: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let agents = env_number("INGEST_AGENTS", 50)? as usize;
    let sockets = env_number("INGEST_SOCKETS", 2_000)? as usize;
    let deltas = env_number("INGEST_DELTAS", 20)?;
    let churn = env_float("INGEST_CHURN_PERCENT", 1.0)? / 100.0;
    fleet::raise_fd_limit(agents as u64 + 1_024)?;
    let limits = Limits {
        // Agents here send as fast as they are acknowledged, not once per scan.
        message_rate: Some((100_000, 100_000)),
        ..Limits::default()
    };
    let mut cluster = Cluster::start("ingest", &[], limits).await?;
    let collector_pid = cluster
        .collector_pid(0)
        .context("the collector is not running")?;
    let clickhouse_pid = fleet::clickhouse_pid(cluster.state.path());
    let tables: Vec<String> = cluster
        .http_query("SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree' ORDER BY name FORMAT TabSeparated")?
        .lines()
        .map(str::to_string)
        .collect();
    println!(
        "ingest: {agents} agents × {sockets}-socket snapshot + {deltas} deltas of {:.1}% churn, as fast as acknowledged",
        churn * 100.0
    );

    let shape = AgentShape {
        sockets,
        churn,
        pace: Pace::Saturate { deltas },
    };
    let mut fleet = Fleet::new(
        Ca::from_pem(cluster.pki.ca.cert_pem(), cluster.pki.ca.key_pem())?,
        cluster.collector_port,
        "ingest",
        shape,
        32,
        true,
    );
    fleet.grow_to(agents)?;
    fleet
        .wait_for("every agent connected", Duration::from_secs(120), |s| {
            s.connected.load(Ordering::Relaxed) >= agents as u64
        })
        .await?;
    let before = counts(&cluster, &tables)?;
    let cpu_start = (
        cpu_seconds(collector_pid),
        clickhouse_pid.map_or(0.0, cpu_seconds),
        cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    fleet.go();
    let expected_deltas = agents as u64 * deltas;
    fleet
        .wait_for(
            "every snapshot and delta acknowledged",
            Duration::from_secs(1_800),
            |s| {
                s.snapshots_acked.load(Ordering::Relaxed) >= agents as u64
                    && s.deltas_acked.load(Ordering::Relaxed) >= expected_deltas
                    || s.failed.load(Ordering::Relaxed) > 0
            },
        )
        .await?;
    let collector_s = started.elapsed().as_secs_f64();
    let cpu_end = (
        cpu_seconds(collector_pid),
        clickhouse_pid.map_or(0.0, cpu_seconds),
        cpu_seconds(std::process::id()),
    );
    if fleet.stats.failed.load(Ordering::Relaxed) > 0 {
        bail!("agents failed: {}", fleet.describe());
    }
    let mut latencies = fleet.stats.take_latencies();
    let after = counts(&cluster, &tables)?;
    fleet.shutdown().await;

    let written: BTreeMap<String, u64> = after
        .iter()
        .filter_map(|(t, n)| {
            let grew = n.saturating_sub(before.get(t).copied().unwrap_or(0));
            (grew > 0).then(|| (t.clone(), grew))
        })
        .collect();
    let collector_rows: u64 = written.values().sum();
    if collector_rows == 0 {
        bail!("the collector wrote no rows: {}", fleet_summary(&after));
    }

    // The reference: the same tables' rows, one bulk insert per table.
    let client = ClickHouseClient {
        port: cluster.clickhouse_tcp_port(),
        database: cluster.database.clone(),
    };
    let startup = (0..3)
        .map(|_| client.timed("SELECT 1", None, None))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    let dir = cluster.state.subdir("ingest-export")?;
    // The collector's inserts leave merges running; the reference runs on a quiet
    // server, the harder comparison.
    let mut quiet = wait_for_merges(&cluster)?;
    // Two orders of the same rows: as the collector wrote them (its batches hold many
    // hosts' changes of about the same seq), and sorted by each table's sorting key (as
    // merges leave them; sorted rows insert faster). The faster is the reference.
    let mut exports = Vec::new();
    for table in written.keys() {
        let exported = count(&cluster, table)?;
        let columns = cluster.http_query(&format!(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = '{table}' FORMAT TabSeparated"
        ))?;
        let has = |c: &str| columns.lines().any(|l| l == c);
        let current = table.ends_with("_current");
        let as_written: Vec<&str> = ["seq", "host_id"].into_iter().filter(|c| has(c)).collect();
        // The sorting keys of crates/portolan-store/src/schema.rs.
        let by_key: Vec<&str> = ["host_id", "seq", "event", "socket_key", "flow_key"]
            .into_iter()
            .filter(|c| has(c) && !(current && (*c == "seq" || *c == "event")))
            .collect();
        let mut files = Vec::new();
        for (name, order) in [("written", as_written), ("key", by_key)] {
            let file = dir.join(format!("{table}.{name}.native"));
            let order = if order.is_empty() {
                String::new()
            } else {
                format!(" ORDER BY {}", order.join(", "))
            };
            client.timed(
                &format!("SELECT * FROM {table}{order} FORMAT Native"),
                None,
                Some(&file),
            )?;
            files.push(file);
        }
        let bytes = std::fs::metadata(&files[0]).map(|m| m.len()).unwrap_or(0);
        exports.push((table.clone(), exported, files, bytes));
    }
    // Each round inserts every table, in each order, into fresh copies; the median round
    // of each order counts.
    let mut rounds: [Vec<(f64, Vec<f64>)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..REFERENCE_ROUNDS {
        for (order, order_rounds) in rounds.iter_mut().enumerate() {
            let mut total = 0.0;
            let mut took_per_table = Vec::new();
            for (table, exported, files, _) in &exports {
                let copy = format!("bench_copy_{round}_{order}_{table}");
                cluster.http_query(&format!("CREATE TABLE {copy} AS {table}"))?;
                let took = client.timed(
                    &format!("INSERT INTO {copy} FORMAT Native"),
                    Some(&files[order]),
                    None,
                )?;
                let rows = count(&cluster, &copy)?;
                if rows != *exported {
                    bail!("`{copy}` holds {rows} rows after the insert, `{table}` {exported}");
                }
                total += (took - startup).max(0.001);
                took_per_table.push(took);
                quiet &= wait_for_merges(&cluster)?;
            }
            order_rounds.push((total, took_per_table));
        }
    }
    let medians: Vec<(f64, Vec<f64>)> = rounds
        .iter_mut()
        .map(|r| {
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            r[r.len() / 2].clone()
        })
        .collect();
    let spread = |r: &[(f64, Vec<f64>)]| {
        r.iter()
            .map(|r| format!("{:.0}", r.0 * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spread = format!(
        "as written {} ms, sorted by key {} ms",
        spread(&rounds[0]),
        spread(&rounds[1])
    );
    let (reference_s, median_took) = if medians[1].0 < medians[0].0 {
        medians[1].clone()
    } else {
        medians[0].clone()
    };
    let reference_rows: u64 = exports.iter().map(|e| e.1).sum();
    let mut per_table = Vec::new();
    for ((table, rows, _, bytes), took) in exports.iter().zip(median_took) {
        let net = (took - startup).max(0.001);
        println!(
            "  {table}: collector wrote {} rows; clickhouse-client inserted {rows} rows ({:.1} MiB Native) in {:.0} ms ({:.0} ms with client start-up)",
            written[table],
            *bytes as f64 / 1_048_576.0,
            net * 1000.0,
            took * 1000.0
        );
        per_table.push(json!({
            "table": table,
            "collector_rows": written[table],
            "reference_rows": rows,
            "native_bytes": bytes,
            "reference_ms": net * 1000.0,
            "reference_ms_with_startup": took * 1000.0,
        }));
    }
    let collector_rate = collector_rows as f64 / collector_s;
    let reference_rate = reference_rows as f64 / reference_s;
    let ratio = collector_rate / reference_rate;
    let p50 = quantile_ms(&mut latencies, 0.5);
    let p99 = quantile_ms(&mut latencies, 0.99);
    let cpu = |a: f64, b: f64| 100.0 * (b - a) / collector_s;
    println!(
        "collector: {collector_rows} rows in {collector_s:.2} s = {collector_rate:.0} rows/s (ack p50 {p50:.0} ms, p99 {p99:.0} ms; CPU collector {:.0}%, clickhouse {:.0}%, the simulated agents {:.0}%)",
        cpu(cpu_start.0, cpu_end.0),
        cpu(cpu_start.1, cpu_end.1),
        cpu(cpu_start.2, cpu_end.2)
    );
    println!(
        "clickhouse-client: {reference_rows} rows in {reference_s:.2} s = {reference_rate:.0} rows/s (median of {REFERENCE_ROUNDS} rounds of each order, the faster counts; {}: {}; client start-up {:.0} ms per table, subtracted)",
        if quiet {
            "no merge running"
        } else {
            "merges still running after a minute"
        },
        spread,
        startup * 1000.0
    );
    println!("ratio {ratio:.2} (target ≥ {TARGET_RATIO})");
    let doc = json!({
        "bench": "ingest",
        "table": [{
            "measure": format!("ingest: collector rows/s into ClickHouse, {agents} agents over mTLS ({sockets}-socket snapshots + {deltas} deltas each)"),
            "figure": format!("{collector_rate:.0} rows/s"),
            "reference": format!("clickhouse-client INSERT … FORMAT Native, same rows: {reference_rate:.0} rows/s"),
            "ratio": ratio,
            "target": format!(">= {TARGET_RATIO}x"),
            "met": ratio >= TARGET_RATIO,
        }],
        "agents": agents,
        "sockets_per_agent": sockets,
        "deltas_per_agent": deltas,
        "churn_percent": churn * 100.0,
        "collector_rows": collector_rows,
        "collector_s": collector_s,
        "collector_rows_per_s": collector_rate,
        "ack_p50_ms": p50,
        "ack_p99_ms": p99,
        "cpu_percent": {
            "collector": cpu(cpu_start.0, cpu_end.0),
            "clickhouse": cpu(cpu_start.1, cpu_end.1),
            "agents": cpu(cpu_start.2, cpu_end.2),
        },
        "reference_rows": reference_rows,
        "reference_s": reference_s,
        "reference_rounds_ms": spread,
        "reference_without_merges": quiet,
        "reference_rows_per_s": reference_rate,
        "client_startup_ms": startup * 1000.0,
        "tables": per_table,
    });
    let path = fleet::write_json("ingest", &doc)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `clickhouse-client` against the cluster's server.
struct ClickHouseClient {
    port: u16,
    database: String,
}

impl ClickHouseClient {
    /// Runs `query` with stdin from `input` and stdout to `output`; the wall time.
    fn timed(&self, query: &str, input: Option<&Path>, output: Option<&Path>) -> Result<f64> {
        let mut command = Command::new("clickhouse-client");
        command
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--database", &self.database, "--query", query])
            .stderr(Stdio::piped());
        match input {
            Some(path) => command.stdin(std::fs::File::open(path)?),
            None => command.stdin(Stdio::null()),
        };
        match output {
            Some(path) => command.stdout(std::fs::File::create(path)?),
            None => command.stdout(Stdio::null()),
        };
        let started = Instant::now();
        let out = command
            .output()
            .context("cannot run `clickhouse-client` (Debian's clickhouse-client package)")?;
        let took = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "clickhouse-client failed on `{query}`: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(took)
    }
}

fn count(cluster: &Cluster, table: &str) -> Result<u64> {
    let text = cluster.http_query(&format!("SELECT count() FROM {table}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("ClickHouse answered `{}` to a count", text.trim()))
}

/// Waits until no merge of the benchmark's database runs; false when some still ran
/// after a minute (the reference then runs beside them, and says so).
fn wait_for_merges(cluster: &Cluster) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let running = cluster
            .http_query("SELECT count() FROM system.merges WHERE database = currentDatabase()")?;
        if running.trim() == "0" {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(false)
}

fn counts(cluster: &Cluster, tables: &[String]) -> Result<BTreeMap<String, u64>> {
    tables
        .iter()
        .map(|t| Ok((t.clone(), count(cluster, t)?)))
        .collect()
}

fn fleet_summary(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
