//! `just soak`: a bounded soak. A real collector and ClickHouse, and 200 real agent
//! processes (each its own certificate and spool) in 20 network-namespace hosts (10 agents
//! share a host, as 10 identities), while a churner in each host opens and closes
//! listeners that the host's agents see. After a warm-up, the resident
//! memory of the collector and of every agent is sampled, again at the end; the growth is
//! reported, and every agent's history must hold every churned listener exactly once.
//!
//! `SOAK_AGENTS` (200) and `SOAK_MINUTES` (3) size it. It fails when an agent or the
//! collector died, when an event is missing or doubled, or when the collector's memory
//! grew by more than half after the warm-up (a leak at this size would show long before).

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portolan_core::Protocol;
use portolan_testkit::{ChildGuard, FixtureId, Lab, NetnsHost, SocketFixture, fixture_binary};

use support::{Cluster, Limits, rss_kib};

const INTERVAL: Duration = Duration::from_secs(10);
/// One listener opens per step in each host and stays two steps: every agent sees it.
const STEP: Duration = Duration::from_secs(20);
/// Agents (identities) per namespace host.
const AGENTS_PER_HOST: usize = 10;
const FIRST_PORT: u16 = 31_000;

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("`{name}` is `{v}`; give a whole number")),
        Err(_) => Ok(default),
    }
}

struct Sample {
    collector_kib: u64,
    agents_kib: Vec<u64>,
}

fn sample(collector_pid: u32, agents: &[ChildGuard]) -> Sample {
    Sample {
        collector_kib: rss_kib(collector_pid),
        agents_kib: agents.iter().map(|a| rss_kib(a.id())).collect(),
    }
}

fn agent_id(i: usize) -> String {
    format!("soak-{i:03}")
}

fn summary(kib: &[u64]) -> (f64, u64) {
    let mean = kib.iter().sum::<u64>() as f64 / kib.len().max(1) as f64;
    (mean, kib.iter().copied().max().unwrap_or(0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let agents_wanted = env_number("SOAK_AGENTS", 200)? as usize;
    let minutes = env_number("SOAK_MINUTES", 3)?;
    let lab = Lab::new("soak")?;
    let host_count = agents_wanted.div_ceil(AGENTS_PER_HOST);
    let hosts: Vec<NetnsHost> = (0..host_count)
        .map(|i| lab.add_host(&format!("s{i}")))
        .collect::<Result<_, _>>()?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let mut cluster = Cluster::start("soak", &[bridge], Limits::default()).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let collector_pid = cluster
        .collector_pid(0)
        .context("the collector is not running")?;
    println!(
        "soak: {agents_wanted} agents in {host_count} namespace hosts, {minutes} min, scan every {INTERVAL:?}, one listener opened per host every {STEP:?}"
    );
    let started = Instant::now();
    let mut agents = Vec::with_capacity(agents_wanted);
    for i in 0..agents_wanted {
        let host = &hosts[i / AGENTS_PER_HOST];
        agents.push(cluster.spawn_agent(Some(host), &agent_id(i), collector, INTERVAL, &[])?);
    }
    println!(
        "started {} agents in {:.1} s",
        agents.len(),
        started.elapsed().as_secs_f64()
    );

    let fixtures: Vec<SocketFixture> = hosts
        .iter()
        .map(|h| SocketFixture::spawn(Some(h), &fixture_binary()?))
        .collect::<Result<_, _>>()?;
    let mut open: Vec<Vec<FixtureId>> = vec![Vec::new(); hosts.len()];
    let mut churned = 0u16;
    let step = async |open: &mut Vec<Vec<FixtureId>>, churned: &mut u16| -> Result<()> {
        let port = FIRST_PORT + *churned;
        for ((fixture, host), open) in fixtures.iter().zip(&hosts).zip(open.iter_mut()) {
            if open.len() >= 2 {
                fixture.close(open.remove(0))?;
            }
            let (id, _) = fixture.listen(Protocol::Tcp, host.ipv4_addr(port))?;
            open.push(id);
        }
        *churned += 1;
        tokio::time::sleep(STEP).await;
        Ok(())
    };
    // Warm-up: every agent connected, sent its snapshot and a few deltas.
    for _ in 0..3 {
        step(&mut open, &mut churned).await?;
    }
    let first = sample(collector_pid, &agents);
    let deadline = Instant::now() + Duration::from_secs(60 * minutes);
    while Instant::now() < deadline {
        step(&mut open, &mut churned).await?;
        for (i, a) in agents.iter_mut().enumerate() {
            if let Ok(Some(status)) = a.try_wait() {
                bail!(
                    "agent {} exited: {status}\n{}",
                    agent_id(i),
                    cluster.agent_log(&agent_id(i))
                );
            }
        }
        if cluster.collector_pid(0).is_none() {
            bail!("the collector died:\n{}", cluster.collector_log());
        }
    }
    let last = sample(collector_pid, &agents);
    for (fixture, open) in fixtures.iter().zip(open.iter_mut()) {
        for id in open.drain(..) {
            fixture.close(id)?;
        }
    }

    // Every agent's history holds every churned listener once (wait for the last scans).
    // One aggregate query per check, retried: ClickHouse is busy catching up.
    let ports = FIRST_PORT..FIRST_PORT + churned;
    let query = format!(
        "SELECT host_id, local_port, count() FROM socket_events FINAL WHERE event = 'added' AND protocol = 'tcp' AND local_port >= {} AND local_port < {} GROUP BY host_id, local_port FORMAT TabSeparated",
        ports.start, ports.end
    );
    let catch_up = Instant::now() + Duration::from_secs(300);
    let mut problems;
    loop {
        problems = Vec::new();
        match cluster.http_query(&query) {
            Ok(text) => {
                let mut added: BTreeMap<(String, u16), u64> = BTreeMap::new();
                for line in text.lines() {
                    let mut f = line.split('\t');
                    if let (Some(h), Some(p), Some(n)) = (f.next(), f.next(), f.next()) {
                        added.insert(
                            (h.to_string(), p.parse().unwrap_or(0)),
                            n.parse().unwrap_or(0),
                        );
                    }
                }
                for i in 0..agents.len() {
                    let host = agent_id(i);
                    let missing = ports
                        .clone()
                        .filter(|p| !added.contains_key(&(host.clone(), *p)))
                        .count();
                    let doubled = ports
                        .clone()
                        .filter(|p| added.get(&(host.clone(), *p)).is_some_and(|&n| n > 1))
                        .count();
                    if missing > 0 || doubled > 0 {
                        problems.push(format!(
                            "{host}: {missing} listeners missing, {doubled} doubled"
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!("cannot query ClickHouse: {e}")),
        }
        if problems.is_empty() || Instant::now() > catch_up {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let caught_up = deadline.elapsed();

    let (first_mean, first_max) = summary(&first.agents_kib);
    let (last_mean, last_max) = summary(&last.agents_kib);
    let growth = |a: f64, b: f64| 100.0 * (b - a) / a.max(1.0);
    println!();
    println!("| process | after warm-up | after {minutes} min | growth |");
    println!("|---|---|---|---|");
    println!(
        "| collector ({} agents connected) | {:.1} MiB | {:.1} MiB | {:+.1}% |",
        agents.len(),
        first.collector_kib as f64 / 1024.0,
        last.collector_kib as f64 / 1024.0,
        growth(first.collector_kib as f64, last.collector_kib as f64)
    );
    println!(
        "| agent, mean of {} | {:.1} MiB | {:.1} MiB | {:+.1}% |",
        agents.len(),
        first_mean / 1024.0,
        last_mean / 1024.0,
        growth(first_mean, last_mean)
    );
    println!(
        "| agent, largest | {:.1} MiB | {:.1} MiB | {:+.1}% |",
        first_max as f64 / 1024.0,
        last_max as f64 / 1024.0,
        growth(first_max as f64, last_max as f64)
    );
    println!(
        "collector memory per connected agent: {:.1} KiB",
        last.collector_kib as f64 / agents.len().max(1) as f64
    );
    println!(
        "{} listeners churned; every one stored once in each of {} hosts' history: {}",
        churned,
        agents.len(),
        if problems.is_empty() { "yes" } else { "NO" }
    );
    println!(
        "ClickHouse held every event {:.0} s after the churn ended",
        caught_up.as_secs_f64()
    );
    if !problems.is_empty() {
        bail!("events missing or doubled:\n{}", problems.join("\n"));
    }
    if last.collector_kib as f64 > 1.5 * first.collector_kib as f64 {
        bail!(
            "the collector's memory grew from {} KiB to {} KiB during the soak",
            first.collector_kib,
            last.collector_kib
        );
    }
    Ok(())
}
