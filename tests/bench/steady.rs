//! `just bench-steady`: the agent in steady state. A real ClickHouse, a collector and one
//! real agent process (release build, 10 s scans, a spool) over real mutual TLS, at 1,000
//! and 20,000 sockets held by worker processes, with 1% of the sockets churned (closed
//! and replaced) per interval.
//!
//! Measured per size, after the agent's snapshot is stored and one interval has passed:
//! - an idle phase (nothing changes), then a churn phase (1% of the sockets replaced every
//!   interval);
//! - the agent's CPU (`utime + stime` of `/proc/<pid>/stat`) per minute as a share of one
//!   core, against `ss -tanp` run once per interval over the same sockets (its CPU, from
//!   this process's `cutime + cstime`: `ss` is the only child reaped during a phase);
//! - the agent's resident memory (`VmRSS`, the highest sample);
//! - the bytes the agent sends on the wire per interval, idle and with churn, against the
//!   bytes of its first connection up to its stored snapshot (TLS handshake, Hello and the
//!   full snapshot). A TCP relay in this process sits between agent and collector and
//!   counts the bytes each way; TLS stays end to end (the collector's certificate names the
//!   address the agent dials). "Heartbeat only" is checked exactly: ClickHouse holds no
//!   new snapshot or delta of the host after the idle phase.
//!
//! Idle really is idle: the agent and the workers run in a network-namespace host of their
//! own (one per size, so that nothing of one size lingers into the next); the relay,
//! ClickHouse queries and `ss -N` make no TCP connection in that namespace. ClickHouse is
//! queried only between phases, over loopback in the root namespace.
//!
//! The sockets of a size: half TCP listeners on loopback, half the two ends of loopback
//! connections to them (folded into flows by the agent). Churn replaces listeners with new
//! ones on fresh ports: every churned socket is a change the agent must send (connections
//! are folded into flow counts, and closing them would leave TIME_WAIT sockets behind).
//!
//! Environment: `STEADY_SIZES` (`1000,20000`), `STEADY_INTERVAL_SECS` (10),
//! `STEADY_IDLE_SECS` (60), `STEADY_CHURN_SECS` (120), `STEADY_CHURN_PERCENT` (1).
//! Root (network namespaces). Writes `<target>/bench/steady.json`.

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portolan_testkit::clickhouse::{http_query, thousands};
use portolan_testkit::{ChildGuard, Lab, NetnsHost};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{Cluster, Limits, rss_kib};

const WORKER_ENV: &str = "PORTOLAN_STEADY_WORKER";
/// Sockets one worker process holds, at most (well under the default fd limit).
const SOCKETS_PER_WORKER: usize = 5_000;
/// The targets.
const TARGET_CPU_PERCENT: f64 = 0.5;
const TARGET_CPU_SOCKETS: usize = 1_000;
const TARGET_RSS_MIB: f64 = 20.0;

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("`{name}` is `{v}`; give a whole number")),
        Err(_) => Ok(default),
    }
}

fn main() -> ExitCode {
    let result = match std::env::var(WORKER_ENV) {
        Ok(spec) => worker(&spec),
        Err(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(bench())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Worker processes: run inside the size's namespace host.

/// `LISTENERS,PAIRS`: holds that many loopback listeners and connected pairs; on each
/// `churn N` line from stdin replaces its N oldest listeners with new ones and answers
/// `ok`; exits when stdin closes.
fn worker(spec: &str) -> Result<()> {
    let (listeners, pairs) = spec
        .split_once(',')
        .and_then(|(l, p)| Some((l.parse::<usize>().ok()?, p.parse::<usize>().ok()?)))
        .with_context(|| format!("bad worker spec `{spec}`"))?;
    let mut held: std::collections::VecDeque<TcpListener> = (0..listeners.max(1))
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot bind a listener")?;
    let mut connections = Vec::with_capacity(pairs * 2);
    for i in 0..pairs {
        let listener = &held[i % held.len()];
        let client = TcpStream::connect(listener.local_addr()?).context("cannot connect")?;
        let (server, _) = listener.accept().context("cannot accept")?;
        connections.push(client);
        connections.push(server);
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lines() {
        let line = line?;
        let n: usize = line
            .strip_prefix("churn ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("unknown worker command `{line}`"))?;
        for _ in 0..n {
            drop(held.pop_front());
            held.push_back(TcpListener::bind("127.0.0.1:0").context("cannot bind a listener")?);
        }
        writeln!(out, "ok")?;
        out.flush()?;
    }
    Ok(())
}

struct Worker {
    guard: ChildGuard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    listeners: usize,
}

impl Worker {
    fn spawn(host: &NetnsHost, listeners: usize, pairs: usize) -> Result<Worker> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut command = host.command(exe);
        command
            .env(WORKER_ENV, format!("{listeners},{pairs}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut guard = ChildGuard::spawn(&mut command)?;
        let stdin = guard.stdin.take().context("worker without stdin")?;
        let stdout = BufReader::new(guard.stdout.take().context("worker without stdout")?);
        let mut worker = Worker {
            guard,
            stdin,
            stdout,
            listeners,
        };
        worker.expect("ready")?;
        Ok(worker)
    }

    fn expect(&mut self, word: &str) -> Result<()> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim() != word {
            bail!("a socket worker said {line:?} instead of `{word}` (see its error above)");
        }
        Ok(())
    }

    fn churn(&mut self, n: usize) -> Result<()> {
        writeln!(self.stdin, "churn {n}")?;
        self.stdin.flush()?;
        self.expect("ok")
    }
}

/// Workers holding `sockets` sockets in `host`: half listeners, half connection ends.
fn spawn_workers(host: &NetnsHost, sockets: usize) -> Result<Vec<Worker>> {
    let mut workers = Vec::new();
    let mut left = sockets;
    while left > 0 {
        let n = left.min(SOCKETS_PER_WORKER);
        let pairs = n / 4;
        workers.push(Worker::spawn(host, n - 2 * pairs, pairs)?);
        left -= n;
    }
    Ok(workers)
}

/// Replaces `n` listeners, spread over the workers by their share.
fn churn(workers: &mut [Worker], n: usize) -> Result<()> {
    let total: usize = workers.iter().map(|w| w.listeners).sum();
    let mut left = n;
    let count = workers.len();
    for (i, w) in workers.iter_mut().enumerate() {
        let share = if i + 1 == count {
            left
        } else {
            (n * w.listeners).div_ceil(total.max(1)).min(left)
        };
        if share > 0 {
            w.churn(share)?;
        }
        left -= share;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The relay: counts the bytes each way between agent and collector.

#[derive(Default)]
struct Counters {
    /// Agent → collector.
    up: AtomicU64,
    /// Collector → agent.
    down: AtomicU64,
    connections: AtomicU64,
}

impl Counters {
    fn read(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
        )
    }
}

async fn relay(listen: SocketAddr, upstream: SocketAddr, counters: Arc<Counters>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind the relay on {listen}"))?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            counters.connections.fetch_add(1, Ordering::SeqCst);
            let counters = counters.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ar, aw) = inbound.into_split();
                let (cr, cw) = outbound.into_split();
                let up = pump(ar, cw, counters.clone(), true);
                let down = pump(cr, aw, counters, false);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok(())
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counters: Arc<Counters>,
    up: bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let counter = if up { &counters.up } else { &counters.down };
        counter.fetch_add(n as u64, Ordering::SeqCst);
        to.write_all(&buf[..n]).await?;
    }
}

// ---------------------------------------------------------------------------------------
// Process accounting from /proc.

fn clock_ticks_per_second() -> f64 {
    // CLK_TCK is 100 on every Linux architecture Portolan builds for; `getconf` says so
    // where it is installed.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of `/proc/<pid>/stat` after the command name: (utime + stime, cutime + cstime)
/// in clock ticks.
fn cpu_ticks(pid: &str) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (did the process exit?)"))?;
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("unexpected /proc/<pid>/stat")?;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    match fields.as_slice() {
        [u, s, cu, cs] => Ok((u + s, cu + cs)),
        _ => bail!("unexpected /proc/{pid}/stat: {stat}"),
    }
}

/// Runs `ss -N <netns> -tanp` (output discarded) and reaps it.
fn run_ss(netns: &str) -> Result<()> {
    let status = Command::new("ss")
        .args(["-N", netns, "-tanp"])
        .stdout(Stdio::null())
        .status()
        .context("cannot run `ss` (install iproute2)")?;
    if !status.success() {
        bail!("`ss -N {netns} -tanp` failed: {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ClickHouse, between phases only.

/// (snapshots, deltas) ClickHouse holds for `host_id`.
fn reports(cluster: &Cluster, host_id: &str) -> Result<(u64, u64)> {
    let body = http_query(
        &cluster.clickhouse_url,
        &cluster.database,
        &format!(
            "SELECT countIf(kind = 'snapshot'), countIf(kind = 'delta') FROM host_reports FINAL WHERE host_id = '{host_id}'"
        ),
    )?;
    let mut numbers = body.split_whitespace().map(str::parse::<u64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(s)), Some(Ok(d))) => Ok((s, d)),
        _ => bail!("unexpected answer from ClickHouse: {body:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The measurement.

/// One phase's figures.
#[derive(Debug, Clone)]
struct Phase {
    seconds: f64,
    intervals: f64,
    agent_cpu_percent: f64,
    ss_tanp_cpu_percent: f64,
    ss_runs: u32,
    bytes_up_per_interval: f64,
    bytes_down_per_interval: f64,
    new_snapshots: u64,
    new_deltas: u64,
}

#[derive(Debug, Clone)]
struct SizeResult {
    sockets: usize,
    worker_processes: usize,
    churn_per_interval: usize,
    snapshot_bytes_up: u64,
    snapshot_seconds: f64,
    rss_max_kib: u64,
    idle: Phase,
    churn: Phase,
    relay_connections: u64,
}

impl Phase {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seconds": self.seconds,
            "intervals": self.intervals,
            "agent_cpu_percent_of_core": self.agent_cpu_percent,
            "ss_tanp_cpu_percent_of_core": self.ss_tanp_cpu_percent,
            "ss_runs": self.ss_runs,
            "bytes_up_per_interval": self.bytes_up_per_interval,
            "bytes_down_per_interval": self.bytes_down_per_interval,
            "new_snapshots": self.new_snapshots,
            "new_deltas": self.new_deltas,
        })
    }
}

impl SizeResult {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sockets": self.sockets,
            "worker_processes": self.worker_processes,
            "churn_per_interval": self.churn_per_interval,
            "snapshot_bytes_up": self.snapshot_bytes_up,
            "snapshot_seconds": self.snapshot_seconds,
            "rss_max_kib": self.rss_max_kib,
            "idle": self.idle.json(),
            "churn": self.churn.json(),
            "relay_connections": self.relay_connections,
        })
    }
}

struct Settings {
    interval: Duration,
    idle: Duration,
    churn: Duration,
    churn_percent: f64,
    ticks: f64,
}

/// The agent under measurement: where it runs and how its figures are read.
struct Measured<'a> {
    cluster: &'a Cluster,
    host: &'a NetnsHost,
    host_id: &'a str,
    agent_pid: &'a str,
    counters: &'a Counters,
}

/// Runs one phase: every interval, `ss -tanp` once (and churn when asked), RSS sampled.
async fn phase(
    measured: &Measured<'_>,
    workers: &mut [Worker],
    settings: &Settings,
    length: Duration,
    churned: usize,
    rss_max: &mut u64,
) -> Result<Phase> {
    let Measured {
        cluster,
        host,
        host_id,
        agent_pid,
        counters,
    } = *measured;
    let (snapshots0, deltas0) = reports(cluster, host_id)?;
    let (agent0, _) = cpu_ticks(agent_pid)?;
    // `ss` runs are this process's only children reaped during the phase.
    let (_, children0) = cpu_ticks("self")?;
    let (up0, down0) = counters.read();
    let started = Instant::now();
    let mut runs = 0u32;
    let mut next = started;
    while started.elapsed() < length {
        if churned > 0 {
            churn(workers, churned)?;
        }
        run_ss(&host.netns)?;
        runs += 1;
        *rss_max = (*rss_max).max(rss_kib(agent_pid.parse().unwrap_or(0)));
        next += settings.interval;
        tokio::time::sleep_until(next.into()).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (agent1, _) = cpu_ticks(agent_pid)?;
    let (_, children1) = cpu_ticks("self")?;
    let (up1, down1) = counters.read();
    // One more interval for the last scan's report to be stored.
    tokio::time::sleep(settings.interval).await;
    let (snapshots1, deltas1) = reports(cluster, host_id)?;
    let intervals = seconds / settings.interval.as_secs_f64();
    let percent = |ticks: u64| ticks as f64 / settings.ticks / seconds * 100.0;
    Ok(Phase {
        seconds,
        intervals,
        agent_cpu_percent: percent(agent1 - agent0),
        ss_tanp_cpu_percent: percent(children1 - children0),
        ss_runs: runs,
        bytes_up_per_interval: (up1 - up0) as f64 / intervals,
        bytes_down_per_interval: (down1 - down0) as f64 / intervals,
        new_snapshots: snapshots1 - snapshots0,
        new_deltas: deltas1 - deltas0,
    })
}

async fn measure_size(
    cluster: &Cluster,
    lab: &Lab,
    bridge: IpAddr,
    sockets: usize,
    settings: &Settings,
) -> Result<SizeResult> {
    let host = lab.add_host(&format!("n{sockets}"))?;
    let host_id = format!("steady-{sockets}");
    let mut workers = spawn_workers(&host, sockets)?;
    let counters = Arc::new(Counters::default());
    let relay_addr = SocketAddr::new(bridge, portolan_testkit::free_port()?);
    relay(
        relay_addr,
        SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            cluster.collector_port,
        ),
        counters.clone(),
    )
    .await?;
    let started = Instant::now();
    let agent = cluster.spawn_agent(Some(&host), &host_id, relay_addr, settings.interval, &[])?;
    let agent_pid = agent.id().to_string();
    // The snapshot: its bytes are everything up to the moment ClickHouse holds it.
    let snapshot_bytes_up = loop {
        let (up, _) = counters.read();
        if reports(cluster, &host_id)?.0 >= 1 {
            break up;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the agent's snapshot was not stored within 120 s; agent log:\n{}",
                cluster.agent_log(&host_id)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let snapshot_seconds = started.elapsed().as_secs_f64();
    // Settle: one interval for the first heartbeat and any page faults.
    tokio::time::sleep(settings.interval).await;
    let mut rss_max = rss_kib(agent.id());
    let measured = Measured {
        cluster,
        host: &host,
        host_id: &host_id,
        agent_pid: &agent_pid,
        counters: &counters,
    };
    let idle = phase(
        &measured,
        &mut workers,
        settings,
        settings.idle,
        0,
        &mut rss_max,
    )
    .await?;
    let churned = ((sockets as f64 * settings.churn_percent / 100.0).round() as usize).max(1);
    let churn = phase(
        &measured,
        &mut workers,
        settings,
        settings.churn,
        churned,
        &mut rss_max,
    )
    .await?;
    let relay_connections = counters.connections.load(Ordering::SeqCst);
    drop(agent);
    for w in workers {
        drop(w.stdin);
        drop(w.guard);
    }
    Ok(SizeResult {
        sockets,
        worker_processes: sockets.div_ceil(SOCKETS_PER_WORKER),
        churn_per_interval: churned,
        snapshot_bytes_up,
        snapshot_seconds,
        rss_max_kib: rss_max,
        idle,
        churn,
        relay_connections,
    })
}

fn bytes(n: f64) -> String {
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn table_rows(r: &SizeResult, interval: Duration) -> Vec<serde_json::Value> {
    let n = thousands(r.sockets);
    let secs = interval.as_secs_f64();
    let cpu_targeted = r.sockets == TARGET_CPU_SOCKETS && (secs - 10.0).abs() < f64::EPSILON;
    let rss_mib = r.rss_max_kib as f64 / 1024.0;
    let idle_heartbeat_only = r.idle.new_snapshots == 0 && r.idle.new_deltas == 0;
    vec![
        serde_json::json!({
            "measure": format!("agent CPU, {n} sockets, {}% churn per {secs:.0} s interval", r.churn_per_interval as f64 * 100.0 / r.sockets as f64),
            "figure": format!("{:.3}% of a core", r.churn.agent_cpu_percent),
            "reference": format!("ss -tanp once per interval: {:.3}%", r.churn.ss_tanp_cpu_percent),
            "ratio": r.churn.agent_cpu_percent / r.churn.ss_tanp_cpu_percent,
            "target": cpu_targeted.then(|| format!("< {TARGET_CPU_PERCENT}% of a core")),
            "met": cpu_targeted.then_some(r.churn.agent_cpu_percent < TARGET_CPU_PERCENT),
        }),
        serde_json::json!({
            "measure": format!("agent resident memory, {n} sockets"),
            "figure": format!("{rss_mib:.1} MiB"),
            "reference": null,
            "ratio": null,
            "target": format!("< {TARGET_RSS_MIB} MiB"),
            "met": rss_mib < TARGET_RSS_MIB,
        }),
        serde_json::json!({
            "measure": format!("agent bytes sent per interval, idle, {n} sockets"),
            "figure": bytes(r.idle.bytes_up_per_interval),
            "reference": format!("first connection with its snapshot: {}", bytes(r.snapshot_bytes_up as f64)),
            "ratio": r.idle.bytes_up_per_interval / r.snapshot_bytes_up as f64,
            "target": "heartbeat only",
            "met": idle_heartbeat_only,
        }),
        serde_json::json!({
            "measure": format!("agent bytes sent per interval, {} listeners replaced, {n} sockets", r.churn_per_interval),
            "figure": bytes(r.churn.bytes_up_per_interval),
            "reference": format!("first connection with its snapshot: {}", bytes(r.snapshot_bytes_up as f64)),
            "ratio": r.churn.bytes_up_per_interval / r.snapshot_bytes_up as f64,
            "target": null,
            "met": null,
        }),
    ]
}

async fn bench() -> Result<()> {
    let sizes: Vec<usize> = std::env::var("STEADY_SIZES")
        .unwrap_or_else(|_| "1000,20000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .with_context(|| format!("`STEADY_SIZES`: `{s}` is not a number"))
        })
        .collect::<Result<_>>()?;
    let settings = Settings {
        interval: Duration::from_secs(env_number("STEADY_INTERVAL_SECS", 10)?.max(1)),
        idle: Duration::from_secs(env_number("STEADY_IDLE_SECS", 60)?),
        churn: Duration::from_secs(env_number("STEADY_CHURN_SECS", 120)?),
        churn_percent: env_number("STEADY_CHURN_PERCENT", 1)? as f64,
        ticks: clock_ticks_per_second(),
    };
    let lab = Lab::new("steady")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start("steady", &[bridge], Limits::default()).await?;
    println!(
        "steady state: sizes {sizes:?}, scan every {:?}, idle {:?} then churn {:?} ({}% per interval)",
        settings.interval, settings.idle, settings.churn, settings.churn_percent
    );
    let mut results = Vec::new();
    for &sockets in &sizes {
        let r = measure_size(&cluster, &lab, bridge, sockets, &settings).await?;
        println!(
            "{sockets:>6} sockets: snapshot {} in {:.1} s; idle: cpu {:.3}% (ss -tanp {:.3}%), {}/interval up, {} snapshots, {} deltas; churn {}: cpu {:.3}% (ss -tanp {:.3}%), {}/interval up, {} deltas; rss max {:.1} MiB",
            bytes(r.snapshot_bytes_up as f64),
            r.snapshot_seconds,
            r.idle.agent_cpu_percent,
            r.idle.ss_tanp_cpu_percent,
            bytes(r.idle.bytes_up_per_interval),
            r.idle.new_snapshots,
            r.idle.new_deltas,
            r.churn_per_interval,
            r.churn.agent_cpu_percent,
            r.churn.ss_tanp_cpu_percent,
            bytes(r.churn.bytes_up_per_interval),
            r.churn.new_deltas,
            r.rss_max_kib as f64 / 1024.0,
        );
        results.push(r);
    }
    let table: Vec<serde_json::Value> = results
        .iter()
        .flat_map(|r| table_rows(r, settings.interval))
        .collect();
    let json = serde_json::json!({
        "bench": "steady",
        "table": table,
        "interval_seconds": settings.interval.as_secs_f64(),
        "churn_percent": settings.churn_percent,
        "clock_ticks_per_second": settings.ticks,
        "sizes": results.iter().map(SizeResult::json).collect::<Vec<_>>(),
    });
    let dir = target_dir().join("bench");
    let path = dir.join("steady.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{json:#}\n")))
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
