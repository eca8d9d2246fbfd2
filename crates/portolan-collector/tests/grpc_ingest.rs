//! The ingest service in-process: the real server (authorisation, limits, the stream
//! protocol) over in-memory mutual TLS, storing in a managed ClickHouse.

mod support;

use anyhow::{Result, bail, ensure};
use portolan_collector::config::LimitsSection;
use portolan_proto::v1 as pb;
use portolan_tls::OperatorRole;
use tonic::Code;

use support::{AgentStream, Answer, Collector, Who, delta, hello, snapshot};

fn agent(host_id: &str) -> Who {
    Who::Agent(host_id.into())
}

/// Opens an agent stream of `host_id` and gets past Hello; the Welcome's `last_seq`.
async fn connected(collector: &Collector, host_id: &str) -> Result<(AgentStream, u64)> {
    let mut stream = AgentStream::open(collector.channel(&agent(host_id)).await?).await?;
    stream.send(hello(host_id)).await?;
    let last_seq = stream.welcome().await?;
    Ok((stream, last_seq))
}

#[tokio::test]
async fn hello_must_come_first_and_name_the_certificates_host() -> Result<()> {
    let collector = Collector::start("hello_first", LimitsSection::default()).await?;

    let mut stream = AgentStream::open(collector.channel(&agent("h1")).await?).await?;
    stream.send(snapshot(1, &[22])).await?;
    let status = stream.ended().await?;
    ensure!(
        status.code() == Code::FailedPrecondition
            && status
                .message()
                .contains("first message of a stream must be Hello"),
        "{status:?}"
    );

    // The certificate is for h1; a Hello for h2 is refused.
    let mut stream = AgentStream::open(collector.channel(&agent("h1")).await?).await?;
    stream.send(hello("h2")).await?;
    let status = stream.ended().await?;
    ensure!(
        status.code() == Code::PermissionDenied
            && status.message().contains("`h1`")
            && status.message().contains("`h2`"),
        "{status:?}"
    );
    ensure!(collector.rows("host_reports", "h1").await? == 0);
    ensure!(collector.rows("hosts", "h2").await? == 0);
    collector.stop().await
}

#[tokio::test]
async fn a_replayed_seq_is_acknowledged_without_a_second_write() -> Result<()> {
    let collector = Collector::start("replay", LimitsSection::default()).await?;
    let (mut stream, last_seq) = connected(&collector, "h1").await?;
    ensure!(last_seq == 0, "a new host starts at 0, not {last_seq}");
    stream.send(snapshot(1, &[22, 80])).await?;
    stream.acked(1).await?;
    stream.send(delta(1, 2, &[443])).await?;
    stream.acked(2).await?;
    let reports = collector.rows("host_reports", "h1").await?;
    let events = collector.rows("socket_events", "h1").await?;
    ensure!(reports == 2, "a snapshot and a delta: {reports} reports");
    ensure!(events == 3, "three sockets added: {events} events");

    // The agent did not hear the acks and sends both again on the same stream.
    stream.send(snapshot(1, &[22, 80])).await?;
    stream.acked(1).await?;
    stream.send(delta(1, 2, &[443])).await?;
    stream.acked(2).await?;
    // An acknowledgement is sent only once its write is durable, so a second write would
    // be counted by now.
    ensure!(collector.rows("host_reports", "h1").await? == reports);
    ensure!(collector.rows("socket_events", "h1").await? == events);

    // Or it reconnects and replays the delta from its spool.
    drop(stream);
    let (mut stream, last_seq) = connected(&collector, "h1").await?;
    ensure!(
        last_seq == 2,
        "the stored seq is 2, Welcome said {last_seq}"
    );
    stream.send(delta(1, 2, &[443])).await?;
    stream.acked(2).await?;
    ensure!(collector.rows("host_reports", "h1").await? == reports);
    ensure!(collector.rows("socket_events", "h1").await? == events);
    collector.stop().await
}

#[tokio::test]
async fn a_delta_that_does_not_follow_the_stored_seq_asks_for_a_snapshot() -> Result<()> {
    let collector = Collector::start("resync", LimitsSection::default()).await?;
    let (mut stream, _) = connected(&collector, "h1").await?;
    stream.send(snapshot(1, &[22])).await?;
    stream.acked(1).await?;
    let reports = collector.rows("host_reports", "h1").await?;

    stream.send(delta(5, 6, &[443])).await?;
    match stream.next().await? {
        Answer::Message(pb::stream_inventory_response::Message::Resync(r)) => ensure!(
            r.last_seq == 1 && r.reason.contains("does not follow the stored seq 1"),
            "{r:?}"
        ),
        other => bail!("expected Resync, got {other:?}"),
    }
    ensure!(collector.rows("host_reports", "h1").await? == reports);
    ensure!(collector.rows("socket_events", "h1").await? == 1);

    // The snapshot it asks for is stored and acknowledged.
    stream.send(snapshot(7, &[22, 443])).await?;
    stream.acked(7).await?;
    ensure!(collector.rows("host_reports", "h1").await? == reports + 1);
    collector.stop().await
}

#[tokio::test]
async fn a_newer_stream_of_the_same_host_supersedes_the_older() -> Result<()> {
    let collector = Collector::start("supersede", LimitsSection::default()).await?;
    let (mut older, _) = connected(&collector, "h1").await?;
    older.send(snapshot(1, &[22])).await?;
    older.acked(1).await?;

    // The agent reconnects (perhaps over another connection) while the old stream lives.
    let mut newer = AgentStream::open(collector.channel(&agent("h1")).await?).await?;
    newer.send(hello("h1")).await?;
    let status = older.ended().await?;
    ensure!(
        status.code() == Code::FailedPrecondition
            && status
                .message()
                .contains("a newer stream of this host took over"),
        "{status:?}"
    );
    let last_seq = newer.welcome().await?;
    ensure!(
        last_seq == 1,
        "the newer stream resumes at 1, not {last_seq}"
    );
    newer.send(delta(1, 2, &[80])).await?;
    newer.acked(2).await?;
    ensure!(collector.rows("host_reports", "h1").await? == 2);
    collector.stop().await
}

#[tokio::test]
async fn a_message_over_the_socket_limit_is_refused_and_nothing_stored() -> Result<()> {
    let limits = LimitsSection {
        max_sockets_per_message: 2,
        ..LimitsSection::default()
    };
    let collector = Collector::start("limits", limits).await?;
    let (mut stream, _) = connected(&collector, "h1").await?;
    stream.send(snapshot(1, &[22, 80, 443])).await?;
    let status = stream.ended().await?;
    ensure!(
        status.code() == Code::ResourceExhausted
            && status.message().contains("3 sockets")
            && status
                .message()
                .contains("`limits.max_sockets_per_message`"),
        "{status:?}"
    );
    ensure!(collector.rows("host_reports", "h1").await? == 0);
    ensure!(collector.rows("socket_events", "h1").await? == 0);

    // A delta over the limit, after a stored snapshot, neither.
    let (mut stream, _) = connected(&collector, "h1").await?;
    stream.send(snapshot(1, &[22, 80])).await?;
    stream.acked(1).await?;
    stream.send(delta(1, 2, &[443, 8080, 9090])).await?;
    let status = stream.ended().await?;
    ensure!(status.code() == Code::ResourceExhausted, "{status:?}");
    ensure!(collector.rows("host_reports", "h1").await? == 1);
    ensure!(collector.rows("socket_events", "h1").await? == 2);
    collector.stop().await
}

#[tokio::test]
async fn only_agents_may_stream_inventories() -> Result<()> {
    let collector = Collector::start("ingest_roles", LimitsSection::default()).await?;
    for role in [OperatorRole::Reader, OperatorRole::Admin] {
        let channel = collector.channel(&Who::Operator("ann", role)).await?;
        let status = match AgentStream::open(channel).await {
            Ok(mut stream) => stream.ended().await?,
            Err(status) => status,
        };
        ensure!(
            status.code() == Code::PermissionDenied
                && status.message().contains("is not an agent certificate"),
            "{role}: {status:?}"
        );
    }
    collector.stop().await
}
