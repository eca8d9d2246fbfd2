//! The OTLP/gRPC trace pipeline: exporter, batch span processor, resource, and the
//! small runtime the exporter's connection lives on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

/// The endpoint traces go to when OTLP export is configured: the first non-empty of
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and `OTEL_EXPORTER_OTLP_ENDPOINT`. `None` (no export)
/// when neither is set, or when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
pub fn otlp_endpoint(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Whether the operator named the service: `OTEL_SERVICE_NAME`, or a `service.name` key in
/// `OTEL_RESOURCE_ATTRIBUTES`. The SDK applies those; otherwise the binary's name is used.
pub fn service_name_is_configured(env: &dyn Fn(&str) -> Option<String>) -> bool {
    if env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty()) {
        return true;
    }
    env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
        attributes.split(',').any(|pair| {
            pair.split_once('=').is_some_and(|(key, value)| {
                key.trim() == "service.name" && !value.trim().is_empty()
            })
        })
    })
}

/// Which spans and events go to the OpenTelemetry layer: Portolan's own, at INFO and
/// above. Spans of the libraries under the exporter (tonic, h2, hyper) would otherwise
/// trace the export itself.
pub(crate) fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("portolan") && *meta.level() <= tracing::Level::INFO
}

/// A running OTLP trace pipeline.
#[derive(Debug)]
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
    /// Drives the gRPC channel's connection; the batch processor's own thread calls the
    /// exporter. Independent of the program's runtime, so that shutting down after the
    /// program's runtime stopped can still export the last spans.
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: String,
}

impl Exporter {
    /// Starts the pipeline for `service`, sending to `endpoint` (read again by the SDK from
    /// the same variables). Nothing is connected yet: the first batch connects.
    pub(crate) fn start(
        service: &'static str,
        endpoint: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Exporter, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portolan-otlp")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the trace exporter's runtime: {e}"))?;
        let exporter = {
            // tonic's lazily connected channel spawns its worker on the current runtime.
            let _runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| {
                    format!(
                        "cannot export traces to `{endpoint}`: {e} (set `OTEL_EXPORTER_OTLP_ENDPOINT` to a URL such as http://otel-collector:4317)"
                    )
                })?
        };
        let mut resource = Resource::builder();
        if !service_name_is_configured(env) {
            resource = resource.with_service_name(service);
        }
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(Logged {
                inner: exporter,
                endpoint: endpoint.to_string(),
                failing: AtomicBool::new(false),
            })
            .build();
        Ok(Exporter {
            provider,
            runtime: Some(runtime),
            endpoint: endpoint.to_string(),
        })
    }

    /// The tracer the `tracing` layer records with.
    pub(crate) fn tracer(&self) -> SdkTracer {
        self.provider.tracer("portolan")
    }

    /// Where spans go.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what is queued, waiting at most `timeout`, and stops.
    pub(crate) fn shutdown(mut self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::debug!(error = %e, "trace exporter did not shut down cleanly");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An exporter that says once when exports start failing, and once when they work again,
/// instead of a line per batch (the SDK itself logs nothing: its `internal-logs` feature is
/// off).
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        error = %e,
                        spans,
                        "cannot export traces; dropping them until the endpoint answers (check `OTEL_EXPORTER_OTLP_ENDPOINT`)"
                    );
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "exporting traces again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn export_is_on_only_with_an_endpoint() {
        assert_eq!(otlp_endpoint(&env(&[])), None);
        assert_eq!(
            otlp_endpoint(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        assert_eq!(
            otlp_endpoint(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317")])).as_deref(),
            Some("http://a:4317")
        );
        assert_eq!(
            otlp_endpoint(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
            ]))
            .as_deref(),
            Some("http://t:4317")
        );
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                otlp_endpoint(&env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                    off
                ])),
                None,
                "{off:?}"
            );
        }
    }

    #[test]
    fn the_operator_names_the_service_through_the_sdk_variables() {
        assert!(!service_name_is_configured(&env(&[])));
        assert!(service_name_is_configured(&env(&[(
            "OTEL_SERVICE_NAME",
            "edge"
        )])));
        assert!(service_name_is_configured(&env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod, service.name = edge"
        )])));
        assert!(!service_name_is_configured(&env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,service.namespace=portolan"
        )])));
    }

    #[test]
    fn only_portolan_spans_at_info_and_above_are_exported() {
        use tracing::{Level, callsite::Identifier};
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unreachable!("not called by the filter")
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level: Level| {
            tracing::Metadata::new(
                "s",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&SITE)),
                tracing::metadata::Kind::SPAN,
            )
        };
        assert!(exported(&meta("portolan_agent::stream", Level::INFO)));
        assert!(exported(&meta("portolan_collector::ingest", Level::WARN)));
        assert!(!exported(&meta("portolan_collector::ingest", Level::DEBUG)));
        assert!(!exported(&meta("h2::proto", Level::INFO)));
        assert!(!exported(&meta("tonic::transport", Level::ERROR)));
    }
}
