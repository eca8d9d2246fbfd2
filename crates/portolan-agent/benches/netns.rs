//! Namespace benchmark: the cost of one scan of every network namespace as namespaces
//! grow (1, 10, 100), against `ss -tuanp` run inside each of the same namespaces, in the
//! same run.
//!
//! `cargo bench -p portolan-agent --bench netns` (root: it creates namespaces). The bench
//! runs itself again in a PID namespace of its own (`unshare --pid --mount-proc`), so the
//! scan sees the bench's namespaces and no one else's. Each namespace holds one worker
//! process (this binary again) with `PORTOLAN_BENCH_NETNS_SOCKETS` listeners (default
//! 20), TCP and UDP, on loopback. Rounds: `PORTOLAN_BENCH_ROUNDS` (default 5); medians.
//! Prints a table and writes the same to `<target>/bench/netns.json`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use portolan_agent::scan::{Namespaces, ScanOptions, Scanner};

const INNER_ENV: &str = "PORTOLAN_BENCH_NETNS_INNER";
const WORKER_ENV: &str = "PORTOLAN_BENCH_NETNS_WORKER";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let result = if let Ok(n) = std::env::var(WORKER_ENV) {
        worker(n.parse().unwrap_or(0))
    } else if std::env::var_os(INNER_ENV).is_some() {
        bench()
    } else {
        outer()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bench again in its own PID and mount namespaces.
fn outer() -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let status = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"])
        .arg(&me)
        .env(INNER_ENV, "1")
        .status()
        .map_err(|e| format!("cannot run `unshare` (util-linux; run as root): {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("the bench failed: {status}"))
}

/// A worker: `n` TCP listeners and `n / 4` UDP sockets on loopback, held until stdin
/// closes.
fn worker(n: usize) -> Result<(), String> {
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    for _ in 0..n {
        held_tcp.push(TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?);
    }
    for _ in 0..n / 4 {
        held_udp.push(UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?);
    }
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Namespaces made by the bench, with their workers; removed on drop.
struct Fleet {
    names: Vec<String>,
    workers: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    out.status.success().then_some(()).ok_or_else(|| {
        format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn grow(fleet: &mut Fleet, to: usize, sockets: usize) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    while fleet.names.len() < to {
        let name = format!(
            "ptl-{}-900-bench-n{}",
            std::process::id(),
            fleet.names.len()
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        fleet.names.push(name.clone());
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &name])
            .arg(&me)
            .env(WORKER_ENV, sockets.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.as_mut() {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
        }
        fleet.workers.push(child);
        if line.trim() != "ready" {
            return Err(format!("a worker in {name} did not start"));
        }
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn bench() -> Result<(), String> {
    let rounds = env_number("PORTOLAN_BENCH_ROUNDS", 5).max(1);
    let sockets = env_number("PORTOLAN_BENCH_NETNS_SOCKETS", 20);
    let mut fleet = Fleet {
        names: Vec::new(),
        workers: Vec::new(),
    };
    let mut scanner = Scanner::new(ScanOptions {
        namespaces: Namespaces::All,
        ..ScanOptions::default()
    });
    println!(
        "{:>10} {:>8} {:>12} {:>14} {:>8} {:>14}",
        "namespaces", "sockets", "scan (ms)", "ss each (ms)", "ratio", "scan/ns (ms)"
    );
    let mut table = Vec::new();
    let mut raw = Vec::new();
    for n in [1usize, 10, 100] {
        // n child namespaces besides the bench's own.
        grow(&mut fleet, n, sockets)?;
        let mut scans = Vec::new();
        let mut refs = Vec::new();
        let mut seen = 0;
        for _ in 0..rounds {
            let started = Instant::now();
            let scan = scanner.scan().map_err(|e| e.to_string())?;
            scans.push(started.elapsed());
            seen = scan.sockets.len();
            if scan.stats.namespaces as usize != n + 1 {
                return Err(format!(
                    "the scan read {} namespaces, expected {}: {:?}",
                    scan.stats.namespaces,
                    n + 1,
                    scan.warnings
                ));
            }
            // The reference: `ss` in the bench's namespace and in each child.
            let started = Instant::now();
            run(Command::new("ss").arg("-tuanpH"))?;
            for name in &fleet.names {
                run(Command::new("ss").args(["-N", name, "-tuanpH"]))?;
            }
            refs.push(started.elapsed());
        }
        let (scan, reference) = (median(scans), median(refs));
        println!(
            "{:>10} {:>8} {:>12.2} {:>14.2} {:>8.2} {:>14.3}",
            n + 1,
            seen,
            scan.as_secs_f64() * 1e3,
            reference.as_secs_f64() * 1e3,
            scan.as_secs_f64() / reference.as_secs_f64().max(1e-9),
            scan.as_secs_f64() * 1e3 / (n + 1) as f64,
        );
        let ratio = scan.as_secs_f64() / reference.as_secs_f64().max(1e-9);
        table.push(serde_json::json!({
            "measure": format!("scan of every namespace, {} namespaces ({seen} sockets)", n + 1),
            "figure": format!("{:.1} ms", scan.as_secs_f64() * 1e3),
            "reference": format!("ss -tuanp in each: {:.1} ms", reference.as_secs_f64() * 1e3),
            "ratio": ratio,
            "target": null,
            "met": null,
        }));
        raw.push(serde_json::json!({
            "namespaces": n + 1,
            "sockets": seen,
            "scan_median_ms": scan.as_secs_f64() * 1e3,
            "ss_each_median_ms": reference.as_secs_f64() * 1e3,
            "ratio": ratio,
        }));
    }
    let json = serde_json::json!({
        "bench": "netns",
        "table": table,
        "rounds": rounds,
        "listeners_per_namespace": sockets,
        "sizes": raw,
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
        })
        .join("bench");
    let path = dir.join("netns.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{json:#}\n")))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
