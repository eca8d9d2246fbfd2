//! The collector binary against a ClickHouse that serves HTTPS with a certificate of a
//! private CA: it stores an agent's inventory over `https://` trusting that CA
//! (`[clickhouse.tls] ca`), and when the server's certificate changes to one of a CA it
//! does not trust, `/readyz` says so and what to configure.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, ensure};
use portolan_testkit::{Lab, eventually_async};
use portolan_tls::pki::Ca;

use crate::support::{Cluster, Limits, http_get, stored_equals_kernel, stored_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_stores_over_https_and_readiness_names_a_tls_failure() -> Result<()> {
    let lab = Lab::new("chtls")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let http = SocketAddr::from(([127, 0, 0, 1], portolan_testkit::free_port()?));
    let limits = Limits {
        clickhouse_https: true,
        collector_extra: format!("\n[metrics]\nlisten = \"{http}\"\n"),
        ..Limits::default()
    };
    let mut cluster = Cluster::start("clickhouse_tls", &[bridge], limits).await?;
    let url = cluster.collector_clickhouse_url.clone();
    ensure!(url.starts_with("https://localhost:"), "{url}");
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let (_fixture, _agent) = cluster
        .streaming_agent(&host, "host-tls", collector, 5432)
        .await?;
    let stored = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        {
            stored_port(&cluster, "host-tls", 5432).await?;
            stored_equals_kernel(&cluster, "host-tls", &host).await
        }
    );
    println!(
        "stored over {url}: {} sockets, {} flows, equal to ss",
        stored.sockets.len(),
        stored.flows.len()
    );
    let log = cluster.collector_log();
    ensure!(
        log.contains(&url),
        "the collector did not log its https URL:\n{log}"
    );
    eventually_async!(timeout = Duration::from_secs(30), {
        match http_get(http, "/readyz").await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // The server comes back with a certificate of another CA: not ready, and why.
    let other = Ca::generate("not the collector's CA")?;
    let https = cluster.pki.clickhouse_https(&other, "clickhouse-other")?;
    cluster.stop_clickhouse().await?;
    cluster.set_clickhouse_https(https);
    cluster.start_clickhouse().await?;
    let not_ready = eventually_async!(timeout = Duration::from_secs(30), {
        match http_get(http, "/readyz").await {
            Ok((503, body)) if body.contains("TLS") => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    println!("/readyz: {}", not_ready.trim());
    ensure!(
        not_ready.contains(&format!(
            "clickhouse at {url}: cannot open a TLS connection"
        )),
        "{not_ready}"
    );
    ensure!(
        not_ready.contains("set `[clickhouse.tls] ca`"),
        "{not_ready}"
    );
    Ok(())
}
