//! Probes fail when they should: the collector's `/readyz` and gRPC health turn not
//! ready within seconds of ClickHouse stopping and back when it returns; an agent's
//! `/readyz` is not ready while it cannot reach a collector beyond what its spool holds,
//! and ready again once connected. Real binaries, a real ClickHouse, real mutual TLS.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use portolan_testkit::{FixtureId, Lab, Protocol, SocketFixture, eventually_async, fixture_binary};
use portolan_tls::{ConnectOptions, TlsFiles};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{Cluster, Limits, http_get, metric_sample as sample};

/// Waits until `GET path` answers `code`; its body.
async fn wait_for(addr: SocketAddr, path: &str, code: u16, timeout: Duration) -> String {
    eventually_async!(timeout = timeout, interval = Duration::from_millis(100), {
        let (got, body) = http_get(addr, path).await?;
        if got == code {
            Ok(body)
        } else {
            Err(format!("{path} answered {got}, not {code}: {body}"))
        }
    })
}

async fn grpc_status(client: &HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    match client
        .clone()
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
    {
        Ok(answer) => answer.into_inner().status,
        Err(_) => ServingStatus::Unknown as i32,
    }
}

async fn wait_for_grpc(client: &HealthClient<tonic::transport::Channel>, expected: ServingStatus) {
    eventually_async!(
        timeout = Duration::from_secs(10),
        interval = Duration::from_millis(100),
        {
            for service in ["", "portolan.v1.IngestService", "portolan.v1.QueryService"] {
                let got = grpc_status(client, service).await;
                if got != expected as i32 {
                    return Err(format!("`{service}` is {got}, not {expected:?}"));
                }
            }
            Ok(())
        }
    )
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_readiness_follows_clickhouse_over_http_and_grpc() -> Result<()> {
    let http = SocketAddr::from(([127, 0, 0, 1], portolan_testkit::free_port()?));
    let limits = Limits {
        collector_extra: format!("\n[metrics]\nlisten = \"{http}\"\n"),
        ..Limits::default()
    };
    let mut cluster = Cluster::start("health_collector", &[], limits).await?;
    let ready = wait_for(http, "/readyz", 200, Duration::from_secs(30)).await;
    assert_eq!(ready, "ready\n");
    assert_eq!(
        wait_for(http, "/healthz", 200, Duration::from_secs(5)).await,
        "ok\n"
    );

    // Build and certificates on /metrics: the e2e PKI issues the collector an hour.
    let (_, metrics) = http_get(http, "/metrics")
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        metrics.contains("portolan_build_info{binary=\"portolan-collector\",version=\""),
        "{metrics}"
    );
    let expiry = sample(
        &metrics,
        "portolan_tls_certificate_expiry_timestamp_seconds{role=\"collector\"}",
    )
    .ok_or_else(|| anyhow::anyhow!("no collector certificate expiry in\n{metrics}"))?;
    ensure!(
        (expiry - (unix_now() + 3600.0)).abs() < 300.0,
        "collector certificate expires at {expiry}"
    );
    ensure!(
        sample(
            &metrics,
            "portolan_tls_certificate_expiry_timestamp_seconds{role=\"ca\"}"
        )
        .is_some_and(|ca| ca > expiry),
        "{metrics}"
    );

    // gRPC health over mutual TLS, with any certificate of the fleet.
    let (cert, key) = cluster.pki.agent("prober")?;
    let files = TlsFiles {
        ca: cluster.pki.ca_path(),
        cert,
        key,
    };
    let channel = portolan_tls::connect(
        &format!("https://127.0.0.1:{}", cluster.collector_port),
        portolan_tls::client_config(&files)?,
        ConnectOptions::default(),
    )
    .await?;
    let grpc = HealthClient::new(channel);
    wait_for_grpc(&grpc, ServingStatus::Serving).await;

    // Timed from the stop's start: the server's own shutdown counts.
    let stopped = Instant::now();
    cluster.stop_clickhouse().await?;
    let not_ready = wait_for(http, "/readyz", 503, Duration::from_secs(20)).await;
    let to_not_ready = stopped.elapsed();
    ensure!(
        not_ready.starts_with(&format!(
            "not ready: clickhouse at {}",
            cluster.clickhouse_url
        )) && not_ready.contains("check that it runs"),
        "{not_ready}"
    );
    wait_for_grpc(&grpc, ServingStatus::NotServing).await;
    let to_not_serving = stopped.elapsed();
    // Alive all along: the process runs, it only cannot store.
    assert_eq!(
        http_get(http, "/healthz")
            .await
            .map_err(anyhow::Error::msg)?
            .0,
        200
    );

    cluster.start_clickhouse().await?;
    let started = Instant::now();
    wait_for(http, "/readyz", 200, Duration::from_secs(30)).await;
    let to_ready = started.elapsed();
    wait_for_grpc(&grpc, ServingStatus::Serving).await;
    println!(
        "clickhouse stopped: /readyz 503 after {to_not_ready:.1?}, gRPC NOT_SERVING after {to_not_serving:.1?}; restarted: /readyz 200 after {to_ready:.1?}"
    );
    ensure!(
        to_not_ready < Duration::from_secs(10),
        "/readyz took {to_not_ready:?} to turn 503"
    );
    ensure!(
        to_ready < Duration::from_secs(10),
        "/readyz took {to_ready:?} to turn 200 again"
    );
    Ok(())
}

/// Opens `n` TCP listeners on the host's wildcard address.
fn open_listeners(fixture: &SocketFixture, n: usize) -> Result<Vec<FixtureId>> {
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    (0..n)
        .map(|_| Ok(fixture.listen(Protocol::Tcp, any)?.0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_readiness_follows_its_spool_and_collector() -> Result<()> {
    let lab = Lab::new("hlth")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let mut cluster = Cluster::start("health_agent", &[bridge], Limits::default()).await?;
    // No collector answers at first.
    cluster.kill_collector(0);
    let http = host.ipv4_addr(9464);
    let listen = http.to_string();
    let _agent = cluster.spawn_agent_with_env(
        Some(&host),
        "host-h",
        SocketAddr::new(bridge, cluster.collector_port),
        Duration::from_millis(300),
        &[],
        &[
            ("PORTOLAN_METRICS_LISTEN", listen.as_str()),
            ("PORTOLAN_SPOOL_MAX_SIZE", "1MiB"),
        ],
    )?;
    // Scanned; the spool holds every change though no collector answers: ready.
    let ready = wait_for(http, "/readyz", 200, Duration::from_secs(30)).await;
    assert_eq!(ready, "ready\n");

    // Churn until the spool overflows: a thousand listeners replaced every scan.
    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    let churn_started = Instant::now();
    let mut held = open_listeners(&fixture, 1000)?;
    let not_ready = loop {
        ensure!(
            churn_started.elapsed() < Duration::from_secs(90),
            "the spool never overflowed; agent log:\n{}",
            cluster.agent_log("host-h")
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (code, body) = http_get(http, "/readyz")
            .await
            .map_err(anyhow::Error::msg)?;
        if code == 503 {
            break body;
        }
        for id in held.drain(..) {
            fixture.close(id)?;
        }
        held = open_listeners(&fixture, 1000)?;
    };
    ensure!(
        not_ready.starts_with(&format!(
            "not ready: not connected to the collector at https://{bridge}:{}",
            cluster.collector_port
        )) && not_ready.contains("the spool is full (`spool.max_size` = 1MiB)"),
        "{not_ready}"
    );
    let overflowed_after = churn_started.elapsed();
    // Alive: it still scans.
    assert_eq!(
        http_get(http, "/healthz")
            .await
            .map_err(anyhow::Error::msg)?
            .0,
        200
    );

    // The collector returns: the agent connects and is ready again.
    cluster.start_collector(0).await?;
    let returned = Instant::now();
    wait_for(http, "/readyz", 200, Duration::from_secs(30)).await;
    let (_, metrics) = http_get(http, "/metrics")
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        sample(&metrics, "portolan_agent_stream_connected") == Some(1.0),
        "{metrics}"
    );
    ensure!(
        sample(&metrics, "portolan_agent_spool_gaps_total").is_some_and(|g| g >= 1.0),
        "{metrics}"
    );
    ensure!(
        sample(
            &metrics,
            "portolan_tls_certificate_expiry_timestamp_seconds{role=\"agent\"}"
        )
        .is_some_and(|t| (t - (unix_now() + 3600.0)).abs() < 300.0),
        "{metrics}"
    );
    println!(
        "agent: /readyz 503 after {overflowed_after:.1?} of churn; 200 {:.1?} after the collector returned",
        returned.elapsed()
    );
    Ok(())
}
