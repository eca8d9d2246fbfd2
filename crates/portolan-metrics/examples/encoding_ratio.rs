//! Measures, in one run and with the same values, how long encoding one scrape of the
//! collector's metric set takes with Portolan's families (values under a mutex, encoded by
//! `prometheus-client`: what `/metrics` serves) and with `prometheus-client`'s own metric
//! types (atomics) in the Prometheus text format and OpenMetrics, and prints the ratios:
//! `cargo run --release -p portolan-metrics --example encoding_ratio`.
//!
//! Before the move to `prometheus-client`, "portolan" was the hand-written text encoder:
//! the figures of that run are in the crate's documentation.

use std::hint::black_box;
use std::time::{Duration, Instant};

use portolan_metrics::{Exposition, Family, Format, Histogram, SECONDS};
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as PcFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram as PcHistogram;
use prometheus_client::registry::Registry;

type PcLabels = Vec<(&'static str, String)>;
type Counters = PcFamily<PcLabels, Counter<f64>>;
type Gauges = PcFamily<PcLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;
type Histograms = PcFamily<PcLabels, PcHistogram>;

/// The shape of the collector's scrape: `(name, kind, label name, label values)`.
const FAMILIES: &[(&str, &str, &str, &[&str])] = &[
    ("portolan_collector_agents_connected", "gauge", "", &[""]),
    (
        "portolan_collector_messages_received_total",
        "counter",
        "kind",
        &["hello", "snapshot_part", "delta", "heartbeat"],
    ),
    (
        "portolan_collector_rows_written_total",
        "counter",
        "table",
        &[
            "socket_events",
            "sockets_current",
            "flow_events",
            "flows_current",
            "hosts",
            "host_reports",
        ],
    ),
    (
        "portolan_collector_ingest_latency_seconds",
        "histogram",
        "kind",
        &["snapshot", "delta"],
    ),
    (
        "portolan_collector_clickhouse_errors_total",
        "counter",
        "",
        &[""],
    ),
    (
        "portolan_collector_refusals_total",
        "counter",
        "reason",
        &[
            "no_identity",
            "protocol",
            "invalid",
            "too_large",
            "rate_limited",
            "storage",
        ],
    ),
    (
        "portolan_collector_rule_evaluation_duration_seconds",
        "histogram",
        "",
        &[""],
    ),
    (
        "portolan_collector_rule_evaluations_total",
        "counter",
        "outcome",
        &["ok", "failed"],
    ),
    (
        "portolan_collector_rules_failed_total",
        "counter",
        "",
        &[""],
    ),
    (
        "portolan_collector_findings_open",
        "gauge",
        "severity",
        &["info", "low", "medium", "high", "critical"],
    ),
    ("portolan_collector_spool_gaps_total", "counter", "", &[""]),
    (
        "portolan_collector_notifications_total",
        "counter",
        "receiver",
        &[
            "ops-sent",
            "ops-failed",
            "ops-dropped",
            "ops-retried",
            "sec-sent",
            "sec-failed",
            "sec-dropped",
            "sec-retried",
        ],
    ),
    (
        "portolan_collector_notifications_queued",
        "gauge",
        "receiver",
        &["ops", "sec"],
    ),
    (
        "portolan_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "role",
        &["collector", "ca"],
    ),
];

const HELP: &str = "Help text of about the length of the collector's, by label.";

fn labels(label: &'static str, value: &str) -> PcLabels {
    if label.is_empty() {
        Vec::new()
    } else {
        vec![(label, value.to_string())]
    }
}

fn main() {
    // The portolan families and prometheus-client's, fed the same values.
    let mut ours: Vec<(Option<Family>, Option<Histogram>)> = Vec::new();
    let mut registry = Registry::default();
    for (i, (name, kind, label, values)) in FAMILIES.iter().enumerate() {
        let (name, label): (&'static str, &'static str) = (name, label);
        match *kind {
            "histogram" => {
                let h = Histogram::new(name, HELP, SECONDS);
                let pc =
                    Histograms::new_with_constructor(|| PcHistogram::new(SECONDS.iter().copied()));
                for v in values.iter() {
                    let pairs: Vec<(&'static str, &str)> = if label.is_empty() {
                        vec![]
                    } else {
                        vec![(label, v)]
                    };
                    for n in 0..200 {
                        let x = f64::from(n) * 0.0007 * (i as f64 + 1.0);
                        h.observe(&pairs, x);
                        pc.get_or_create(&labels(label, v)).observe(x);
                    }
                }
                registry.register(name, HELP, pc);
                ours.push((None, Some(h)));
            }
            kind => {
                let f = if kind == "counter" {
                    Family::counter(name, HELP)
                } else {
                    Family::gauge(name, HELP)
                };
                let counters = Counters::default();
                let gauges = Gauges::default();
                for (j, v) in values.iter().enumerate() {
                    let x = (1_000 * (i + 1) + 37 * j) as f64;
                    let pairs: Vec<(&'static str, &str)> = if label.is_empty() {
                        vec![]
                    } else {
                        vec![(label, v)]
                    };
                    f.set(&pairs, x);
                    if kind == "counter" {
                        counters.get_or_create(&labels(label, v)).inc_by(x);
                    } else {
                        gauges.get_or_create(&labels(label, v)).set(x);
                    }
                }
                if kind == "counter" {
                    registry.register(name.trim_end_matches("_total"), HELP, counters);
                } else {
                    registry.register(name, HELP, gauges);
                }
                ours.push((Some(f), None));
            }
        }
    }

    let exposition = Exposition::new(move |encoder| {
        for (f, h) in &ours {
            if let Some(f) = f {
                f.encode(encoder)?;
            }
            if let Some(h) = h {
                h.encode(encoder)?;
            }
        }
        Ok(())
    });
    let hand = || exposition.render(Format::Text);
    let classic = || {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).expect("encoding into a String");
        out
    };
    let openmetrics = || {
        let mut out = String::new();
        text::encode(&mut out, &registry).expect("encoding into a String");
        out
    };
    println!(
        "one scrape: portolan {} bytes, prometheus-client text {} bytes, OpenMetrics {} bytes",
        hand().len(),
        classic().len(),
        openmetrics().len()
    );
    const ROUNDS: u32 = 5;
    const PER_ROUND: u32 = 2_000;
    let time = |f: &dyn Fn() -> String| {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            black_box(f());
        }
        start.elapsed() / PER_ROUND
    };
    let (mut best_hand, mut best_text, mut best_om) = (Duration::MAX, Duration::MAX, Duration::MAX);
    // Interleaved rounds, best of each: the machine is shared, the minimum is the least noisy.
    for _ in 0..ROUNDS {
        best_hand = best_hand.min(time(&hand));
        best_text = best_text.min(time(&classic));
        best_om = best_om.min(time(&openmetrics));
    }
    println!(
        "per scrape (best of {ROUNDS}×{PER_ROUND}): portolan {best_hand:?}, prometheus-client text {best_text:?}, OpenMetrics {best_om:?}"
    );
    println!(
        "ratio to portolan: prometheus-client text {:.2}x, OpenMetrics {:.2}x",
        best_text.as_secs_f64() / best_hand.as_secs_f64(),
        best_om.as_secs_f64() / best_hand.as_secs_f64()
    );
}
