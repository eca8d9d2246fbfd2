//! The operability endpoint shared by Portolan's agent and collector: one plain HTTP
//! listener (`[metrics] listen`) serving Prometheus metrics at `/metrics`, liveness at
//! `/healthz` and readiness at `/readyz`, as node_exporter serves its metrics and health
//! on one port.
//!
//! The families are kept here ([`Family`], [`Histogram`]) and encoded by the
//! `prometheus-client` crate: the Prometheus text format 0.0.4 by default, OpenMetrics 1.0.0
//! when the scraper's `Accept` asks for it (as Prometheus does). The agent and the collector
//! each define their families on top of them.
//!
//! Measured before the move (`cargo run --release -p portolan-metrics --example
//! encoding_ratio`, the collector's scrape shape, 14 families, ~8.7 KB, same values,
//! interleaved rounds): prometheus-client's text encoder took 0.80× and its OpenMetrics
//! encoder 0.74× the time of the former hand-written one (18.0 µs and 16.7 µs against
//! 22.6 µs per scrape). It adds dtoa, parking_lot and a derive macro to the tree, no second
//! major version of any crate.
//!
//! | module | what it is for |
//! |---|---|
//! | [`exposition`] | [`Family`] (counters, gauges) and [`Histogram`]: values by label set |
//! | [`scrape`] | [`Exposition`]: the families of one scrape in the [`Format`] asked for |
//! | [`health`] | [`Health`]: the loops that keep the process alive, the checks that make it ready |
//! | [`http_serve`] | [`serve`]: the HTTP/1 listener of `/metrics`, `/healthz` and `/readyz` |
//! | [`build_info`] | `portolan_build_info`: version, git revision, compiler, target |
//! | [`certificates`] | `portolan_tls_certificate_*`: when the own certificate and the CAs expire |
//! | [`config`] | [`MetricsSection`]: `[metrics]` of both binaries' configuration |

#![forbid(unsafe_code)]

pub mod build_info;
pub mod certificates;
pub mod config;
pub mod exposition;
pub mod health;
pub mod http_serve;
pub mod scrape;

pub use build_info::encode_build_info;
pub use certificates::{Validity, encode_certificates};
pub use config::MetricsSection;
pub use exposition::{Family, Histogram, Labels, SECONDS};
pub use health::Health;
pub use http_serve::{Endpoints, serve};
pub use prometheus_client::encoding::DescriptorEncoder;
pub use scrape::{Exposition, Format};
