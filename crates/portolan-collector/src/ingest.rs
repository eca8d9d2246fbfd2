//! The ingest service: one stream per agent, Hello → Snapshot → Deltas/Heartbeats.
//!
//! The collector keeps no fleet state: a stream opens its host's ledger
//! ([`portolan_store::HostLedger`]), which reads what it needs from ClickHouse when the
//! stream starts and keeps the host's stored state while it runs. This module is the
//! protocol only (order of messages, seqs, limits, acknowledgements); it never sees a
//! row. Any replica can take over a host at its next connection.
//!
//! Deltas are pipelined: an agent may send up to `limits.max_in_flight` of them before
//! the first is acknowledged (an agent catching up on its spool). The stream applies and
//! queues each for its batch as it arrives; a task of the stream waits for each write in
//! order and acknowledges it once it is durable. A failed write ends the stream, and no
//! later change of the host is stored (see [`portolan_store::batch`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portolan_core::ScanStats;
use portolan_core::wire::{SnapshotAssembly, delta_from_wire};
use portolan_proto::v1 as pb;
use portolan_proto::v1::ingest_service_server::IngestService;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use portolan_proto::v1::stream_inventory_response::Message as CollectorMessage;
use portolan_tls::peer_info;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use tracing::{debug, info, warn};

use crate::authz;
use crate::config::LimitsSection;
use crate::error::IngestError;
use crate::metrics;
use crate::rate::RateLimiter;
use crate::revocation::{LiveSession, Revocations};
use portolan_store::gaps::SpoolGap;
use portolan_store::{
    DeltaOutcome, HostLedger, HostRecord, PendingWrite, Store, StoreError, WriteReceipt,
};

/// Longest host_id, hostname, label key or value, version or OS string in a Hello.
const MAX_HELLO_STRING: usize = 256;
/// Most labels a host may carry.
const MAX_LABELS: usize = 64;

mod fence;

/// The `IngestService` implementation.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// One stream per host at a time (see [`fence`]).
    streams: Arc<fence::HostStreams>,
    store: Arc<Store>,
    limits: LimitsSection,
    collector_name: Arc<str>,
    revocations: Revocations,
    rate: RateLimiter,
}

impl Ingest {
    /// A service storing into `store`, enforcing `limits`, naming itself `collector_name`.
    pub fn new(store: Arc<Store>, limits: LimitsSection, collector_name: &str) -> Ingest {
        let rate = RateLimiter::new(limits.max_messages_per_second, limits.max_message_burst);
        Ingest {
            streams: Arc::new(fence::HostStreams::default()),
            store,
            limits,
            collector_name: collector_name.into(),
            revocations: Revocations::none(),
            rate,
        }
    }

    /// The same service, ending the streams of certificates `revocations` revokes.
    pub fn with_revocations(self, revocations: Revocations) -> Ingest {
        Ingest {
            revocations,
            ..self
        }
    }
}

type ResponseStream = ReceiverStream<Result<pb::StreamInventoryResponse, Status>>;

#[tonic::async_trait]
impl IngestService for Ingest {
    type StreamInventoryStream = ResponseStream;

    async fn stream_inventory(
        &self,
        request: Request<Streaming<pb::StreamInventoryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        // Only agents get here (`authz::RULES`); each streams its own host only.
        let caller = authz::caller(&request)?;
        let Some(host_id) = caller.identity.host_id().map(str::to_owned) else {
            return Err(Status::internal(format!(
                "the authorisation table let `{}` open an ingest stream; only agents may",
                caller.identity
            )));
        };
        let peer = peer_info(&request)
            .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
        let remote = peer.remote_addr;
        let live = self.revocations.open(peer, "ingest").inspect_err(|status| {
            warn!(%remote, host = %host_id, reason = %status.message(), "refused ingest stream: revoked certificate");
            metrics::global().record_refusal(&IngestError::Revoked(String::new()));
        })?;
        let (tx, rx) = mpsc::channel(8);
        let in_flight = self.limits.max_in_flight.max(1) as usize;
        let (queue, queued) = mpsc::channel(in_flight);
        let (failed_tx, failed) = oneshot::channel();
        let session = Session {
            streams: self.streams.clone(),
            live,
            rate: self.rate.clone(),
            store: self.store.clone(),
            limits: self.limits.clone(),
            collector_name: self.collector_name.clone(),
            enrolled_labels: self.revocations.enrolled_labels(peer, &host_id),
            host_id,
            tx: tx.clone(),
            hello: None,
            ledger: None,
            assembly: SnapshotAssembly::default(),
            assembly_stats: None,
            assembly_gap: None,
            connected: None,
            awaiting_snapshot: false,
            queue,
            failed: Some(failed),
        };
        let acker = tokio::spawn(acknowledge_in_order(queued, tx.clone(), failed_tx));
        tokio::spawn(async move {
            let host = session.host_id.clone();
            // Before anything is read from the store: an older stream of this host
            // finishes its writes and ends first.
            let mut claim = session.streams.claim(&host).await;
            let result = session.run(request.into_inner(), &mut claim).await;
            // The writes this stream queued finish (durable or failed) before a newer
            // stream of the host may start.
            let _ = acker.await;
            drop(claim);
            match result {
                Ok(()) => info!(host = %host, %remote, "agent stream closed"),
                Err(e) => {
                    metrics::global().record_refusal(&e);
                    warn!(host = %host, %remote, error = %e, "agent stream ended with an error");
                    let _ = tx.send(Err(e.into())).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Session {
    /// The hosts' stream slots: this stream holds its host's while it runs.
    streams: Arc<fence::HostStreams>,
    /// Ends the stream when the certificate is revoked.
    live: LiveSession,
    /// Messages per second of this host.
    rate: RateLimiter,
    store: Arc<Store>,
    limits: LimitsSection,
    collector_name: Arc<str>,
    host_id: String,
    /// The labels of the token the host's key enrolled with: they override the agent's.
    enrolled_labels: BTreeMap<String, String>,
    tx: mpsc::Sender<Result<pb::StreamInventoryResponse, Status>>,
    hello: Option<pb::Hello>,
    /// The host's stored state and its one write path, from Hello on.
    ledger: Option<HostLedger>,
    assembly: SnapshotAssembly,
    /// Scan statistics of the snapshot being assembled (from its first part).
    assembly_stats: Option<ScanStats>,
    /// The spool gap the snapshot being assembled closes (from its first part).
    assembly_gap: Option<pb::SpoolGap>,
    /// Counts this stream in `portolan_collector_agents_connected` once past Hello.
    connected: Option<ConnectedAgent>,
    /// A Resync was sent: deltas are dropped unanswered until the snapshot comes.
    awaiting_snapshot: bool,
    /// Writes and answers, in order, for [`acknowledge_in_order`] (boxed: a channel
    /// allocates room for 32 of its items at once, per stream).
    queue: mpsc::Sender<Box<Queued>>,
    /// The first write that failed, from [`acknowledge_in_order`]; `None` once it has
    /// ended without one.
    failed: Option<oneshot::Receiver<IngestError>>,
}

/// How long a stream keeps its host's inventory decoded after a message (see
/// [`HostLedger::rest`]).
const ENCODE_WHEN_IDLE: Duration = Duration::from_secs(1);

/// What [`acknowledge_in_order`] does, in the order the stream queued it.
enum Queued {
    /// A change: `Ack(seq)` once it is durable.
    Change {
        seq: u64,
        kind: &'static str,
        pending: PendingWrite,
        receipt: WriteReceipt,
        received: Instant,
    },
    /// A heartbeat: nothing to answer once it is durable.
    Heartbeat {
        pending: PendingWrite,
        received: Instant,
    },
    /// A message to the agent, after the answers queued before it.
    Send(CollectorMessage),
    /// Resolved once everything queued before it is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Waits for each queued write in order and answers the agent: one task per stream.
/// The first failure goes to `failed` (the stream then ends with it); nothing is
/// acknowledged after it, and the writes queued behind it are waited for (they are
/// refused by the store) so that the stream ends only once none is left in flight.
async fn acknowledge_in_order(
    mut queued: mpsc::Receiver<Box<Queued>>,
    tx: mpsc::Sender<Result<pb::StreamInventoryResponse, Status>>,
    failed: oneshot::Sender<IngestError>,
) {
    let mut failed = Some(failed);
    let mut fail = |e: StoreError| {
        crate::health::global().write_failed(&e);
        if let Some(failed) = failed.take() {
            let _ = failed.send(IngestError::Store(e));
        }
    };
    let mut ok = true;
    let send = |message: CollectorMessage| {
        tx.send(Ok(pb::StreamInventoryResponse {
            message: Some(message),
        }))
    };
    while let Some(q) = queued.recv().await {
        match *q {
            Queued::Change {
                seq,
                kind,
                pending,
                receipt,
                received,
            } => match pending.wait().await {
                Ok(()) if ok => {
                    crate::health::global().write_succeeded();
                    let m = metrics::global();
                    m.record_rows(&receipt);
                    m.ingest_latency
                        .observe(&[("kind", kind)], received.elapsed().as_secs_f64());
                    // The agent may have gone; the stream's reader sees that too.
                    let _ = send(CollectorMessage::Ack(pb::Ack { seq })).await;
                }
                Ok(()) => {}
                Err(e) => {
                    fail(e);
                    ok = false;
                }
            },
            Queued::Heartbeat { pending, received } => match pending.wait().await {
                Ok(()) => {
                    crate::health::global().write_succeeded();
                    let m = metrics::global();
                    m.rows.add(&[("table", "host_reports")], 1.0);
                    m.ingest_latency
                        .observe(&[("kind", "heartbeat")], received.elapsed().as_secs_f64());
                }
                Err(e) => {
                    fail(e);
                    ok = false;
                }
            },
            Queued::Send(message) => {
                if ok {
                    let _ = send(message).await;
                }
            }
            Queued::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The failure [`acknowledge_in_order`] reports, once; pending forever after it ended
/// without one.
async fn first_failure(failed: &mut Option<oneshot::Receiver<IngestError>>) -> Option<IngestError> {
    let Some(receiver) = failed else {
        return std::future::pending().await;
    };
    let error = receiver.await.ok();
    *failed = None;
    error
}

/// One agent in `portolan_collector_agents_connected` while it lives.
struct ConnectedAgent;

impl ConnectedAgent {
    fn new() -> ConnectedAgent {
        metrics::global().agents_connected.add(&[], 1.0);
        ConnectedAgent
    }
}

impl Drop for ConnectedAgent {
    fn drop(&mut self) {
        metrics::global().agents_connected.add(&[], -1.0);
    }
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::StreamInventoryRequest>,
        claim: &mut fence::Claim,
    ) -> Result<(), IngestError> {
        loop {
            let awake = self.ledger.as_ref().is_some_and(HostLedger::is_awake);
            let received = tokio::select! {
                received = inbound.message() => received,
                () = tokio::time::sleep(ENCODE_WHEN_IDLE), if awake => {
                    if let Some(ledger) = &mut self.ledger {
                        ledger.rest();
                    }
                    continue;
                }
                Some(error) = first_failure(&mut self.failed) => return Err(error),
                reason = self.live.revoked() => return Err(IngestError::Revoked(reason)),
                () = claim.superseded() => {
                    return Err(IngestError::Protocol(
                        "a newer stream of this host took over (the agent reconnected)".into(),
                    ));
                }
            };
            let message = match received {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(status) => {
                    return Err(match status.code() {
                        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                            IngestError::TooLarge(format!(
                                "message refused: {} (limit {} bytes; see `limits.max_message_bytes`)",
                                status.message(),
                                self.limits.max_message_bytes
                            ))
                        }
                        // prost refused the bytes: the agent's fault, not the stream's.
                        tonic::Code::Internal if status.message().contains("decode") => {
                            IngestError::Invalid(format!(
                                "cannot decode the message as a portolan.v1 StreamInventoryRequest: {}",
                                status.message()
                            ))
                        }
                        _ => IngestError::Protocol(format!("stream broke: {}", status.message())),
                    });
                }
            };
            self.rate
                .check(&self.host_id, Instant::now())
                .map_err(IngestError::RateLimited)?;
            let Some(message) = message.message else {
                return Err(IngestError::Protocol("empty message".into()));
            };
            let kind = match &message {
                AgentMessage::Hello(_) => "hello",
                AgentMessage::Snapshot(_) => "snapshot_part",
                AgentMessage::Delta(_) => "delta",
                AgentMessage::Heartbeat(_) => "heartbeat",
            };
            metrics::global().messages.inc(&[("kind", kind)]);
            let span = ingest_span(&self.host_id, kind, &message);
            match (message, self.hello.is_some()) {
                // Each handler is boxed: the task of every connected agent stays the size
                // of this loop while it waits, not of the largest write.
                (AgentMessage::Hello(hello), false) => {
                    Box::pin(self.on_hello(hello).instrument(span)).await?
                }
                (AgentMessage::Hello(_), true) => {
                    return Err(IngestError::Protocol("second Hello on one stream".into()));
                }
                (_, false) => {
                    return Err(IngestError::Protocol(
                        "the first message of a stream must be Hello".into(),
                    ));
                }
                (AgentMessage::Snapshot(part), true) => {
                    Box::pin(self.on_snapshot_part(part).instrument(span)).await?
                }
                (AgentMessage::Delta(delta), true) => {
                    Box::pin(self.on_delta(delta).instrument(span)).await?
                }
                (AgentMessage::Heartbeat(hb), true) => {
                    Box::pin(self.on_heartbeat(hb).instrument(span)).await?
                }
            }
        }
    }

    async fn send(&self, message: CollectorMessage) -> Result<(), IngestError> {
        self.tx
            .send(Ok(pb::StreamInventoryResponse {
                message: Some(message),
            }))
            .await
            .map_err(|_| IngestError::Protocol("agent went away".into()))
    }

    /// Hands `q` to [`acknowledge_in_order`]; waits while `limits.max_in_flight` writes
    /// are queued (the agent then waits for acknowledgements).
    async fn queue(&self, q: Queued) -> Result<(), IngestError> {
        self.queue
            .send(Box::new(q))
            .await
            .map_err(|_| IngestError::Protocol("the stream's acknowledgements stopped".into()))
    }

    /// Sends `message` to the agent after the answers to everything queued before.
    async fn answer(&self, message: CollectorMessage) -> Result<(), IngestError> {
        self.queue(Queued::Send(message)).await
    }

    /// Waits until every write queued so far is durable; the first failure if one was not.
    async fn drain(&mut self) -> Result<(), IngestError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.queue(Queued::Flush(done)).await?;
        let _ = wait.await;
        match self.failed.as_mut().map(oneshot::Receiver::try_recv) {
            Some(Ok(error)) => Err(error),
            _ => Ok(()),
        }
    }

    async fn on_hello(&mut self, hello: pb::Hello) -> Result<(), IngestError> {
        if hello.host_id != self.host_id {
            return Err(IngestError::HostMismatch {
                certificate: self.host_id.clone(),
                claimed: hello.host_id,
            });
        }
        validate_hello(&hello)?;
        // Rolls back what a crashed or interrupted write of this host left uncommitted, so
        // that the agent's next seq continues from what is really stored.
        let (mut ledger, recovery) = HostLedger::open(self.store.clone(), &self.host_id).await?;
        if recovery.rolled_back_rows > 0 || recovery.restored_rows > 0 {
            warn!(host = %self.host_id, ?recovery, "rolled back an interrupted write of this host");
        }
        // New labels, hostname or version are stored now, whether the agent goes on with
        // a snapshot or resumes with deltas.
        if ledger.hello(self.host_record(&hello)).await? {
            info!(host = %self.host_id, hostname = %hello.hostname, "stored the host's new Hello facts");
        }
        let last_seq = ledger.last_seq();
        info!(host = %self.host_id, hostname = %hello.hostname, agent = %hello.agent_version, last_seq, "agent connected");
        self.ledger = Some(ledger);
        self.hello = Some(hello);
        self.connected = Some(ConnectedAgent::new());
        self.send(CollectorMessage::Welcome(pb::Welcome {
            last_seq,
            collector_version: env!("CARGO_PKG_VERSION").into(),
            max_message_bytes: self.limits.max_message_bytes,
            max_sockets_per_message: self.limits.max_sockets_per_message,
            max_in_flight: self.limits.max_in_flight,
            max_messages_per_second: self.limits.max_messages_per_second,
            max_message_burst: self.limits.max_message_burst,
        }))
        .await
    }

    /// The host's ledger: there from Hello on, and no other message is handled before.
    fn ledger(&mut self) -> Result<&mut HostLedger, IngestError> {
        self.ledger.as_mut().ok_or_else(|| {
            IngestError::Protocol("the first message of a stream must be Hello".into())
        })
    }

    /// The host's last stored (or queued) seq; 0 before Hello.
    fn last_seq(&self) -> u64 {
        self.ledger.as_ref().map_or(0, HostLedger::last_seq)
    }

    fn check_message_size(&self, what: &str, items: usize) -> Result<(), IngestError> {
        let limit = self.limits.max_sockets_per_message as usize;
        if items > limit {
            return Err(IngestError::TooLarge(format!(
                "{what} carries {items} sockets, flows and processes, over the limit of {limit} per message (`limits.max_sockets_per_message`)"
            )));
        }
        Ok(())
    }

    async fn on_snapshot_part(&mut self, part: pb::Snapshot) -> Result<(), IngestError> {
        let received = Instant::now();
        self.check_message_size(
            "snapshot part",
            part.sockets.len() + part.flows.len() + part.processes.len(),
        )?;
        let scanned_at = time_from_nanos(part.scanned_at_unix_nanos);
        let stats = part.stats.clone().map(ScanStats::from);
        if let Some(stats) = stats {
            self.assembly_stats = Some(stats);
        }
        if let Some(gap) = part.gap {
            self.assembly_gap = Some(gap);
        }
        let done = self
            .assembly
            .push(part, self.limits.max_snapshot_items as usize)
            .map_err(|e| IngestError::Invalid(e.to_string()))?;
        let Some((seq, inventory)) = done else {
            return Ok(());
        };
        let stats = self.assembly_stats.take().unwrap_or_default();
        let gap = self.assembly_gap.take();
        // What the snapshot is diffed against is what ClickHouse holds: every write
        // queued before it must be there first.
        self.drain().await?;
        self.awaiting_snapshot = false;
        let last_seq = self.last_seq();
        let holds_state = self.ledger()?.holds_state();
        if seq <= last_seq && holds_state {
            debug!(host = %self.host_id, seq, "snapshot already stored; acknowledging the replay");
            return self.answer(CollectorMessage::Ack(pb::Ack { seq })).await;
        }
        if seq <= last_seq {
            // A snapshot below what is stored cannot be placed in history.
            return self
                .resync(format!(
                    "snapshot seq {seq} is not after the stored seq {last_seq}"
                ))
                .await;
        }
        let gap = gap.map(|gap| {
            warn!(host = %self.host_id, seq, dropped_changes = gap.dropped_changes, "the agent's spool overflowed: history holds the net effect of its folded changes");
            metrics::global().spool_gaps.inc(&[]);
            SpoolGap {
                seq,
                from: time_from_nanos(gap.from_unix_nanos),
                to: time_from_nanos(gap.to_unix_nanos),
                dropped_changes: gap.dropped_changes,
            }
        });
        let (sockets, flows) = (inventory.sockets.len(), inventory.flows.len());
        let store_span = store_span("snapshot", seq);
        // The Hello facts and the change to the snapshot, as one write.
        let (receipt, pending) = self
            .ledger()?
            .snapshot(seq, scanned_at, inventory, &stats, gap)
            .instrument(store_span.clone())
            .await?;
        store_span.record("rows", receipt.total());
        drop(store_span);
        info!(host = %self.host_id, seq, sockets, flows, ?receipt, "snapshot queued");
        self.queue(Queued::Change {
            seq,
            kind: "snapshot",
            pending,
            receipt,
            received,
        })
        .await
    }

    async fn on_delta(&mut self, delta: pb::Delta) -> Result<(), IngestError> {
        let received = Instant::now();
        let items = delta.added.len()
            + delta.removed.len()
            + delta.changed.len()
            + delta.flows_upserted.len()
            + delta.flows_removed.len()
            + delta.processes.len();
        self.check_message_size("delta", items)?;
        let (seq, base_seq) = (delta.seq, delta.base_seq);
        if self.awaiting_snapshot {
            // Sent before the agent heard the Resync: it sends the snapshot next.
            debug!(host = %self.host_id, seq, "dropping a delta sent before the agent heard the Resync");
            return Ok(());
        }
        let last_seq = self.last_seq();
        if seq <= last_seq {
            debug!(host = %self.host_id, seq, "delta already stored; acknowledging the replay");
            return self.answer(CollectorMessage::Ack(pb::Ack { seq })).await;
        }
        if base_seq != last_seq || seq != base_seq + 1 {
            return self
                .resync(format!(
                    "delta {base_seq}→{seq} does not follow the stored seq {last_seq}"
                ))
                .await;
        }
        // A delta on a fresh stream (the agent reconnected, perhaps to another replica)
        // applies to what ClickHouse holds: no snapshot needed when the seqs line up. The
        // ledger reads it then, once every write queued before is durable.
        if !self.ledger()?.holds_state() {
            self.drain().await?;
        }
        let scanned_at = time_from_nanos(delta.scanned_at_unix_nanos);
        let stats = delta.stats.clone().map(ScanStats::from).unwrap_or_default();
        let change = delta_from_wire(delta).map_err(|e| IngestError::Invalid(e.to_string()))?;
        let store_span = store_span("delta", seq);
        let outcome = self
            .ledger()?
            .delta(seq, scanned_at, &change, &stats)
            .instrument(store_span.clone())
            .await?;
        let (receipt, pending) = match outcome {
            DeltaOutcome::Queued(receipt, pending) => (receipt, pending),
            DeltaOutcome::DoesNotApply(reason) => return self.resync(reason).await,
        };
        store_span.record("rows", receipt.total());
        drop(store_span);
        debug!(host = %self.host_id, seq, ?receipt, "delta queued");
        self.queue(Queued::Change {
            seq,
            kind: "delta",
            pending,
            receipt,
            received,
        })
        .await
    }

    async fn on_heartbeat(&mut self, hb: pb::Heartbeat) -> Result<(), IngestError> {
        let received = Instant::now();
        let stats = hb.stats.map(ScanStats::from).unwrap_or_default();
        let store_span = store_span("heartbeat", self.last_seq());
        store_span.record("rows", 1);
        let pending = self
            .ledger()?
            .heartbeat(time_from_nanos(hb.at_unix_nanos), &stats)
            .instrument(store_span)
            .await?;
        self.queue(Queued::Heartbeat { pending, received }).await
    }

    async fn resync(&mut self, reason: String) -> Result<(), IngestError> {
        let last_seq = self.last_seq();
        info!(host = %self.host_id, %reason, last_seq, "asking the agent for a full snapshot");
        if let Some(ledger) = &mut self.ledger {
            ledger.forget();
        }
        self.assembly = SnapshotAssembly::default();
        self.assembly_stats = None;
        self.assembly_gap = None;
        self.awaiting_snapshot = true;
        self.answer(CollectorMessage::Resync(pb::Resync { reason, last_seq }))
            .await
    }

    /// The Hello facts of the stream, as the store keeps them.
    fn host_record(&self, hello: &pb::Hello) -> HostRecord {
        HostRecord {
            host_id: self.host_id.clone(),
            hostname: hello.hostname.clone(),
            labels: hello
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(self.enrolled_labels.clone())
                .collect::<BTreeMap<_, _>>(),
            agent_version: hello.agent_version.clone(),
            kernel: hello.kernel.clone(),
            os: hello.os.clone(),
            scan_interval_ms: hello.scan_interval_ms,
            collector: self.collector_name.to_string(),
            host: Default::default(),
        }
    }
}

/// The `ingest` span of one message from the agent. When the message carries the agent's
/// `traceparent` (and it is well formed) the span continues the agent's trace; otherwise
/// it starts one.
fn ingest_span(host: &str, kind: &str, message: &AgentMessage) -> tracing::Span {
    let (seq, traceparent) = match message {
        AgentMessage::Hello(_) => (None, ""),
        AgentMessage::Snapshot(s) => (Some(s.seq), s.traceparent.as_str()),
        AgentMessage::Delta(d) => (Some(d.seq), d.traceparent.as_str()),
        AgentMessage::Heartbeat(h) => (Some(h.last_seq), h.traceparent.as_str()),
    };
    let span = tracing::info_span!("ingest", host, kind, seq);
    portolan_telemetry::set_remote_parent(&span, traceparent);
    span
}

/// The `store` span of one ClickHouse write (a child of the current `ingest` span); its
/// `rows` are recorded once written.
fn store_span(kind: &'static str, seq: u64) -> tracing::Span {
    tracing::info_span!("store", kind, seq, rows = tracing::field::Empty)
}

fn validate_hello(hello: &pb::Hello) -> Result<(), IngestError> {
    let strings = [
        ("hostname", &hello.hostname),
        ("agent_version", &hello.agent_version),
        ("kernel", &hello.kernel),
        ("os", &hello.os),
    ];
    for (field, value) in strings {
        if value.len() > MAX_HELLO_STRING {
            return Err(IngestError::Invalid(format!(
                "Hello `{field}` is {} bytes, over {MAX_HELLO_STRING}",
                value.len()
            )));
        }
    }
    check_labels(&hello.labels).map_err(IngestError::Invalid)
}

/// Checks a host's labels (from a Hello, or an enrollment token): at most [`MAX_LABELS`],
/// keys of letters, digits and `_-./`, keys and values of bounded size.
pub(crate) fn check_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    let labels: Vec<(&String, &String)> = labels.into_iter().collect();
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels, over {MAX_LABELS}", labels.len()));
    }
    for (k, v) in labels {
        let valid_key = !k.is_empty()
            && k.len() <= MAX_HELLO_STRING
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
        if !valid_key || v.len() > MAX_HELLO_STRING {
            return Err(format!(
                "label `{k}` is invalid: keys are 1-{MAX_HELLO_STRING} characters of letters, digits, `_-./`, values at most {MAX_HELLO_STRING} bytes"
            ));
        }
    }
    Ok(())
}

fn time_from_nanos(nanos: i64) -> SystemTime {
    u64::try_from(nanos).map_or(UNIX_EPOCH, |n| UNIX_EPOCH + Duration::from_nanos(n))
}
