//! OpenTelemetry traces across the agent and the collector: a real OTLP/gRPC receiver
//! records what both binaries export; one delta's trace runs from the agent's `send` span
//! through the collector's `ingest` to its `store`. Binaries without the variable, or with
//! an endpoint where nothing listens, store their data as usual and warn once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use portolan_core::{Protocol, SocketState};
use portolan_testkit::{
    Lab, NetnsHost, OtlpReceiver, ReceivedSpan, SocketFixture, eventually_async, fixture_binary,
};

use crate::support::{Cluster, Limits};

const INTERVAL: Duration = Duration::from_millis(500);

/// Evaluated every second, so that the collector exports `evaluate` spans.
const RULES: &str = r#"
version: 1
rules:
  - id: traced-port
    kind: listener
    severity: low
    sockets: {ports: [17071]}
"#;

/// The line the exporter logs once when its endpoint does not answer.
const EXPORT_WARNING: &str = "cannot export traces";

fn otel_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "2000".into()),
    ]
}

/// The seq that stored the listener on `port` of `host_id`, once it is stored.
async fn stored_seq(cluster: &Cluster, host_id: &str, port: u16) -> Result<u64, String> {
    let sockets = cluster
        .store
        .current_sockets(host_id)
        .await
        .map_err(|e| e.to_string())?;
    sockets
        .iter()
        .find(|s| s.socket.key.local_port == port && s.socket.state == SocketState::Listen)
        .map(|s| s.seq)
        .ok_or_else(|| {
            format!(
                "the listener on {port} of {host_id} is not stored yet; agent log:\n{}",
                cluster.agent_log(host_id)
            )
        })
}

/// Opens a TCP listener on `port` in `host`.
fn listen(fixture: &SocketFixture, host: &NetnsHost, port: u16) -> Result<()> {
    fixture.listen(Protocol::Tcp, host.ipv4_addr(port))?;
    Ok(())
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{:<18} {:<7} trace {} span {} parent {:<16} {:?}",
                s.service, s.name, s.trace_id, s.span_id, s.parent_span_id, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The span chain from `span` up to its root, through spans received in `trace`.
fn ancestors<'a>(span: &'a ReceivedSpan, trace: &'a [&'a ReceivedSpan]) -> Vec<&'a ReceivedSpan> {
    let by_id: BTreeMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let mut chain = vec![span];
    let mut current = span;
    while let Some(parent) = by_id.get(current.parent_span_id.as_str()) {
        if chain.len() > trace.len() {
            break; // a cycle would be a receiver bug; stop rather than loop
        }
        chain.push(parent);
        current = parent;
    }
    chain
}

/// Sends SIGTERM to `child` and waits for it to exit, at most `limit` (then kills it and
/// fails); its exit status and how long it took.
fn terminate(mut child: Child, limit: Duration) -> Result<(ExitStatus, Duration)> {
    let pid = child.id().to_string();
    let started = Instant::now();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((status, started.elapsed())),
            Ok(None) if sent.is_ok() && started.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(50));
            }
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "process {pid} did not stop within {limit:?} of SIGTERM ({sent:?}, {outcome:?})"
                );
            }
        }
    }
}

/// A delta's trace: the agent's `send` span of `seq` and the collector's `ingest` and
/// `store` spans under it, all in one trace.
fn delta_trace(spans: &[ReceivedSpan], host_id: &str, seq: u64) -> Result<String, String> {
    let seq_text = seq.to_string();
    let send = spans
        .iter()
        .find(|s| {
            s.service == "portolan-agent"
                && s.name == "send"
                && s.attribute("kind") == Some("delta")
                && s.attribute("seq") == Some(seq_text.as_str())
        })
        .ok_or_else(|| format!("no agent `send` span for delta {seq} yet"))?;
    let trace: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == send.trace_id)
        .collect();
    let ingest = trace
        .iter()
        .find(|s| {
            s.service == "portolan-collector"
                && s.name == "ingest"
                && s.attribute("kind") == Some("delta")
                && s.attribute("seq") == Some(seq_text.as_str())
                && s.attribute("host") == Some(host_id)
        })
        .ok_or_else(|| format!("no collector `ingest` span in trace {}", send.trace_id))?;
    let store = trace
        .iter()
        .find(|s| s.service == "portolan-collector" && s.name == "store")
        .ok_or_else(|| format!("no collector `store` span in trace {}", send.trace_id))?;
    if ingest.parent_span_id != send.span_id {
        return Err(format!(
            "the collector's `ingest` span is not a child of the agent's `send` span:\n{}",
            describe(spans)
        ));
    }
    let chain = ancestors(store, &trace);
    let names: Vec<String> = chain
        .iter()
        .map(|s| format!("{}:{}", s.service, s.name))
        .collect();
    if names
        != [
            "portolan-collector:store",
            "portolan-collector:ingest",
            "portolan-agent:send",
        ]
    {
        return Err(format!("the `store` span's parent chain is {names:?}"));
    }
    if store.attribute("seq") != Some(seq_text.as_str())
        || store
            .attribute("rows")
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
            == 0
    {
        return Err(format!("the `store` span lacks its seq or rows: {store:?}"));
    }
    Ok(format!(
        "trace {}:\n{}",
        send.trace_id,
        describe(&trace.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deltas_trace_crosses_agent_and_collector() -> Result<()> {
    let lab = Lab::new("otel")?;
    let traced = lab.add_host("a")?;
    let untraced = lab.add_host("b")?;
    let unreachable = lab.add_host("c")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    // The agents reach the root namespace at the bridge address, as they reach the collector.
    let receiver = OtlpReceiver::start(SocketAddr::new(bridge, 0)).await?;
    // A port where nothing listens: bound for a moment to learn a free one, then closed.
    let nothing = {
        let l = std::net::TcpListener::bind(SocketAddr::new(bridge, 0))?;
        l.local_addr()?
    };
    let nothing = format!("http://{nothing}");
    let limits = Limits {
        rules: Some(RULES.into()),
        collector_env: otel_env(&receiver.endpoint()),
        ..Limits::default()
    };
    let mut cluster = Cluster::start("traces", &[bridge], limits).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);

    let fixture = fixture_binary()?;
    let fixtures = [
        SocketFixture::spawn(Some(&traced), &fixture)?,
        SocketFixture::spawn(Some(&untraced), &fixture)?,
        SocketFixture::spawn(Some(&unreachable), &fixture)?,
    ];
    let env = otel_env(&receiver.endpoint());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let unreachable_env = otel_env(&nothing);
    let unreachable_env: Vec<(&str, &str)> = unreachable_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let [_agent_a, _agent_b, agent_c] = [
        cluster.spawn_agent_with_env(Some(&traced), "host-a", collector, INTERVAL, &[], &env)?,
        cluster.spawn_agent(Some(&untraced), "host-b", collector, INTERVAL, &[])?,
        cluster.spawn_agent_with_env(
            Some(&unreachable),
            "host-c",
            collector,
            INTERVAL,
            &[],
            &unreachable_env,
        )?,
    ];

    // A listener opened after the first snapshot: the agent sends it in a delta.
    for host_id in ["host-a", "host-b", "host-c"] {
        eventually_async!(
            timeout = Duration::from_secs(60),
            interval = Duration::from_millis(250),
            {
                match cluster.store.last_seq(host_id).await {
                    Ok(seq) if seq >= 1 => Ok(seq),
                    Ok(_) => Err(format!(
                        "no snapshot of {host_id} stored yet; agent log:\n{}",
                        cluster.agent_log(host_id)
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        );
    }
    listen(&fixtures[0], &traced, 17071)?;
    listen(&fixtures[1], &untraced, 17072)?;
    listen(&fixtures[2], &unreachable, 17073)?;
    let seq = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        { stored_seq(&cluster, "host-a", 17071).await }
    );
    assert!(
        seq >= 2,
        "the listener came in a delta after the snapshot, not in seq {seq}"
    );
    let trace = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        { delta_trace(&receiver.spans(), "host-a", seq) }
    );
    println!("delta {seq} of host-a: {trace}");

    // Untraced and unreachable agents: their data lands all the same.
    for (host_id, port) in [("host-b", 17072), ("host-c", 17073)] {
        let seq = eventually_async!(
            timeout = Duration::from_secs(30),
            interval = Duration::from_millis(250),
            { stored_seq(&cluster, host_id, port).await }
        );
        println!("{host_id}: the listener on {port} stored at seq {seq}");
    }
    // The collector traces every agent's messages; only a traced agent's have a parent.
    let spans = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        {
            let spans = receiver.spans();
            let ingests = |host: &str| {
                spans
                    .iter()
                    .filter(|s| s.name == "ingest" && s.attribute("host") == Some(host))
                    .count()
            };
            let evaluated = spans.iter().any(|s| {
                s.service == "portolan-collector"
                    && s.name == "evaluate"
                    && s.attribute("rules") == Some("1")
            });
            let scanned = spans.iter().any(|s| {
                s.service == "portolan-agent"
                    && s.name == "scan"
                    && s.attribute("sockets").is_some()
            });
            if ingests("host-b") > 0 && ingests("host-c") > 0 && evaluated && scanned {
                Ok(spans)
            } else {
                Err(format!(
                    "waiting for ingest spans of host-b and host-c, an evaluate and a scan span:\n{}",
                    describe(&spans)
                ))
            }
        }
    );
    for span in spans
        .iter()
        .filter(|s| s.attribute("host") == Some("host-b"))
    {
        assert_eq!(
            span.parent_span_id, "",
            "host-b's agent exports nothing, so sends no traceparent: {span:?}"
        );
    }
    for span in spans
        .iter()
        .filter(|s| s.name == "ingest" && s.attribute("host") == Some("host-c"))
        .filter(|s| s.attribute("kind") != Some("hello"))
    {
        assert_ne!(
            span.parent_span_id, "",
            "host-c's agent traces (its exporter fails), so it sends its traceparent: {span:?}"
        );
    }
    assert!(
        spans
            .iter()
            .all(|s| s.service == "portolan-agent" || s.service == "portolan-collector"),
        "{}",
        describe(&spans)
    );
    assert!(
        !spans
            .iter()
            .any(|s| s.name.contains("h2") || s.name.contains("tonic")),
        "library spans exported:\n{}",
        describe(&spans)
    );
    // The agent whose endpoint does not answer says so once, not once per batch (the
    // first failed export may take the exporter's timeout to be noticed).
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        {
            if cluster.agent_log("host-c").contains(EXPORT_WARNING) {
                Ok(())
            } else {
                Err("host-c has not warned about its export yet".to_string())
            }
        }
    );
    // A few more batches fail meanwhile: still one warning.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = cluster.agent_log("host-c");
    assert_eq!(log.matches(EXPORT_WARNING).count(), 1, "host-c log:\n{log}");
    assert_eq!(
        cluster.agent_log("host-b").matches(EXPORT_WARNING).count(),
        0
    );
    println!(
        "received {} spans in {} exports; host-c warned once",
        spans.len(),
        receiver.exports()
    );

    // Its spans still queued cannot reach anyone: SIGTERM ends it all the same, within the
    // exporter's shutdown bound (3 s), and cleanly.
    let (status, took) = terminate(agent_c.into_inner(), Duration::from_secs(10))?;
    println!("host-c's agent stopped in {took:?} with {status}");
    ensure!(status.success(), "host-c's agent ended with {status}");
    ensure!(
        took < Duration::from_secs(5),
        "host-c's agent took {took:?} to stop"
    );

    // A collector restarted with an endpoint where nothing listens stores as before.
    cluster.kill_collector(0);
    cluster.set_collector_env(otel_env(&nothing));
    cluster.start_collector(0).await?;
    listen(&fixtures[0], &traced, 17074)?;
    let seq = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        { stored_seq(&cluster, "host-a", 17074).await }
    );
    println!("with the collector's endpoint unreachable, host-a's listener stored at seq {seq}");
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        {
            if cluster.collector_log().contains(EXPORT_WARNING) {
                Ok(())
            } else {
                Err("the collector has not warned yet".to_string())
            }
        }
    );
    // More deltas, more spans, more failed exports: still the one warning.
    for port in [17075, 17076, 17077] {
        listen(&fixtures[0], &traced, port)?;
        eventually_async!(
            timeout = Duration::from_secs(30),
            interval = Duration::from_millis(250),
            { stored_seq(&cluster, "host-a", port).await }
        );
    }
    let log = cluster.collector_log();
    if log.matches(EXPORT_WARNING).count() != 1 {
        bail!("the collector did not warn exactly once:\n{log}");
    }
    Ok(())
}
