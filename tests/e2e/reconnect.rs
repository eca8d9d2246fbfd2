//! An agent outlives a collector crash: it retries with backoff, reconnects, and goes on
//! with deltas from what ClickHouse holds (no second full snapshot); an agent restarted
//! with new labels has them stored although it resumes with deltas.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use portolan_core::Protocol;
use portolan_store::StoredHost;
use portolan_testkit::{Lab, SocketFixture, eventually_async, fixture_binary};

use crate::support::{Cluster, Limits, stored_equals_kernel, stored_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_a_collector_crash() -> Result<()> {
    let lab = Lab::new("recon")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let mut cluster = Cluster::start("reconnect", &[bridge], Limits::default()).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let (fixture, _agent) = cluster
        .streaming_agent(&host, "host-r", collector, 5432)
        .await?;

    // The collector crashes; a listener opens while it is down.
    cluster.kill_collector(0);
    println!("collector killed (SIGKILL)");
    fixture.listen(Protocol::Tcp, host.ipv4_addr(6000))?;
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(200),
        {
            let log = cluster.agent_log("host-r");
            if log.contains("collector stream failed") {
                Ok(())
            } else {
                Err("the agent has not noticed yet".to_string())
            }
        }
    );
    cluster.start_collector(0).await?;
    println!("collector restarted");

    // The agent reconnects by itself and ClickHouse catches up with the kernel.
    let stored = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        {
            stored_port(&cluster, "host-r", 6000).await?;
            stored_equals_kernel(&cluster, "host-r", &host).await
        }
    );
    println!(
        "after the restart ClickHouse equals ss again: {} sockets, {} flows",
        stored.sockets.len(),
        stored.flows.len()
    );

    let log = cluster.agent_log("host-r");
    let retries = log.matches("collector stream failed").count();
    println!("the agent retried {retries} time(s) before the collector was back");
    assert!(retries >= 1);
    let reports = cluster.store.reports("host-r").await?;
    let snapshots = reports.iter().filter(|r| r.kind == "snapshot").count();
    let deltas = reports.iter().filter(|r| r.kind == "delta").count();
    println!("stored changes: {snapshots} snapshot(s), {deltas} delta(s)");
    assert_eq!(
        snapshots, 1,
        "the agent went on with deltas after reconnecting, no second snapshot"
    );
    assert!(deltas >= 1);
    Ok(())
}

/// An agent restarted with new labels whose spool lines up with the store resumes with
/// deltas, and the store holds its new labels from its Hello on (rules select by them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_labels_are_stored_when_the_agent_resumes_with_deltas() -> Result<()> {
    let lab = Lab::new("relabel")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start("relabel", &[bridge], Limits::default()).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    fixture.listen(Protocol::Tcp, host.ipv4_addr(5432))?;
    let interval = Duration::from_secs(1);
    let agent = cluster.spawn_agent(
        Some(&host),
        "host-l",
        collector,
        interval,
        &[("env", "prod")],
    )?;
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(200),
        stored_port(&cluster, "host-l", 5432).await
    );
    let labels = |host: Option<StoredHost>| host.map(|h| h.labels).unwrap_or_default();
    assert_eq!(
        labels(cluster.store.host("host-l").await?),
        BTreeMap::from([("env".to_string(), "prod".to_string())])
    );
    drop(agent);

    // Restarted with other labels; a listener opens meanwhile, so it has a change to send.
    fixture.listen(Protocol::Tcp, host.ipv4_addr(6001))?;
    let _agent = cluster.spawn_agent(
        Some(&host),
        "host-l",
        collector,
        interval,
        &[("env", "staging"), ("role", "db")],
    )?;
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(200),
        stored_port(&cluster, "host-l", 6001).await
    );
    let stored = labels(cluster.store.host("host-l").await?);
    println!("labels after the restart: {stored:?}");
    assert_eq!(
        stored,
        BTreeMap::from([
            ("env".to_string(), "staging".to_string()),
            ("role".to_string(), "db".to_string()),
        ])
    );
    let reports = cluster.store.reports("host-l").await?;
    let snapshots = reports.iter().filter(|r| r.kind == "snapshot").count();
    assert_eq!(snapshots, 1, "the restarted agent resumed with deltas");
    Ok(())
}
