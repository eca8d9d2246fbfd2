//! A small real HTTP/1 server on 127.0.0.1 that records every request and answers as a
//! test tells it: the stand-in for Alertmanager, a webhook endpoint or any other HTTP
//! receiver the collector talks to.
//!
//! Every request is recorded (method, path, headers, body) as soon as its body has been
//! read, before the answer is chosen, so a test sees a request that is still waiting for
//! its answer. Answers come from a script of [`Reply`]s, one per request in arrival order
//! ([`Receiver::then`]), and from a default once the script is used up
//! ([`Receiver::set_default`]; `200` unless told otherwise). A reply may be delayed, or
//! held until the test calls [`Receiver::release`], to play a slow or hanging receiver.
//!
//! ```no_run
//! # async fn run() -> portolan_testkit::Result<()> {
//! use portolan_testkit::{Receiver, Reply};
//!
//! let receiver = Receiver::start().await?;
//! receiver.then([Reply::status(503), Reply::status(503)]); // then 200s
//! // … point the code under test at receiver.url() …
//! let bodies: Vec<String> = receiver.requests().iter().map(|r| r.text()).collect();
//! # drop(bodies); Ok(()) }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::{Result, io_error};

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// How long to wait before answering.
    pub delay: Duration,
    /// Wait (after `delay`) until [`Receiver::release`] is called.
    pub hold: bool,
    /// The response body.
    pub body: String,
}

impl Reply {
    /// `200 OK` at once.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// `status` at once, with a short body naming it.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            hold: false,
            body: format!("test receiver answers {status}"),
        }
    }

    /// `200` only after [`Receiver::release`]: a receiver that hangs until then.
    pub fn held() -> Reply {
        Reply {
            hold: true,
            ..Reply::ok()
        }
    }

    /// The same reply after `delay`.
    pub fn after(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }

    /// The same reply with `body`.
    pub fn with_body(self, body: impl Into<String>) -> Reply {
        Reply {
            body: body.into(),
            ..self
        }
    }
}

/// One request the receiver got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `POST`, `GET`, …
    pub method: String,
    /// Path and query, e.g. `/api/v2/alerts`.
    pub path: String,
    /// Headers in the order received, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
    /// When its body had been read.
    pub at: Instant,
}

impl Recorded {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct State {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    default: Reply,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    released: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread cannot leave the state half-written: every update is
        // one push or pop.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A recording HTTP/1 server on `127.0.0.1` (see the [module docs](mod@crate::receiver)).
///
/// Stops, dropping every open connection, when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a plain-HTTP receiver on a free port of 127.0.0.1 that answers `200` to
    /// everything until told otherwise. Must be called within a tokio runtime.
    pub async fn start() -> Result<Receiver> {
        Receiver::start_with(None).await
    }

    /// Starts an HTTPS receiver with `config` (its certificate must name `127.0.0.1`
    /// for [`Receiver::url`] to verify).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Result<Receiver> {
        Receiver::start_with(Some(config)).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Result<Receiver> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(io_error("cannot bind the test receiver to 127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("cannot read the test receiver's address"))?;
        let (released, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requests: Vec::new(),
                script: VecDeque::new(),
                default: Reply::ok(),
            }),
            released,
        });
        let is_tls = tls.is_some();
        let task = tokio::spawn(accept(listener, tls, shared.clone()));
        Ok(Receiver {
            addr,
            tls: is_tls,
            shared,
            task,
        })
    }

    /// The receiver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://…`), without a trailing slash.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Answers the next requests with `replies`, in order, then with the default again.
    pub fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.state().script.extend(replies);
    }

    /// Answers with `reply` once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        self.shared.state().default = reply;
    }

    /// Lets every held reply ([`Reply::held`]) go, now and from now on.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Every request so far, in the order their bodies were read.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state().requests.clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.shared.state().requests.len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted; aborting drops the set and with it every
/// connection's task.
async fn accept(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, request).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            // A connection that fails (a client that gives up, a bad handshake) only
            // ends itself.
            match acceptor {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
}

async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let reply = {
        let mut state = shared.state();
        state.requests.push(Recorded {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            at: Instant::now(),
        });
        let next = state.script.pop_front();
        next.unwrap_or_else(|| state.default.clone())
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.hold {
        let mut released = shared.released.subscribe();
        // The sender lives in `shared`, which outlives this request: waiting only ends
        // by release.
        let _ = released.wait_for(|r| *r).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn post(addr: SocketAddr, body: &str) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "POST /hook?x=1 HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn records_requests_and_follows_the_script() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        receiver.then([Reply::status(503).with_body("busy")]);
        let first = post(receiver.addr(), "{\"n\":1}").await?;
        let second = post(receiver.addr(), "{\"n\":2}").await?;
        assert!(first.starts_with("HTTP/1.1 503"), "{first}");
        assert!(first.ends_with("busy"), "{first}");
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        let seen = receiver.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("POST", "/hook?x=1")
        );
        assert_eq!(seen[0].header("Content-Type"), Some("application/json"));
        assert_eq!(seen[1].text(), "{\"n\":2}");
        Ok(())
    }

    #[tokio::test]
    async fn a_held_reply_waits_for_release_but_is_recorded_at_once() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        receiver.then([Reply::held()]);
        let addr = receiver.addr();
        let pending = tokio::spawn(async move { post(addr, "held").await });
        crate::eventually_async!(timeout = Duration::from_secs(5), receiver.count() == 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !pending.is_finished(),
            "a held reply answered before release"
        );
        receiver.release();
        let answer = pending.await??;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        Ok(())
    }
}
