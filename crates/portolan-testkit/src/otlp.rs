//! [`OtlpReceiver`]: a real OTLP/gRPC trace receiver (the
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` RPC, plain HTTP/2) that
//! records every span it is sent, with the `service.name` of its resource, so that a test
//! can follow a trace across processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::error::{Result, io_error};

/// One span as the receiver got it. Ids are lower-case hex; `parent_span_id` is empty for
/// a root span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource the span came with.
    pub service: String,
    /// The span's name (`send`, `ingest`, …).
    pub name: String,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// The parent's span id, or empty.
    pub parent_span_id: String,
    /// Attributes whose values are strings, integers, floats or booleans, as text.
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// The attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A recording OTLP/gRPC trace receiver. Stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Recorded {
    exports: usize,
    spans: Vec<ReceivedSpan>,
}

impl OtlpReceiver {
    /// Starts a receiver listening on `addr` (port 0: a free one). Processes in a lab's
    /// namespaces reach the root namespace at the lab's bridge address, not at loopback.
    /// Must be called within a tokio runtime.
    pub async fn start(addr: SocketAddr) -> Result<OtlpReceiver> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(io_error(format!("cannot bind the OTLP receiver to {addr}")))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("cannot read the OTLP receiver's address"))?;
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let service = TraceServiceServer::new(Service {
            recorded: recorded.clone(),
        });
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                eprintln!("OTLP receiver stopped: {e}");
            }
        });
        Ok(OtlpReceiver {
            addr,
            recorded,
            task,
        })
    }

    /// The receiver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.recorded
            .lock()
            .map(|r| r.spans.clone())
            .unwrap_or_default()
    }

    /// How many Export calls arrived.
    pub fn exports(&self) -> usize {
        self.recorded.lock().map(|r| r.exports).unwrap_or_default()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Service {
    recorded: Arc<Mutex<Recorded>>,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> std::result::Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        let mut recorded = self
            .recorded
            .lock()
            .map_err(|_| tonic::Status::internal("the receiver's lock is poisoned"))?;
        recorded.exports += 1;
        recorded.spans.extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?)?)))
        .collect()
}

fn text(value: &AnyValue) -> Option<String> {
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
