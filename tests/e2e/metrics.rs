//! `/metrics` of both binaries after real activity: an agent in a namespace host streams
//! to a collector; both scrapes show what happened.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::support::{Cluster, Limits, http_get, metric_sample as sample};
use anyhow::Result;
use portolan_testkit::{Lab, eventually_async};

/// `/metrics`, which must answer 200.
async fn scrape(addr: SocketAddr) -> Result<String, String> {
    match http_get(addr, "/metrics").await? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("/metrics answered {code}: {body}")),
    }
}

/// The sum of every sample of the metric `name` (all label sets).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_export_metrics_of_real_activity() -> Result<()> {
    let lab = Lab::new("metr")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let collector_metrics = SocketAddr::from(([127, 0, 0, 1], portolan_testkit::free_port()?));
    let limits = Limits {
        collector_extra: format!("\n[metrics]\nlisten = \"{collector_metrics}\"\n"),
        ..Limits::default()
    };
    let cluster = Cluster::start("metrics", &[bridge], limits).await?;

    // The agent serves its metrics inside its namespace, reached through the bridge.
    let agent_metrics = host.ipv4_addr(9464);
    let _agent = cluster.spawn_agent_with_config(
        Some(&host),
        "host-m",
        SocketAddr::new(bridge, cluster.collector_port),
        Duration::from_millis(500),
        &format!("\n[metrics]\nlisten = \"{agent_metrics}\"\n"),
    )?;

    let agent = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        {
            let text = scrape(agent_metrics).await?;
            let scans = sample(&text, "portolan_agent_scans_total{outcome=\"ok\"}").unwrap_or(0.0);
            let acked = total(&text, "portolan_agent_messages_acked_total");
            // Not heartbeats: each scrape leaves a TIME_WAIT socket in the agent's
            // namespace, so while the test scrapes, every scan has a (small) delta.
            if scans >= 2.0 && acked >= 2.0 {
                Ok(text)
            } else {
                Err(format!("not yet: {scans} scans, {acked} acked\n{text}"))
            }
        }
    );
    assert_eq!(
        sample(&agent, "portolan_agent_stream_connected"),
        Some(1.0),
        "{agent}"
    );
    assert!(total(&agent, "portolan_agent_sockets") >= 1.0, "{agent}");
    assert!(sample(&agent, "portolan_agent_scan_duration_seconds_count").unwrap_or(0.0) >= 2.0);
    assert!(sample(&agent, "portolan_agent_sent_bytes_total").unwrap_or(0.0) > 0.0);
    assert!(sample(&agent, "portolan_agent_ack_latency_seconds_count").unwrap_or(0.0) >= 1.0);

    let collector = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        {
            let text = scrape(collector_metrics).await?;
            if sample(
                &text,
                "portolan_collector_messages_received_total{kind=\"heartbeat\"}",
            )
            .unwrap_or(0.0)
                >= 1.0
            {
                Ok(text)
            } else {
                Err(format!("no heartbeat counted yet\n{text}"))
            }
        }
    );
    assert_eq!(
        sample(&collector, "portolan_collector_agents_connected"),
        Some(1.0),
        "{collector}"
    );
    assert!(
        total(&collector, "portolan_collector_rows_written_total") > 0.0,
        "{collector}"
    );
    assert!(
        sample(
            &collector,
            "portolan_collector_rows_written_total{table=\"host_reports\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{collector}"
    );
    assert!(
        sample(
            &collector,
            "portolan_collector_ingest_latency_seconds_count{kind=\"snapshot\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{collector}"
    );
    assert_eq!(
        sample(&collector, "portolan_collector_clickhouse_errors_total"),
        Some(0.0)
    );
    Ok(())
}

/// The footprint guard: an agent whose CPU budget is far below what it uses steps up to
/// level 3 (scans 4× less often, no /proc walk for new sockets) and says so in its
/// metrics and log, while it keeps streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_cpu_budget_backs_off_and_says_so() -> Result<()> {
    let lab = Lab::new("foot")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start("footprint", &[bridge], Limits::default()).await?;
    let agent_metrics = host.ipv4_addr(9464);
    let interval = Duration::from_millis(200);
    let _agent = cluster.spawn_agent_with_config(
        Some(&host),
        "host-f",
        SocketAddr::new(bridge, cluster.collector_port),
        interval,
        &format!(
            "\n[footprint]\nmax_cpu_percent = 0.001\n\n[metrics]\nlisten = \"{agent_metrics}\"\n"
        ),
    )?;

    let text = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        {
            let text = scrape(agent_metrics).await?;
            match sample(&text, "portolan_agent_footprint_level") {
                Some(level) if level >= 3.0 => Ok(text),
                other => Err(format!("footprint level {other:?}")),
            }
        }
    );
    let cpu = sample(&text, "portolan_agent_cpu_percent").unwrap_or(0.0);
    let rss = sample(&text, "portolan_agent_resident_memory_bytes").unwrap_or(0.0);
    assert!(cpu > 0.001, "the guard measured {cpu}% CPU");
    assert!(rss > 1e6, "the guard measured {rss} resident bytes");
    let scans = |t: &str| sample(t, "portolan_agent_scans_total{outcome=\"ok\"}").unwrap_or(0.0);
    let before = scans(&text);
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let after = scrape(agent_metrics).await.map_err(anyhow::Error::msg)?;
    let scanned = scans(&after) - before;
    let nominal = window.as_secs_f64() / interval.as_secs_f64();
    println!(
        "footprint guard: level 3 at {cpu:.2}% CPU (budget 0.001%), {:.1} MiB resident; {scanned} scans in {window:?} where {nominal} were configured",
        rss / 1048576.0
    );
    assert!(
        scanned <= nominal / 2.0,
        "{scanned} scans in {window:?}: the interval did not grow"
    );
    let log = cluster.agent_log("host-f");
    assert!(
        log.contains("footprint guard changed process attribution"),
        "the agent logged the back-off:\n{log}"
    );
    // It still streams: its snapshot is stored.
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        {
            let reports = cluster
                .store
                .reports("host-f")
                .await
                .map_err(|e| e.to_string())?;
            if reports.is_empty() {
                Err("nothing stored".to_string())
            } else {
                Ok(())
            }
        }
    );
    Ok(())
}
