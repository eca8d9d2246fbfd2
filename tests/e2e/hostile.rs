//! A hostile agent: a valid certificate for `host-evil`, and a hand-written client that
//! sends what no real agent would (oversized, undecodable, malformed, out-of-order,
//! another host's data, huge strings, a flood). Each attempt is refused with its own
//! status, logged by the collector, and stores nothing for `host-evil`, while a real agent
//! in another network-namespace host keeps streaming and its data lands.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::BufMut;
use portolan_core::Protocol;
use portolan_proto::v1 as pb;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use portolan_proto::v1::stream_inventory_response::Message as CollectorMessage;
use portolan_testkit::{Lab, eventually_async};
use portolan_tls::ConnectOptions;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::refusals::{files, hello, listener_socket, snapshot};
use crate::support::{Cluster, Limits, stored_port};

/// Frames as bytes: whatever the test wants on the wire, valid protobuf or not.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::StreamInventoryResponse;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = pb::StreamInventoryResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<pb::StreamInventoryResponse>, tonic::Status> {
        pb::StreamInventoryResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

fn frame(message: AgentMessage) -> Vec<u8> {
    pb::StreamInventoryRequest {
        message: Some(message),
    }
    .encode_to_vec()
}

/// What the collector answered: its messages, then the status that ended the stream
/// (`None`: still open after the messages stopped coming).
#[derive(Debug)]
struct Answer {
    replies: Vec<&'static str>,
    status: Option<(Code, String)>,
}

/// Sends `frames` on one stream and collects the answer.
async fn converse(
    cluster: &Cluster,
    config: Arc<rustls::ClientConfig>,
    frames: Vec<Vec<u8>>,
) -> Result<Answer> {
    let endpoint = format!("https://127.0.0.1:{}", cluster.collector_port);
    let channel = portolan_tls::connect(&endpoint, config, ConnectOptions::default()).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let (tx, rx) = mpsc::channel(frames.len().max(1));
    for f in frames {
        tx.send(f).await?;
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/portolan.v1.IngestService/StreamInventory",
    );
    let mut replies = Vec::new();
    let mut inbound = match grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return Ok(Answer {
                replies,
                status: Some((s.code(), s.message().to_owned())),
            });
        }
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(3), inbound.message()).await {
            Err(_) | Ok(Ok(None)) => {
                return Ok(Answer {
                    replies,
                    status: None,
                });
            }
            Ok(Err(s)) => {
                return Ok(Answer {
                    replies,
                    status: Some((s.code(), s.message().to_owned())),
                });
            }
            Ok(Ok(Some(m))) => replies.push(match m.message {
                Some(CollectorMessage::Welcome(_)) => "welcome",
                Some(CollectorMessage::Ack(_)) => "ack",
                Some(CollectorMessage::Resync(_)) => "resync",
                _ => "other",
            }),
        }
    }
}

/// Rows stored for a host: reports, socket events, current sockets.
async fn rows(cluster: &Cluster, host: &str) -> Result<(usize, usize, usize)> {
    Ok((
        cluster.store.reports(host).await?.len(),
        cluster.store.socket_events(host).await?.len(),
        cluster.store.current_sockets(host).await?.len(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_is_refused_logged_and_stores_nothing() -> Result<()> {
    let lab = Lab::new("hostl")?;
    let good_host = lab.add_host("g")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let limits = Limits {
        max_message_bytes: 256 * 1024,
        max_sockets_per_message: 100,
        message_rate: Some((5, 20)),
        ..Limits::default()
    };
    let cluster = Cluster::start("hostile", &[bridge], limits).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let (fixture, _good) = cluster
        .streaming_agent(&good_host, "host-good", collector, 7401)
        .await?;
    let good_before = rows(&cluster, "host-good").await?;

    let (cert, key) = cluster.pki.agent("host-evil")?;
    let evil = portolan_tls::client_config(&files(&cluster, &cert, &key))?;
    let h = || frame(hello("host-evil"));

    let mut bad_address = listener_socket(22);
    bad_address.local_address = vec![10, 0, 0];
    let mut unknown_enum = listener_socket(22);
    unknown_enum.state = 99;
    let huge_exe = pb::Process {
        pid: 42,
        name: "evil".into(),
        executable: format!("/{}", "x".repeat(9000)),
        ..Default::default()
    };
    let long_hostname = frame(AgentMessage::Hello(pb::Hello {
        host_id: "host-evil".into(),
        hostname: "h".repeat(1000),
        ..Default::default()
    }));
    let part = |seq: u64, port: u32, last: bool| {
        let mut p = snapshot(seq, vec![listener_socket(port)], vec![]);
        if let AgentMessage::Snapshot(s) = &mut p {
            s.last_part = last;
        }
        frame(p)
    };
    let out_of_order_delta = frame(AgentMessage::Delta(pb::Delta {
        seq: 7,
        base_seq: 6,
        added: vec![listener_socket(8080)],
        ..Default::default()
    }));
    let oversized = pb::Process {
        pid: 42,
        name: "big".into(),
        command_line: "x".repeat(300 * 1024),
        ..Default::default()
    };

    // (what, frames, expected code, text the status and the log carry)
    let cases: Vec<(&str, Vec<Vec<u8>>, Code, &str)> = vec![
        (
            "oversized message (300 KiB against 256 KiB)",
            vec![
                h(),
                frame(snapshot(1, vec![listener_socket(22)], vec![oversized])),
            ],
            Code::ResourceExhausted,
            "limits.max_message_bytes",
        ),
        (
            "bytes no protobuf decoder accepts",
            vec![h(), vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x80]],
            Code::InvalidArgument,
            "cannot decode",
        ),
        (
            "a 3-byte address",
            vec![h(), frame(snapshot(1, vec![bad_address], vec![]))],
            Code::InvalidArgument,
            "local_address",
        ),
        (
            "an unknown socket state (99)",
            vec![h(), frame(snapshot(1, vec![unknown_enum], vec![]))],
            Code::InvalidArgument,
            "state",
        ),
        (
            "a 9,000-byte executable path",
            vec![
                h(),
                frame(snapshot(1, vec![listener_socket(22)], vec![huge_exe])),
            ],
            Code::InvalidArgument,
            "process.executable",
        ),
        (
            "a 1,000-byte hostname",
            vec![long_hostname],
            Code::InvalidArgument,
            "hostname",
        ),
        (
            "snapshot parts with different seqs",
            vec![h(), part(3, 22, false), part(2, 23, true)],
            Code::InvalidArgument,
            "seq",
        ),
        (
            "a Hello claiming another host (host-good)",
            vec![frame(hello("host-good"))],
            Code::PermissionDenied,
            "host-good",
        ),
    ];
    for (what, frames, code, text) in cases {
        // Each case sends at most 3 messages: at 5/s the bucket refills in between, so
        // that only the flood below meets the rate limit.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let refusals_before = cluster.collector_log().matches("host-evil").count();
        let answer = converse(&cluster, evil.clone(), frames).await?;
        println!("injected {what}: {answer:?}");
        let Some((got, message)) = &answer.status else {
            panic!("{what}: not refused: {answer:?}");
        };
        assert_eq!(*got, code, "{what}: {message}");
        assert!(message.contains(text), "{what}: `{text}` not in {message}");
        assert!(!answer.replies.contains(&"ack"), "{what}: acknowledged");
        let logged = eventually_async!(
            timeout = Duration::from_secs(5),
            interval = Duration::from_millis(50),
            {
                let log = cluster.collector_log();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("host-evil") && l.contains(text))
                    .collect();
                if log.matches("host-evil").count() > refusals_before && !lines.is_empty() {
                    Ok(lines.last().map(|l| l.to_string()).unwrap_or_default())
                } else {
                    Err(format!("no log line for {what}"))
                }
            }
        );
        println!("  logged: {}", logged.trim());
        assert_eq!(rows(&cluster, "host-evil").await?, (0, 0, 0), "{what}");
    }

    // Out of order: a delta on a host with nothing stored is answered with Resync (send
    // a snapshot first), never applied.
    let answer = converse(&cluster, evil.clone(), vec![h(), out_of_order_delta]).await?;
    println!("injected a delta 6→7 with nothing stored: {answer:?}");
    assert_eq!(answer.replies, ["welcome", "resync"]);
    assert_eq!(rows(&cluster, "host-evil").await?, (0, 0, 0));

    // A flood: 60 snapshot parts at once against 5 messages/s with a burst of 20. The
    // bucket is per host: wait until it is full again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut flood = vec![h()];
    flood.extend((0..60).map(|i| part(1, 1000 + i, false)));
    let answer = converse(&cluster, evil.clone(), flood).await?;
    println!("injected 61 messages at once (rate 5/s, burst 20): {answer:?}");
    let Some((code, message)) = &answer.status else {
        panic!("the flood was not refused: {answer:?}");
    };
    assert_eq!(*code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("limits.max_messages_per_second"),
        "{message}"
    );
    assert!(
        cluster
            .collector_log()
            .lines()
            .any(|l| l.contains("host-evil") && l.contains("messages per second")),
        "the flood is logged"
    );
    assert_eq!(rows(&cluster, "host-evil").await?, (0, 0, 0));

    // Meanwhile the real agent kept streaming: a listener opened now lands.
    fixture.listen(Protocol::Tcp, good_host.ipv4_addr(7402))?;
    eventually_async!(
        timeout = Duration::from_secs(20),
        interval = Duration::from_millis(200),
        stored_port(&cluster, "host-good", 7402).await
    );
    let good_after = rows(&cluster, "host-good").await?;
    println!(
        "host-good (real agent): reports/events/sockets {good_before:?} before, {good_after:?} after; host-evil: {:?}",
        rows(&cluster, "host-evil").await?
    );
    assert!(good_after.0 > good_before.0 && good_after.1 > good_before.1);
    assert!(
        !cluster
            .agent_log("host-good")
            .contains("collector stream failed"),
        "the real agent's stream never broke"
    );
    Ok(())
}
