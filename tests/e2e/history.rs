//! The query API's past and live RPCs over real mutual TLS, against a real collector,
//! ClickHouse and an agent in a namespace host: what was open at an instant (not what
//! is open now), the history of a port, a new listener streamed within seconds, paging
//! that returns every row once, and acknowledgements that only admins may give.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use portolan_core::{HostState, Protocol};
use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_client::QueryServiceClient;
use portolan_store::HostRecord;
use portolan_testkit::{Lab, SocketFixture, eventually_async, fixture_binary};
use portolan_tls::OperatorRole;
use portolan_tls::pki::WriteMode;
use tonic::transport::Channel;

use crate::support::{Cluster, Limits};

/// A query client over mutual TLS with the certificate `cert`/`key`.
async fn client(
    cluster: &Cluster,
    cert: PathBuf,
    key: PathBuf,
) -> Result<QueryServiceClient<Channel>> {
    let tls = portolan_tls::client_config(&portolan_tls::TlsFiles {
        ca: cluster.pki.ca_path(),
        cert,
        key,
    })?;
    let channel = portolan_tls::connect(
        &format!("https://127.0.0.1:{}", cluster.collector_port),
        tls,
        portolan_tls::ConnectOptions::default(),
    )
    .await?;
    Ok(QueryServiceClient::new(channel))
}

/// A client with a fresh operator certificate of `role`; returns its identity URI too.
async fn operator(
    cluster: &Cluster,
    name: &str,
    role: OperatorRole,
) -> Result<(QueryServiceClient<Channel>, String)> {
    let written = cluster
        .pki
        .ca
        .issue_operator(name, role, Duration::from_secs(3600))?
        .write_files(
            &cluster.pki.dir,
            &format!("operator-{name}"),
            WriteMode::Overwrite,
        )?;
    let uri = format!("spiffe://portolan/operator/{}/{name}", role.as_str());
    Ok((client(cluster, written.cert, written.key).await?, uri))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn local_port(s: &pb::HostSocket) -> u32 {
    s.socket.as_ref().map_or(0, |s| s.local_port)
}

fn socket_key_of(s: &pb::HostSocket) -> Result<String> {
    let socket = s.socket.clone().context("a socket without socket")?;
    let socket = portolan_core::Socket::try_from(socket)
        .map_err(|e| anyhow::anyhow!("undecodable socket: {e}"))?;
    Ok(socket.key.to_string())
}

fn event_port(e: &pb::HostEvent) -> u32 {
    match &e.subject {
        Some(pb::host_event::Subject::Socket(s)) => s.local_port,
        Some(pb::host_event::Subject::Flow(f)) => f.service_port,
        None => 0,
    }
}

fn selector(host_id: &str) -> Option<pb::HostSelector> {
    Some(pb::HostSelector {
        host_ids: vec![host_id.to_string()],
        ..pb::HostSelector::default()
    })
}

/// Every socket of a ListSockets request, page by page; fails on a socket seen twice.
async fn all_socket_pages(
    client: &mut QueryServiceClient<Channel>,
    request: pb::ListSocketsRequest,
) -> Result<(Vec<String>, usize)> {
    let mut request = request;
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.list_sockets(request.clone()).await?.into_inner();
        pages += 1;
        ensure!(
            page.sockets.len() <= request.page_size.max(1) as usize,
            "a page of {} sockets for page_size {}",
            page.sockets.len(),
            request.page_size
        );
        ensure!(page.truncated == !page.next_page_token.is_empty());
        for s in &page.sockets {
            keys.push(socket_key_of(s)?);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
        ensure!(pages < 1000, "paging does not end");
    }
    let unique: BTreeSet<&String> = keys.iter().collect();
    ensure!(unique.len() == keys.len(), "a socket came twice: {keys:?}");
    Ok((keys, pages))
}

/// The next events of a host watch, failing after `timeout`.
async fn next_events(
    stream: &mut tonic::Streaming<pb::WatchHostResponse>,
    timeout: Duration,
) -> Result<Vec<pb::HostEvent>> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(Some(m))) => Ok(m.events),
        Ok(Ok(None)) => bail!("the watch stream ended"),
        Ok(Err(status)) => bail!("the watch stream failed: {status}"),
        Err(_) => bail!("no events within {timeout:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_answers_what_was_open_then_and_watches_stream_what_opens_now() -> Result<()> {
    let lab = Lab::new("hist")?;
    let host = lab.add_host("h")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start("history", &[bridge], Limits::default()).await?;
    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    let (l7001, _) = fixture.listen(Protocol::Tcp, "0.0.0.0:7001".parse()?)?;
    let (l7002, _) = fixture.listen(Protocol::Tcp, "0.0.0.0:7002".parse()?)?;
    fixture.listen(Protocol::Tcp, "[::]:7003".parse()?)?;
    fixture.listen(Protocol::Udp, host.ipv4_addr(7004))?;
    fixture.listen(Protocol::Udp, "[::]:7010".parse()?)?;
    fixture.listen(Protocol::Tcp, "127.0.0.1:7011".parse()?)?;
    let host_id = "host-hist";
    let _agent = cluster.spawn_agent(
        Some(&host),
        host_id,
        SocketAddr::new(bridge, cluster.collector_port),
        Duration::from_secs(1),
        &[("env", "test")],
    )?;
    let store = &cluster.store;
    let ports_stored = async |want: &[u16], gone: &[u16]| -> Result<BTreeSet<String>, String> {
        let sockets = store
            .current_sockets(host_id)
            .await
            .map_err(|e| e.to_string())?;
        let ports: BTreeSet<u16> = sockets.iter().map(|s| s.socket.key.local_port).collect();
        if want.iter().all(|p| ports.contains(p)) && !gone.iter().any(|p| ports.contains(p)) {
            Ok(sockets.iter().map(|s| s.socket.key.to_string()).collect())
        } else {
            Err(format!("stored ports {ports:?}"))
        }
    };
    let then = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(250),
        ports_stored(&[7001, 7002, 7003, 7004, 7010, 7011], &[]).await
    );
    // T: everything stored so far was scanned at or before it. Changes start in the
    // next second, so that history tells them apart at second precision.
    let t = now_unix();
    eventually_async!(
        timeout = Duration::from_secs(5),
        interval = Duration::from_millis(50),
        if now_unix() > t {
            Ok(())
        } else {
            Err("same second")
        }
    );
    fixture.close(l7001)?;
    fixture.close(l7002)?;
    fixture.listen(Protocol::Tcp, "0.0.0.0:7005".parse()?)?;
    let now = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(250),
        ports_stored(&[7003, 7004, 7005], &[7001, 7002]).await
    );
    assert_ne!(then, now);

    let (mut reader, _) = operator(&cluster, "reader", OperatorRole::Reader).await?;

    // GetSnapshot at T: exactly what was stored then, not what is open now.
    let snap = reader
        .get_snapshot(pb::GetSnapshotRequest {
            host_id: host_id.into(),
            at_unix: t,
        })
        .await?
        .into_inner();
    let keys: BTreeSet<String> = snap
        .sockets
        .iter()
        .map(socket_key_of)
        .collect::<Result<_>>()?;
    assert_eq!(keys, then, "the sockets at T");
    let ports: BTreeSet<u32> = snap.sockets.iter().map(local_port).collect();
    assert!(
        [7001, 7002, 7003, 7004].iter().all(|p| ports.contains(p)) && !ports.contains(&7005),
        "ports at T: {ports:?}"
    );
    assert!(
        snap.seq > 0 && snap.seq_at_unix <= t,
        "{} at {}",
        snap.seq,
        snap.seq_at_unix
    );
    assert_eq!(
        snap.host.as_ref().map(|h| h.host_id.as_str()),
        Some(host_id)
    );
    assert!(
        snap.state
            .as_ref()
            .is_some_and(|s| !s.interfaces.is_empty()),
        "host facts at T"
    );
    let current = reader
        .get_snapshot(pb::GetSnapshotRequest {
            host_id: host_id.into(),
            at_unix: 0,
        })
        .await?
        .into_inner();
    let keys: BTreeSet<String> = current
        .sockets
        .iter()
        .map(socket_key_of)
        .collect::<Result<_>>()?;
    assert_eq!(keys, now, "the sockets now");
    let missing = reader
        .get_snapshot(pb::GetSnapshotRequest {
            host_id: "no-such-host".into(),
            at_unix: t,
        })
        .await
        .expect_err("unknown host");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // ListSockets at T, two per page: the same sockets, each once.
    let (past, pages) = all_socket_pages(
        &mut reader,
        pb::ListSocketsRequest {
            hosts: selector(host_id),
            at_unix: t,
            page_size: 2,
            ..pb::ListSocketsRequest::default()
        },
    )
    .await?;
    assert_eq!(past.into_iter().collect::<BTreeSet<_>>(), then);
    assert!(pages >= 2, "{pages} pages");
    // And now, across the fleet.
    let (present, pages) = all_socket_pages(
        &mut reader,
        pb::ListSocketsRequest {
            page_size: 2,
            ..pb::ListSocketsRequest::default()
        },
    )
    .await?;
    println!(
        "ListSockets page_size 2: {} sockets in {pages} pages",
        present.len()
    );
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(present.into_iter().collect::<BTreeSet<_>>(), now);

    // ListHosts and ListFindings page too: two more hosts and five findings, written
    // straight into ClickHouse (the collector reads whatever is there).
    for id in ["zz-1", "zz-2"] {
        cluster
            .store
            .upsert_host(&HostRecord {
                host_id: id.into(),
                hostname: id.into(),
                labels: Default::default(),
                agent_version: "test".into(),
                kernel: String::new(),
                os: String::new(),
                scan_interval_ms: 1000,
                collector: "test".into(),
                host: HostState::default(),
            })
            .await?;
    }
    let mut request = pb::ListHostsRequest {
        page_size: 1,
        ..pb::ListHostsRequest::default()
    };
    let mut hosts = Vec::new();
    loop {
        let page = reader.list_hosts(request.clone()).await?.into_inner();
        assert!(page.hosts.len() <= 1);
        hosts.extend(page.hosts.into_iter().map(|h| h.host_id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(hosts, [host_id, "zz-1", "zz-2"]);
    for (i, severity) in ["low", "critical", "high", "high", "info"]
        .iter()
        .enumerate()
    {
        cluster
            .store
            .client()
            .query(
                "INSERT INTO findings (fingerprint, rule_id, host_id, severity, subject, evidence, \
                 status, first_seen, last_seen, resolved_at, reopened, version) \
                 VALUES (?, 'e2e', ?, ?, ?, '', 'open', ?, ?, 0, 0, 1)",
            )
            .bind(format!("{i:016X}"))
            .bind(if i % 2 == 0 { "zz-1" } else { host_id })
            .bind(*severity)
            .bind(format!("finding {i}"))
            .bind(t)
            .bind(t)
            .execute()
            .await?;
    }
    let mut request = pb::ListFindingsRequest {
        page_size: 2,
        ..pb::ListFindingsRequest::default()
    };
    let mut findings = Vec::new();
    loop {
        let page = reader.list_findings(request.clone()).await?.into_inner();
        assert!(page.findings.len() <= 2);
        findings.extend(page.findings.into_iter().map(|f| f.severity));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(findings, ["critical", "high", "high", "low", "info"]);
    // And flows, one per page (the agent's stream to the collector is one).
    let mut request = pb::ListFlowsRequest {
        page_size: 1,
        ..pb::ListFlowsRequest::default()
    };
    let mut flows = 0;
    loop {
        let page = reader.list_flows(request.clone()).await?.into_inner();
        assert!(page.flows.len() <= 1);
        flows += page.flows.len();
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let stored_flows = cluster.store.current_flows(host_id).await?.len();
    assert!(stored_flows >= 1);
    assert_eq!(flows, stored_flows);

    // Page tokens belong to their request.
    let first = reader
        .list_sockets(pb::ListSocketsRequest {
            page_size: 2,
            ..pb::ListSocketsRequest::default()
        })
        .await?
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    for (token, listening, what) in [
        ("not-a-token".to_string(), false, "a made-up token"),
        (
            first.next_page_token.clone(),
            true,
            "a token of other filters",
        ),
    ] {
        let status = reader
            .list_sockets(pb::ListSocketsRequest {
                page_size: 2,
                page_token: token,
                listening,
                ..pb::ListSocketsRequest::default()
            })
            .await
            .expect_err(what);
        println!("{what}: {status:?}");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
        assert!(
            status.message().contains("`page_token`"),
            "{}",
            status.message()
        );
    }

    // The history of port 7001: added before T, removed after it; newest first.
    let history = reader
        .list_events(pb::ListEventsRequest {
            host_id: host_id.into(),
            port: 7001,
            ..pb::ListEventsRequest::default()
        })
        .await?
        .into_inner();
    let kinds: Vec<(i32, bool)> = history
        .events
        .iter()
        .map(|e| (e.kind, e.at_unix <= t))
        .collect();
    assert_eq!(
        kinds,
        [
            (pb::EventKind::Removed as i32, false),
            (pb::EventKind::Added as i32, true)
        ],
        "{history:?}"
    );
    // Everything since T, oldest first, one event per page.
    let mut request = pb::ListEventsRequest {
        host_id: host_id.into(),
        from_unix: t + 1,
        order: pb::EventOrder::OldestFirst as i32,
        page_size: 1,
        ..pb::ListEventsRequest::default()
    };
    let mut since = Vec::new();
    loop {
        let page = reader.list_events(request.clone()).await?.into_inner();
        assert!(page.events.len() <= 1);
        since.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert!(
        since.windows(2).all(|w| w[0].seq <= w[1].seq),
        "oldest first"
    );
    assert!(since.iter().all(|e| e.at_unix > t), "{since:?}");
    let changes: BTreeSet<(i32, u32)> = since.iter().map(|e| (e.kind, event_port(e))).collect();
    for want in [
        (pb::EventKind::Removed as i32, 7001),
        (pb::EventKind::Removed as i32, 7002),
        (pb::EventKind::Added as i32, 7005),
    ] {
        assert!(changes.contains(&want), "{want:?} in {changes:?}");
    }

    // WatchHost: a new listener is streamed within a few seconds of opening.
    let mut watch = reader
        .watch_host(pb::WatchHostRequest {
            host_id: host_id.into(),
            poll_interval_ms: 1000,
            ..pb::WatchHostRequest::default()
        })
        .await?
        .into_inner();
    let opened = Instant::now();
    fixture.listen(Protocol::Tcp, "0.0.0.0:7006".parse()?)?;
    let event = loop {
        let events = next_events(&mut watch, Duration::from_secs(15)).await?;
        if let Some(e) = events
            .into_iter()
            .find(|e| event_port(e) == 7006 && e.kind == pb::EventKind::Added as i32)
        {
            break e;
        }
    };
    let latency = opened.elapsed();
    println!("WatchHost: listener 7006 streamed {latency:?} after it opened (scan 1 s, poll 1 s)");
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    assert_eq!(event.host_id, host_id);
    assert!(event.seq > snap.seq && !event.key.is_empty());

    // Watch streams are bounded per collector, and a stream whose client goes away
    // gives its place back.
    let mut more = Vec::new();
    let refused = loop {
        let request = pb::WatchHostRequest {
            host_id: host_id.into(),
            poll_interval_ms: 60_000,
            ..pb::WatchHostRequest::default()
        };
        match reader.watch_host(request).await {
            Ok(stream) => more.push(stream.into_inner()),
            Err(status) => break status,
        }
        assert!(more.len() < 200, "no bound on watch streams");
    };
    println!(
        "watch streams: {} accepted, then {refused:?}",
        more.len() + 1
    );
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    drop(watch);
    eventually_async!(
        timeout = Duration::from_secs(10),
        interval = Duration::from_millis(200),
        {
            let mut c = reader.clone();
            let request = pb::WatchHostRequest {
                host_id: host_id.into(),
                poll_interval_ms: 60_000,
                ..pb::WatchHostRequest::default()
            };
            c.watch_host(request)
                .await
                .map(|s| drop(s.into_inner()))
                .map_err(|s| s.to_string())
        }
    );
    drop(more);
    eventually_async!(
        timeout = Duration::from_secs(10),
        interval = Duration::from_millis(200),
        {
            let log = cluster.collector_log();
            let ended = log
                .matches("host watch ended: the client went away")
                .count();
            if ended >= 10 {
                Ok(())
            } else {
                Err(format!("{ended} host watches ended"))
            }
        }
    );
    Ok(())
}

/// The next finding change of a watch, skipping none.
async fn next_change(
    stream: &mut tonic::Streaming<pb::WatchFindingsResponse>,
    timeout: Duration,
) -> Result<pb::WatchFindingsResponse> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => bail!("the watch stream ended"),
        Ok(Err(status)) => bail!("the watch stream failed: {status}"),
        Err(_) => bail!("no finding change within {timeout:?}"),
    }
}

async fn expect_change(
    stream: &mut tonic::Streaming<pb::WatchFindingsResponse>,
    want: pb::FindingChange,
) -> Result<pb::Finding> {
    let m = next_change(stream, Duration::from_secs(30)).await?;
    ensure!(
        m.change == want as i32,
        "expected {want:?}, got {:?}",
        pb::FindingChange::try_from(m.change)
    );
    m.finding.context("a change without its finding")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_are_acknowledged_by_admins_only_and_watched_live() -> Result<()> {
    let lab = Lab::new("acks")?;
    let host = lab.add_host("h")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let rules = "rules:\n  - id: e2e-port-7100\n    kind: listener\n    severity: high\n    sockets: {ports: [7100]}\n";
    let limits = Limits {
        rules: Some(rules.into()),
        ..Limits::default()
    };
    let cluster = Cluster::start("acks", &[bridge], limits).await?;
    let (mut reader, _) = operator(&cluster, "reader", OperatorRole::Reader).await?;
    let (mut admin, admin_uri) = operator(&cluster, "alice", OperatorRole::Admin).await?;
    let (agent_cert, agent_key) = cluster.pki.agent("host-acks")?;
    let mut as_agent = client(&cluster, agent_cert, agent_key).await?;

    // Watch before anything opens: the (empty) listing, then the opening.
    let mut watch = reader
        .watch_findings(pb::WatchFindingsRequest {
            initial: true,
            poll_interval_ms: 1000,
            ..pb::WatchFindingsRequest::default()
        })
        .await?
        .into_inner();
    let synced = next_change(&mut watch, Duration::from_secs(10)).await?;
    assert_eq!(
        synced.change,
        pb::FindingChange::Synced as i32,
        "{synced:?}"
    );

    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    let (listener, _) = fixture.listen(Protocol::Tcp, "0.0.0.0:7100".parse()?)?;
    let _agent = cluster.spawn_agent(
        Some(&host),
        "host-acks",
        SocketAddr::new(bridge, cluster.collector_port),
        Duration::from_secs(1),
        &[],
    )?;
    let finding = expect_change(&mut watch, pb::FindingChange::Opened).await?;
    assert_eq!(
        (
            finding.rule_id.as_str(),
            finding.host_id.as_str(),
            finding.ack.is_none()
        ),
        ("e2e-port-7100", "host-acks", true)
    );
    let fingerprint = finding.fingerprint.clone();

    // Only admins acknowledge; the payload cannot say who.
    let until = now_unix() + 3600;
    let ack = |reason: &str, until_unix: i64| pb::AckFindingRequest {
        fingerprint: fingerprint.clone(),
        reason: reason.into(),
        until_unix,
    };
    for (who, client) in [("reader", &mut reader), ("agent", &mut as_agent)] {
        let status = client
            .ack_finding(ack("not mine to say", until))
            .await
            .expect_err(who);
        println!("AckFinding with the {who} certificate: {status:?}");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{who}");
        let status = client
            .unack_finding(pb::UnackFindingRequest {
                fingerprint: fingerprint.clone(),
            })
            .await
            .expect_err(who);
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{who}");
    }
    let status = admin
        .ack_finding(pb::AckFindingRequest {
            fingerprint: "0000000000000000".into(),
            ..ack("nothing there", until)
        })
        .await
        .expect_err("unknown fingerprint");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    for (request, what) in [
        (ack("  ", until), "no reason"),
        (ack("too late", now_unix() - 10), "an instant in the past"),
        (ack(&"x".repeat(1001), until), "a reason too long"),
    ] {
        let status = admin.ack_finding(request).await.expect_err(what);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
    }

    let acked = admin
        .ack_finding(ack("maintenance window, firewalled", until))
        .await?
        .into_inner()
        .finding
        .context("the acknowledged finding")?;
    let given = acked.ack.context("the acknowledgement")?;
    assert_eq!(given.acked_by, admin_uri);
    assert_eq!(given.reason, "maintenance window, firewalled");
    assert_eq!(given.until_unix, until);
    assert!((given.at_unix - now_unix()).abs() < 60);
    // Stored in ClickHouse as given.
    let stored = cluster
        .store
        .finding_ack(&fingerprint)
        .await?
        .context("the stored acknowledgement")?;
    assert!(stored.acked);
    assert_eq!(
        (
            stored.acked_by.as_str(),
            stored.reason.as_str(),
            stored.until
        ),
        (
            admin_uri.as_str(),
            "maintenance window, firewalled",
            Some(u64::try_from(until)?)
        )
    );
    let acked_change = expect_change(&mut watch, pb::FindingChange::Acked).await?;
    assert_eq!(
        acked_change.ack.map(|a| a.acked_by),
        Some(admin_uri.clone())
    );

    // ListFindings shows it, and filters on it.
    let list = |acked: pb::AckFilter| pb::ListFindingsRequest {
        acked: acked as i32,
        ..pb::ListFindingsRequest::default()
    };
    let all = reader
        .list_findings(list(pb::AckFilter::Unspecified))
        .await?
        .into_inner();
    assert_eq!(all.findings.len(), 1, "{all:?}");
    assert_eq!(
        all.findings[0].ack.as_ref().map(|a| a.reason.as_str()),
        Some("maintenance window, firewalled")
    );
    let only_acked = reader
        .list_findings(list(pb::AckFilter::Acked))
        .await?
        .into_inner();
    let only_unacked = reader
        .list_findings(list(pb::AckFilter::Unacked))
        .await?
        .into_inner();
    assert_eq!(
        (only_acked.findings.len(), only_unacked.findings.len()),
        (1, 0)
    );

    // Cleared by an admin.
    let cleared = admin
        .unack_finding(pb::UnackFindingRequest {
            fingerprint: fingerprint.clone(),
        })
        .await?
        .into_inner()
        .finding
        .context("the finding")?;
    assert!(cleared.ack.is_none());
    expect_change(&mut watch, pb::FindingChange::Unacked).await?;
    let only_unacked = reader
        .list_findings(list(pb::AckFilter::Unacked))
        .await?
        .into_inner();
    assert_eq!(only_unacked.findings.len(), 1);

    // Acknowledged until resolved: the acknowledgement lapses when the listener closes.
    admin.ack_finding(ack("until it is fixed", 0)).await?;
    expect_change(&mut watch, pb::FindingChange::Acked).await?;
    fixture.close(listener)?;
    let resolved = expect_change(&mut watch, pb::FindingChange::Resolved).await?;
    assert_eq!(resolved.status, pb::FindingStatus::Resolved as i32);
    assert!(resolved.ack.is_none(), "{resolved:?}");
    expect_change(&mut watch, pb::FindingChange::Unacked).await?;
    let listed = reader
        .list_findings(pb::ListFindingsRequest {
            status: pb::FindingStatus::Resolved as i32,
            ..pb::ListFindingsRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.findings.len(), 1);
    assert!(listed.findings[0].ack.is_none());
    println!("acknowledged by {admin_uri}, cleared, acknowledged until resolved, lapsed");
    Ok(())
}
