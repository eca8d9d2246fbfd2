//! Notifications against real HTTP receivers (the testkit's recording server on
//! 127.0.0.1): Alertmanager's v2 payloads, webhook documents, retries, a hanging
//! receiver, queue overflow, https with a CA file; and end to end, a real rule over real
//! data in a real ClickHouse opening and resolving a finding.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use portolan_collector::config::{AlertmanagerReceiver, NotifySection, WebhookReceiver};
use portolan_collector::notify::{Change, Evaluation, Event, Notice, Notifier, ReceiverStats};
use portolan_rules::lifecycle::{Finding, Match, Status};
use portolan_testkit::{Receiver, Recorded, Reply, eventually_async};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
}

/// Fast retries, so that the tests take milliseconds, not minutes.
fn section() -> NotifySection {
    NotifySection {
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_attempts: 5,
        ..NotifySection::default()
    }
}

fn alertmanager(receiver: &Receiver) -> AlertmanagerReceiver {
    AlertmanagerReceiver {
        url: receiver.url(),
        timeout: Duration::from_secs(5),
        labels: BTreeMap::from([("cluster".to_string(), "test".to_string())]),
        ..AlertmanagerReceiver::default()
    }
}

fn webhook(receiver: &Receiver) -> WebhookReceiver {
    WebhookReceiver {
        url: format!("{}/hooks/portolan", receiver.url()),
        timeout: Duration::from_secs(5),
        headers: BTreeMap::from([("Authorization".to_string(), "Bearer s3cret".to_string())]),
        ..WebhookReceiver::default()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn finding(fingerprint: &str, status: Status, at: u64) -> Finding {
    Finding {
        latest: Match {
            rule_id: "database-exposed".into(),
            host_id: "db-1".into(),
            fingerprint: fingerprint.into(),
            severity: "high".into(),
            subject: "tcp 0.0.0.0:5432 (postgres)".into(),
            evidence: "port=5432 scope=wildcard".into(),
        },
        status,
        first_seen: at - 60,
        last_seen: at,
        resolved_at: if status == Status::Resolved { at } else { 0 },
        reopened: 0,
    }
}

fn change(event: Event, finding: Finding) -> Change {
    Change {
        event,
        notice: Notice::new(finding),
    }
}

fn json(request: &Recorded) -> Result<Value> {
    serde_json::from_slice(&request.body).with_context(|| format!("not JSON: {}", request.text()))
}

fn seconds(value: &Value) -> Result<u64> {
    let text = value.as_str().context("not a string")?;
    let t = humantime::parse_rfc3339(text).with_context(|| format!("not RFC 3339: {text}"))?;
    Ok(t.duration_since(UNIX_EPOCH)?.as_secs())
}

/// Waits until receiver `index`'s figures satisfy `done`, and returns them.
async fn stats_when(
    notifier: &Notifier,
    index: usize,
    done: impl Fn(&ReceiverStats) -> bool,
) -> Result<ReceiverStats> {
    Ok(eventually_async!(timeout = WAIT, {
        let s = stats(notifier, index)?;
        if done(&s) {
            Ok(s)
        } else {
            Err(anyhow::anyhow!("{s:?}"))
        }
    }))
}

fn stats(notifier: &Notifier, index: usize) -> Result<ReceiverStats> {
    notifier
        .stats()
        .get(index)
        .cloned()
        .context("no such receiver")
}

#[tokio::test]
async fn alertmanager_gets_firing_then_resolved_alerts() -> Result<()> {
    init_tracing();
    let am = Receiver::start().await?;
    let notifier = Notifier::start(
        &NotifySection {
            alertmanager: vec![alertmanager(&am)],
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let t = now();
    let open = finding("00AA", Status::Open, t);
    notifier.notify(Evaluation {
        at: t,
        changes: vec![change(Event::Opened, open.clone())],
        open: vec![Notice::new(open.clone())],
    });
    eventually_async!(timeout = WAIT, am.count() == 1);
    let request = &am.requests()[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/api/v2/alerts")
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    let alerts = json(request)?;
    let alerts = alerts.as_array().context("an array of alerts")?;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    for (label, value) in [
        ("alertname", "database-exposed"),
        ("portolan_rule", "database-exposed"),
        ("severity", "high"),
        ("host_id", "db-1"),
        ("fingerprint", "00AA"),
        ("subject", "tcp 0.0.0.0:5432 (postgres)"),
        ("cluster", "test"),
    ] {
        assert_eq!(alert["labels"][label], value, "label {label} in {alert}");
    }
    for annotation in ["summary", "description", "evidence"] {
        assert!(
            alert["annotations"][annotation]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "annotation {annotation} in {alert}"
        );
    }
    assert_eq!(alert["annotations"]["evidence"], "port=5432 scope=wildcard");
    assert_eq!(seconds(&alert["startsAt"])?, open.first_seen);
    // Firing: valid for 4 × max(resend_interval 1m, interval 30s), so in the future.
    let ends = seconds(&alert["endsAt"])?;
    assert!(
        ends >= now() + 200 && ends <= now() + 241,
        "endsAt {ends}, now {}",
        now()
    );
    assert!(alert.get("generatorURL").is_some(), "{alert}");

    // Resolved: sent at once with endsAt = the resolution time.
    let t2 = t + 1;
    let mut resolved = finding("00AA", Status::Resolved, t2);
    resolved.first_seen = open.first_seen;
    notifier.notify(Evaluation {
        at: t2,
        changes: vec![change(Event::Resolved, resolved)],
        open: vec![],
    });
    eventually_async!(timeout = WAIT, am.count() == 2);
    let alerts = json(&am.requests()[1])?;
    let alerts = alerts.as_array().context("an array of alerts")?;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["fingerprint"], "00AA");
    assert_eq!(seconds(&alerts[0]["endsAt"])?, t2);
    assert_eq!(seconds(&alerts[0]["startsAt"])?, open.first_seen);
    assert_eq!(stats(&notifier, 0)?.delivered, 2);
    Ok(())
}

#[tokio::test]
async fn webhooks_get_one_document_per_change_in_order() -> Result<()> {
    init_tracing();
    let hook = Receiver::start().await?;
    let notifier = Notifier::start(
        &NotifySection {
            webhook: vec![webhook(&hook)],
            external_url: "https://grafana.example/d/findings?var-fingerprint={fingerprint}".into(),
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let t = now();
    let opened = finding("00BB", Status::Open, t);
    let mut resolved = finding("00BB", Status::Resolved, t + 10);
    resolved.first_seen = opened.first_seen;
    let mut reopened = finding("00BB", Status::Open, t + 20);
    reopened.first_seen = opened.first_seen;
    reopened.reopened = 1;
    for (at, c) in [
        (t, change(Event::Opened, opened.clone())),
        (t + 10, change(Event::Resolved, resolved)),
        (t + 20, change(Event::Reopened, reopened)),
    ] {
        notifier.notify(Evaluation {
            at,
            changes: vec![c],
            open: vec![],
        });
    }
    eventually_async!(timeout = WAIT, hook.count() == 3);
    let requests = hook.requests();
    let documents: Vec<Value> = requests.iter().map(json).collect::<Result<_>>()?;
    let events: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["event"].as_str())
        .collect();
    assert_eq!(events, ["opened", "resolved", "reopened"]);
    for (r, d) in requests.iter().zip(&documents) {
        assert_eq!(r.path, "/hooks/portolan");
        assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(d["version"], 1);
        assert_eq!(d["finding"]["fingerprint"], "00BB");
        assert_eq!(d["finding"]["rule_id"], "database-exposed");
        assert_eq!(d["finding"]["severity"], "high");
        assert_eq!(d["finding"]["host_id"], "db-1");
        assert_eq!(d["finding"]["subject"], "tcp 0.0.0.0:5432 (postgres)");
        assert_eq!(d["finding"]["evidence"], "port=5432 scope=wildcard");
        assert_eq!(seconds(&d["finding"]["first_seen"])?, opened.first_seen);
        assert_eq!(
            d["link"],
            "https://grafana.example/d/findings?var-fingerprint=00BB"
        );
    }
    let statuses: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["finding"]["status"].as_str())
        .collect();
    assert_eq!(statuses, ["open", "resolved", "open"]);
    assert_eq!(documents[0]["finding"]["resolved_at"], Value::Null);
    assert_eq!(seconds(&documents[1]["finding"]["resolved_at"])?, t + 10);
    assert_eq!(documents[2]["finding"]["reopened"], 1);
    assert_eq!(seconds(&documents[2]["at"])?, t + 20);
    // Ids are distinct per event, for deduplication.
    assert_ne!(documents[0]["id"], documents[2]["id"]);
    Ok(())
}

#[tokio::test]
async fn a_receiver_answering_503_twice_then_200_gets_the_notification() -> Result<()> {
    init_tracing();
    let hook = Receiver::start().await?;
    hook.then([Reply::status(503), Reply::status(503)]);
    let notifier = Notifier::start(
        &NotifySection {
            webhook: vec![webhook(&hook)],
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let t = now();
    notifier.notify(Evaluation {
        at: t,
        changes: vec![change(Event::Opened, finding("00CC", Status::Open, t))],
        open: vec![],
    });
    let s = stats_when(&notifier, 0, |s| s.delivered == 1).await?;
    assert_eq!((s.retried, s.failed, s.dropped), (2, 0, 0), "{s:?}");
    let bodies: Vec<String> = hook.requests().iter().map(Recorded::text).collect();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "the same document each time"
    );
    Ok(())
}

#[tokio::test]
async fn a_4xx_answer_is_not_retried_and_a_dead_receiver_is_given_up() -> Result<()> {
    init_tracing();
    let rejecting = Receiver::start().await?;
    rejecting.set_default(Reply::status(400).with_body("unknown field `foo`"));
    // A port nothing listens on: connection refused every time.
    let dead = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let dead_url = format!("http://{}", dead.local_addr()?);
    drop(dead);
    let notifier = Notifier::start(
        &NotifySection {
            webhook: vec![
                webhook(&rejecting),
                WebhookReceiver {
                    url: dead_url,
                    ..WebhookReceiver::default()
                },
            ],
            max_attempts: 3,
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let t = now();
    notifier.notify(Evaluation {
        at: t,
        changes: vec![change(Event::Opened, finding("00DD", Status::Open, t))],
        open: vec![],
    });
    let s = stats_when(&notifier, 0, |s| s.failed == 1).await?;
    assert_eq!((s.delivered, s.retried), (0, 0), "{s:?}");
    assert_eq!(rejecting.count(), 1, "a 400 is not retried");
    let s = stats_when(&notifier, 1, |s| s.failed == 1).await?;
    assert_eq!((s.delivered, s.retried), (0, 2), "3 attempts: {s:?}");
    Ok(())
}

#[tokio::test]
async fn a_hanging_receiver_delays_neither_the_evaluator_nor_other_receivers() -> Result<()> {
    init_tracing();
    let hanging = Receiver::start().await?;
    hanging.set_default(Reply::held());
    let good_am = Receiver::start().await?;
    let good_hook = Receiver::start().await?;
    let notifier = Notifier::start(
        &NotifySection {
            alertmanager: vec![
                AlertmanagerReceiver {
                    timeout: Duration::from_secs(60),
                    ..alertmanager(&hanging)
                },
                alertmanager(&good_am),
            ],
            webhook: vec![
                WebhookReceiver {
                    timeout: Duration::from_secs(60),
                    ..webhook(&hanging)
                },
                webhook(&good_hook),
            ],
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let t = now();
    for round in 0..5 {
        let f = finding(&format!("01{round:02}"), Status::Open, t);
        let started = Instant::now();
        notifier.notify(Evaluation {
            at: t,
            changes: vec![change(Event::Opened, f.clone())],
            open: vec![Notice::new(f)],
        });
        let took = started.elapsed();
        assert!(took < Duration::from_millis(200), "notify took {took:?}");
    }
    eventually_async!(timeout = WAIT, good_hook.count() == 5);
    eventually_async!(timeout = WAIT, {
        // The last batch holds every open finding of the last round.
        let last = good_am.requests().last().map(json).transpose()?;
        match last.as_ref().and_then(Value::as_array) {
            Some(alerts) if alerts.len() == 1 && alerts[0]["labels"]["fingerprint"] == "0104" => {
                Ok(())
            }
            other => Err(anyhow::anyhow!("last batch {other:?}")),
        }
    });
    // The hanging receiver got the first requests and still holds them.
    eventually_async!(timeout = WAIT, hanging.count() == 2);
    let held = notifier.stats();
    assert_eq!((held[0].delivered, held[2].delivered), (0, 0), "{held:?}");
    hanging.release();
    Ok(())
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_them() -> Result<()> {
    init_tracing();
    let hook = Receiver::start().await?;
    hook.set_default(Reply::held());
    let notifier = Notifier::start(
        &NotifySection {
            webhook: vec![WebhookReceiver {
                timeout: Duration::from_secs(60),
                ..webhook(&hook)
            }],
            queue_size: 2,
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let t = now();
    let evaluation = |n: u32| Evaluation {
        at: t,
        changes: vec![change(
            Event::Opened,
            finding(&format!("02{n:02}"), Status::Open, t),
        )],
        open: vec![],
    };
    notifier.notify(evaluation(1));
    // The first is in flight (held by the receiver), so the queue is empty again.
    eventually_async!(timeout = WAIT, hook.count() == 1);
    for n in 2..=5 {
        notifier.notify(evaluation(n));
    }
    let s = stats(&notifier, 0)?;
    assert_eq!((s.dropped, s.queued), (2, 2), "{s:?}");
    hook.release();
    eventually_async!(timeout = WAIT, hook.count() == 3);
    let fingerprints: Vec<String> = hook
        .requests()
        .iter()
        .map(|r| Ok(json(r)?["finding"]["fingerprint"].to_string()))
        .collect::<Result<_>>()?;
    assert_eq!(fingerprints, ["\"0201\"", "\"0204\"", "\"0205\""]);
    let s = stats_when(&notifier, 0, |s| s.delivered == 3).await?;
    assert_eq!((s.dropped, s.queued, s.failed), (2, 0, 0), "{s:?}");
    Ok(())
}

#[tokio::test]
async fn https_receivers_are_verified_against_the_configured_ca() -> Result<()> {
    init_tracing();
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir()?;
    let ca = portolan_tls::pki::Ca::generate("notify test ca")?;
    let issued = ca.issue_collector(
        "receiver",
        &["localhost".to_string()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        Duration::from_secs(3600),
    )?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(portolan_tls::crypto_provider())
        .with_protocol_versions(portolan_tls::PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let hook = Receiver::start_tls(Arc::new(config)).await?;
    assert!(
        hook.url().starts_with("https://127.0.0.1:"),
        "{}",
        hook.url()
    );

    let notifier = Notifier::start(
        &NotifySection {
            webhook: vec![
                WebhookReceiver {
                    ca: ca_file.display().to_string(),
                    ..webhook(&hook)
                },
                // The system's CAs do not know the test CA: refused, never delivered.
                WebhookReceiver {
                    ca: String::new(),
                    ..webhook(&hook)
                },
            ],
            max_attempts: 2,
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let t = now();
    notifier.notify(Evaluation {
        at: t,
        changes: vec![change(Event::Opened, finding("03AA", Status::Open, t))],
        open: vec![],
    });
    eventually_async!(timeout = WAIT, {
        let s = notifier.stats();
        if s.len() == 2 && s[0].delivered == 1 && s[1].failed == 1 {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{s:?}"))
        }
    });
    assert_eq!(
        hook.count(),
        1,
        "only the receiver that trusts the CA got through"
    );
    assert_eq!(json(&hook.requests()[0])?["finding"]["fingerprint"], "03AA");

    // A `ca` file that is not there is a start-up error naming it.
    let err = Notifier::start(
        &NotifySection {
            webhook: vec![WebhookReceiver {
                ca: dir.path().join("missing.pem").display().to_string(),
                ..webhook(&hook)
            }],
            ..section()
        },
        Duration::from_secs(30),
    )
    .err()
    .context("a missing CA file is refused")?;
    ensure!(err.to_string().contains("missing.pem"), "{err}");
    Ok(())
}

/// End to end: the default rule pack over data written to a real ClickHouse opens
/// `database-exposed`; Alertmanager gets it firing and the webhook gets `opened`, while a
/// third receiver hangs without slowing the evaluation; the listener goes away, the
/// finding resolves, and both receivers hear of it; it returns and the webhook gets
/// `reopened`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_from_real_rules_reach_alertmanager_and_webhooks() -> Result<()> {
    use portolan_collector::evaluate::{Evaluator, load_rules};
    use portolan_core::{
        Attribution, HostState, InterfaceAddress, Inventory, Process, Protocol, ScanStats, Scope,
        Socket, SocketKey, SocketState, diff,
    };
    use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
    use portolan_store::{ChangeKind, HostRecord};

    init_tracing();
    let inventory = |postgres: Option<u64>| {
        let mut inv = Inventory {
            host: HostState {
                interfaces: vec![InterfaceAddress {
                    interface: "eth0".into(),
                    address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
                    prefix_len: 24,
                    netns: 0,
                }],
                ephemeral_ports: Some((32768, 60999)),
            },
            ..Inventory::default()
        };
        if let Some(inode) = postgres {
            let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            let socket = Socket {
                key: SocketKey {
                    protocol: Protocol::Tcp,
                    local_address: any,
                    local_port: 5432,
                    remote_address: any,
                    remote_port: 0,
                    inode,
                    netns: 0,
                },
                state: SocketState::Listen,
                uid: 0,
                pids: vec![4242],
                attribution: Attribution::Owned,
                scope: Scope::Wildcard,
                exposure: Scope::Private,
                path: String::new(),
            };
            inv.sockets.insert(socket.key, socket);
            inv.processes.insert(
                4242,
                Process {
                    pid: 4242,
                    name: "postgres".into(),
                    executable: "/usr/bin/postgres".into(),
                    ..Process::default()
                },
            );
        }
        inv
    };

    let dir = tempfile::tempdir()?;
    let clickhouse = ManagedClickHouse::start(ManagedOptions {
        state_dir: dir.path().to_path_buf(),
        binary: None,
    })
    .await?;
    let store = clickhouse.migrated_store("notify").await?;
    let store = Arc::new(store);
    store
        .upsert_host(&HostRecord {
            host_id: "db-1".into(),
            hostname: "db-1.example".into(),
            labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            agent_version: "test".into(),
            kernel: String::new(),
            os: String::new(),
            scan_interval_ms: 10_000,
            collector: "test".into(),
            host: inventory(None).host,
        })
        .await?;
    let empty = inventory(None);
    let mut seq = 1;
    let mut write = async |kind: ChangeKind, from: &Inventory, to: &Inventory| {
        seq += 1;
        store
            .write_change(
                "db-1",
                seq,
                kind,
                SystemTime::now(),
                &diff(from, to),
                &ScanStats::default(),
            )
            .await
    };
    write(ChangeKind::Snapshot, &Inventory::default(), &empty).await?;

    let am = Receiver::start().await?;
    let hook = Receiver::start().await?;
    let hanging = Receiver::start().await?;
    hanging.set_default(Reply::held());
    let notifier = Notifier::start(
        &NotifySection {
            alertmanager: vec![alertmanager(&am)],
            webhook: vec![
                webhook(&hook),
                WebhookReceiver {
                    timeout: Duration::from_secs(120),
                    ..webhook(&hanging)
                },
            ],
            ..section()
        },
        Duration::from_secs(30),
    )?;
    let rules =
        load_rules(&[std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/rules/default.yaml")])
        .map_err(anyhow::Error::msg)?;
    let evaluator = Evaluator::new(store.clone(), rules).with_notifier(notifier);

    // postgres on a wildcard address: `database-exposed` opens.
    let with = inventory(Some(100));
    write(ChangeKind::Delta, &empty, &with).await?;
    let report = evaluator.evaluate_once().await?;
    println!("evaluation 1: {report:?}");
    assert!(report.opened >= 1, "{report:?}");
    let db = store
        .findings()
        .await?
        .into_iter()
        .find(|f| f.latest.rule_id == "database-exposed")
        .context("database-exposed opened")?;
    let fingerprint = db.latest.fingerprint.clone();

    let firing = eventually_async!(timeout = WAIT, {
        let alerts = am.requests().iter().map(json).collect::<Result<Vec<_>>>()?;
        alerts
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .find(|a| a["labels"]["fingerprint"] == fingerprint.as_str())
            .cloned()
            .context("no alert for the finding yet")
    });
    assert_eq!(firing["labels"]["alertname"], "database-exposed");
    assert_eq!(firing["labels"]["hostname"], "db-1.example", "{firing}");
    assert_eq!(firing["labels"]["host_id"], "db-1");
    assert_eq!(firing["labels"]["severity"], db.latest.severity.as_str());
    assert!(seconds(&firing["endsAt"])? > now(), "firing: {firing}");
    assert_eq!(seconds(&firing["startsAt"])?, db.first_seen);
    let description = firing["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !description.starts_with("Rule "),
        "the rule's own description: {description}"
    );

    let event_of = |receiver: &Receiver, event: &str| -> Result<Value> {
        for r in receiver.requests() {
            let d = json(&r)?;
            if d["event"] == event && d["finding"]["fingerprint"] == fingerprint.as_str() {
                return Ok(d);
            }
        }
        bail!(
            "no `{event}` document for {fingerprint} among {} requests",
            receiver.count()
        )
    };
    let opened = eventually_async!(timeout = WAIT, event_of(&hook, "opened"));
    assert_eq!(opened["finding"]["status"], "open");
    assert_eq!(opened["finding"]["hostname"], "db-1.example");
    // The hanging receiver got its first document and holds it: evaluation went on.
    eventually_async!(timeout = WAIT, hanging.count() == 1);

    // The listener closes: resolved. The hanging receiver does not slow the evaluation.
    write(ChangeKind::Delta, &with, &empty).await?;
    let started = Instant::now();
    let report = evaluator.evaluate_once().await?;
    let took = started.elapsed();
    println!("evaluation 2: {report:?} in {took:?}");
    assert!(report.resolved >= 1, "{report:?}");
    assert!(
        took < Duration::from_secs(10),
        "evaluate_once took {took:?} with a hanging receiver"
    );
    let resolved_at = store
        .findings()
        .await?
        .into_iter()
        .find(|f| f.latest.fingerprint == fingerprint)
        .context("kept after resolving")?
        .resolved_at;
    let resolved = eventually_async!(timeout = WAIT, {
        let last = am.requests().last().map(json).transpose()?;
        last.as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| {
                a["labels"]["fingerprint"] == fingerprint.as_str()
                    && seconds(&a["endsAt"]).ok() == Some(resolved_at)
            })
            .cloned()
            .context("no resolved alert in the last batch yet")
    });
    assert!(seconds(&resolved["endsAt"])? <= now());
    let gone = eventually_async!(timeout = WAIT, event_of(&hook, "resolved"));
    assert_eq!(seconds(&gone["finding"]["resolved_at"])?, resolved_at);

    // It returns: reopened, to the webhook; firing again, to Alertmanager.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = inventory(Some(200));
    write(ChangeKind::Delta, &empty, &back).await?;
    let report = evaluator.evaluate_once().await?;
    assert!(report.reopened >= 1, "{report:?}");
    let again = eventually_async!(timeout = WAIT, event_of(&hook, "reopened"));
    assert_eq!(again["finding"]["reopened"], 1);
    eventually_async!(timeout = WAIT, {
        let last = am.requests().last().map(json).transpose()?;
        let firing_again = last
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["fingerprint"] == fingerprint.as_str()
                    && seconds(&a["endsAt"]).is_ok_and(|e| e > now())
            });
        ensure!(firing_again, "not firing again in the last batch");
        Ok::<_, anyhow::Error>(())
    });
    let stats = evaluator.notifier().context("a notifier")?.stats();
    println!("{stats:#?}");
    assert_eq!((stats[0].failed, stats[1].failed), (0, 0), "{stats:?}");
    assert_eq!(
        stats[2].delivered, 0,
        "the hanging receiver delivered nothing"
    );
    hanging.release();
    drop(evaluator);
    clickhouse.shutdown().await?;
    Ok(())
}
