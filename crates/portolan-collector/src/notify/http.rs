//! The notifications' HTTP/1 client: one POST at a time to one receiver, `http://` or
//! `https://` (rustls with the tree's `ring` provider), with a deadline on the whole
//! exchange.
//!
//! Each request has a connection of its own: notifications are few (a batch per
//! evaluation, a document per change), and a fresh connection never meets a receiver's
//! idle timeout half-way. Dropping a request (its deadline passed, the collector stops)
//! closes its connection: nothing is left running in the background.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION, RETRY_AFTER,
    USER_AGENT,
};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use portolan_tls::proxy::Forward;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::NotifyError;

/// How much of an answer's body is kept for the logs.
const BODY_LOGGED: usize = 1024;

/// Where requests go: a parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https`.
    pub tls: bool,
    /// Host name or address, IPv6 without brackets.
    pub host: String,
    /// Port, the scheme's default when the URL names none.
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path (never empty) and query.
    pub path: String,
}

impl Endpoint {
    /// Parses `url`; the message says what is wrong with it.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if url.is_empty() {
            return Err("is empty; give an http:// or https:// URL".into());
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{url}` carries credentials; send them as a header instead (`headers = {{ Authorization = \"…\" }}`)"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }

    /// The same endpoint with `suffix` appended to its path (before the query), e.g.
    /// `/api/v2/alerts` under Alertmanager's base URL.
    pub fn join(&self, suffix: &str) -> Endpoint {
        let (path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path.as_str(), None),
        };
        let mut joined = format!("{}{suffix}", path.trim_end_matches('/'));
        if let Some(q) = query {
            joined.push('?');
            joined.push_str(q);
        }
        Endpoint {
            path: joined,
            ..self.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        // Without the query: it may hold a token.
        let path = self.path.split('?').next().unwrap_or("/");
        write!(f, "{scheme}://{}{path}", self.authority)
    }
}

/// Checks one configured header; the message says what is wrong with it.
pub fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        format!(
            "the value of `{name}` is not a valid header value (control characters or non-ASCII)"
        )
    })?;
    v.set_sensitive(true);
    Ok((n, v))
}

/// What a receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// Its `Retry-After`, when given in seconds.
    pub retry_after: Option<Duration>,
    /// The start of the body, for the logs.
    pub body: String,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// TCP connect failed.
    Connect(std::io::Error),
    /// The TLS handshake failed (certificate not trusted, wrong name, …).
    Tls(std::io::Error),
    /// The HTTP exchange failed (connection closed, malformed answer).
    Http(hyper::Error),
    /// No whole answer within the deadline.
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Tls(e) => write!(
                f,
                "TLS handshake failed: {e} (is the receiver's certificate signed by a CA in `ca` or the system's store?)"
            ),
            Failure::Http(e) => write!(f, "HTTP exchange failed: {e}"),
            Failure::Timeout(d) => write!(
                f,
                "no answer within {} (raise the receiver's `timeout` if it is only slow)",
                humantime::format_duration(*d)
            ),
        }
    }
}

/// Posts JSON to one endpoint.
pub(crate) struct Client {
    endpoint: Endpoint,
    path: Uri,
    /// `http://authority/path`: the request's target through a forwarding proxy.
    absolute: Uri,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    headers: HeaderMap,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the headers: they hold credentials.
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client for `endpoint`; `ca` (a PEM file) replaces the system's CAs for https.
    pub(crate) fn new(
        endpoint: Endpoint,
        headers: &std::collections::BTreeMap<String, String>,
        ca: &str,
        timeout: Duration,
    ) -> Result<Client, NotifyError> {
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        map.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("portolan-collector/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in headers {
            let (n, v) = header(name, value).map_err(|reason| NotifyError::Header {
                endpoint: endpoint.to_string(),
                reason,
            })?;
            map.insert(n, v);
        }
        let tls = if endpoint.tls {
            let roots = if ca.is_empty() {
                system_roots()?
            } else {
                file_roots(Path::new(ca))?
            };
            let config =
                rustls::ClientConfig::builder_with_provider(portolan_tls::crypto_provider())
                    .with_protocol_versions(portolan_tls::PROTOCOL_VERSIONS)
                    .map_err(|e| NotifyError::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let name =
                ServerName::try_from(endpoint.host.clone()).map_err(|_| NotifyError::Url {
                    url: endpoint.to_string(),
                    reason: format!("`{}` is not a valid TLS server name", endpoint.host),
                })?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let path = endpoint.path.parse().map_err(|e| NotifyError::Url {
            url: endpoint.to_string(),
            reason: format!("invalid path `{}`: {e}", endpoint.path),
        })?;
        let absolute = format!("http://{}{}", endpoint.authority, endpoint.path)
            .parse()
            .map_err(|e| NotifyError::Url {
                url: endpoint.to_string(),
                reason: format!("invalid URL for a proxy: {e}"),
            })?;
        Ok(Client {
            endpoint,
            path,
            absolute,
            tls,
            headers: map,
            timeout,
        })
    }

    /// The endpoint, for logs.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// POSTs `body` and reads the answer, all within the timeout.
    pub(crate) async fn post(&self, body: Bytes) -> Result<Answer, Failure> {
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, body: Bytes) -> Result<Answer, Failure> {
        // Direct, or through the proxy HTTPS_PROXY / HTTP_PROXY names for the receiver.
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let connection = portolan_tls::proxy::from_env()
            .connect(scheme, &self.endpoint.host, self.endpoint.port)
            .await
            .map_err(Failure::Connect)?;
        let tcp = connection.stream;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.send(TokioIo::new(tcp), body, connection.forward).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(Failure::Tls)?;
                self.send(TokioIo::new(stream), body, None).await
            }
        }
    }

    /// One request over `io`; `forward`: `io` reaches a proxy that forwards plain HTTP,
    /// which takes the request in absolute form with its credentials.
    async fn send<T>(&self, io: T, body: Bytes, forward: Option<Forward>) -> Result<Answer, Failure>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(Failure::Http)?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = match &forward {
            Some(_) => self.absolute.clone(),
            None => self.path.clone(),
        };
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        if let Ok(host) = HeaderValue::from_str(&self.endpoint.authority) {
            headers.insert(HOST, host);
        }
        if let Some(authorization) = forward.and_then(|f| f.authorization) {
            headers.insert(PROXY_AUTHORIZATION, authorization);
        }
        let exchange = async move {
            let response = sender.send_request(request).await?;
            let (parts, mut body) = response.into_parts();
            let mut kept = Vec::new();
            // Read to the end (so that the receiver sees a clean exchange) but keep only
            // the start.
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data()
                    && kept.len() < BODY_LOGGED
                {
                    let room = BODY_LOGGED - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            let retry_after = parts
                .headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Ok::<_, hyper::Error>(Answer {
                status: parts.status,
                retry_after,
                body: String::from_utf8_lossy(&kept).trim().to_string(),
            })
        };
        // The connection is driven here, beside the request, not in a task of its own:
        // when this future is dropped, the connection goes with it.
        let mut connection = std::pin::pin!(connection);
        let mut exchange = std::pin::pin!(exchange);
        tokio::select! {
            answer = &mut exchange => answer.map_err(Failure::Http),
            done = &mut connection => match done {
                Err(e) => Err(Failure::Http(e)),
                Ok(()) => exchange.await.map_err(Failure::Http),
            },
        }
    }
}

fn system_roots() -> Result<RootCertStore, NotifyError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(NotifyError::Tls(format!(
            "no CA certificates found in the system's store{} (install the `ca-certificates` package or set the receiver's `ca`)",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join("; "))
            }
        )));
    }
    Ok(roots)
}

fn file_roots(path: &Path) -> Result<RootCertStore, NotifyError> {
    let bad = |reason: String| NotifyError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no `CERTIFICATE` block".into()));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports_and_paths() -> Result<(), String> {
        let e = Endpoint::parse("http://am:9093")?;
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (false, "am", 9093, "/")
        );
        let e = Endpoint::parse("https://[::1]/hook?token=x")?;
        assert_eq!((e.tls, e.host.as_str(), e.port), (true, "::1", 443));
        assert_eq!(e.path, "/hook?token=x");
        assert_eq!(e.to_string(), "https://[::1]/hook");
        assert_eq!(
            Endpoint::parse("http://am/prefix/")?
                .join("/api/v2/alerts")
                .path,
            "/prefix/api/v2/alerts"
        );
        assert_eq!(
            Endpoint::parse("http://am?x=1")?
                .join("/api/v2/alerts")
                .path,
            "/api/v2/alerts?x=1"
        );
        Ok(())
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, expected) in [
            ("", "is empty"),
            ("am:9093", "not an http:// or https://"),
            ("ftp://am", "not an http:// or https://"),
            ("http://user:pw@am", "credentials"),
            ("http://", "not a URL"),
        ] {
            let err = Endpoint::parse(url).expect_err(url);
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn headers_are_checked() {
        assert!(header("Authorization", "Bearer abc").is_ok());
        assert!(header("bad name", "x").is_err());
        assert!(header("X-Ok", "line\nbreak").is_err());
    }
}
