//! The plain HTTP/1 listener of `/metrics`, `/healthz` and `/readyz`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::health::Health;
use crate::scrape::{Exposition, Format};

/// What the listener serves: the metrics and the health state.
#[derive(Debug)]
pub struct Endpoints {
    /// Answers `/metrics`.
    pub metrics: Exposition,
    /// Answers `/healthz` and `/readyz`.
    pub health: Health,
}

/// Serves, on `listener` over plain HTTP/1, until `shutdown` resolves:
///
/// - `GET /metrics`: the families of [`Endpoints::metrics`], in OpenMetrics when the
///   `Accept` header asks for it, else in the Prometheus text format;
/// - `GET /healthz`: 200 `ok` while every loop of [`Health`] runs, else 503 with what is
///   late;
/// - `GET /readyz`: 200 `ready` while every check is ready, else 503 `not ready: …` with
///   each reason.
///
/// Every other path is 404.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send,
) {
    let endpoints = Arc::new(endpoints);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&request, &endpoints)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn respond<B>(request: &Request<B>, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, content_type, body) = if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: metrics are at /metrics, liveness at /healthz, readiness at /readyz\n"
                .to_string(),
        )
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "use GET\n".to_string(),
        )
    } else if path == "/metrics" {
        let accept = request.headers().get(hyper::header::ACCEPT);
        let format = Format::negotiate(accept.and_then(|a| a.to_str().ok()));
        (
            StatusCode::OK,
            format.content_type(),
            endpoints.metrics.render(format),
        )
    } else if path == "/healthz" {
        match endpoints.health.liveness(Instant::now()) {
            Ok(()) => (StatusCode::OK, TEXT, "ok\n".to_string()),
            Err(problems) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not alive: {}\n", problems.join("; ")),
            ),
        }
    } else {
        match endpoints.health.readiness() {
            Ok(()) => (StatusCode::OK, TEXT, "ready\n".to_string()),
            Err(reasons) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {}\n", reasons.join("; ")),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn get(endpoints: &Endpoints, path: &str) -> (u16, String) {
        let request = Request::get(path).body(()).expect("a valid request");
        let response = respond(&request, endpoints);
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn routes_metrics_liveness_and_readiness() {
        let x = crate::Family::gauge("x", "X.");
        x.set(&[], 1.0);
        let endpoints = Endpoints {
            metrics: Exposition::new(move |e| x.encode(e)),
            health: Health::new(),
        };
        assert_eq!(
            get(&endpoints, "/metrics").await,
            (200, "# HELP x X.\n# TYPE x gauge\nx 1\n".into())
        );
        assert_eq!(get(&endpoints, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(&endpoints, "/readyz").await, (200, "ready\n".into()));
        assert_eq!(get(&endpoints, "/").await.0, 404);
        endpoints.health.set(
            "store",
            Err("clickhouse at http://ch:8123: connection refused".into()),
        );
        endpoints.health.ended("check");
        assert_eq!(
            get(&endpoints, "/readyz").await,
            (
                503,
                "not ready: clickhouse at http://ch:8123: connection refused\n".into()
            )
        );
        assert_eq!(
            get(&endpoints, "/healthz").await,
            (503, "not alive: the `check` loop ended\n".into())
        );
    }
}
