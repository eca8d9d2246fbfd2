//! The operability endpoint shared by Portolan's agent and collector: one plain HTTP
//! listener (`[metrics] listen`) serving Prometheus metrics at `/metrics`, liveness at
//! `/healthz` and readiness at `/readyz`, as node_exporter serves its metrics and health
//! on one port.
//!
//! The exposition is hand-written rather than the `prometheus-client` crate: a handful of
//! families, no new dependencies (hyper 1 is already in the tree), and rendering stays in
//! one place. The agent and the collector each define their families on top of it.
//!
//! | module | what it is for |
//! |---|---|
//! | [`exposition`] | [`Family`] (counters, gauges) and [`Histogram`] in the text format 0.0.4 |
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

pub use build_info::render_build_info;
pub use certificates::{Validity, render_certificates};
pub use config::MetricsSection;
pub use exposition::{Family, Histogram, Labels, SECONDS};
pub use health::Health;
pub use http_serve::{Endpoints, serve};
