//! Outbound connections through an HTTP proxy, as the environment asks: `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their lowercase forms), read the way curl
//! reads them (hyper-util's matcher: `NO_PROXY` takes host names, domain suffixes, IP
//! addresses, CIDR blocks and `*`).
//!
//! - An `https` destination (the agent's and the CLI's gRPC, HTTPS notification receivers)
//!   is reached through a `CONNECT` tunnel, TLS end to end inside it: the proxy sees the
//!   host and port only.
//! - An `http` destination (a plain-HTTP receiver) is forwarded: the caller sends its
//!   request to the proxy in absolute form with the proxy's credentials
//!   ([`Connection::forward`]).
//!
//! Credentials in the proxy URL (`http://user:pass@proxy:3128`) are sent as
//! `Proxy-Authorization: Basic` and never printed. Only `http://` proxies are supported.

use std::fmt;
use std::io;
use std::sync::LazyLock;

use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::http::HeaderValue;
use tonic::transport::Uri;

use crate::error::io_reason;

/// The most a proxy's answer to `CONNECT` may hold before its blank line.
const MAX_ANSWER: usize = 16 * 1024;

/// The process's proxies, read from its environment once.
static FROM_ENV: LazyLock<Proxies> = LazyLock::new(Proxies::from_env);

/// The proxies this process's environment names.
pub fn from_env() -> &'static Proxies {
    &FROM_ENV
}

/// Which proxy, if any, each destination goes through.
pub struct Proxies {
    matcher: Matcher,
}

impl fmt::Debug for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxies").finish_non_exhaustive()
    }
}

/// An open connection toward a destination: direct, tunnelled, or to a forwarding proxy.
#[derive(Debug)]
pub struct Connection {
    /// The stream: to the destination (direct or tunnelled), or to the proxy (forward).
    pub stream: TcpStream,
    /// Set when the stream reaches a proxy that forwards plain HTTP: send the request in
    /// absolute form (`POST http://host:port/path`) with this `Proxy-Authorization` value.
    pub forward: Option<Forward>,
}

/// What a request sent through a forwarding proxy carries.
#[derive(Debug, Clone, Default)]
pub struct Forward {
    /// `Proxy-Authorization` header value, when the proxy URL has credentials.
    pub authorization: Option<HeaderValue>,
}

impl Proxies {
    /// The proxies of `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`.
    pub fn from_env() -> Proxies {
        Proxies {
            matcher: Matcher::from_env(),
        }
    }

    /// The proxies given explicitly (tests; a value as the variable would hold it).
    pub fn new(all: Option<&str>, no_proxy: Option<&str>) -> Proxies {
        let mut builder = Matcher::builder();
        if let Some(all) = all {
            builder = builder.all(all.to_string());
        }
        if let Some(no) = no_proxy {
            builder = builder.no(no.to_string());
        }
        Proxies {
            matcher: builder.build(),
        }
    }

    /// The proxy URL (without credentials) `scheme://host:port` goes through, if any.
    pub fn proxy_for(&self, scheme: &str, host: &str, port: u16) -> Option<String> {
        self.intercept(scheme, host, port)
            .map(|i| without_credentials(i.uri()))
    }

    fn intercept(&self, scheme: &str, host: &str, port: u16) -> Option<Intercept> {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let uri: Uri = format!("{scheme}://{authority}/").parse().ok()?;
        self.matcher.intercept(&uri)
    }

    /// Opens a TCP connection toward `scheme://host:port`, through the proxy the
    /// environment names for it. Errors name the proxy and say what to check.
    pub async fn connect(&self, scheme: &str, host: &str, port: u16) -> io::Result<Connection> {
        let Some(proxy) = self.intercept(scheme, host, port) else {
            let stream = TcpStream::connect((host, port)).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("tcp connect to {host}:{port} failed: {}", io_reason(&e)),
                )
            })?;
            return Ok(Connection {
                stream,
                forward: None,
            });
        };
        let shown = without_credentials(proxy.uri());
        let failed = |what: String, kind: io::ErrorKind| {
            io::Error::new(
                kind,
                format!(
                    "{what} (proxy {shown}, from the HTTPS_PROXY/HTTP_PROXY/ALL_PROXY environment; check the proxy, or list {host} in NO_PROXY)"
                ),
            )
        };
        if proxy.uri().scheme_str() != Some("http") {
            return Err(failed(
                "only http:// proxies are supported".into(),
                io::ErrorKind::InvalidInput,
            ));
        }
        let proxy_host = proxy
            .uri()
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .unwrap_or_default();
        let proxy_port = proxy.uri().port_u16().unwrap_or(80);
        let mut stream = TcpStream::connect((proxy_host.as_str(), proxy_port))
            .await
            .map_err(|e| {
                failed(
                    format!("cannot connect to the proxy: {}", io_reason(&e)),
                    e.kind(),
                )
            })?;
        let authorization = proxy.basic_auth().cloned();
        if scheme == "http" {
            return Ok(Connection {
                stream,
                forward: Some(Forward { authorization }),
            });
        }
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = authorization.as_ref().and_then(|a| a.to_str().ok()) {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| {
            failed(
                format!("the proxy closed the connection: {}", io_reason(&e)),
                e.kind(),
            )
        })?;
        let status = read_answer(&mut stream)
            .await
            .map_err(|e| failed(format!("no answer to CONNECT {target}: {e}"), e.kind()))?;
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code == "407" {
            return Err(failed(
                format!(
                    "the proxy refused CONNECT {target}: {status}; give its credentials in the proxy URL (http://user:password@host:port)"
                ),
                io::ErrorKind::PermissionDenied,
            ));
        }
        if code != "200" {
            return Err(failed(
                format!("the proxy refused CONNECT {target}: {status}"),
                io::ErrorKind::ConnectionRefused,
            ));
        }
        Ok(Connection {
            stream,
            forward: None,
        })
    }
}

/// Reads a proxy's answer up to its blank line and returns its status line. Reads byte by
/// byte: nothing after the blank line belongs to the proxy.
async fn read_answer(stream: &mut TcpStream) -> io::Result<String> {
    let mut answer = Vec::with_capacity(256);
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_ANSWER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("its answer is longer than {MAX_ANSWER} bytes"),
            ));
        }
        let byte = stream.read_u8().await?;
        answer.push(byte);
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// A proxy URL for messages: scheme, host and port, never the credentials.
fn without_credentials(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) => format!("{}://{host}:{port}", uri.scheme_str().unwrap_or("http")),
        None => format!("{}://{host}", uri.scheme_str().unwrap_or("http")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_names_hosts_domains_and_networks_that_go_direct() {
        let proxies = Proxies::new(
            Some("http://user:secret@proxy.example:3128"),
            Some("localhost,.internal,10.0.0.0/8,collector.example"),
        );
        let through = |host: &str| proxies.proxy_for("https", host, 7443);
        assert_eq!(
            through("portolan.example.net").as_deref(),
            Some("http://proxy.example:3128")
        );
        for direct in ["localhost", "c1.internal", "10.1.2.3", "collector.example"] {
            assert_eq!(through(direct), None, "{direct}");
        }
        // The credentials are never part of what is shown.
        assert!(!format!("{:?}", through("x.example")).contains("secret"));
    }

    #[test]
    fn without_a_proxy_everything_goes_direct() {
        let proxies = Proxies::new(None, None);
        assert_eq!(proxies.proxy_for("https", "collector.example", 7443), None);
        assert_eq!(proxies.proxy_for("http", "::1", 80), None);
    }
}
