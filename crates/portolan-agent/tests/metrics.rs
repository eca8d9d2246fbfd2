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

/// `/metrics` in both formats over real HTTP: OpenMetrics when `Accept` asks for it (as
/// Prometheus does), the text format 0.0.4 otherwise; each parsed line by line.
#[tokio::test]
async fn metrics_are_served_as_openmetrics_or_text_as_asked()
-> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let scan = Scanner::new(ScanOptions::default()).scan()?;
    metrics::global().record_scan(&scan);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, async move {
        let _ = stopped.await;
    }));
    let get = async |accept: &str| -> std::io::Result<(String, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET /metrics HTTP/1.0\r\n{accept}\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
        Ok((head.to_string(), body.to_string()))
    };

    // What Prometheus 2 and 3 send.
    let (head, body) = get(
        "Accept: application/openmetrics-text;version=1.0.0;q=0.5,\
         application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1\r\n",
    )
    .await?;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let openmetrics = parse(&body, true).map_err(|e| format!("{e} in\n{body}"))?;
    for (name, kind) in [
        ("portolan_agent_scans", "counter"),
        ("portolan_agent_sockets", "gauge"),
        ("portolan_agent_scan_duration_seconds", "histogram"),
        ("portolan_build_info", "gauge"),
    ] {
        assert_eq!(
            openmetrics.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }

    for accept in ["", "Accept: text/plain\r\n", "Accept: */*\r\n"] {
        let (head, body) = get(accept).await?;
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let text = parse(&body, false).map_err(|e| format!("{e} in\n{body}"))?;
        // The same families: a counter's name carries its `_total` in the text format.
        let renamed: std::collections::BTreeMap<String, String> = openmetrics
            .iter()
            .map(|(name, kind)| match kind.as_str() {
                "counter" => (format!("{name}_total"), kind.clone()),
                _ => (name.clone(), kind.clone()),
            })
            .collect();
        assert_eq!(text, renamed);
    }
    let _ = stop.send(());
    server.await?;
    Ok(())
}

/// Parses an exposition (`openmetrics`: OpenMetrics 1.0.0, else the text format 0.0.4):
/// every line a `# HELP`, a `# TYPE` or a sample of the family last typed with a name
/// that family may have, labels well quoted, values numbers, each histogram's `+Inf`
/// bucket equal to its `_count`, `# EOF` last in OpenMetrics only. Returns the type of
/// each family.
fn parse(
    text: &str,
    openmetrics: bool,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut families = std::collections::BTreeMap::new();
    let mut family: Option<(String, String)> = None;
    let mut infinite_buckets = std::collections::BTreeMap::new();
    let mut counts = std::collections::BTreeMap::new();
    let mut lines = text.lines().peekable();
    let mut ended = false;
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            if !openmetrics || lines.peek().is_some() {
                return Err("`# EOF` where it does not belong".into());
            }
            ended = true;
        } else if let Some(help) = line.strip_prefix("# HELP ") {
            help.split_once(' ')
                .ok_or_else(|| format!("a HELP without text: {line}"))?;
        } else if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared
                .split_once(' ')
                .ok_or_else(|| format!("a TYPE without a type: {line}"))?;
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return Err(format!("an unexpected type: {line}"));
            }
            if openmetrics == name.ends_with("_total") && kind == "counter" {
                return Err(format!("a counter named for the other format: {line}"));
            }
            if families
                .insert(name.to_string(), kind.to_string())
                .is_some()
            {
                return Err(format!("a family declared twice: {line}"));
            }
            family = Some((name.to_string(), kind.to_string()));
        } else {
            let (name, kind) = family
                .as_ref()
                .ok_or_else(|| format!("a sample before any TYPE: {line}"))?;
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("a sample without a value: {line}"))?;
            let value: f64 = value
                .parse()
                .map_err(|_| format!("a value that is not a number: {line}"))?;
            let (sample, labels) = match series.split_once('{') {
                Some((sample, labels)) => (
                    sample,
                    labels_of(labels).ok_or(format!("bad labels: {line}"))?,
                ),
                None => (series, Vec::new()),
            };
            let suffix = sample
                .strip_prefix(name.as_str())
                .ok_or_else(|| format!("a sample outside its family {name}: {line}"))?;
            let others: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            match (kind.as_str(), suffix) {
                ("counter", "_total") if openmetrics => {}
                ("counter", "") if !openmetrics => {}
                ("gauge", "") => {}
                ("histogram", "_sum") => {}
                ("histogram", "_count") => {
                    counts.insert((name.clone(), others), value);
                }
                ("histogram", "_bucket") => {
                    let le = labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .ok_or_else(|| format!("a bucket without le: {line}"))?;
                    if le.1 == "+Inf" {
                        infinite_buckets.insert((name.clone(), others), value);
                    } else {
                        le.1.parse::<f64>()
                            .map_err(|_| format!("a bucket bound that is not a number: {line}"))?;
                    }
                }
                _ => return Err(format!("a sample name a {kind} does not have: {line}")),
            }
        }
    }
    if openmetrics != ended {
        return Err("`# EOF` missing from OpenMetrics".into());
    }
    if infinite_buckets != counts {
        return Err(format!(
            "+Inf buckets {infinite_buckets:?} are not the counts {counts:?}"
        ));
    }
    Ok(families)
}

/// `k="v",…}` (after the `{`), unescaped, or None when malformed.
fn labels_of(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return after.is_empty().then_some(labels);
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}
