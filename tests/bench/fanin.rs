//! `just bench`, fan-in: the largest fleet one collector sustains on this machine.
//!
//! A real collector and ClickHouse ([`Cluster`]) and a fleet of simulated agents in this
//! process ([`fleet`]): each with its own certificate and mutual-TLS gRPC stream, 100
//! sockets and 1% of them replaced per 10 s interval, heartbeats when unchanged. The fleet
//! grows in steps (`FANIN_STEPS`, default 500,1000,2000,5000). At each step, once every
//! agent is connected and its snapshot stored, it is measured for `FANIN_WINDOW_S`
//! (default 60 s):
//!
//! - ack latency (a change sent → its Ack, meaning stored in ClickHouse) p50 and p99;
//! - the backlog (changes made and not acknowledged) at the start and the end;
//! - collector memory per connected agent: VmRSS growth since before the first agent,
//!   divided by the agents;
//! - CPU of the collector, ClickHouse and this process over the window.
//!
//! Then the fleet stops changing, waits until every change is acknowledged, and checks
//! that `socket_events` holds exactly the socket events acknowledged.
//!
//! A step is **sustained** when every agent is connected and none failed, the p99 ack
//! latency is under `FANIN_P99_MS` (2000), the backlog at the end of the window is at most
//! one change per agent (the one in flight: it does not grow), the backlog drains within
//! two intervals and every change is stored. The ramp stops at the first step that is
//! not. Target: 5,000 agents, under 100 KiB per agent. Writes `<target>/bench/fanin.json`.
//!
//! Other knobs: `FANIN_SOCKETS` (100), `FANIN_CHURN_PERCENT` (1), `FANIN_INTERVAL_S` (10),
//! `FANIN_CONNECTS` (concurrent handshakes, 32), `FANIN_COLLECTOR_ENV` (`K=V …` for the
//! collector process).

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

#[allow(dead_code)]
mod fleet;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use portolan_tls::pki::Ca;
use serde_json::{Value, json};

use fleet::{AgentShape, Fleet, Pace, cpu_seconds, env_float, env_list, env_number, quantile_ms};
use support::{Cluster, Limits, rss_kib};

const TARGET_AGENTS: u64 = 5_000;
const TARGET_KIB_PER_AGENT: f64 = 100.0;

/// What one step measured.
struct Step {
    agents: usize,
    connect_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    acks: usize,
    backlog_start: i64,
    backlog_end: i64,
    drain_s: Option<f64>,
    stored: Option<(u64, u64)>,
    kib_per_agent: f64,
    collector_rss_kib: u64,
    cpu: (f64, f64, f64),
    failed: u64,
    errors: u64,
    problems: Vec<String>,
}

impl Step {
    fn sustained(&self) -> bool {
        self.problems.is_empty()
    }

    fn json(&self) -> Value {
        json!({
            "agents": self.agents,
            "sustained": self.sustained(),
            "connect_s": self.connect_s,
            "ack_p50_ms": self.p50_ms,
            "ack_p99_ms": self.p99_ms,
            "ack_max_ms": self.max_ms,
            "acks": self.acks,
            "backlog_start": self.backlog_start,
            "backlog_end": self.backlog_end,
            "drain_s": self.drain_s,
            "socket_events_stored": self.stored.map(|s| s.0),
            "socket_events_acknowledged": self.stored.map(|s| s.1),
            "collector_rss_kib": self.collector_rss_kib,
            "collector_kib_per_agent": self.kib_per_agent,
            "cpu_percent": {
                "collector": self.cpu.0,
                "clickhouse": self.cpu.1,
                "fleet": self.cpu.2,
            },
            "failed_agents": self.failed,
            "stream_errors": self.errors,
            "problems": self.problems,
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let steps = env_list("FANIN_STEPS", &[500, 1_000, 2_000, 5_000])?;
    let sockets = env_number("FANIN_SOCKETS", 100)? as usize;
    let churn = env_float("FANIN_CHURN_PERCENT", 1.0)? / 100.0;
    let interval = Duration::from_secs(env_number("FANIN_INTERVAL_S", 10)?.max(1));
    let window = Duration::from_secs(env_number("FANIN_WINDOW_S", 60)?.max(1));
    let p99_limit_ms = env_number("FANIN_P99_MS", 2_000)? as f64;
    let connects = env_number("FANIN_CONNECTS", 32)? as usize;
    let largest = steps.iter().copied().max().unwrap_or(0);
    // One connection per agent here and in the collector, plus ClickHouse and slack.
    let fds = fleet::raise_fd_limit(largest + 1_024)?;

    // `FANIN_COLLECTOR_ENV="K=V K2=V2"`: environment of the collector, for experiments
    // (e.g. allocator settings).
    let collector_env: Vec<(String, String)> = std::env::var("FANIN_COLLECTOR_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let limits = Limits {
        collector_env,
        ..Limits::default()
    };
    let mut cluster = Cluster::start("fanin", &[], limits).await?;
    let collector_pid = cluster
        .collector_pid(0)
        .context("the collector is not running")?;
    let clickhouse_pid = fleet::clickhouse_pid(cluster.state.path());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = rss_kib(collector_pid);
    println!(
        "fan-in: steps {steps:?}, {sockets} sockets per agent, {:.1}% churn per {interval:?}, window {window:?}; open-file limit {fds}; collector idle at {:.1} MiB",
        churn * 100.0,
        idle_kib as f64 / 1024.0
    );

    let shape = AgentShape {
        sockets,
        churn,
        pace: Pace::Interval(interval),
    };
    let mut fleet = Fleet::new(
        Ca::from_pem(cluster.pki.ca.cert_pem(), cluster.pki.ca.key_pem())?,
        cluster.collector_port,
        "fanin",
        shape,
        connects,
        false,
    );
    let mut results: Vec<Step> = Vec::new();
    for &n in &steps {
        let n = n as usize;
        let started = Instant::now();
        fleet.grow_to(n)?;
        let connected = fleet
            .wait_for(
                &format!("{n} agents connected with their snapshots stored"),
                Duration::from_secs(600),
                |s| {
                    s.snapshots_acked.load(Ordering::Relaxed) >= n as u64
                        || s.failed.load(Ordering::Relaxed) > 0
                },
            )
            .await;
        let connect_s = started.elapsed().as_secs_f64();
        let mut problems = Vec::new();
        if let Err(e) = connected {
            problems.push(format!("{e:#}"));
        }
        // One interval to settle: the agents' first scans, spread over the interval.
        tokio::time::sleep(interval).await;
        let _ = fleet.stats.take_latencies();
        let backlog_start = fleet.stats.backlog.load(Ordering::Relaxed);
        let cpu_start = cpus(collector_pid, clickhouse_pid);
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let cpu_end = cpus(collector_pid, clickhouse_pid);
        let wall = t0.elapsed().as_secs_f64();
        let backlog_end = fleet.stats.backlog.load(Ordering::Relaxed);
        let collector_rss_kib = rss_kib(collector_pid);
        let mut latencies = fleet.stats.take_latencies();
        let acks = latencies.len();
        let p50_ms = quantile_ms(&mut latencies, 0.5);
        let p99_ms = quantile_ms(&mut latencies, 0.99);
        let max_ms = quantile_ms(&mut latencies, 1.0);
        let connected_now = fleet.stats.connected.load(Ordering::Relaxed) as usize;
        let failed = fleet.stats.failed.load(Ordering::Relaxed);
        let errors = fleet.stats.errors.load(Ordering::Relaxed);
        if connected_now < n || failed > 0 {
            problems.push(format!(
                "{connected_now} of {n} agents connected, {failed} failed; last error: {}",
                fleet.stats.last_error().unwrap_or_default()
            ));
        }
        if acks == 0 && churn > 0.0 {
            problems.push("no change was acknowledged during the window".into());
        } else if acks > 0 && p99_ms >= p99_limit_ms {
            problems.push(format!(
                "ack p99 {p99_ms:.0} ms is over {p99_limit_ms:.0} ms"
            ));
        }
        if backlog_end > n as i64 {
            problems.push(format!(
                "the backlog grew from {backlog_start} to {backlog_end} changes (more than one per agent)"
            ));
        }
        // Quiet: every change made must be acknowledged, and then be in ClickHouse.
        fleet.set_quiet(true);
        let drain = fleet
            .wait_for("the backlog drained", 2 * interval, |s| {
                s.backlog.load(Ordering::Relaxed) == 0
            })
            .await;
        let drain_s = match drain {
            Ok(d) => Some(d.as_secs_f64()),
            Err(e) => {
                problems.push(format!("{e:#}"));
                // Let it finish before the count, so that the count means something.
                let _ = fleet
                    .wait_for("the backlog drained", Duration::from_secs(600), |s| {
                        s.backlog.load(Ordering::Relaxed) == 0
                    })
                    .await;
                None
            }
        };
        let acknowledged = fleet.stats.socket_events.load(Ordering::Relaxed);
        let stored = match count_socket_events(&cluster) {
            Ok(rows) => {
                if rows != acknowledged {
                    problems.push(format!(
                        "socket_events holds {rows} events, {acknowledged} were acknowledged"
                    ));
                }
                Some((rows, acknowledged))
            }
            Err(e) => {
                problems.push(format!("cannot count socket_events: {e:#}"));
                None
            }
        };
        fleet.set_quiet(false);
        let per = |a: f64, b: f64| 100.0 * (b - a) / wall;
        let step = Step {
            agents: n,
            connect_s,
            p50_ms,
            p99_ms,
            max_ms,
            acks,
            backlog_start,
            backlog_end,
            drain_s,
            stored,
            kib_per_agent: collector_rss_kib.saturating_sub(idle_kib) as f64 / n as f64,
            collector_rss_kib,
            cpu: (
                per(cpu_start.0, cpu_end.0),
                per(cpu_start.1, cpu_end.1),
                per(cpu_start.2, cpu_end.2),
            ),
            failed,
            errors,
            problems,
        };
        println!(
            "{n:>6} agents: connected in {connect_s:.0} s; ack p50 {p50_ms:.0} ms p99 {p99_ms:.0} ms ({acks} acks); backlog {backlog_start} → {backlog_end}; collector {:.1} MiB, {:.1} KiB/agent; CPU collector {:.0}% clickhouse {:.0}% fleet {:.0}%; {} stream errors{}; {}",
            step.collector_rss_kib as f64 / 1024.0,
            step.kib_per_agent,
            step.cpu.0,
            step.cpu.1,
            step.cpu.2,
            step.errors,
            fleet
                .stats
                .last_error()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
            if step.sustained() {
                "sustained".to_string()
            } else {
                format!("NOT sustained: {}", step.problems.join("; "))
            }
        );
        let sustained = step.sustained();
        results.push(step);
        if !sustained {
            break;
        }
    }
    fleet.shutdown().await;
    if cluster.collector_pid(0).is_none() {
        println!("the collector died:\n{}", cluster.collector_log());
    }

    let best = results
        .iter()
        .filter(|s| s.sustained())
        .max_by_key(|s| s.agents);
    let best_agents = best.map_or(0, |s| s.agents);
    let mut table = vec![json!({
        "measure": format!("fan-in: agents one collector sustains ({sockets} sockets, {:.0}% churn per {}s, p99 ack < {:.0} s)", churn * 100.0, interval.as_secs(), p99_limit_ms / 1000.0),
        "figure": format!("{best_agents} agents"),
        "reference": format!("target {TARGET_AGENTS} agents (steps {steps:?})"),
        "ratio": best_agents as f64 / TARGET_AGENTS as f64,
        "target": format!(">= {TARGET_AGENTS} agents"),
        "met": best_agents as u64 >= TARGET_AGENTS,
    })];
    if let Some(best) = best {
        table.push(json!({
            "measure": format!("fan-in: ack latency p50 / p99 at {} agents", best.agents),
            "figure": format!("{:.0} ms / {:.0} ms", best.p50_ms, best.p99_ms),
            "reference": format!("scan interval {} s", interval.as_secs()),
            "ratio": best.p99_ms / interval.as_millis() as f64,
            "target": null,
            "met": null,
        }));
    }
    // Memory per agent at the largest fleet that connected, sustained or not.
    if let Some(largest) = results.iter().max_by_key(|s| s.agents) {
        table.push(json!({
            "measure": format!("fan-in: collector memory per connected agent ({} agents)", largest.agents),
            "figure": format!("{:.1} KiB", largest.kib_per_agent),
            "reference": format!("target {TARGET_KIB_PER_AGENT:.0} KiB"),
            "ratio": largest.kib_per_agent / TARGET_KIB_PER_AGENT,
            "target": format!("< {TARGET_KIB_PER_AGENT:.0} KiB"),
            "met": largest.kib_per_agent < TARGET_KIB_PER_AGENT,
        }));
    }
    let doc = json!({
        "bench": "fanin",
        "table": table,
        "sockets_per_agent": sockets,
        "churn_percent": churn * 100.0,
        "interval_s": interval.as_secs(),
        "window_s": window.as_secs(),
        "p99_limit_ms": p99_limit_ms,
        "collector_idle_rss_kib": idle_kib,
        "largest_sustained": best_agents,
        "steps": results.iter().map(Step::json).collect::<Vec<_>>(),
    });
    let path = fleet::write_json("fanin", &doc)?;
    println!(
        "largest sustained fleet: {best_agents} agents; wrote {}",
        path.display()
    );
    Ok(())
}

/// CPU seconds of the collector, ClickHouse and this process.
fn cpus(collector: u32, clickhouse: Option<u32>) -> (f64, f64, f64) {
    (
        cpu_seconds(collector),
        clickhouse.map_or(0.0, cpu_seconds),
        cpu_seconds(std::process::id()),
    )
}

fn count_socket_events(cluster: &Cluster) -> Result<u64> {
    let text = cluster.http_query("SELECT count() FROM socket_events FINAL")?;
    text.trim()
        .parse()
        .with_context(|| format!("ClickHouse answered `{}` to a count", text.trim()))
}
