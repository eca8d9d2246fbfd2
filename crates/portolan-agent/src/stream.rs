//! The agent's stream to the collector: Hello → Snapshot → Deltas/Heartbeats, one message
//! in flight at a time, acknowledged before the next; reconnection with exponential
//! backoff and full jitter.
//!
//! A delta is always computed against the inventory the collector acknowledged last, so
//! what the collector stores is exactly the chain of inventories the agent saw.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portolan_core::wire::{delta_to_wire, snapshot_parts};
use portolan_core::{Inventory, ScanStats, diff};
use portolan_proto::v1 as pb;
use portolan_proto::v1::ingest_service_client::IngestServiceClient;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use portolan_proto::v1::stream_inventory_response::Message as CollectorMessage;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::metrics;
use crate::scan::{Scan, ScanOptions, Scanner};

/// Sockets + flows per snapshot part (well under the collector's default limits).
const SNAPSHOT_PART_ITEMS: usize = 5_000;

/// Why one connection to the collector ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The configuration or certificates are unusable.
    #[error("{0}")]
    Setup(String),
    /// Could not connect.
    #[error("cannot connect to the collector at {endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The collector refused or ended the stream.
    #[error("collector ended the stream: {0}")]
    Status(#[from] tonic::Status),
    /// The collector broke the protocol or went silent.
    #[error("{0}")]
    Protocol(String),
    /// The scanner failed.
    #[error("scan failed: {0}")]
    Scan(String),
}

impl StreamError {
    /// Errors that retrying as is cannot fix: the operator must act (wrong certificate,
    /// wrong host_id). The agent still retries, at the longest backoff, so that it
    /// recovers by itself once the operator fixed the cause.
    pub fn needs_operator(&self) -> bool {
        match self {
            StreamError::Setup(_) => true,
            StreamError::Status(s) => matches!(
                s.code(),
                tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
            ),
            _ => false,
        }
    }
}

/// Host facts sent in Hello.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// host_id (must match the certificate).
    pub host_id: String,
    /// Hostname.
    pub hostname: String,
    /// Kernel release.
    pub kernel: String,
    /// OS description.
    pub os: String,
}

/// Runs the agent until `shutdown` turns true: connects, streams, reconnects.
pub async fn run(
    config: AgentConfig,
    facts: HostFacts,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let scanner = Scanner::new(ScanOptions {
        proc_root: config.proc_root.clone(),
        attribute_processes: config.attribute_processes,
        ..ScanOptions::default()
    });
    let mut agent = Agent {
        config: Arc::new(config),
        facts,
        scanner: Some(scanner),
        acked: None,
        in_flight: None,
    };
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = agent.session() => r,
            _ = shutdown.changed() => return Ok(()),
        };
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // A session that lasted a while was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        metrics::global().reconnects.inc(&[]);
        let max = agent.config.collector.max_backoff;
        let wait = if err.needs_operator() {
            max
        } else {
            backoff(failures, max)
        };
        warn!(error = %err, retry_in = ?wait, "collector stream failed");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Exponential backoff from 500 ms doubling to `max`, with full jitter (a random wait
/// between 0 and the bound), so that a fleet reconnecting after a collector restart does
/// not arrive all at once.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let bound = Duration::from_millis(500).saturating_mul(1 << exp).min(max);
    let jitter = fastrand::f64();
    bound.mul_f64(jitter).max(Duration::from_millis(50))
}

struct Agent {
    config: Arc<AgentConfig>,
    facts: HostFacts,
    /// Taken while a scan runs on a blocking thread.
    scanner: Option<Scanner>,
    /// The last inventory a collector acknowledged, and its seq. Kept across
    /// reconnections: when the collector's stored seq is this one, the agent goes on with
    /// deltas instead of a full snapshot (no snapshot storm after a collector restart).
    acked: Option<(u64, Inventory)>,
    /// The inventory of the snapshot or delta sent and not yet acknowledged, and its
    /// seq. When the connection breaks after the collector stored it but before its
    /// acknowledgement arrived, the next Welcome names this seq: it is then as good as
    /// acknowledged, and the agent goes on with deltas.
    in_flight: Option<(u64, Inventory)>,
}

impl Agent {
    async fn scan(&mut self) -> Result<Scan, StreamError> {
        let mut scanner = self
            .scanner
            .take()
            .ok_or_else(|| StreamError::Scan("scanner lost by an earlier failure".into()))?;
        let (scanner, result) = tokio::task::spawn_blocking(move || {
            let result = scanner.scan();
            (scanner, result)
        })
        .await
        .map_err(|e| StreamError::Scan(format!("scan task failed: {e}")))?;
        self.scanner = Some(scanner);
        match result {
            Ok(scan) => {
                metrics::global().record_scan(&scan);
                Ok(scan)
            }
            Err(e) => {
                metrics::global().scans.inc(&[("outcome", "failed")]);
                Err(StreamError::Scan(e.to_string()))
            }
        }
    }

    async fn session(&mut self) -> Result<(), StreamError> {
        let config = self.config.clone();
        let endpoint = config.collector.endpoint.clone();
        let tls = portolan_tls::client_config(&config.tls_files())
            .map_err(|e| StreamError::Setup(e.to_string()))?;
        let options = portolan_tls::ConnectOptions {
            server_name: (!config.collector.server_name.is_empty())
                .then(|| config.collector.server_name.clone()),
            ..portolan_tls::ConnectOptions::default()
        };
        let channel = portolan_tls::connect(&endpoint, tls, options)
            .await
            .map_err(|e| StreamError::Connect {
                endpoint: endpoint.clone(),
                message: e.to_string(),
            })?;
        let mut client =
            IngestServiceClient::new(channel).max_decoding_message_size(4 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<pb::StreamInventoryRequest>(4);
        let hello = pb::Hello {
            host_id: self.facts.host_id.clone(),
            hostname: self.facts.hostname.clone(),
            labels: config.labels.clone().into_iter().collect(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel: self.facts.kernel.clone(),
            os: self.facts.os.clone(),
            scan_interval_ms: u64::try_from(config.scan_interval.as_millis()).unwrap_or(u64::MAX),
        };
        send(&tx, AgentMessage::Hello(hello)).await?;
        let mut inbound = client
            .stream_inventory(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = match receive(&mut inbound, Duration::from_secs(30)).await? {
            CollectorMessage::Welcome(w) => w,
            other => {
                return Err(StreamError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
        };
        info!(endpoint = %endpoint, last_seq = welcome.last_seq, collector = %welcome.collector_version, "connected to collector");
        let _connected = ConnectedGauge::up();
        let max_items = usize::try_from(welcome.max_sockets_per_message)
            .unwrap_or(SNAPSHOT_PART_ITEMS)
            .clamp(1, SNAPSHOT_PART_ITEMS)
            / 2;
        let max_items = max_items.max(1);

        let mut seq = welcome.last_seq;
        if let Some(sent) = self.in_flight.take()
            && sent.0 == welcome.last_seq
        {
            debug!(
                seq = sent.0,
                "the collector stored the change whose acknowledgement was lost"
            );
            self.acked = Some(sent);
        }
        if self
            .acked
            .as_ref()
            .is_some_and(|(acked_seq, _)| *acked_seq != welcome.last_seq)
        {
            self.acked = None;
        }
        let mut next_scan = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_scan) => {}
                message = inbound.message() => {
                    return match message? {
                        None => Err(StreamError::Protocol("collector closed the stream".into())),
                        Some(m) => Err(StreamError::Protocol(format!("unexpected message while idle: {:?}", m.message))),
                    };
                }
            }
            next_scan += config.scan_interval;
            let scan = self.scan().await?;
            let at = unix_nanos(SystemTime::now());
            let stats = scan.stats.clone();
            let inventory = scan.inventory();
            let outcome = match &self.acked {
                None => {
                    let next = seq + 1;
                    let parts = snapshot_parts(&inventory, next, at, &stats, max_items);
                    let n = parts.len();
                    for part in parts {
                        send(&tx, AgentMessage::Snapshot(part)).await?;
                    }
                    debug!(
                        seq = next,
                        parts = n,
                        sockets = inventory.sockets.len(),
                        flows = inventory.flows.len(),
                        "snapshot sent"
                    );
                    self.in_flight = Some((next, inventory));
                    metrics::global().sent.inc(&[("kind", "snapshot")]);
                    timed_ack(&mut inbound, next, config.collector.ack_timeout, "snapshot").await?
                }
                Some((_, base)) => {
                    let delta = diff(base, &inventory);
                    if delta.is_empty() {
                        heartbeat(&tx, seq, at, &stats).await?;
                        metrics::global().sent.inc(&[("kind", "heartbeat")]);
                        continue;
                    }
                    let next = seq + 1;
                    send(
                        &tx,
                        AgentMessage::Delta(delta_to_wire(&delta, next, seq, at, &stats)),
                    )
                    .await?;
                    debug!(
                        seq = next,
                        added = delta.added.len(),
                        removed = delta.removed.len(),
                        changed = delta.changed.len(),
                        flows = delta.flows_upserted.len() + delta.flows_removed.len(),
                        "delta sent"
                    );
                    self.in_flight = Some((next, inventory));
                    metrics::global().sent.inc(&[("kind", "delta")]);
                    timed_ack(&mut inbound, next, config.collector.ack_timeout, "delta").await?
                }
            };
            match outcome {
                Outcome::Acked(s) => {
                    seq = s;
                    self.acked = self.in_flight.take().filter(|(sent, _)| *sent == s);
                }
                Outcome::Resync(r) => {
                    info!(reason = %r.reason, last_seq = r.last_seq, "collector asked for a full snapshot");
                    seq = r.last_seq;
                    self.acked = None;
                    self.in_flight = None;
                    next_scan = tokio::time::Instant::now();
                }
            }
        }
    }
}

enum Outcome {
    Acked(u64),
    Resync(pb::Resync),
}

async fn send(
    tx: &mpsc::Sender<pb::StreamInventoryRequest>,
    message: AgentMessage,
) -> Result<(), StreamError> {
    let request = pb::StreamInventoryRequest {
        message: Some(message),
    };
    let bytes = prost::Message::encoded_len(&request);
    tx.send(request)
        .await
        .map_err(|_| StreamError::Protocol("stream to the collector closed".into()))?;
    metrics::global().sent_bytes.add(&[], bytes as f64);
    Ok(())
}

/// `portolan_agent_stream_connected` is 1 while one of these lives.
struct ConnectedGauge;

impl ConnectedGauge {
    fn up() -> ConnectedGauge {
        metrics::global().connected.set(&[], 1.0);
        ConnectedGauge
    }
}

impl Drop for ConnectedGauge {
    fn drop(&mut self) {
        metrics::global().connected.set(&[], 0.0);
    }
}

/// [`await_ack`], counting the acknowledgement of a `kind` message and its latency.
async fn timed_ack(
    inbound: &mut Streaming<pb::StreamInventoryResponse>,
    seq: u64,
    timeout: Duration,
    kind: &'static str,
) -> Result<Outcome, StreamError> {
    let sent = Instant::now();
    let outcome = await_ack(inbound, seq, timeout).await?;
    if let Outcome::Acked(_) = outcome {
        let m = metrics::global();
        m.acked.inc(&[("kind", kind)]);
        m.ack_latency.observe(&[], sent.elapsed().as_secs_f64());
    }
    Ok(outcome)
}

async fn heartbeat(
    tx: &mpsc::Sender<pb::StreamInventoryRequest>,
    seq: u64,
    at: i64,
    stats: &ScanStats,
) -> Result<(), StreamError> {
    send(
        tx,
        AgentMessage::Heartbeat(pb::Heartbeat {
            last_seq: seq,
            at_unix_nanos: at,
            stats: Some(pb::ScanStats::from(stats)),
        }),
    )
    .await
}

async fn receive(
    inbound: &mut Streaming<pb::StreamInventoryResponse>,
    timeout: Duration,
) -> Result<CollectorMessage, StreamError> {
    match tokio::time::timeout(timeout, inbound.message()).await {
        Err(_) => Err(StreamError::Protocol(format!(
            "collector sent nothing for {}",
            humantime::format_duration(timeout)
        ))),
        Ok(Err(status)) => Err(StreamError::Status(status)),
        Ok(Ok(None)) => Err(StreamError::Protocol("collector closed the stream".into())),
        Ok(Ok(Some(pb::StreamInventoryResponse { message: None }))) => Err(StreamError::Protocol(
            "empty message from the collector".into(),
        )),
        Ok(Ok(Some(pb::StreamInventoryResponse { message: Some(m) }))) => Ok(m),
    }
}

async fn await_ack(
    inbound: &mut Streaming<pb::StreamInventoryResponse>,
    seq: u64,
    timeout: Duration,
) -> Result<Outcome, StreamError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(inbound, left).await? {
            CollectorMessage::Ack(ack) if ack.seq == seq => return Ok(Outcome::Acked(seq)),
            CollectorMessage::Ack(ack) if ack.seq < seq => continue,
            CollectorMessage::Ack(ack) => {
                return Err(StreamError::Protocol(format!(
                    "collector acknowledged seq {} but {seq} was sent",
                    ack.seq
                )));
            }
            CollectorMessage::Resync(r) => return Ok(Outcome::Resync(r)),
            CollectorMessage::Welcome(_) => {
                return Err(StreamError::Protocol(
                    "second Welcome from the collector".into(),
                ));
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_jittered() {
        let max = Duration::from_secs(60);
        for failures in 1u32..40 {
            let bound = Duration::from_millis(500)
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(max);
            for _ in 0..50 {
                let w = backoff(failures, max);
                assert!(
                    w <= bound.max(Duration::from_millis(50)),
                    "{failures}: {w:?} > {bound:?}"
                );
            }
        }
        let waits: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(10, max)).collect();
        assert!(waits.len() > 10, "backoff is not jittered: {waits:?}");
    }
}
