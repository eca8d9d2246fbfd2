//! `/metrics`, `/healthz` and `/readyz` over real HTTP around a real scan of this host.

use portolan_agent::scan::{ScanOptions, Scanner};
use portolan_agent::{health, metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn metrics_show_a_real_scan() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // A listener of this process, so that the scan has one to report.
    let _held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let scan = Scanner::new(ScanOptions::default()).scan()?;
    metrics::global().record_scan(&scan);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, async move {
        let _ = stopped.await;
    }));

    let get = async |path: &str| -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    };
    // Alive at once; not ready before the first scan completed.
    let alive = get("/healthz").await?;
    assert!(
        alive.contains(" 200 OK") && alive.ends_with("\r\n\r\nok\n"),
        "{alive}"
    );
    let before = get("/readyz").await?;
    assert!(before.contains(" 503 Service Unavailable"), "{before}");
    assert!(
        before.ends_with("not ready: no scan completed yet\n"),
        "{before}"
    );
    health::global().update_readiness(health::AgentReadiness::scan_succeeded);
    let after = get("/readyz").await?;
    assert!(
        after.contains(" 200 OK") && after.ends_with("ready\n"),
        "{after}"
    );

    let response = get("/metrics").await?;
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 OK"),
        "{response}"
    );
    assert!(response.contains("text/plain; version=0.0.4"), "{response}");
    for line in [
        "portolan_agent_scans_total{outcome=\"ok\"} ",
        "portolan_agent_scan_duration_seconds_count ",
        "portolan_agent_stream_connected 0",
        "portolan_agent_reconnects_total 0",
        "portolan_agent_unattributed_sockets{reason=\"no_permission\"} ",
        "portolan_agent_sockets{protocol=\"tcp\",state=\"LISTEN\"} ",
        "# TYPE portolan_agent_ack_latency_seconds histogram",
        "portolan_build_info{binary=\"portolan-agent\",version=\"",
    ] {
        assert!(response.contains(line), "no `{line}` in\n{response}");
    }
    assert!(get("/").await?.contains(" 404 Not Found"));
    let _ = stop.send(());
    server.await?;
    Ok(())
}
