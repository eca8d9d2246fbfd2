//! The agent's stream to the collector: Hello → Snapshot → Deltas/Heartbeats, up to the
//! collector's `max_in_flight` messages sent ahead of their acknowledgements (one for a
//! collector that does not say) and paced under its rate; reconnection with exponential
//! backoff and full jitter.
//!
//! Scanning does not wait for the collector: a scan loop records every change in the
//! on-disk spool ([`crate::spool`]), and the stream sends from the spool whatever the
//! collector's Welcome says it lacks. Each delta follows the record before it, so what the
//! collector stores is exactly the chain of inventories the agent saw, with their scan
//! times, even across an outage or an agent restart.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portolan_core::ScanStats;
use portolan_core::backoff::{Backoff, Jitter};
use portolan_core::wire::snapshot_parts;
use portolan_proto::v1 as pb;
use portolan_proto::v1::ingest_service_client::IngestServiceClient;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use portolan_proto::v1::stream_inventory_response::Message as CollectorMessage;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::footprint::{self, Guard};
use crate::health;
use crate::metrics;
use crate::scan::{ScanOptions, Scanner};
use crate::spool::{Outgoing, Recorded, Spool, SpoolError};

/// How late a scan may end past its interval before the agent counts as not alive, for
/// intervals shorter than this.
const SCAN_GRACE: Duration = Duration::from_secs(60);

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
    /// The spool could not be read or written.
    #[error("{0}")]
    Spool(String),
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

/// Runs the agent until `shutdown` turns true: scans into the spool on one task, and
/// connects, streams and reconnects on this one.
pub async fn run(
    config: AgentConfig,
    facts: HostFacts,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let scanner = Scanner::new(ScanOptions {
        proc_root: config.proc_root.clone(),
        attribute_processes: config.attribute_processes,
        namespaces: config.namespaces,
        pod_logs_dir: config.pod_logs_dir.clone(),
        ..ScanOptions::default()
    });
    let spool = Spool::open(&config.spool.dir, config.spool.max_size)
        .map_err(|e| StreamError::Setup(e.to_string()))?;
    if spool.pending() > 0 {
        info!(
            records = spool.pending(),
            bytes = spool.bytes(),
            "the spool holds changes from before this start; they are sent once a collector answers"
        );
    }
    let spool = Arc::new(Mutex::new(spool));
    let config = Arc::new(config);
    health::global().describe(&config.collector.endpoint, config.spool.max_size);
    let (reports_tx, mut reports) = watch::channel(None);
    let scans = tokio::spawn({
        let (config, spool) = (config.clone(), spool.clone());
        async move {
            scan_loop(config, scanner, spool, reports_tx).await;
            health::global().scan_loop_ended();
        }
    });
    let _stop_scans = AbortOnDrop(scans.abort_handle());
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session(&config, &facts, &spool, &mut reports) => r,
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
        health::global().update_readiness(|r| r.disconnected(Some(err.to_string())));
        let max = config.collector.max_backoff;
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
    Backoff {
        initial: Duration::from_millis(500),
        max,
        jitter: Jitter::Full,
    }
    .wait(failures, fastrand::f64())
    .max(Duration::from_millis(50))
}

/// What the scan loop tells the stream after each scan.
#[derive(Debug, Clone)]
struct ScanReport {
    /// Scan time (Unix nanoseconds).
    at: i64,
    stats: ScanStats,
    /// Whether the scan added anything to the spool.
    changed: bool,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Scans every interval (stretched by the footprint guard) and records each change in the
/// spool, connected or not.
async fn scan_loop(
    config: Arc<AgentConfig>,
    scanner: Scanner,
    spool: Arc<Mutex<Spool>>,
    reports: watch::Sender<Option<ScanReport>>,
) {
    let mut guard = Guard::new(config.footprint.clone());
    // The scanner, and the warnings of its last scan (each is logged when it appears).
    let mut scanner = Some((scanner, BTreeSet::new()));
    let mut last_observed = Instant::now();
    let mut attribute = config.attribute_processes;
    let mut next_scan = tokio::time::Instant::now();
    loop {
        // Alive while the next scan starts and ends on time: its wait, then at most the
        // longer of an interval and a minute.
        let wait = next_scan.saturating_duration_since(tokio::time::Instant::now());
        health::global().scan_loop_beat(wait + config.scan_interval.max(SCAN_GRACE));
        tokio::time::sleep_until(next_scan).await;
        let Some((mut taken, mut warned)) = scanner.take() else {
            return;
        };
        let spool_for_scan = spool.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = scan_into_spool(&mut taken, &mut warned, &spool_for_scan, attribute);
            ((taken, warned), result)
        })
        .await;
        let (returned, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "the scan task failed; the agent stops scanning");
                return;
            }
        };
        scanner = Some(returned);
        match result {
            Ok(report) => {
                health::global().update_readiness(health::AgentReadiness::scan_succeeded);
                if reports.send(Some(report)).is_err() {
                    return;
                }
            }
            Err(e) => {
                health::global().update_readiness(|r| r.scan_failed(e.to_string()));
                metrics::global().scans.inc(&[("outcome", "failed")]);
                warn!(error = %e, "scan failed; retrying at the next interval");
            }
        }
        // The footprint guard: measured after the scan, which is most of the agent's work.
        let elapsed = last_observed.elapsed();
        last_observed = Instant::now();
        let m = metrics::global();
        let resident = footprint::resident_bytes().unwrap_or(0);
        let decision = match footprint::cpu_seconds() {
            Some(cpu) => guard.observe(cpu, elapsed, resident),
            None => guard.observe(0.0, elapsed, resident),
        };
        m.cpu_percent.set(&[], guard.cpu_percent());
        m.resident_bytes.set(&[], resident as f64);
        m.footprint_level.set(&[], f64::from(decision.level));
        let wanted = config.attribute_processes && decision.attribute_processes;
        if wanted != attribute {
            warn!(
                level = decision.level,
                cpu_percent = guard.cpu_percent(),
                resident,
                attribute = wanted,
                "footprint guard changed process attribution"
            );
            attribute = wanted;
        }
        let interval = config.scan_interval * decision.interval_factor;
        next_scan += interval;
        let now = tokio::time::Instant::now();
        if next_scan < now {
            // A scan longer than the interval: start the next one a whole interval later
            // instead of catching up in a burst.
            next_scan = now + interval;
        }
    }
}

/// One scan, recorded in the spool.
fn scan_into_spool(
    scanner: &mut Scanner,
    warned: &mut BTreeSet<String>,
    spool: &Mutex<Spool>,
    attribute: bool,
) -> Result<ScanReport, StreamError> {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "scan",
        sockets = Empty,
        listeners = Empty,
        connections = Empty,
        changed = Empty
    );
    let _scan = span.enter();
    scanner.set_attribute_processes(attribute);
    let scan = scanner
        .scan()
        .map_err(|e| StreamError::Scan(e.to_string()))?;
    metrics::global().record_scan(&scan);
    log_new_warnings(&scan.warnings, warned);
    span.record("sockets", scan.stats.sockets);
    span.record("listeners", scan.stats.listeners);
    span.record("connections", scan.stats.connections);
    let at = unix_nanos(SystemTime::now());
    let stats = scan.stats.clone();
    let mut inventory = scan.inventory();
    drop(scan);
    let mut spool = spool
        .lock()
        .map_err(|_| StreamError::Scan("the spool lock was poisoned by a panic".into()))?;
    if !attribute {
        footprint::keep_known_owners(spool.tip(), &mut inventory);
    }
    let recorded = spool
        .record(inventory, at, &stats)
        .map_err(|e| StreamError::Spool(e.to_string()))?;
    if let Recorded::Compacted { seq, gap } = &recorded {
        metrics::global().spool_gaps.inc(&[]);
        health::global().update_readiness(health::AgentReadiness::spool_overflowed);
        warn!(
            seq,
            dropped_changes = gap.dropped_changes,
            bytes = spool.bytes(),
            "the spool is full: unsent changes were folded into one snapshot (a gap in history)"
        );
    }
    record_spool_metrics(&spool);
    span.record("changed", recorded != Recorded::Unchanged);
    Ok(ScanReport {
        at,
        stats,
        changed: recorded != Recorded::Unchanged,
    })
}

/// Logs each warning of a scan that the scan before did not have (what the agent cannot
/// see, and why), so that a lasting condition is logged once, not every interval.
fn log_new_warnings(warnings: &[String], warned: &mut BTreeSet<String>) {
    for warning in warnings {
        if !warned.contains(warning) {
            warn!(warning = %warning, "scan incomplete");
        }
    }
    *warned = warnings.iter().cloned().collect();
}

fn record_spool_metrics(spool: &Spool) {
    let m = metrics::global();
    m.spool_pending.set(&[], spool.pending() as f64);
    m.spool_bytes.set(&[], spool.bytes() as f64);
}

/// Runs `f` on the spool on a blocking thread (it reads and writes the disk).
async fn with_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, StreamError> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        let mut spool = spool
            .lock()
            .map_err(|_| StreamError::Spool("the spool lock was poisoned by a panic".into()))?;
        let result = f(&mut spool).map_err(|e| StreamError::Spool(e.to_string()));
        record_spool_metrics(&spool);
        result
    })
    .await
    .map_err(|e| StreamError::Spool(format!("spool task failed: {e}")))?
}

/// One connection: Hello, Welcome, then everything the spool holds after the collector's
/// seq, up to `max_in_flight` messages ahead of the acknowledgements; heartbeats when a
/// scan found nothing new and nothing waits.
async fn session(
    config: &AgentConfig,
    facts: &HostFacts,
    spool: &Arc<Mutex<Spool>>,
    reports: &mut watch::Receiver<Option<ScanReport>>,
) -> Result<(), StreamError> {
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
    let mut client = IngestServiceClient::new(channel).max_decoding_message_size(4 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<pb::StreamInventoryRequest>(4);
    let hello = pb::Hello {
        host_id: facts.host_id.clone(),
        hostname: facts.hostname.clone(),
        labels: config.labels.clone().into_iter().collect(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel: facts.kernel.clone(),
        os: facts.os.clone(),
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
    let last_seq = welcome.last_seq;
    with_spool(spool, move |s| s.connected(last_seq)).await?;
    // Reports from before this connection are old news: the spool holds their changes.
    reports.borrow_and_update();
    let window = usize::try_from(welcome.max_in_flight)
        .unwrap_or(MAX_IN_FLIGHT)
        .clamp(1, MAX_IN_FLIGHT);
    let mut pace = Pace::new(welcome.max_messages_per_second, welcome.max_message_burst);
    // Sent and not acknowledged yet, oldest first.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    // The seq of the last message sent (or known to the collector).
    let mut sent_up_to = last_seq;
    loop {
        // Everything the collector does not hold yet, oldest first, up to the window. A
        // snapshot goes alone: what follows it applies to it.
        while in_flight.len() < window && in_flight.back().is_none_or(|f| f.kind != "snapshot") {
            let after = sent_up_to;
            // A snapshot right after what is in flight waits for its acknowledgements.
            let hold_snapshot = !in_flight.is_empty();
            let Some(out) = with_spool(spool, move |s| s.next_after(after, hold_snapshot)).await?
            else {
                break;
            };
            pace.wait().await;
            sent_up_to = out.seq();
            in_flight.push_back(send_outgoing(&tx, out, max_items).await?);
        }
        let Some(oldest) = in_flight.front() else {
            // Idle until the next scan.
            tokio::select! {
                changed = reports.changed() => {
                    if changed.is_err() {
                        return Err(StreamError::Scan("the scan loop stopped".into()));
                    }
                }
                message = inbound.message() => {
                    return match message? {
                        None => Err(StreamError::Protocol("collector closed the stream".into())),
                        Some(m) => Err(StreamError::Protocol(format!("unexpected message while idle: {:?}", m.message))),
                    };
                }
            }
            let report = reports.borrow_and_update().clone();
            if let Some(report) = report
                && !report.changed
            {
                // Two counters, no disk: read under the lock, not on a blocking thread.
                let (pending, acked) = {
                    let s = spool.lock().map_err(|_| {
                        StreamError::Spool("the spool lock was poisoned by a panic".into())
                    })?;
                    (s.pending(), s.acked_seq().unwrap_or(0))
                };
                if pending == 0 {
                    pace.wait().await;
                    heartbeat(&tx, acked, report.at, &report.stats).await?;
                    metrics::global().sent.inc(&[("kind", "heartbeat")]);
                }
            }
            continue;
        };
        // Waiting for the oldest message's answer; a new scan may fill the window meanwhile.
        let left =
            (oldest.sent + config.collector.ack_timeout).saturating_duration_since(Instant::now());
        let wanted = oldest.seq;
        let newest = in_flight.back().map_or(wanted, |f| f.seq);
        let answer = tokio::select! {
            answer = receive(&mut inbound, left) => answer?,
            changed = reports.changed() => {
                if changed.is_err() {
                    return Err(StreamError::Scan("the scan loop stopped".into()));
                }
                reports.borrow_and_update();
                continue;
            }
        };
        match answer {
            CollectorMessage::Ack(ack) if ack.seq < wanted => {}
            CollectorMessage::Ack(ack) if ack.seq <= newest => {
                while in_flight.front().is_some_and(|f| f.seq <= ack.seq) {
                    if let Some(done) = in_flight.pop_front() {
                        let m = metrics::global();
                        m.acked.inc(&[("kind", done.kind)]);
                        m.ack_latency
                            .observe(&[], done.sent.elapsed().as_secs_f64());
                    }
                }
                let acked = ack.seq;
                with_spool(spool, move |sp| sp.acknowledged(acked)).await?;
            }
            CollectorMessage::Ack(ack) => {
                return Err(StreamError::Protocol(format!(
                    "collector acknowledged seq {} but {newest} is the last sent",
                    ack.seq
                )));
            }
            CollectorMessage::Resync(r) => {
                info!(reason = %r.reason, last_seq = r.last_seq, "collector asked for a full snapshot");
                // What was sent after is dropped by the collector until the snapshot.
                in_flight.clear();
                let last = r.last_seq;
                sent_up_to = last;
                with_spool(spool, move |sp| sp.resync(last)).await?;
            }
            CollectorMessage::Welcome(_) => {
                return Err(StreamError::Protocol(
                    "second Welcome from the collector".into(),
                ));
            }
        }
    }
}

/// Most messages an agent keeps unacknowledged, whatever its collector allows.
const MAX_IN_FLIGHT: usize = 64;

/// A message sent and not acknowledged yet.
struct InFlight {
    seq: u64,
    kind: &'static str,
    sent: Instant,
    /// Lives until the acknowledgement; its context travels in the message.
    _span: tracing::Span,
}

/// Sends one record of the spool: a snapshot (in parts) or a delta.
async fn send_outgoing(
    tx: &mpsc::Sender<pb::StreamInventoryRequest>,
    out: Outgoing,
    max_items: usize,
) -> Result<InFlight, StreamError> {
    let seq = out.seq();
    let send_span = tracing::info_span!("send", kind = tracing::field::Empty, seq);
    let traceparent = portolan_telemetry::traceparent(&send_span);
    let kind = match out {
        Outgoing::Snapshot {
            seq,
            inventory,
            at,
            stats,
            gap,
        } => {
            let mut parts = snapshot_parts(&inventory, seq, at, &stats, max_items);
            if let Some(first) = parts.first_mut() {
                first.gap = gap;
            }
            let n = parts.len();
            for mut part in parts {
                part.traceparent.clone_from(&traceparent);
                send(tx, AgentMessage::Snapshot(part)).await?;
            }
            debug!(
                seq,
                parts = n,
                sockets = inventory.sockets.len(),
                flows = inventory.flows.len(),
                gap = gap.is_some(),
                "snapshot sent"
            );
            "snapshot"
        }
        Outgoing::Delta(mut delta) => {
            delta.traceparent = traceparent;
            debug!(
                seq,
                added = delta.added.len(),
                removed = delta.removed.len(),
                changed = delta.changed.len(),
                flows = delta.flows_upserted.len() + delta.flows_removed.len(),
                "delta sent"
            );
            send(tx, AgentMessage::Delta(delta)).await?;
            "delta"
        }
    };
    send_span.record("kind", kind);
    metrics::global().sent.inc(&[("kind", kind)]);
    Ok(InFlight {
        seq,
        kind,
        sent: Instant::now(),
        _span: send_span,
    })
}

/// Keeps an agent under the rate its collector holds it to (`Welcome`): a token bucket
/// at nine tenths of the rate, so that clock differences never tip it over.
struct Pace {
    /// Messages per second; 0: no limit said.
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(rate: u32, burst: u32) -> Pace {
        let burst = f64::from(burst.max(1)) * 0.9;
        Pace {
            rate: f64::from(rate) * 0.9,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Waits until one more message keeps under the rate, and counts it.
    async fn wait(&mut self) {
        if self.rate <= 0.0 {
            return;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.at = Instant::now();
        }
        self.tokens -= 1.0;
    }
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

/// `portolan_agent_stream_connected` is 1, and readiness counts the agent connected,
/// while one of these lives.
struct ConnectedGauge;

impl ConnectedGauge {
    fn up() -> ConnectedGauge {
        metrics::global().connected.set(&[], 1.0);
        health::global().update_readiness(health::AgentReadiness::connected);
        ConnectedGauge
    }
}

impl Drop for ConnectedGauge {
    fn drop(&mut self) {
        metrics::global().connected.set(&[], 0.0);
        health::global().update_readiness(|r| r.disconnected(None));
    }
}

async fn heartbeat(
    tx: &mpsc::Sender<pb::StreamInventoryRequest>,
    seq: u64,
    at: i64,
    stats: &ScanStats,
) -> Result<(), StreamError> {
    let span = tracing::info_span!("send", kind = "heartbeat", seq);
    send(
        tx,
        AgentMessage::Heartbeat(pb::Heartbeat {
            last_seq: seq,
            at_unix_nanos: at,
            stats: Some(pb::ScanStats::from(stats)),
            traceparent: portolan_telemetry::traceparent(&span),
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
