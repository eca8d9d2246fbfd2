//! `just bench`, latency: from a listener opening on a host to the alert about it, through
//! every stage of the real pipeline. One agent (in a network-namespace host, scanning
//! every `LATENCY_SCAN_MS`, default 1000) streams to a collector that evaluates a
//! `listener` rule every second and sends findings to a webhook. For each sample a new
//! listener opens at a point spread evenly over the scan interval, and the bench records
//! when its row is in ClickHouse, when its finding is open, and when the webhook received
//! the alert.
//!
//! The reference is the sum of the two periods the pipeline waits on (scan interval +
//! evaluation interval): no pipeline that scans and evaluates periodically can do better
//! than half of it on average. `LATENCY_SAMPLES` (default 60) sets the number of listeners.
//! Prints a table and writes `<target>/bench/latency.json`.
//!
//! ClickHouse is polled every 20 ms from the root namespace (the agent's host does not
//! see those connections), so the row and finding stages are known to within ~20 ms plus
//! one query; the alert stage is the receiver's own timestamp.

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portolan_core::Protocol;
use portolan_testkit::receiver::Receiver;
use portolan_testkit::{Lab, SocketFixture, fixture_binary};
use serde_json::{Value, json};

use support::{Cluster, Limits};

const HOST_ID: &str = "latency1";
const FIRST_PORT: u16 = 21_000;
/// The collector of [`Cluster`] evaluates its rules every second.
const EVALUATION_INTERVAL: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);
/// Longest wait for one stage before the bench gives up.
const STAGE_TIMEOUT: Duration = Duration::from_secs(60);
const RULES: &str = r#"
version: 1
rules:
  - id: latency-listener
    kind: listener
    severity: high
    sockets: {ports: ["21000-21999"]}
"#;

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("`{name}` is `{v}`; give a whole number")),
        Err(_) => Ok(default),
    }
}

/// Polls `check` every [`POLL`] until it holds; when it first held.
async fn until(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<Instant> {
    let deadline = Instant::now() + STAGE_TIMEOUT;
    loop {
        if check()? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {STAGE_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// When the webhook got the `opened` alert of the listener on `port`, if it did.
fn alert_received(webhook: &Receiver, port: u16) -> Option<Instant> {
    let suffix = format!(":{port}");
    webhook.requests().into_iter().find_map(|r| {
        let doc: Value = serde_json::from_slice(&r.body).ok()?;
        let finding = &doc["finding"];
        let subject = finding["subject"].as_str()?;
        (doc["event"] == "opened"
            && finding["rule_id"] == "latency-listener"
            && subject.ends_with(&suffix))
        .then_some(r.at)
    })
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

struct Stage {
    name: &'static str,
    ms: Vec<f64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let samples = env_number("LATENCY_SAMPLES", 60)?.clamp(1, 999) as u16;
    let scan_interval = Duration::from_millis(env_number("LATENCY_SCAN_MS", 1000)?.max(100));
    let lab = Lab::new("latency")?;
    let host = lab.add_host("lat1")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let webhook = Receiver::start().await?;
    let limits = Limits {
        rules: Some(RULES.into()),
        collector_extra: format!(
            "\n[notify]\nbackoff = \"200ms\"\n\n[[notify.webhook]]\nurl = {:?}\n",
            webhook.url()
        ),
        ..Limits::default()
    };
    let cluster = Cluster::start("latency", &[bridge], limits).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    let _agent = cluster.spawn_agent(Some(&host), HOST_ID, collector, scan_interval, &[])?;
    until("the agent's first snapshot", || {
        Ok(cluster
            .http_query(&format!(
                "SELECT count() FROM host_reports WHERE host_id = '{HOST_ID}'"
            ))?
            .trim()
            != "0")
    })
    .await
    .with_context(|| cluster.agent_log(HOST_ID))?;

    let mut stages = [
        Stage {
            name: "listener opened → row in ClickHouse",
            ms: Vec::new(),
        },
        Stage {
            name: "listener opened → finding open",
            ms: Vec::new(),
        },
        Stage {
            name: "listener opened → alert delivered",
            ms: Vec::new(),
        },
    ];
    println!(
        "latency benchmark: {samples} listeners, scan interval {scan_interval:?}, evaluation interval {EVALUATION_INTERVAL:?}"
    );
    for i in 0..samples {
        // Openings spread evenly over the scan phase (golden-ratio steps).
        let phase = (f64::from(i) * 0.618_033_988_75).fract();
        tokio::time::sleep(scan_interval.mul_f64(phase)).await;
        let port = FIRST_PORT + i;
        let opened = Instant::now();
        let (id, _) = fixture.listen(Protocol::Tcp, host.ipv4_addr(port))?;
        let stored = until(&format!("the row of port {port}"), || {
            Ok(cluster
                .http_query(&format!(
                    "SELECT count() FROM sockets_current FINAL WHERE host_id = '{HOST_ID}' AND local_port = {port} AND present = 1"
                ))?
                .trim()
                != "0")
        })
        .await?;
        let found = until(&format!("the finding of port {port}"), || {
            Ok(cluster
                .http_query(&format!(
                    "SELECT count() FROM findings FINAL WHERE rule_id = 'latency-listener' AND status = 'open' AND endsWith(subject, ':{port}')"
                ))?
                .trim()
                != "0")
        })
        .await?;
        let alerted_poll = until(&format!("the alert of port {port}"), || {
            Ok(alert_received(&webhook, port).is_some())
        })
        .await?;
        let alerted = alert_received(&webhook, port).unwrap_or(alerted_poll);
        for (stage, at) in stages.iter_mut().zip([stored, found, alerted]) {
            stage
                .ms
                .push(at.saturating_duration_since(opened).as_secs_f64() * 1e3);
        }
        fixture.close(id)?;
    }

    let reference_ms = (scan_interval + EVALUATION_INTERVAL).as_secs_f64() * 1e3;
    let target_ms = (2 * scan_interval + EVALUATION_INTERVAL).as_secs_f64() * 1e3;
    println!();
    println!(
        "{:<40}  {:>10}  {:>10}  {:>16}",
        "stage", "p50 ms", "p99 ms", "p99 / reference"
    );
    let mut table = Vec::new();
    let mut raw = serde_json::Map::new();
    for stage in &mut stages {
        stage.ms.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&stage.ms, 50.0), percentile(&stage.ms, 99.0));
        println!(
            "{:<40}  {p50:>10.0}  {p99:>10.0}  {:>16.2}",
            stage.name,
            p99 / reference_ms
        );
        raw.insert(
            stage.name.to_string(),
            json!({"p50_ms": p50, "p99_ms": p99, "samples_ms": stage.ms}),
        );
        for (label, value) in [("p50", p50), ("p99", p99)] {
            let last = stage.name.ends_with("alert delivered");
            table.push(json!({
                "measure": format!("latency {} ({label})", stage.name),
                "figure": format!("{:.0} ms", value),
                "reference": format!("scan + evaluation interval: {reference_ms:.0} ms"),
                "ratio": value / reference_ms,
                "target": (last && label == "p99").then(|| format!("<= 2 x scan + evaluation ({target_ms:.0} ms)")),
                "met": (last && label == "p99").then_some(value <= target_ms),
            }));
        }
    }
    println!(
        "reference: scan interval + evaluation interval = {reference_ms:.0} ms; target p99 (alert) ≤ {target_ms:.0} ms"
    );
    let doc = json!({
        "bench": "latency",
        "table": table,
        "samples": samples,
        "scan_interval_ms": scan_interval.as_millis() as u64,
        "evaluation_interval_ms": EVALUATION_INTERVAL.as_millis() as u64,
        "poll_ms": POLL.as_millis() as u64,
        "stages": raw,
    });
    let dir = target_dir().join("bench");
    let path = dir.join("latency.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{doc:#}\n")))
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
