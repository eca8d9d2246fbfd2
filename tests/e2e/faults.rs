//! Faults: the collector killed, ClickHouse stopped, the network cut, the agent killed —
//! while listeners open and close on the host. Each test counts the listener openings
//! and closings it caused ("in") and the `added`/`removed` events ClickHouse holds for
//! them ("stored"), and asserts none missing, none duplicated, each stamped with the
//! time its scan saw it (not the time it was finally delivered), and the stored current
//! state equal to `ss` at the end.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use portolan_core::Protocol;
use portolan_store::{SocketEventKind, Store};
use portolan_testkit::{
    ChildGuard, FixtureId, Lab, NetnsHost, SocketFixture, eventually_async, fixture_binary,
};

use crate::support::{Cluster, Limits, rss_kib, stored_equals_kernel};

const INTERVAL: Duration = Duration::from_secs(1);
/// How long each churned listener stays open: several scans, so every one is seen.
const HOLD: Duration = Duration::from_secs(3);
/// Slack on event times: scan interval, second precision of `at`, a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

/// Listeners opened and closed on one host, one new port per step.
pub(crate) struct Churn {
    host_id: String,
    fixture: SocketFixture,
    host: NetnsHost,
    next_port: u16,
    listeners: Vec<Listener>,
}

#[derive(Debug, Clone)]
struct Listener {
    port: u16,
    id: FixtureId,
    opened_at: SystemTime,
    closed_at: Option<SystemTime>,
}

impl Churn {
    pub(crate) fn new(host: &NetnsHost, host_id: &str, first_port: u16) -> Result<Churn> {
        Ok(Churn {
            host_id: host_id.to_string(),
            fixture: SocketFixture::spawn(Some(host), &fixture_binary()?)?,
            host: host.clone(),
            next_port: first_port,
            listeners: Vec::new(),
        })
    }

    /// Closes the listeners held long enough and opens one more.
    fn step(&mut self) -> Result<()> {
        let now = SystemTime::now();
        for l in self.listeners.iter_mut().filter(|l| l.closed_at.is_none()) {
            if now.duration_since(l.opened_at).unwrap_or_default() >= HOLD {
                self.fixture.close(l.id)?;
                l.closed_at = Some(SystemTime::now());
            }
        }
        let port = self.next_port;
        self.next_port += 1;
        let (id, _) = self
            .fixture
            .listen(Protocol::Tcp, self.host.ipv4_addr(port))?;
        self.listeners.push(Listener {
            port,
            id,
            opened_at: SystemTime::now(),
            closed_at: None,
        });
        Ok(())
    }

    /// Steps once per interval for `duration`.
    pub(crate) async fn run_for(&mut self, duration: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < until {
            self.step()?;
            tokio::time::sleep(INTERVAL).await;
        }
        Ok(())
    }

    /// Closes every listener still open (after holding it long enough to be seen).
    pub(crate) async fn close_all(&mut self) -> Result<()> {
        tokio::time::sleep(HOLD).await;
        for l in self.listeners.iter_mut().filter(|l| l.closed_at.is_none()) {
            self.fixture.close(l.id)?;
            l.closed_at = Some(SystemTime::now());
        }
        Ok(())
    }

    /// Openings plus closings caused.
    fn events_in(&self) -> usize {
        self.listeners.len()
            + self
                .listeners
                .iter()
                .filter(|l| l.closed_at.is_some())
                .count()
    }

    fn ports(&self) -> std::ops::Range<u16> {
        let first = self.listeners.first().map_or(0, |l| l.port);
        first..self.next_port
    }
}

/// The stored `added` and `removed` events of the churned ports, by port.
type Stored = BTreeMap<u16, (Vec<SystemTime>, Vec<SystemTime>)>;

async fn stored_events(store: &Store, churn: &Churn) -> Result<Stored> {
    let ports = churn.ports();
    let mut out: Stored = BTreeMap::new();
    for e in store.socket_events(&churn.host_id).await? {
        let port = e.socket.key.local_port;
        if !ports.contains(&port) || e.socket.key.protocol != Protocol::Tcp {
            continue;
        }
        let entry = out.entry(port).or_default();
        match e.event {
            SocketEventKind::Added => entry.0.push(e.at),
            SocketEventKind::Removed => entry.1.push(e.at),
            SocketEventKind::Changed => {}
        }
    }
    Ok(out)
}

/// Every opening and closing stored exactly once, at the time it was scanned.
fn check(churn: &Churn, stored: &Stored) -> Result<usize, String> {
    let mut problems = Vec::new();
    let mut count = 0;
    let near = |event: SystemTime, happened: SystemTime| {
        event + Duration::from_secs(1) >= happened && event <= happened + INTERVAL + SLACK
    };
    for l in &churn.listeners {
        let (added, removed) = stored.get(&l.port).cloned().unwrap_or_default();
        count += added.len() + removed.len();
        match added.as_slice() {
            [at] if near(*at, l.opened_at) => {}
            [at] => problems.push(format!(
                "port {}: added at {} but opened at {}",
                l.port,
                humantime::format_rfc3339_seconds(*at),
                humantime::format_rfc3339_seconds(l.opened_at)
            )),
            other => problems.push(format!("port {}: {} added events", l.port, other.len())),
        }
        match (l.closed_at, removed.as_slice()) {
            (Some(closed), [at]) if near(*at, closed) => {}
            (Some(closed), [at]) => problems.push(format!(
                "port {}: removed at {} but closed at {}",
                l.port,
                humantime::format_rfc3339_seconds(*at),
                humantime::format_rfc3339_seconds(closed)
            )),
            (None, []) => {}
            (_, other) => problems.push(format!("port {}: {} removed events", l.port, other.len())),
        }
    }
    if problems.is_empty() {
        Ok(count)
    } else {
        Err(problems.join("\n"))
    }
}

/// Waits until the store holds every churned event, then checks it holds nothing more and
/// that the stored current state equals `ss`; prints in/stored.
pub(crate) async fn assert_nothing_lost(
    cluster: &Cluster,
    churn: &Churn,
    what: &str,
) -> Result<()> {
    let events_in = churn.events_in();
    let stored = eventually_async!(
        timeout = Duration::from_secs(90),
        interval = Duration::from_millis(500),
        {
            let stored = stored_events(&cluster.store, churn)
                .await
                .map_err(|e| e.to_string())?;
            check(churn, &stored)
        }
    );
    println!(
        "{what}: host {}: {} listeners churned, events in {events_in}, events stored {stored}",
        churn.host_id,
        churn.listeners.len()
    );
    assert_eq!(stored, events_in, "every event stored once");
    let current = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(500),
        stored_equals_kernel(cluster, &churn.host_id, &churn.host).await
    );
    println!(
        "{what}: host {}: stored current state equals ss ({} sockets, {} flows: no flow counted twice)",
        churn.host_id,
        current.sockets.len(),
        current.flows.len()
    );
    Ok(())
}

struct Setup {
    _lab: Lab,
    cluster: Cluster,
    hosts: Vec<NetnsHost>,
    collector: SocketAddr,
}

async fn setup(name: &str, hosts: usize) -> Result<Setup> {
    let lab = Lab::new(&format!("f{}", &name[..name.len().min(5)]))?;
    let hosts: Vec<NetnsHost> = (0..hosts)
        .map(|i| lab.add_host(&format!("h{i}")))
        .collect::<Result<_, _>>()?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start(name, &[bridge], Limits::default()).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    Ok(Setup {
        _lab: lab,
        cluster,
        hosts,
        collector,
    })
}

fn spawn_agent(setup: &Setup, host: usize, host_id: &str) -> Result<ChildGuard> {
    setup.cluster.spawn_agent(
        Some(&setup.hosts[host]),
        host_id,
        setup.collector,
        INTERVAL,
        &[],
    )
}

pub(crate) async fn wait_connected(cluster: &Cluster, host_id: &str) -> Result<()> {
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(200),
        {
            let reports = cluster
                .store
                .reports(host_id)
                .await
                .map_err(|e| e.to_string())?;
            if reports.iter().any(|r| r.kind == "snapshot") {
                Ok(())
            } else {
                Err(format!("{host_id} has stored no snapshot yet"))
            }
        }
    );
    Ok(())
}

fn snapshots(reports: &[portolan_store::HostReport]) -> usize {
    reports.iter().filter(|r| r.kind == "snapshot").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_stream_loses_and_duplicates_nothing() -> Result<()> {
    let mut s = setup("faults_sigkill", 1).await?;
    let _agent = spawn_agent(&s, 0, "fk-a")?;
    wait_connected(&s.cluster, "fk-a").await?;
    let mut churn = Churn::new(&s.hosts[0], "fk-a", 20_000)?;
    churn.run_for(Duration::from_secs(6)).await?;
    s.cluster.kill_collector(0);
    println!(
        "injected: collector SIGKILL while {} listeners were churned",
        churn.listeners.len()
    );
    churn.run_for(Duration::from_secs(8)).await?;
    s.cluster.start_collector(0).await?;
    println!("injected: collector restarted 8 s later");
    churn.run_for(Duration::from_secs(6)).await?;
    churn.close_all().await?;
    assert_nothing_lost(&s.cluster, &churn, "collector SIGKILL").await?;
    let reports = s.cluster.store.reports("fk-a").await?;
    assert_eq!(snapshots(&reports), 1, "deltas only after the restart");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_for_30_seconds_under_load_loses_and_duplicates_nothing() -> Result<()> {
    let mut s = setup("faults_clickhouse", 2).await?;
    let _a = spawn_agent(&s, 0, "fc-a")?;
    let _b = spawn_agent(&s, 1, "fc-b")?;
    wait_connected(&s.cluster, "fc-a").await?;
    wait_connected(&s.cluster, "fc-b").await?;
    let mut churn_a = Churn::new(&s.hosts[0], "fc-a", 21_000)?;
    let mut churn_b = Churn::new(&s.hosts[1], "fc-b", 22_000)?;
    let both = async |a: &mut Churn, b: &mut Churn, d: Duration| -> Result<()> {
        let (ra, rb) = tokio::join!(a.run_for(d), b.run_for(d));
        ra.and(rb)
    };
    both(&mut churn_a, &mut churn_b, Duration::from_secs(5)).await?;
    let pid = s
        .cluster
        .collector_pid(0)
        .context("the collector is not running")?;
    let before = rss_kib(pid);
    s.cluster.stop_clickhouse().await?;
    println!("injected: ClickHouse stopped");
    both(&mut churn_a, &mut churn_b, Duration::from_secs(30)).await?;
    let during = rss_kib(pid);
    println!(
        "collector resident memory: {before} KiB before the outage, {during} KiB after 30 s of it (it stops reading instead of buffering)"
    );
    assert!(
        during < before + 64 * 1024,
        "the collector grew by more than 64 MiB while ClickHouse was down"
    );
    s.cluster.start_clickhouse().await?;
    println!("injected: ClickHouse started again after 30 s");
    both(&mut churn_a, &mut churn_b, Duration::from_secs(5)).await?;
    churn_a.close_all().await?;
    churn_b.close_all().await?;
    assert_nothing_lost(&s.cluster, &churn_a, "ClickHouse outage").await?;
    assert_nothing_lost(&s.cluster, &churn_b, "ClickHouse outage").await?;
    let log = s.cluster.collector_log();
    if !log.contains("clickhouse") && !log.contains("ClickHouse") {
        bail!("the collector logged nothing about ClickHouse being down:\n{log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_for_a_minute_loses_and_duplicates_nothing() -> Result<()> {
    let s = setup("faults_link", 1).await?;
    let _agent = spawn_agent(&s, 0, "fl-a")?;
    wait_connected(&s.cluster, "fl-a").await?;
    let mut churn = Churn::new(&s.hosts[0], "fl-a", 23_000)?;
    churn.run_for(Duration::from_secs(3)).await?;
    s.hosts[0].set_link(false)?;
    let cut_at = churn.listeners.len();
    println!("injected: link down between the agent's namespace and the collector");
    churn.run_for(Duration::from_secs(60)).await?;
    s.hosts[0].set_link(true)?;
    println!(
        "injected: link up after 60 s; {} listeners opened while it was down",
        churn.listeners.len() - cut_at
    );
    churn.run_for(Duration::from_secs(3)).await?;
    churn.close_all().await?;
    assert_nothing_lost(&s.cluster, &churn, "link down 60 s").await?;
    let log = s.cluster.agent_log("fl-a");
    assert!(
        log.contains("collector stream failed"),
        "the agent noticed the cut"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_with_unacknowledged_changes_delivers_them_after_restart() -> Result<()> {
    let s = setup("faults_agent", 1).await?;
    let agent = spawn_agent(&s, 0, "fa-a")?;
    wait_connected(&s.cluster, "fa-a").await?;
    let mut churn = Churn::new(&s.hosts[0], "fa-a", 24_000)?;
    // Cut the network so that the changes stay unacknowledged in the agent's spool.
    s.hosts[0].set_link(false)?;
    churn.run_for(Duration::from_secs(8)).await?;
    // Let the last opening be scanned before the kill.
    tokio::time::sleep(INTERVAL * 2).await;
    let spool = s.cluster.agent_spool_dir("fa-a").join("spool.log");
    let spooled = std::fs::metadata(&spool)?.len();
    drop(agent);
    println!(
        "injected: agent SIGKILL holding {} unacknowledged listener changes ({spooled} spool bytes)",
        churn.events_in()
    );
    let _agent = spawn_agent(&s, 0, "fa-a")?;
    println!("injected: agent restarted (network still down)");
    churn.run_for(Duration::from_secs(4)).await?;
    s.hosts[0].set_link(true)?;
    println!("injected: link up");
    churn.close_all().await?;
    assert_nothing_lost(&s.cluster, &churn, "agent restart").await?;
    let reports = s.cluster.store.reports("fa-a").await?;
    assert_eq!(
        snapshots(&reports),
        1,
        "the restarted agent went on with deltas"
    );
    Ok(())
}
