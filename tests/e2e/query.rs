//! The query API and the CLI's first verbs against a real collector, real ClickHouse and
//! agents in namespace hosts: the answers equal the sockets the test opened.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use portolan_core::Protocol;
use portolan_testkit::{Lab, SocketFixture, eventually_async, fixture_binary};
use portolan_tls::OperatorRole;
use portolan_tls::pki::WriteMode;
use serde_json::Value;

use crate::support::{Cluster, Limits, binary};

/// The real `portolan` binary with a certificate, pointed at a collector.
pub(crate) struct Cli<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
    pub(crate) port: u16,
}

impl Cli<'_> {
    /// `portolan --collector … --ca … --cert … --key … ARGS`, not yet run.
    pub(crate) fn command(&self, args: &[&str]) -> Result<Command> {
        let mut command = Command::new(binary("portolan")?);
        command
            .arg("--collector")
            .arg(format!("https://127.0.0.1:{}", self.port))
            .arg("--ca")
            .arg(self.cluster.pki.ca_path())
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(args);
        Ok(command)
    }

    /// Runs `portolan ARGS`; returns (exit code, stdout, stderr).
    pub(crate) fn run(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let output = self.command(args)?.output()?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Runs `portolan ARGS`, which must succeed and print JSON.
    pub(crate) fn json(&self, args: &[&str]) -> Result<Value> {
        let (code, out, err) = self.run(args)?;
        anyhow::ensure!(code == 0, "portolan {args:?} exited {code}: {err}");
        serde_json::from_str(&out)
            .with_context(|| format!("portolan {args:?} printed no JSON: {out}"))
    }
}

fn listeners_of(doc: &Value) -> BTreeSet<(String, String, String, u64, Vec<u64>)> {
    doc.as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["host_id"].as_str().unwrap_or_default().to_string(),
                        s["protocol"].as_str().unwrap_or_default().to_string(),
                        s["local_address"].as_str().unwrap_or_default().to_string(),
                        s["local_port"].as_u64().unwrap_or_default(),
                        s["pids"]
                            .as_array()
                            .map(|p| p.iter().filter_map(Value::as_u64).collect())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_answers_equal_the_sockets_the_test_opened() -> Result<()> {
    let lab = Lab::new("query")?;
    let db = lab.add_host("db")?;
    let app = lab.add_host("app")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let rules = "rules:\n  - id: db-wildcard\n    kind: listener\n    severity: high\n    hosts: {labels: {role: db}}\n    sockets: {ports: [5432], exposure: [wildcard, public]}\n";
    let limits = Limits {
        rules: Some(rules.into()),
        ..Limits::default()
    };
    let cluster = Cluster::start("query", &[bridge], limits).await?;
    let fixture = fixture_binary()?;
    let on_db = SocketFixture::spawn(Some(&db), &fixture)?;
    on_db.listen(Protocol::Tcp, "0.0.0.0:5432".parse()?)?;
    on_db.listen(Protocol::Tcp, "127.0.0.1:6379".parse()?)?;
    let on_app = SocketFixture::spawn(Some(&app), &fixture)?;
    on_app.listen(Protocol::Tcp, "[::]:8080".parse()?)?;
    on_app.listen(Protocol::Udp, app.ipv4_addr(5353))?;
    on_app.connect(Protocol::Tcp, db.ipv4_addr(5432))?;

    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let interval = Duration::from_secs(1);
    let _a = cluster.spawn_agent(
        Some(&db),
        "host-db",
        collector,
        interval,
        &[("env", "test"), ("role", "db")],
    )?;
    let _b = cluster.spawn_agent(
        Some(&app),
        "host-app",
        collector,
        interval,
        &[("env", "test"), ("role", "app")],
    )?;
    for host in ["host-db", "host-app"] {
        let store = &cluster.store;
        eventually_async!(
            timeout = Duration::from_secs(60),
            interval = Duration::from_millis(250),
            {
                let n = store
                    .current_sockets(host)
                    .await
                    .map_err(|e| e.to_string())?
                    .len();
                if n >= 2 {
                    Ok(())
                } else {
                    Err(format!("{host}: {n} sockets stored"))
                }
            }
        );
    }

    let op = cluster
        .pki
        .ca
        .issue_operator("reader", OperatorRole::Reader, Duration::from_secs(3600))?
        .write_files(&cluster.pki.dir, "operator-reader", WriteMode::Overwrite)?;
    let cli = Cli {
        cluster: &cluster,
        cert: op.cert.clone(),
        key: op.key.clone(),
        port: cluster.collector_port,
    };

    // who-listens 5432: exactly the db host's wildcard listener, owned by its fixture.
    let doc = cli.json(&["who-listens", "5432", "-o", "json"])?;
    let found = listeners_of(&doc);
    let want = BTreeSet::from([(
        "host-db".to_string(),
        "tcp".to_string(),
        "0.0.0.0".to_string(),
        5432,
        vec![u64::from(on_db.pid())],
    )]);
    assert_eq!(found, want, "who-listens 5432");
    assert_eq!(doc[0]["exposure"], "private");
    assert!(
        doc[0]["processes"][0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("portolan-socket"))
    );
    // Nobody listens on 5999: exit status 1, like grep.
    let (code, out, _) = cli.run(&["who-listens", "5999"])?;
    assert_eq!(code, 1, "who-listens on a free port: {out}");

    // sockets --listening -l role=app equals the app host's listeners in `ss`.
    let doc = cli.json(&["sockets", "--listening", "-l", "role=app", "-o", "json"])?;
    let kernel: BTreeSet<_> = app
        .sockets()?
        .into_iter()
        .filter(|s| s.is_listener())
        .map(|s| {
            (
                "host-app".to_string(),
                s.protocol.as_str().to_string(),
                s.local.ip().to_string(),
                u64::from(s.local.port()),
                s.pids.iter().map(|p| u64::from(*p)).collect(),
            )
        })
        .collect();
    assert_eq!(
        listeners_of(&doc),
        kernel,
        "sockets --listening -l role=app"
    );
    // A filter on exposure and port range.
    let doc = cli.json(&[
        "sockets",
        "--exposure",
        "loopback",
        "--port",
        "6000-7000",
        "-o",
        "json",
    ])?;
    assert_eq!(
        listeners_of(&doc)
            .into_iter()
            .map(|s| s.3)
            .collect::<Vec<_>>(),
        [6379]
    );

    // flows: app's connection to db:5432 is seen from both ends and joined across hosts.
    let doc = cli.json(&["flows", "--port", "5432", "-o", "json"])?;
    let flows = doc.as_array().context("flows array")?;
    let find = |host: &str, dir: &str| {
        flows
            .iter()
            .find(|f| f["host_id"] == host && f["direction"] == dir && f["state"] == "established")
            .cloned()
    };
    let inbound = find("host-db", "inbound").context("db's inbound flow on 5432")?;
    assert_eq!(inbound["peer"], "inside", "{inbound}");
    assert_eq!(inbound["peer_host_id"], "host-app", "{inbound}");
    assert_eq!(inbound["connections"], 1);
    assert_eq!(inbound["remote_address"], app.ipv4.to_string());
    let outbound = find("host-app", "outbound").context("app's outbound flow to 5432")?;
    assert_eq!(outbound["peer_host_id"], "host-db", "{outbound}");
    assert_eq!(outbound["pid"], u64::from(on_app.pid()));
    // The agents' own streams go to the collector, which runs no agent: outside the fleet.
    let doc = cli.json(&["flows", "--outside", "--direction", "out", "-o", "json"])?;
    let outside: Vec<&Value> = doc.as_array().context("flows array")?.iter().collect();
    assert!(
        !outside.is_empty()
            && outside.iter().all(|f| f["peer"] == "outside"
                && f["service_port"] == u64::from(cluster.collector_port)),
        "{doc}"
    );
    let (code, table, _) = cli.run(&["flows", "--port", "5432"])?;
    assert_eq!(code, 0);
    println!("portolan flows --port 5432:\n{table}");

    // hosts: both, with their labels, fresh.
    let doc = cli.json(&["hosts", "-o", "json"])?;
    let hosts = doc.as_array().context("hosts array")?;
    assert_eq!(hosts.len(), 2, "{doc}");
    for h in hosts {
        assert_eq!(h["labels"]["env"], "test");
        assert_eq!(h["stale"], false, "{h}");
    }
    let db_row = hosts
        .iter()
        .find(|h| h["host_id"] == "host-db")
        .context("host-db listed")?;
    assert_eq!(db_row["listeners"], 2);
    let (code, table, _) = cli.run(&["host", "host-db"])?;
    assert_eq!(code, 0);
    assert!(
        table.contains("role=db") && table.contains(&db.ipv4.to_string()),
        "{table}"
    );
    let (code, table, _) = cli.run(&["hosts"])?;
    assert_eq!(code, 0);
    println!("portolan hosts:\n{table}");

    // findings: the rule the collector evaluates opened one finding, for the db host.
    let doc = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(500),
        {
            let doc = cli
                .json(&["findings", "-o", "json"])
                .map_err(|e| e.to_string())?;
            if doc.as_array().is_some_and(|a| !a.is_empty()) {
                Ok(doc)
            } else {
                Err(format!("no findings yet: {doc}"))
            }
        }
    );
    let findings = doc.as_array().context("findings array")?;
    assert_eq!(findings.len(), 1, "{doc}");
    let f = &findings[0];
    assert_eq!(
        (
            f["rule_id"].as_str(),
            f["host_id"].as_str(),
            f["status"].as_str()
        ),
        (Some("db-wildcard"), Some("host-db"), Some("open")),
        "{f}"
    );
    assert!(
        f["subject"].as_str().is_some_and(|s| s.contains("5432")),
        "{f}"
    );
    let (code, _, _) = cli.run(&["findings", "--severity", "critical"])?;
    assert_eq!(code, 1, "no critical findings: exit 1");
    let (code, table, _) = cli.run(&["findings"])?;
    assert_eq!(code, 0);
    println!("portolan findings:\n{table}");

    // gRPC health checking and reflection (what grpcurl and load balancers use).
    let tls = portolan_tls::client_config(&portolan_tls::TlsFiles {
        ca: cluster.pki.ca_path(),
        cert: op.cert.clone(),
        key: op.key.clone(),
    })?;
    let channel = portolan_tls::connect(
        &format!("https://127.0.0.1:{}", cluster.collector_port),
        tls,
        portolan_tls::ConnectOptions::default(),
    )
    .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["portolan.v1.QueryService", "portolan.v1.IngestService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    // Reflection, in both versions: stock clients (grpcio-reflection, older grpcurl) only
    // speak v1alpha.
    for (version, services) in [
        ("v1", reflected_services_v1(channel.clone()).await?),
        ("v1alpha", reflected_services_v1alpha(channel).await?),
    ] {
        println!("reflection {version} lists: {services:?}");
        for service in ["portolan.v1.QueryService", "portolan.v1.IngestService"] {
            assert!(
                services.iter().any(|s| s == service),
                "reflection {version} does not list {service}: {services:?}"
            );
        }
    }

    // And with a stock client: Python's grpcio-reflection, which speaks only v1alpha.
    let services = python_reflection(&cluster, &op.cert, &op.key)?;
    println!("grpcio-reflection lists: {services:?}");
    for service in ["portolan.v1.QueryService", "portolan.v1.IngestService"] {
        assert!(
            services.iter().any(|s| s == service),
            "grpcio-reflection does not list {service}: {services:?}"
        );
    }

    // Refusals: an agent certificate cannot query.
    let (agent_cert, agent_key) = cluster.pki.agent("host-db")?;
    let as_agent = Cli {
        cluster: &cluster,
        cert: agent_cert,
        key: agent_key,
        port: cluster.collector_port,
    };
    let (code, _, err) = as_agent.run(&["hosts"])?;
    println!("agent certificate: exit {code}: {err}");
    assert_eq!(code, 77, "{err}");
    assert!(
        err.contains("operator") && err.lines().count() == 1,
        "{err}"
    );
    // An unreachable collector.
    let nowhere = Cli {
        cluster: &cluster,
        cert: op.cert.clone(),
        key: op.key.clone(),
        port: portolan_testkit::free_port()?,
    };
    let (code, _, err) = nowhere.run(&["hosts"])?;
    println!("unreachable collector: exit {code}: {err}");
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("collector") && err.lines().count() == 1,
        "{err}"
    );
    // A missing certificate file.
    let bad = Cli {
        cluster: &cluster,
        cert: Path::new("/nonexistent/op.pem").to_path_buf(),
        key: op.key.clone(),
        port: cluster.collector_port,
    };
    let (code, _, err) = bad.run(&["hosts"])?;
    println!("missing certificate: exit {code}: {err}");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/op.pem"), "{err}");
    Ok(())
}

/// The services that server reflection `grpc.reflection.v1` lists.
async fn reflected_services_v1(channel: tonic::transport::Channel) -> Result<Vec<String>> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.message().await?.context("no reflection answer")?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected reflection v1 answer {other:?}"),
    }
}

/// The services that server reflection `grpc.reflection.v1alpha` lists.
async fn reflected_services_v1alpha(channel: tonic::transport::Channel) -> Result<Vec<String>> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.message().await?.context("no reflection answer")?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected reflection v1alpha answer {other:?}"),
    }
}

/// The services Python's grpcio-reflection lists over mutual TLS
/// (`tools/grpc/list_services.py`), run by `PORTOLAN_PYTHON` or the project's virtualenv
/// (`just setup-python` installs it).
fn python_reflection(cluster: &Cluster, cert: &Path, key: &Path) -> Result<Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?;
    let python = std::env::var_os("PORTOLAN_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let output = Command::new(&python)
        .arg(root.join("tools/grpc/list_services.py"))
        .arg("--target")
        .arg(format!("127.0.0.1:{}", cluster.collector_port))
        .arg("--ca")
        .arg(cluster.pki.ca_path())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (run `just setup-python`, or set PORTOLAN_PYTHON to a Python with grpcio-reflection)",
                python.display()
            )
        })?;
    anyhow::ensure!(
        output.status.success(),
        "grpcio-reflection failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
