//! The collector's Prometheus metrics (`portolan_collector_*`, `portolan_build_info`,
//! `portolan_tls_certificate_*`), served at `/metrics` when `[metrics] listen` is set,
//! beside `/healthz` and `/readyz` ([`crate::health`]).
//!
//! The metrics are process-wide ([`global`]): ingest and rule evaluation record into
//! them, the HTTP server renders them, with the notifier's figures read at scrape time.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{LazyLock, Mutex};

use portolan_rules::lifecycle::{Finding, Status};
use tokio::net::TcpListener;

use crate::error::IngestError;
use crate::notify::ReceiverStats;
use portolan_metrics::{DescriptorEncoder, SECONDS};
pub use portolan_metrics::{Family, Histogram, Labels};
use portolan_store::WriteReceipt;
use portolan_tls::TlsFiles;

/// Reads the notifier's figures at scrape time.
type StatsSource = Box<dyn Fn() -> Vec<ReceiverStats> + Send + Sync>;

/// Every metric the collector exports.
pub struct CollectorMetrics {
    /// `portolan_collector_agents_connected`.
    pub agents_connected: Family,
    /// `portolan_collector_messages_received_total{kind}`.
    pub messages: Family,
    /// `portolan_collector_rows_written_total{table}`.
    pub rows: Family,
    /// `portolan_collector_ingest_latency_seconds{kind}`.
    pub ingest_latency: Histogram,
    /// `portolan_collector_clickhouse_errors_total`.
    pub clickhouse_errors: Family,
    /// `portolan_collector_refusals_total{reason}`.
    pub refusals: Family,
    /// `portolan_collector_rule_evaluation_duration_seconds`.
    pub evaluation_duration: Histogram,
    /// `portolan_collector_rule_evaluations_total{outcome}`.
    pub evaluations: Family,
    /// `portolan_collector_rules_failed_total`.
    pub rules_failed: Family,
    /// `portolan_collector_findings_open{severity}`.
    pub findings_open: Family,
    /// `portolan_collector_spool_gaps_total`.
    pub spool_gaps: Family,
    /// `portolan_collector_enrollments_total{result}`.
    pub enrollments: Family,
    notifier: Mutex<Option<StatsSource>>,
    tls: Mutex<Option<TlsFiles>>,
}

impl std::fmt::Debug for CollectorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorMetrics").finish_non_exhaustive()
    }
}

/// Severities reported as 0 before any finding opened.
const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

impl CollectorMetrics {
    fn new() -> CollectorMetrics {
        let m = CollectorMetrics {
            agents_connected: Family::gauge(
                "portolan_collector_agents_connected",
                "Agents with an open ingest stream to this replica (past Hello).",
            ),
            messages: Family::counter(
                "portolan_collector_messages_received_total",
                "Messages received from agents, by kind (hello, snapshot_part, delta, heartbeat).",
            ),
            rows: Family::counter(
                "portolan_collector_rows_written_total",
                "Rows written into ClickHouse by ingest, by table.",
            ),
            ingest_latency: Histogram::new(
                "portolan_collector_ingest_latency_seconds",
                "From receiving a message (a snapshot's last part) to its data being stored, by kind.",
                SECONDS,
            ),
            clickhouse_errors: Family::counter(
                "portolan_collector_clickhouse_errors_total",
                "ClickHouse requests that failed: ingest writes and reads, and the findings of rule evaluation (a failing rule query counts in rules_failed_total).",
            ),
            refusals: Family::counter(
                "portolan_collector_refusals_total",
                "Ingest streams refused or ended by the collector, by reason.",
            ),
            evaluation_duration: Histogram::new(
                "portolan_collector_rule_evaluation_duration_seconds",
                "How long one evaluation of every rule took.",
                SECONDS,
            ),
            evaluations: Family::counter(
                "portolan_collector_rule_evaluations_total",
                "Rule evaluations, by outcome (ok, failed).",
            ),
            rules_failed: Family::counter(
                "portolan_collector_rules_failed_total",
                "Rules whose query failed in an evaluation (their findings stay as they were).",
            ),
            findings_open: Family::gauge(
                "portolan_collector_findings_open",
                "Open findings by severity, as of this replica's last evaluation.",
            ),
            spool_gaps: Family::counter(
                "portolan_collector_spool_gaps_total",
                "Snapshots that closed a gap in a host's history (the agent's spool overflowed while no collector was reachable).",
            ),
            enrollments: Family::counter(
                "portolan_collector_enrollments_total",
                "Enrollment and renewal requests, by result (issued, renewed, pending, refused, invalid, failed).",
            ),
            notifier: Mutex::new(None),
            tls: Mutex::new(None),
        };
        for result in [
            "issued", "renewed", "pending", "refused", "invalid", "failed",
        ] {
            m.enrollments.touch(&[("result", result)]);
        }
        m.spool_gaps.touch(&[]);
        m.agents_connected.set(&[], 0.0);
        m.clickhouse_errors.touch(&[]);
        m.rules_failed.touch(&[]);
        for kind in ["hello", "snapshot_part", "delta", "heartbeat"] {
            m.messages.touch(&[("kind", kind)]);
        }
        for outcome in ["ok", "failed"] {
            m.evaluations.touch(&[("outcome", outcome)]);
        }
        m
    }

    /// Counts the rows of one stored change.
    pub fn record_rows(&self, receipt: &WriteReceipt) {
        for (table, n) in [
            ("socket_events", receipt.socket_events),
            ("sockets_current", receipt.sockets_current),
            ("flow_events", receipt.flow_events),
            ("flows_current", receipt.flows_current),
            ("hosts", receipt.hosts),
            ("host_reports", receipt.host_reports),
        ] {
            self.rows.add(&[("table", table)], n as f64);
        }
    }

    /// Counts an ingest stream the collector ended with `error`.
    pub fn record_refusal(&self, error: &IngestError) {
        let reason = match error {
            IngestError::NoIdentity(_) => "no_identity",
            IngestError::NotAnAgent(_) => "not_an_agent",
            IngestError::HostMismatch { .. } => "host_mismatch",
            IngestError::Protocol(_) => "protocol",
            IngestError::Invalid(_) => "invalid",
            IngestError::TooLarge(_) => "too_large",
            IngestError::Revoked(_) => "revoked",
            IngestError::RateLimited(_) => "rate_limited",
            IngestError::Store(_) => {
                self.clickhouse_errors.inc(&[]);
                "storage"
            }
        };
        self.refusals.inc(&[("reason", reason)]);
    }

    /// Sets `portolan_collector_findings_open` from every finding as now stored.
    pub fn set_findings<'a>(&self, findings: impl IntoIterator<Item = &'a Finding>) {
        let mut open: BTreeMap<Labels, f64> = SEVERITIES
            .iter()
            .map(|s| (vec![("severity", (*s).to_string())], 0.0))
            .collect();
        for f in findings {
            if f.status == Status::Open {
                *open
                    .entry(vec![("severity", f.latest.severity.clone())])
                    .or_insert(0.0) += 1.0;
            }
        }
        self.findings_open.replace(open);
    }

    /// Reports the notifier's per-receiver figures at each scrape.
    pub fn set_notifier_stats(&self, source: StatsSource) {
        *self.notifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// Reports when the certificate and the CAs of `files` expire, read at each scrape
    /// (they are reloaded without a restart).
    pub fn set_tls_files(&self, files: TlsFiles) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
    }

    /// Encodes every metric (at each scrape, in the format the scraper asked for).
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        portolan_metrics::encode_build_info(encoder, "portolan-collector")?;
        let tls = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(files) = tls {
            portolan_metrics::encode_certificates(
                encoder,
                &[
                    ("collector", files.cert_validity().ok().map(validity)),
                    ("ca", files.ca_validity().ok().map(validity)),
                ],
            )?;
        }
        self.agents_connected.encode(encoder)?;
        self.messages.encode(encoder)?;
        self.rows.encode(encoder)?;
        self.ingest_latency.encode(encoder)?;
        self.clickhouse_errors.encode(encoder)?;
        self.refusals.encode(encoder)?;
        self.evaluation_duration.encode(encoder)?;
        self.evaluations.encode(encoder)?;
        self.rules_failed.encode(encoder)?;
        self.findings_open.encode(encoder)?;
        self.spool_gaps.encode(encoder)?;
        let stats = self
            .notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|source| source())
            .unwrap_or_default();
        let notifications = Family::counter(
            "portolan_collector_notifications_total",
            "Notifications per receiver by outcome (sent, failed, dropped, retried).",
        );
        let queued = Family::gauge(
            "portolan_collector_notifications_queued",
            "Notifications waiting per receiver.",
        );
        for s in &stats {
            let r = s.receiver.as_str();
            for (outcome, n) in [
                ("sent", s.delivered),
                ("failed", s.failed),
                ("dropped", s.dropped),
                ("retried", s.retried),
            ] {
                notifications.set(
                    &[("kind", s.kind), ("receiver", r), ("outcome", outcome)],
                    n as f64,
                );
            }
            queued.set(&[("kind", s.kind), ("receiver", r)], s.queued as f64);
        }
        notifications.encode(encoder)?;
        queued.encode(encoder)
    }
}

fn validity(v: portolan_tls::Validity) -> portolan_metrics::Validity {
    portolan_metrics::Validity {
        not_before: v.not_before,
        not_after: v.not_after,
    }
}

/// The process's metrics.
pub fn global() -> &'static CollectorMetrics {
    static METRICS: LazyLock<CollectorMetrics> = LazyLock::new(CollectorMetrics::new);
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

#[cfg(test)]
mod tests {
    use super::*;
    use portolan_metrics::{Exposition, Format};

    /// Every family of the collector, notifier figures included, in both formats: a
    /// counter is typed without `_total` in OpenMetrics only, its samples keep it.
    #[test]
    fn encodes_every_family_in_both_formats() {
        let m = CollectorMetrics::new();
        m.ingest_latency.observe(&[("kind", "snapshot")], 0.02);
        m.set_notifier_stats(Box::new(|| {
            vec![ReceiverStats {
                kind: "webhook",
                receiver: "https://hooks.example/p".into(),
                delivered: 3,
                failed: 0,
                retried: 1,
                dropped: 0,
                queued: 2,
            }]
        }));
        let exposition = Exposition::new(move |e| m.encode(e));
        let text = exposition.render(Format::Text);
        let openmetrics = exposition.render(Format::OpenMetrics);
        for (format, out) in [("text", &text), ("openmetrics", &openmetrics)] {
            for line in [
                "portolan_build_info{binary=\"portolan-collector\",version=\"",
                "portolan_collector_agents_connected 0\n",
                "portolan_collector_messages_received_total{kind=\"heartbeat\"} 0\n",
                "portolan_collector_ingest_latency_seconds_count{kind=\"snapshot\"} 1\n",
                "portolan_collector_findings_open",
                "portolan_collector_notifications_total{kind=\"webhook\",receiver=\"https://hooks.example/p\",outcome=\"sent\"} 3\n",
                "portolan_collector_notifications_queued{kind=\"webhook\",receiver=\"https://hooks.example/p\"} 2\n",
                "# TYPE portolan_collector_ingest_latency_seconds histogram\n",
            ] {
                assert!(out.contains(line), "{format}: no `{line}` in\n{out}");
            }
        }
        assert!(text.contains("# TYPE portolan_collector_spool_gaps_total counter\n"));
        assert!(openmetrics.contains("# TYPE portolan_collector_spool_gaps counter\n"));
        assert!(openmetrics.ends_with("# EOF\n") && !text.contains("# EOF"));
    }
}
