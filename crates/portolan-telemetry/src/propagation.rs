//! W3C Trace Context (`traceparent`) across the agent's stream.
//!
//! The agent → collector stream is one long gRPC stream, so per-message context travels in
//! the message itself rather than in gRPC metadata. The value comes from an agent: the
//! collector parses it strictly and ignores anything malformed.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Longest `traceparent` accepted. Version `00` is exactly 55 characters; later versions
/// may append fields, which are ignored.
pub const MAX_TRACEPARENT_LEN: usize = 128;

/// The W3C `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), or an empty string
/// when traces are not exported or the span is disabled.
pub fn traceparent(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return String::new();
    }
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        (sc.trace_flags() & TraceFlags::SAMPLED).to_u8()
    )
}

/// Makes the span context in `traceparent` the parent of `span`, which must be new (not
/// entered yet). Returns whether it did: `false` for an empty or malformed value (ignored)
/// and when traces are not exported.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) -> bool {
    if traceparent.is_empty() {
        return false;
    }
    let Some(remote) = parse_traceparent(traceparent) else {
        tracing::debug!(
            length = traceparent.len(),
            "ignored a malformed traceparent from the agent"
        );
        return false;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    span.set_parent(cx).is_ok()
}

/// Parses a W3C `traceparent`: `VV-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lower
/// case, ids not all zero, version not `ff`, at most [`MAX_TRACEPARENT_LEN`] bytes. Version
/// `00` has exactly these four fields; a later version may append `-…`, which is ignored.
/// Only the sampled flag is kept.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    if value.len() > MAX_TRACEPARENT_LEN || value.len() < 55 || !value.is_ascii() {
        return None;
    }
    let (head, rest) = value.split_at(55);
    let mut fields = head.split('-');
    let (version, trace_id, span_id, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let well_formed = lower_hex(version, 2)
        && lower_hex(trace_id, 32)
        && lower_hex(span_id, 16)
        && lower_hex(flags, 2);
    if !well_formed || version == "ff" {
        return None;
    }
    match (version, rest) {
        ("00", "") => {}
        ("00", _) => return None,
        (_, rest) if rest.is_empty() || rest.starts_with('-') => {}
        _ => return None,
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let sc = parse_traceparent(VALID).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        let unsampled = parse_traceparent(&VALID.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.is_sampled());
        // A later version may append fields.
        assert!(parse_traceparent(&format!("cc{}-what-ever", &VALID[2..])).is_some());
    }

    #[test]
    fn malformed_values_are_refused() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        for bad in [
            "",
            "garbage",
            "00-1-2-01",
            zero_trace,
            zero_span,
            &VALID.to_uppercase(),
            &VALID.replace("00-4b", "ff-4b"),
            &format!("{VALID}-extra"),
            &format!("cc{}x", &VALID[2..]),
            &VALID.replace('-', "_"),
            &VALID.replace("4bf9", "4bé"),
            &format!("cc{}-{}", &VALID[2..], "x".repeat(MAX_TRACEPARENT_LEN)),
        ] {
            assert!(parse_traceparent(bad).is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn without_an_exporter_nothing_is_injected_or_set() {
        let span = tracing::info_span!("send");
        assert_eq!(traceparent(&span), "");
        assert!(!set_remote_parent(&span, VALID));
        assert!(!set_remote_parent(&span, "garbage"));
    }
}

#[cfg(test)]
mod with_a_tracer {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A subscriber with the OpenTelemetry layer and a provider that exports nowhere.
    fn subscriber() -> (
        impl tracing::Subscriber,
        opentelemetry_sdk::trace::SdkTracerProvider,
    ) {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        (tracing_subscriber::registry().with(layer), provider)
    }

    #[test]
    fn the_sent_context_becomes_the_parent_on_the_other_side() {
        let (subscriber, _provider) = subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let send = tracing::info_span!("send");
            let sent = traceparent(&send);
            let remote = parse_traceparent(&sent).expect("the agent sends a valid traceparent");
            assert_eq!(remote, {
                let cx = send.context();
                let sc = cx.span().span_context().clone();
                SpanContext::new(
                    sc.trace_id(),
                    sc.span_id(),
                    sc.trace_flags(),
                    true,
                    TraceState::default(),
                )
            });

            let ingest = tracing::info_span!("ingest");
            assert!(set_remote_parent(&ingest, &sent));
            let cx = ingest.context();
            let child = cx.span().span_context().clone();
            assert_eq!(child.trace_id(), remote.trace_id());
            assert_ne!(child.span_id(), remote.span_id());

            let untraced = tracing::info_span!("ingest");
            assert!(!set_remote_parent(&untraced, "00-garbage"));
            let cx = untraced.context();
            assert_ne!(cx.span().span_context().trace_id(), remote.trace_id());
        });
    }
}
