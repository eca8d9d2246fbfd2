//! Scan benchmark: a full scan with process attribution against `ss -tanp` (the
//! reference) and `ss -tan` (the netlink floor), on the same sockets, interleaved, at
//! several socket counts in one run.
//!
//! `cargo bench -p portolan-agent --bench scan [-- SIZES]`; SIZES (or
//! `PORTOLAN_BENCH_SOCKETS`) is a comma-separated list of socket counts, default
//! `1000,20000,100000`; `PORTOLAN_BENCH_ROUNDS` (default 7) sets the rounds per size. The
//! sockets are loopback TCP connections (two sockets each) held by worker processes (this
//! binary run again), at most [`MAX_PAIRS_PER_WORKER`] connections per worker and fewer
//! when the fd limit says so; a worker opens one more listener every
//! [`PAIRS_PER_LISTENER`] connections, so that no destination runs out of ephemeral
//! ports. Workers are added as the sizes grow, so a size reuses the previous size's
//! sockets. Prints a table and writes the same figures to `<target>/bench/scan.json`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use nix::sys::socket::{setsockopt, sockopt};
use portolan_agent::scan::{ScanOptions, Scanner};
use portolan_core::Attribution;
use portolan_testkit::clickhouse::thousands;

const WORKER_ENV: &str = "PORTOLAN_BENCH_WORKER_PAIRS";
/// File descriptors a worker keeps for itself (stdio, the listeners, slack).
const FD_RESERVE: u64 = 64;
/// The target: a scan with attribution at most this share of `ss -tanp`'s time.
const TARGET_RATIO: f64 = 0.5;
/// The size the target applies to.
const TARGET_SOCKETS: usize = 20_000;
/// Connections per worker process, at most: many processes, as on a real host.
const MAX_PAIRS_PER_WORKER: usize = 10_000;
/// Connections per listener: well under the 28,232 ephemeral ports Linux gives each
/// destination by default (`ip_local_port_range` 32768–60999).
const PAIRS_PER_LISTENER: usize = 20_000;
/// The fd limit asked for (root may raise the hard limit up to `fs.nr_open`).
const WANTED_FDS: u64 = 2 * MAX_PAIRS_PER_WORKER as u64 + FD_RESERVE;

fn main() -> ExitCode {
    if let Ok(pairs) = std::env::var(WORKER_ENV) {
        return worker(pairs.parse().unwrap_or(0));
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft fd limit to [`WANTED_FDS`] (raising the hard one too when allowed),
/// else to the hard limit; returns the new soft limit.
fn raise_fd_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let wanted = WANTED_FDS.max(soft);
    if wanted > hard && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return wanted;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    }
}

/// Worker process: `pairs` connected pairs over as many listeners as needed, held until
/// stdin closes.
fn worker(pairs: usize) -> ExitCode {
    raise_fd_limit();
    let mut listeners = Vec::new();
    let mut held = Vec::with_capacity(pairs * 2);
    for i in 0..pairs {
        if i % PAIRS_PER_LISTENER == 0 {
            match TcpListener::bind("127.0.0.1:0").and_then(|l| Ok((l.local_addr()?, l))) {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    eprintln!("worker: cannot bind: {e}");
                    break;
                }
            }
        }
        let Some((addr, listener)) = listeners.last() else {
            break;
        };
        let client = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("worker: connect #{i}: {e}");
                break;
            }
        };
        match listener.accept() {
            Ok((server, _)) => {
                held.push(client);
                held.push(server);
            }
            Err(e) => {
                eprintln!("worker: accept: {e}");
                break;
            }
        }
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready {}", held.len() / 2);
    let _ = stdout.flush();
    // Hold the sockets until the parent closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    // Close with a reset: no TIME_WAIT left behind to skew the next run.
    let reset = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    for stream in &held {
        let _ = setsockopt(stream, sockopt::Linger, &reset);
    }
    drop(held);
    ExitCode::SUCCESS
}

struct Worker {
    child: Child,
    pairs: usize,
}

/// Starts workers until they hold `pairs` more connections; appends them to `workers`.
fn spawn_workers(workers: &mut Vec<Worker>, pairs: usize, per_worker: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut left = pairs;
    while left > 0 {
        let n = left.min(per_worker);
        let mut child = Command::new(&exe)
            .env(WORKER_ENV, n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a socket worker: {e}"))?;
        let stdout = child.stdout.take().ok_or("worker without stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("worker did not start: {e}"))?;
        let made: usize = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("worker said {line:?}"))?;
        workers.push(Worker { child, pairs: made });
        if made < n {
            return Err(format!(
                "a worker made {made} of {n} connections (see its error above; `ulimit -n`, \
                 `net.ipv4.ip_local_port_range` and memory bound the sockets a host holds)"
            ));
        }
        left -= n;
    }
    Ok(())
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

fn cpu_ms(who: UsageWho) -> f64 {
    getrusage(who)
        .map(|u| {
            let t =
                |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 * 1e3 + tv.tv_usec() as f64 / 1e3;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(f64::NAN)
}

/// Runs `ss` with `args`, output to /dev/null; wall and CPU milliseconds.
fn run_ss(args: &str) -> Result<(f64, f64), String> {
    let cpu = cpu_ms(UsageWho::RUSAGE_CHILDREN);
    let started = Instant::now();
    let status = Command::new("ss")
        .arg(args)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `ss {args}` (install iproute2): {e}"))?;
    let wall = started.elapsed();
    if !status.success() {
        return Err(format!("`ss {args}` failed: {status}"));
    }
    Ok((ms(wall), cpu_ms(UsageWho::RUSAGE_CHILDREN) - cpu))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The socket counts to measure, ascending.
fn sizes() -> Result<Vec<usize>, String> {
    let spec = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("PORTOLAN_BENCH_SOCKETS").ok())
        .unwrap_or_else(|| "1000,20000,100000".into());
    let mut sizes = spec
        .split(',')
        .map(|n| {
            n.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|e| format!("bad socket count {n:?} in {spec:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

/// Medians of one size's interleaved rounds, milliseconds.
#[derive(Debug)]
struct Measured {
    sockets: u32,
    attributed: usize,
    workers: usize,
    agent_first_ms: f64,
    agent_ms: f64,
    agent_cpu_ms: f64,
    tanp_ms: f64,
    tanp_cpu_ms: f64,
    tan_ms: f64,
    bare_ms: f64,
}

fn measure(workers: &[Worker], rounds: usize) -> Result<Measured, String> {
    // A fresh scanner per size: its first scan is the cold one (buffers not yet grown,
    // the passwd file not yet read), the rounds are what an agent pays on every interval
    // after that.
    let mut scanner = Scanner::new(ScanOptions::default());
    let started = Instant::now();
    let first = scanner.scan().map_err(|e| e.to_string())?;
    let agent_first_ms = ms(started.elapsed());
    // Warm-up of the references: page cache, the passwd file, page faults of buffers.
    run_ss("-tanp")?;
    run_ss("-tan")?;
    let worker_pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    let attributed = first
        .sockets
        .iter()
        .filter(|s| {
            s.attribution == Attribution::Owned && s.pids.iter().any(|p| worker_pids.contains(p))
        })
        .count();
    let sockets = first.stats.sockets;
    drop(first);

    let (mut agent, mut agent_cpu, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tanp, mut tanp_cpu, mut tan) = (Vec::new(), Vec::new(), Vec::new());
    let mut bare_scanner = Scanner::new(ScanOptions {
        attribute_processes: false,
        ..ScanOptions::default()
    });
    for _ in 0..rounds {
        let cpu = cpu_ms(UsageWho::RUSAGE_SELF);
        let started = Instant::now();
        let scan = scanner.scan().map_err(|e| e.to_string())?;
        agent.push(ms(started.elapsed()));
        agent_cpu.push(cpu_ms(UsageWho::RUSAGE_SELF) - cpu);
        drop(scan);

        let (wall, cpu) = run_ss("-tanp")?;
        tanp.push(wall);
        tanp_cpu.push(cpu);
        tan.push(run_ss("-tan")?.0);

        let started = Instant::now();
        drop(bare_scanner.scan().map_err(|e| e.to_string())?);
        bare.push(ms(started.elapsed()));
    }
    Ok(Measured {
        sockets,
        attributed,
        workers: workers.len(),
        agent_first_ms,
        agent_ms: median(&mut agent),
        agent_cpu_ms: median(&mut agent_cpu),
        tanp_ms: median(&mut tanp),
        tanp_cpu_ms: median(&mut tanp_cpu),
        tan_ms: median(&mut tan),
        bare_ms: median(&mut bare),
    })
}

fn bench() -> Result<(), String> {
    let sizes = sizes()?;
    let rounds: usize = std::env::var("PORTOLAN_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7)
        .max(1);

    let fd_limit = raise_fd_limit();
    let per_worker = usize::try_from(fd_limit.saturating_sub(FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_PAIRS_PER_WORKER);
    println!(
        "scan benchmark at {sizes:?} sockets, {rounds} interleaved rounds each; fd limit {fd_limit}, at most {per_worker} connections per worker process"
    );
    let mut workers: Vec<Worker> = Vec::new();
    let mut results = Vec::new();
    for &size in &sizes {
        let held: usize = workers.iter().map(|w| w.pairs).sum();
        let pairs = size / 2;
        let grown = spawn_workers(&mut workers, pairs.saturating_sub(held), per_worker);
        if let Err(e) = grown {
            stop_workers(&mut workers);
            return Err(format!("cannot hold {size} sockets: {e}"));
        }
        let measured = measure(&workers, rounds);
        match measured {
            Ok(m) => {
                println!(
                    "  {:>7} sockets ({} over {} workers attributed): agent {:.2} ms (first {:.2}), ss -tanp {:.2} ms, ss -tan {:.2} ms",
                    m.sockets,
                    m.attributed,
                    m.workers,
                    m.agent_ms,
                    m.agent_first_ms,
                    m.tanp_ms,
                    m.tan_ms
                );
                results.push((size, m));
            }
            Err(e) => {
                stop_workers(&mut workers);
                return Err(e);
            }
        }
    }
    stop_workers(&mut workers);

    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    println!();
    println!(
        "scan benchmark, median of {rounds} interleaved rounds ({} cores, load average {load})",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:>8}  {:>10}  {:>10}  {:>12}  {:>10}  {:>22}  {:>14}  {:>12}",
        "sockets",
        "agent ms",
        "first ms",
        "ss -tanp ms",
        "ss -tan ms",
        "agent/ss -tanp",
        "agent/ss -tan",
        "cpu ratio"
    );
    let mut table = Vec::new();
    let mut raw = Vec::new();
    for (size, m) in &results {
        let ratio = m.agent_ms / m.tanp_ms;
        let ratio_floor = m.agent_ms / m.tan_ms;
        let ratio_cpu = m.agent_cpu_ms / m.tanp_cpu_ms;
        let ratio_bare = m.bare_ms / m.tan_ms;
        let targeted = *size == TARGET_SOCKETS;
        let met = ratio <= TARGET_RATIO;
        let verdict = match (targeted, met) {
            (false, _) => String::new(),
            (true, true) => format!(" (≤ {TARGET_RATIO} met)"),
            (true, false) => format!(" (≤ {TARGET_RATIO} MISSED)"),
        };
        println!(
            "{:>8}  {:>10.2}  {:>10.2}  {:>12.2}  {:>10.2}  {:>22}  {ratio_floor:>14.2}  {ratio_cpu:>12.2}",
            m.sockets,
            m.agent_ms,
            m.agent_first_ms,
            m.tanp_ms,
            m.tan_ms,
            format!("{ratio:.2}{verdict}"),
        );
        table.push(serde_json::json!({
            "measure": format!("scan {} sockets, with process attribution", thousands(*size)),
            "figure": format!("{:.1} ms", m.agent_ms),
            "reference": format!("ss -tanp: {:.1} ms", m.tanp_ms),
            "ratio": ratio,
            "target": targeted.then(|| format!("<= {TARGET_RATIO}x")),
            "met": targeted.then_some(met),
        }));
        table.push(serde_json::json!({
            "measure": format!("scan {} sockets, against the netlink floor", thousands(*size)),
            "figure": format!("{:.1} ms", m.agent_ms),
            "reference": format!("ss -tan: {:.1} ms", m.tan_ms),
            "ratio": ratio_floor,
            "target": null,
            "met": null,
        }));
        raw.push(serde_json::json!({
            "requested_sockets": size,
            "sockets": m.sockets,
            "worker_processes": m.workers,
            "sockets_attributed_to_workers": m.attributed,
            "agent_first_scan_ms": m.agent_first_ms,
            "agent_median_ms": m.agent_ms,
            "ss_tanp_median_ms": m.tanp_ms,
            "ss_tan_median_ms": m.tan_ms,
            "ratio_agent_to_ss_tanp": ratio,
            "ratio_agent_to_ss_tan": ratio_floor,
            "agent_cpu_median_ms": m.agent_cpu_ms,
            "ss_tanp_cpu_median_ms": m.tanp_cpu_ms,
            "ratio_agent_cpu_to_ss_tanp_cpu": ratio_cpu,
            "agent_without_attribution_median_ms": m.bare_ms,
            "ratio_agent_without_attribution_to_ss_tan": ratio_bare,
        }));
    }
    println!(
        "first ms: a fresh scanner's first scan (cold buffers and caches); the cpu ratio is the agent's CPU time to ss -tanp's (the agent walks /proc on a second thread)"
    );

    // The raw fields of earlier versions, for the targeted size (else the largest).
    let main = results
        .iter()
        .find(|(size, _)| *size == TARGET_SOCKETS)
        .or(results.last())
        .map(|(_, m)| m)
        .ok_or("no size was measured")?;
    let ratio = main.agent_ms / main.tanp_ms;
    let json = serde_json::json!({
        "bench": "scan",
        "table": table,
        "sizes": raw,
        "sockets": main.sockets,
        "rounds": rounds,
        "worker_processes": main.workers,
        "sockets_attributed_to_workers": main.attributed,
        "agent_median_ms": main.agent_ms,
        "ss_tanp_median_ms": main.tanp_ms,
        "ss_tan_median_ms": main.tan_ms,
        "ratio_agent_to_ss_tanp": ratio,
        "ratio_agent_to_ss_tan": main.agent_ms / main.tan_ms,
        "target_ratio_agent_to_ss_tanp": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
        "agent_cpu_median_ms": main.agent_cpu_ms,
        "ss_tanp_cpu_median_ms": main.tanp_cpu_ms,
        "ratio_agent_cpu_to_ss_tanp_cpu": main.agent_cpu_ms / main.tanp_cpu_ms,
        "agent_without_attribution_median_ms": main.bare_ms,
        "ratio_agent_without_attribution_to_ss_tan": main.bare_ms / main.tan_ms,
        "load_average_1m": load,
    });
    let dir = target_dir().join("bench");
    let path = dir.join("scan.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{json:#}\n")))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Closes the workers' stdin (they reset their sockets and exit) and waits for them.
fn stop_workers(workers: &mut Vec<Worker>) {
    for worker in workers.iter_mut() {
        drop(worker.child.stdin.take());
    }
    for mut worker in workers.drain(..) {
        let _ = worker.child.wait();
    }
}
