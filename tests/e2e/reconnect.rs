//! An agent outlives a collector crash: it retries with backoff, reconnects, and goes on
//! with deltas from what ClickHouse holds (no second full snapshot).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use portolan_core::Protocol;
use portolan_testkit::{Lab, SocketFixture, eventually_async, fixture_binary};

use crate::support::{Cluster, Limits, stored_equals_kernel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_a_collector_crash() -> Result<()> {
    let lab = Lab::new("recon")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let mut cluster = Cluster::start("reconnect", &[bridge], Limits::default()).await?;
    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    fixture.listen(Protocol::Tcp, host.ipv4_addr(5432))?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let _agent = cluster.spawn_agent(
        Some(&host),
        "host-r",
        collector,
        Duration::from_secs(1),
        &[],
    )?;

    let has_port = async |cluster: &Cluster, port: u16| -> Result<(), String> {
        let current = cluster
            .store
            .load_current("host-r")
            .await
            .map_err(|e| e.to_string())?;
        if current.sockets.values().any(|s| s.key.local_port == port) {
            Ok(())
        } else {
            Err(format!("port {port} not stored"))
        }
    };
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(200),
        has_port(&cluster, 5432).await
    );

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
            has_port(&cluster, 6000).await?;
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
