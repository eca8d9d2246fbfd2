//! What the collector refuses, and that a refusal stores nothing and disturbs nobody.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use portolan_proto::v1 as pb;
use portolan_proto::v1::ingest_service_client::IngestServiceClient;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use portolan_proto::v1::stream_inventory_response::Message as CollectorMessage;
use portolan_tls::pki::{Ca, WriteMode};
use portolan_tls::{ConnectOptions, OperatorRole, TlsFiles};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::{Cluster, Limits};

/// What a stream attempt ended with.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Connecting failed (TLS refused).
    #[allow(dead_code)] // printed through Debug
    Connect(String),
    /// The collector answered with a status.
    Status(Code, String),
    /// The collector acknowledged these seqs, then the test stopped.
    Acked(Vec<u64>),
}

pub(crate) fn endpoint(cluster: &Cluster) -> String {
    format!("https://127.0.0.1:{}", cluster.collector_port)
}

pub(crate) fn files(cluster: &Cluster, cert: &std::path::Path, key: &std::path::Path) -> TlsFiles {
    TlsFiles {
        ca: cluster.pki.ca_path(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    }
}

pub(crate) fn hello(host_id: &str) -> AgentMessage {
    AgentMessage::Hello(pb::Hello {
        host_id: host_id.into(),
        hostname: host_id.into(),
        agent_version: "test".into(),
        ..Default::default()
    })
}

pub(crate) fn listener_socket(port: u32) -> pb::Socket {
    pb::Socket {
        protocol: pb::Protocol::Tcp as i32,
        local_address: vec![0, 0, 0, 0],
        local_port: port,
        remote_address: vec![0, 0, 0, 0],
        remote_port: 0,
        state: pb::SocketState::Listen as i32,
        inode: u64::from(port),
        uid: 0,
        pids: vec![42],
        attribution: pb::Attribution::Owned as i32,
        scope: pb::Scope::Wildcard as i32,
        exposure: pb::Scope::Private as i32,
        ..pb::Socket::default()
    }
}

pub(crate) fn snapshot(
    seq: u64,
    sockets: Vec<pb::Socket>,
    processes: Vec<pb::Process>,
) -> AgentMessage {
    AgentMessage::Snapshot(pb::Snapshot {
        seq,
        scanned_at_unix_nanos: 1_700_000_000_000_000_000,
        host: Some(pb::HostState {
            interfaces: vec![],
            ephemeral_port_min: 32768,
            ephemeral_port_max: 60999,
        }),
        sockets,
        flows: vec![],
        processes,
        last_part: true,
        stats: Some(pb::ScanStats::default()),
        ..pb::Snapshot::default()
    })
}

/// Opens a stream with `config`, sends `messages` one by one, and reports how it ended.
pub(crate) async fn attempt(
    cluster: &Cluster,
    config: Arc<rustls::ClientConfig>,
    messages: Vec<AgentMessage>,
) -> Ending {
    attempt_at(&endpoint(cluster), config, messages).await
}

/// [`attempt`] against a given endpoint.
pub(crate) async fn attempt_at(
    endpoint: &str,
    config: Arc<rustls::ClientConfig>,
    messages: Vec<AgentMessage>,
) -> Ending {
    let channel = match portolan_tls::connect(endpoint, config, ConnectOptions::default()).await {
        Ok(c) => c,
        Err(e) => return Ending::Connect(e.to_string()),
    };
    let mut client = IngestServiceClient::new(channel).max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(16);
    let expected_acks = messages
        .iter()
        .filter(|m| !matches!(m, AgentMessage::Hello(_)))
        .count();
    for m in messages {
        let _ = tx
            .send(pb::StreamInventoryRequest { message: Some(m) })
            .await;
    }
    let mut inbound = match client.stream_inventory(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ending::Status(status.code(), status.message().to_string()),
    };
    let mut acked = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), inbound.message()).await {
            Err(_) => return Ending::Acked(acked),
            Ok(Err(status)) => return Ending::Status(status.code(), status.message().to_string()),
            Ok(Ok(None)) => return Ending::Acked(acked),
            Ok(Ok(Some(m))) => match m.message {
                Some(CollectorMessage::Ack(a)) => {
                    acked.push(a.seq);
                    if acked.len() == expected_acks {
                        return Ending::Acked(acked);
                    }
                }
                Some(CollectorMessage::Welcome(_)) => {
                    if expected_acks == 0 {
                        return Ending::Acked(acked);
                    }
                }
                other => return Ending::Status(Code::Unknown, format!("unexpected {other:?}")),
            },
        }
    }
}

pub(crate) async fn nothing_stored(cluster: &Cluster, host_id: &str) -> Result<()> {
    let seq = cluster.store.last_seq(host_id).await?;
    let host = cluster.store.host(host_id).await?;
    let sockets = cluster.store.current_sockets(host_id).await?;
    if seq != 0 || host.is_some() || !sockets.is_empty() {
        bail!(
            "something was stored for `{host_id}`: last_seq {seq}, host {host:?}, {} sockets",
            sockets.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_store_nothing_and_disturb_nobody() -> Result<()> {
    let limits = Limits {
        max_message_bytes: 256 * 1024,
        max_sockets_per_message: 100,
        ..Limits::default()
    };
    let cluster = Cluster::start("refusals", &[IpAddr::V4(Ipv4Addr::LOCALHOST)], limits).await?;
    let pki = &cluster.pki;
    let (a_cert, a_key) = pki.agent("host-a")?;
    let agent_a = portolan_tls::client_config(&files(&cluster, &a_cert, &a_key))?;

    // A good agent works before the refusals...
    let (good_cert, good_key) = pki.agent("host-good")?;
    let good = portolan_tls::client_config(&files(&cluster, &good_cert, &good_key))?;
    let ending = attempt(
        &cluster,
        good.clone(),
        vec![
            hello("host-good"),
            snapshot(1, vec![listener_socket(22)], vec![]),
        ],
    )
    .await;
    assert!(
        matches!(&ending, Ending::Acked(seqs) if seqs == &[1]),
        "good agent: {ending:?}"
    );

    // 1. No client certificate: the TLS handshake is refused.
    let no_cert = {
        let roots = files(&cluster, &a_cert, &a_key).load_roots()?;
        let mut config =
            rustls::ClientConfig::builder_with_provider(portolan_tls::crypto_provider())
                .with_protocol_versions(portolan_tls::PROTOCOL_VERSIONS)?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![portolan_tls::ALPN_H2.to_vec()];
        Arc::new(config)
    };
    let ending = attempt(
        &cluster,
        no_cert,
        vec![
            hello("host-a"),
            snapshot(1, vec![listener_socket(22)], vec![]),
        ],
    )
    .await;
    println!("no client certificate: {ending:?}");
    assert!(
        !matches!(ending, Ending::Acked(_)),
        "a stream without client certificate was served: {ending:?}"
    );
    nothing_stored(&cluster, "host-a").await?;

    // 2. A certificate from another CA.
    let other_dir = cluster.state.subdir("other-ca")?;
    let other = Ca::generate("someone else's CA")?;
    let w = other
        .issue_agent("host-a", Duration::from_secs(3600))?
        .write_files(&other_dir, "agent-host-a", WriteMode::Overwrite)?;
    let foreign = portolan_tls::client_config(&files(&cluster, &w.cert, &w.key))?;
    let ending = attempt(
        &cluster,
        foreign,
        vec![
            hello("host-a"),
            snapshot(1, vec![listener_socket(22)], vec![]),
        ],
    )
    .await;
    println!("certificate from another CA: {ending:?}");
    assert!(
        !matches!(ending, Ending::Acked(_)),
        "a foreign certificate was served: {ending:?}"
    );
    nothing_stored(&cluster, "host-a").await?;
    // Both were refused by the collector's TLS layer, not lost on the client's side.
    let refused = portolan_testkit::eventually_async!(
        timeout = Duration::from_secs(10),
        interval = Duration::from_millis(100),
        {
            let log = cluster.collector_log();
            let n = log.matches("tls handshake from").count();
            if n >= 2 {
                Ok(log)
            } else {
                Err(format!("{n} refused handshakes in the collector log"))
            }
        }
    );
    assert!(
        refused.contains("peer sent no certificates"),
        "the collector logs why it refused the certificate-less client"
    );

    // 3. A certificate for host-a whose Hello claims host-b.
    let ending = attempt(
        &cluster,
        agent_a.clone(),
        vec![
            hello("host-b"),
            snapshot(1, vec![listener_socket(22)], vec![]),
        ],
    )
    .await;
    println!("host-a's certificate claiming host-b: {ending:?}");
    assert!(
        matches!(&ending, Ending::Status(Code::PermissionDenied, m) if m.contains("host-a") && m.contains("host-b")),
        "{ending:?}"
    );
    nothing_stored(&cluster, "host-a").await?;
    nothing_stored(&cluster, "host-b").await?;

    // 4. An operator certificate cannot stream inventories.
    let op = pki
        .ca
        .issue_operator("alice", OperatorRole::Admin, Duration::from_secs(3600))?
        .write_files(&pki.dir, "operator-alice", WriteMode::Overwrite)?;
    let operator = portolan_tls::client_config(&files(&cluster, &op.cert, &op.key))?;
    let ending = attempt(
        &cluster,
        operator,
        vec![
            hello("alice"),
            snapshot(1, vec![listener_socket(22)], vec![]),
        ],
    )
    .await;
    println!("operator certificate: {ending:?}");
    assert!(
        matches!(&ending, Ending::Status(Code::PermissionDenied, _)),
        "{ending:?}"
    );
    nothing_stored(&cluster, "alice").await?;

    // 5. An oversized message (a 1 MiB command line against a 256 KiB limit).
    let huge = pb::Process {
        pid: 42,
        name: "big".into(),
        command_line: "x".repeat(1024 * 1024),
        ..Default::default()
    };
    let ending = attempt(
        &cluster,
        agent_a.clone(),
        vec![
            hello("host-a"),
            snapshot(1, vec![listener_socket(22)], vec![huge]),
        ],
    )
    .await;
    println!("oversized message: {ending:?}");
    assert!(
        matches!(
            &ending,
            Ending::Status(Code::ResourceExhausted | Code::OutOfRange, _)
        ),
        "{ending:?}"
    );
    nothing_stored(&cluster, "host-a").await?;

    // 6. Too many sockets in one message (101 against a limit of 100).
    let many = (1..=101).map(listener_socket).collect();
    let ending = attempt(
        &cluster,
        agent_a.clone(),
        vec![hello("host-a"), snapshot(1, many, vec![])],
    )
    .await;
    println!("too many sockets: {ending:?}");
    assert!(
        matches!(&ending, Ending::Status(Code::ResourceExhausted, m) if m.contains("101")),
        "{ending:?}"
    );
    nothing_stored(&cluster, "host-a").await?;

    // 7. Malformed content: a 3-byte address.
    let mut bad = listener_socket(22);
    bad.local_address = vec![10, 0, 0];
    let ending = attempt(
        &cluster,
        agent_a.clone(),
        vec![hello("host-a"), snapshot(1, vec![bad], vec![])],
    )
    .await;
    println!("malformed socket: {ending:?}");
    assert!(
        matches!(&ending, Ending::Status(Code::InvalidArgument, m) if m.contains("local_address")),
        "{ending:?}"
    );
    nothing_stored(&cluster, "host-a").await?;

    // 8. A message before Hello.
    let ending = attempt(
        &cluster,
        agent_a.clone(),
        vec![snapshot(1, vec![listener_socket(22)], vec![])],
    )
    .await;
    println!("snapshot before Hello: {ending:?}");
    assert!(
        matches!(&ending, Ending::Status(Code::FailedPrecondition, _)),
        "{ending:?}"
    );
    nothing_stored(&cluster, "host-a").await?;

    // ...and after all of them: the collector still serves agents, host-good's data is
    // intact, and host-a can still stream correctly.
    let ending = attempt(
        &cluster,
        good,
        vec![
            hello("host-good"),
            snapshot(2, vec![listener_socket(22), listener_socket(80)], vec![]),
        ],
    )
    .await;
    assert!(
        matches!(&ending, Ending::Acked(seqs) if seqs == &[2]),
        "good agent after the refusals: {ending:?}"
    );
    assert_eq!(cluster.store.current_sockets("host-good").await?.len(), 2);
    let ending = attempt(
        &cluster,
        agent_a,
        vec![
            hello("host-a"),
            snapshot(1, vec![listener_socket(22)], vec![]),
        ],
    )
    .await;
    assert!(
        matches!(&ending, Ending::Acked(seqs) if seqs == &[1]),
        "host-a streaming correctly: {ending:?}"
    );
    assert_eq!(cluster.store.current_sockets("host-a").await?.len(), 1);
    Ok(())
}
