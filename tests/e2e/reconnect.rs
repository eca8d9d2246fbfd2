//! An agent outlives a collector crash: it retries with backoff, reconnects, and goes on
//! with deltas from what ClickHouse holds (no second full snapshot).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use portolan_core::Protocol;
use portolan_testkit::{Lab, eventually_async};

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
