//! Logging and tracing set-up shared by `portolan-agent` and `portolan-collector`.
//!
//! [`init`] installs the process's `tracing` subscriber:
//!
//! - always, log lines on stderr filtered by `PORTOLAN_LOG` (an `EnvFilter` directive such
//!   as `info,portolan_agent=debug`; `info` when unset or invalid), coloured only when
//!   stderr is a terminal, `NO_COLOR` is unset or empty and `TERM` is not `dumb` (see
//!   [`log_colour`]): logs sent to a file, a pipe or journald carry no escape codes;
//! - when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set,
//!   also an OpenTelemetry layer that exports Portolan's spans (targets `portolan*`, level
//!   INFO and above, whatever `PORTOLAN_LOG` says) over OTLP/gRPC with a batch span
//!   processor. The SDK's own variables apply: `OTEL_SERVICE_NAME` and
//!   `OTEL_RESOURCE_ATTRIBUTES` (the service name defaults to the binary's),
//!   `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`.
//!
//! Exporting never blocks the program: spans queue in memory and a background thread sends
//! them; an endpoint that does not answer costs one warning (and one more line when it
//! answers again), and queued spans beyond the queue's size are dropped.
//!
//! [`traceparent`] and [`set_remote_parent`] carry a span's context across the agent's
//! stream to the collector as a W3C `traceparent` string.
#![forbid(unsafe_code)]

mod otlp;
mod propagation;

use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use otlp::{otlp_endpoint, service_name_is_configured};
pub use propagation::{MAX_TRACEPARENT_LEN, parse_traceparent, set_remote_parent, traceparent};

/// The environment variable holding the log filter.
pub const LOG_ENV: &str = "PORTOLAN_LOG";

/// How long shutting down may wait for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps the trace exporter alive; dropping it exports the spans still queued (waiting at
/// most a few seconds) and stops the exporter. Hold it until the program ends.
#[must_use = "dropping the guard stops exporting traces"]
#[derive(Debug)]
pub struct Telemetry {
    exporter: Option<otlp::Exporter>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporter.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown(SHUTDOWN_TIMEOUT);
        }
    }
}

/// Whether log lines on stderr are coloured: only on a terminal, as the CLI does, and
/// never when `NO_COLOR` is set to a non-empty value (no-color.org) or `TERM` is `dumb`.
/// `env` reads one environment variable.
pub fn log_colour(stderr_is_terminal: bool, env: &dyn Fn(&str) -> Option<String>) -> bool {
    stderr_is_terminal
        && env("NO_COLOR").is_none_or(|v| v.is_empty())
        && env("TERM").is_none_or(|t| t != "dumb")
}

/// Installs the global `tracing` subscriber for the binary `service` (its default
/// `service.name`, e.g. `portolan-agent`): log lines on stderr filtered by `PORTOLAN_LOG`,
/// and OTLP trace export when the OTLP endpoint variables are set (see the crate docs).
///
/// A trace export that cannot be set up (an endpoint that is not a URL) is reported as a
/// warning and the program runs without it. Call once, early; a second call leaves the
/// first subscriber in place.
pub fn init(service: &'static str) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let env = |name: &str| std::env::var(name).ok();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(log_colour(std::io::stderr().is_terminal(), &env))
        .with_filter(filter);
    let (exporter, problem) = match otlp_endpoint(&env) {
        None => (None, None),
        Some(endpoint) => match otlp::Exporter::start(service, &endpoint, &env) {
            Ok(exporter) => (Some(exporter), None),
            Err(e) => (None, Some(e)),
        },
    };
    let otel = exporter.as_ref().map(|e| {
        tracing_opentelemetry::layer()
            .with_tracer(e.tracer())
            .with_filter(tracing_subscriber::filter::filter_fn(otlp::exported))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    match (&exporter, problem) {
        (Some(e), _) => {
            tracing::info!(endpoint = %e.endpoint(), "exporting traces over OTLP/gRPC");
        }
        (None, Some(problem)) => {
            tracing::warn!("{problem}; running without trace export");
        }
        (None, None) => {}
    }
    Telemetry { exporter }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, &env(&[])));
        assert!(log_colour(true, &env(&[("TERM", "xterm-256color")])));
        assert!(!log_colour(false, &env(&[])), "a file or a pipe");
        assert!(!log_colour(true, &env(&[("NO_COLOR", "1")])));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(log_colour(true, &env(&[("NO_COLOR", "")])));
        assert!(!log_colour(true, &env(&[("TERM", "dumb")])));
    }
}
