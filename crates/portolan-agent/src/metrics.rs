//! The agent's Prometheus metrics (`portolan_agent_*`, `portolan_build_info`,
//! `portolan_tls_certificate_*`), served at `/metrics` when `[metrics] listen` is set,
//! beside `/healthz` and `/readyz` ([`crate::health`]).
//!
//! The metrics are process-wide ([`global`]): the scanner and the stream record into
//! them, the HTTP server renders them.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::scan::Scan;
use portolan_core::{Protocol, SocketState};
use portolan_metrics::{DescriptorEncoder, SECONDS};
pub use portolan_metrics::{Family, Histogram, Labels};
use portolan_tls::TlsFiles;

/// Every metric the agent exports.
#[derive(Debug)]
pub struct AgentMetrics {
    /// `portolan_agent_scans_total{outcome}`.
    pub scans: Family,
    /// `portolan_agent_scan_duration_seconds`.
    pub scan_duration: Histogram,
    /// `portolan_agent_sockets{protocol,state}` of the last scan.
    pub sockets: Family,
    /// `portolan_agent_unattributed_sockets{reason}` of the last scan.
    pub unattributed: Family,
    /// `portolan_agent_stream_connected`: 1 while a collector has welcomed this agent.
    pub connected: Family,
    /// `portolan_agent_messages_sent_total{kind}`.
    pub sent: Family,
    /// `portolan_agent_messages_acked_total{kind}`.
    pub acked: Family,
    /// `portolan_agent_sent_bytes_total`: encoded protobuf bytes sent.
    pub sent_bytes: Family,
    /// `portolan_agent_reconnects_total`.
    pub reconnects: Family,
    /// `portolan_agent_ack_latency_seconds`.
    pub ack_latency: Histogram,
    /// `portolan_agent_spool_pending_changes`.
    pub spool_pending: Family,
    /// `portolan_agent_spool_bytes`.
    pub spool_bytes: Family,
    /// `portolan_agent_spool_gaps_total`.
    pub spool_gaps: Family,
    /// `portolan_agent_footprint_level`.
    pub footprint_level: Family,
    /// `portolan_agent_cpu_percent`.
    pub cpu_percent: Family,
    /// `portolan_agent_resident_memory_bytes`.
    pub resident_bytes: Family,
    /// `portolan_agent_network_namespaces{source}` of the last scan: `sock_diag` (the
    /// agent's own and those it entered) or `procfs` (read from `/proc/<pid>/net`).
    pub namespaces: Family,
    /// `portolan_agent_enrollments_total{result}`: issued, pending, failed.
    pub enrollments: Family,
    /// `portolan_agent_certificate_renewals_total{result}`: ok, failed.
    pub renewals: Family,
    tls: Mutex<Option<TlsFiles>>,
}

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let m = AgentMetrics {
            scans: Family::counter(
                "portolan_agent_scans_total",
                "Socket scans by outcome (ok, failed).",
            ),
            scan_duration: Histogram::new(
                "portolan_agent_scan_duration_seconds",
                "How long a socket scan took, process attribution included.",
                SECONDS,
            ),
            sockets: Family::gauge(
                "portolan_agent_sockets",
                "Sockets the last scan saw, by protocol and state.",
            ),
            unattributed: Family::gauge(
                "portolan_agent_unattributed_sockets",
                "Sockets of the last scan without an owning process, by reason.",
            ),
            connected: Family::gauge(
                "portolan_agent_stream_connected",
                "1 while the stream to the collector is up (welcomed), else 0.",
            ),
            sent: Family::counter(
                "portolan_agent_messages_sent_total",
                "Messages sent to the collector, by kind (snapshot, delta, heartbeat).",
            ),
            acked: Family::counter(
                "portolan_agent_messages_acked_total",
                "Snapshots and deltas the collector acknowledged, by kind.",
            ),
            sent_bytes: Family::counter(
                "portolan_agent_sent_bytes_total",
                "Encoded protobuf bytes sent to the collector.",
            ),
            reconnects: Family::counter(
                "portolan_agent_reconnects_total",
                "Times the stream to the collector failed and was retried.",
            ),
            ack_latency: Histogram::new(
                "portolan_agent_ack_latency_seconds",
                "From sending a snapshot or delta to its acknowledgement.",
                SECONDS,
            ),
            namespaces: Family::gauge(
                "portolan_agent_network_namespaces",
                "Network namespaces the last scan inventoried, by how they were read (sock_diag: entered, with interface addresses; procfs: /proc/<pid>/net without CAP_SYS_ADMIN, interface addresses from fib_trie and if_inet6).",
            ),
            spool_pending: Family::gauge(
                "portolan_agent_spool_pending_changes",
                "Snapshots and deltas in the spool that the collector has not acknowledged.",
            ),
            spool_bytes: Family::gauge(
                "portolan_agent_spool_bytes",
                "Size of the spool file (spool.max_size bounds it).",
            ),
            spool_gaps: Family::counter(
                "portolan_agent_spool_gaps_total",
                "Times the spool was full and unsent changes were folded into one snapshot (a gap in history).",
            ),
            footprint_level: Family::gauge(
                "portolan_agent_footprint_level",
                "Footprint guard level: 0 normal, 1 and 2 longer scan intervals, 3 also no process walk (over footprint.max_cpu_percent or max_memory).",
            ),
            cpu_percent: Family::gauge(
                "portolan_agent_cpu_percent",
                "The agent's CPU use in percent of one core, smoothed over recent scans.",
            ),
            resident_bytes: Family::gauge(
                "portolan_agent_resident_memory_bytes",
                "The agent's resident memory (VmRSS).",
            ),
            enrollments: Family::counter(
                "portolan_agent_enrollments_total",
                "Enrollments with the bootstrap token, by result (issued, pending, failed).",
            ),
            renewals: Family::counter(
                "portolan_agent_certificate_renewals_total",
                "Renewals of the agent's certificate over its own identity, by result (ok, failed).",
            ),
            tls: Mutex::new(None),
        };
        for result in ["issued", "pending", "failed"] {
            m.enrollments.touch(&[("result", result)]);
        }
        for result in ["ok", "failed"] {
            m.renewals.touch(&[("result", result)]);
        }
        m.spool_gaps.touch(&[]);
        m.footprint_level.set(&[], 0.0);
        m.connected.set(&[], 0.0);
        m.reconnects.touch(&[]);
        m.sent_bytes.touch(&[]);
        for outcome in ["ok", "failed"] {
            m.scans.touch(&[("outcome", outcome)]);
        }
        for kind in ["snapshot", "delta", "heartbeat"] {
            m.sent.touch(&[("kind", kind)]);
        }
        for kind in ["snapshot", "delta"] {
            m.acked.touch(&[("kind", kind)]);
        }
        m
    }

    /// Records a finished scan: its duration and what it saw.
    pub fn record_scan(&self, scan: &Scan) {
        self.scans.inc(&[("outcome", "ok")]);
        self.scan_duration.observe(
            &[],
            Duration::from_micros(scan.stats.scan_duration_micros).as_secs_f64(),
        );
        // Counted by enum pair first: no allocation per socket on the scan path.
        let mut counts: BTreeMap<(Protocol, SocketState), u32> = BTreeMap::new();
        for s in &scan.sockets {
            *counts.entry((s.key.protocol, s.state)).or_insert(0) += 1;
        }
        let sockets: BTreeMap<Labels, f64> = counts
            .into_iter()
            .map(|((protocol, state), n)| {
                (
                    vec![
                        ("protocol", protocol.as_str().to_string()),
                        ("state", state.as_str().to_string()),
                    ],
                    f64::from(n),
                )
            })
            .collect();
        self.sockets.replace(sockets);
        let st = &scan.stats;
        for (reason, n) in [
            ("no_permission", st.unattributed_no_permission),
            ("process_gone", st.unattributed_process_gone),
            ("unknown", st.unattributed_unknown),
        ] {
            self.unattributed.set(&[("reason", reason)], f64::from(n));
        }
        let procfs = st.namespaces_from_procfs;
        self.namespaces.set(
            &[("source", "sock_diag")],
            f64::from(st.namespaces.saturating_sub(procfs)),
        );
        self.namespaces
            .set(&[("source", "procfs")], f64::from(procfs));
    }

    /// Reports when the certificate and the CAs of `files` expire, read at each scrape
    /// (renewal replaces them without a restart).
    pub fn set_tls_files(&self, files: TlsFiles) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
    }

    /// Encodes every metric (at each scrape, in the format the scraper asked for).
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        portolan_metrics::encode_build_info(encoder, "portolan-agent")?;
        let tls = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(files) = tls {
            let validity = |v: portolan_tls::Validity| portolan_metrics::Validity {
                not_before: v.not_before,
                not_after: v.not_after,
            };
            portolan_metrics::encode_certificates(
                encoder,
                &[
                    ("agent", files.cert_validity().ok().map(validity)),
                    ("ca", files.ca_validity().ok().map(validity)),
                ],
            )?;
        }
        self.scans.encode(encoder)?;
        self.scan_duration.encode(encoder)?;
        self.sockets.encode(encoder)?;
        self.unattributed.encode(encoder)?;
        self.connected.encode(encoder)?;
        self.sent.encode(encoder)?;
        self.acked.encode(encoder)?;
        self.sent_bytes.encode(encoder)?;
        self.reconnects.encode(encoder)?;
        self.ack_latency.encode(encoder)?;
        self.spool_pending.encode(encoder)?;
        self.spool_bytes.encode(encoder)?;
        self.spool_gaps.encode(encoder)?;
        self.footprint_level.encode(encoder)?;
        self.cpu_percent.encode(encoder)?;
        self.resident_bytes.encode(encoder)?;
        self.enrollments.encode(encoder)?;
        self.renewals.encode(encoder)?;
        self.namespaces.encode(encoder)
    }
}

/// The process's metrics.
pub fn global() -> &'static AgentMetrics {
    static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);
    &METRICS
}

/// Serves [`global`] at `/metrics`, and the health of [`crate::health::global`] at
/// `/healthz` and `/readyz`, on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    let endpoints = portolan_metrics::Endpoints {
        metrics: portolan_metrics::Exposition::new(|encoder| global().encode(encoder)),
        health: crate::health::global().health(),
    };
    portolan_metrics::serve(listener, endpoints, shutdown).await;
}
