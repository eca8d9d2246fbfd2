//! Scan benchmark: a full scan with process attribution against `ss -tanp` (the
//! reference) and `ss -tan` (the netlink floor), on the same sockets, interleaved.
//!
//! `cargo bench -p portolan-agent --bench scan [-- SOCKETS]`; `PORTOLAN_BENCH_SOCKETS`
//! (default 20000) and `PORTOLAN_BENCH_ROUNDS` (default 7) also set them. The sockets are
//! loopback TCP connections held by worker processes (this binary run again), each with
//! its own listener and as many connected client/server pairs as its fd limit allows.
//! Prints a table and writes the same figures to `<target>/bench/scan.json`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use nix::sys::socket::{setsockopt, sockopt};
use portolan_agent::scan::{ScanOptions, Scanner};
use portolan_core::Attribution;

const WORKER_ENV: &str = "PORTOLAN_BENCH_WORKER_PAIRS";
/// File descriptors a worker keeps for itself (stdio, the listener, slack).
const FD_RESERVE: u64 = 64;
const TARGET_RATIO: f64 = 0.70;

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

/// Raises the soft fd limit to the hard one; returns the new soft limit.
fn raise_fd_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// Worker process: one listener and `pairs` connected pairs, held until stdin closes.
fn worker(pairs: usize) -> ExitCode {
    raise_fd_limit();
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("worker: cannot bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(addr) = listener.local_addr() else {
        return ExitCode::FAILURE;
    };
    let mut held = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let client = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("worker: connect #{}: {e}", held.len() / 2);
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

fn spawn_workers(pairs: usize, per_worker: usize) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut workers = Vec::new();
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
        left -= n;
    }
    Ok(workers)
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

fn bench() -> Result<(), String> {
    let requested: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("PORTOLAN_BENCH_SOCKETS").ok())
        .map(|n| {
            n.parse()
                .map_err(|e| format!("bad socket count {n:?}: {e}"))
        })
        .transpose()?
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("PORTOLAN_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7)
        .max(1);

    let fd_limit = raise_fd_limit();
    let per_worker = usize::try_from(fd_limit.saturating_sub(FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    let pairs = requested / 2;
    let workers_needed = pairs.div_ceil(per_worker);
    println!(
        "fd limit {fd_limit} per process: {pairs} loopback connections over {workers_needed} worker process(es)"
    );
    let mut workers = spawn_workers(pairs, per_worker)?;
    let made: usize = workers.iter().map(|w| w.pairs).sum();
    if made < pairs {
        println!("only {made} of {pairs} connections could be made; measuring with what there is");
    }

    let mut scanner = Scanner::new(ScanOptions::default());
    // Warm-up: caches, the passwd file, page faults of the buffers.
    let warm = scanner.scan().map_err(|e| e.to_string())?;
    run_ss("-tanp")?;
    run_ss("-tan")?;
    let worker_pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    let attributed = warm
        .sockets
        .iter()
        .filter(|s| {
            s.attribution == Attribution::Owned && s.pids.iter().any(|p| worker_pids.contains(p))
        })
        .count();
    let sockets = warm.stats.sockets;

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
    let agent_ms = median(&mut agent);
    let agent_cpu_ms = median(&mut agent_cpu);
    let tanp_ms = median(&mut tanp);
    let tanp_cpu_ms = median(&mut tanp_cpu);
    let tan_ms = median(&mut tan);
    let bare_ms = median(&mut bare);
    let ratio = agent_ms / tanp_ms;
    let ratio_floor = agent_ms / tan_ms;
    let ratio_cpu = agent_cpu_ms / tanp_cpu_ms;
    let ratio_bare = bare_ms / tan_ms;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    let verdict = if ratio <= TARGET_RATIO {
        "met"
    } else {
        "MISSED"
    };

    println!();
    println!(
        "scan benchmark, median of {rounds} interleaved rounds ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:>8}  {:>14}  {:>14}  {:>18}  {:>16}",
        "sockets", "agent ms", "ss -tanp ms", "agent/ss -tanp", "agent/ss -tan"
    );
    println!(
        "{sockets:>8}  {agent_ms:>14.2}  {tanp_ms:>14.2}  {:>18}  {ratio_floor:>16.2}",
        format!("{ratio:.2} (≤ {TARGET_RATIO:.2} {verdict})")
    );
    println!(
        "cpu: agent {agent_cpu_ms:.2} ms vs ss -tanp {tanp_cpu_ms:.2} ms = {ratio_cpu:.2} (the agent walks /proc on a second thread)"
    );
    println!(
        "without attribution: agent {bare_ms:.2} ms vs ss -tan {tan_ms:.2} ms = {ratio_bare:.2}"
    );
    println!(
        "{attributed} sockets attributed to the {} worker process(es); load average {load}",
        workers.len()
    );

    let json = serde_json::json!({
        "sockets": sockets,
        "rounds": rounds,
        "worker_processes": workers.len(),
        "sockets_attributed_to_workers": attributed,
        "agent_median_ms": agent_ms,
        "ss_tanp_median_ms": tanp_ms,
        "ss_tan_median_ms": tan_ms,
        "ratio_agent_to_ss_tanp": ratio,
        "ratio_agent_to_ss_tan": ratio_floor,
        "target_ratio_agent_to_ss_tanp": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
        "agent_cpu_median_ms": agent_cpu_ms,
        "ss_tanp_cpu_median_ms": tanp_cpu_ms,
        "ratio_agent_cpu_to_ss_tanp_cpu": ratio_cpu,
        "agent_without_attribution_median_ms": bare_ms,
        "ratio_agent_without_attribution_to_ss_tan": ratio_bare,
        "load_average_1m": load,
    });
    let dir = target_dir().join("bench");
    let path = dir.join("scan.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{json:#}\n")))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    println!("wrote {}", path.display());

    for worker in &mut workers {
        drop(worker.child.stdin.take());
        let _ = worker.child.wait();
    }
    Ok(())
}
