//! The agent and CLI side: a client configuration that presents a certificate, and
//! connectors that give tonic a [`Channel`] over our own mutual TLS.
//!
//! ```no_run
//! # async fn run(files: portolan_tls::TlsFiles) -> Result<(), Box<dyn std::error::Error>> {
//! let config = portolan_tls::client_config(&files)?;
//! let channel = portolan_tls::connect(
//!     "https://collector.example:7443",
//!     config,
//!     portolan_tls::ConnectOptions::default(),
//! )
//! .await?;
//! # drop(channel); Ok(()) }
//! ```

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{TlsError, describe_chain};
use crate::files::TlsFiles;

/// How long connecting (TCP and TLS handshake) may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The port used when an endpoint names none.
pub const DEFAULT_PORT: u16 = 443;

/// Builds the client configuration of an agent or operator: trusts the CAs in `files.ca`
/// for the server, presents `files.cert` with `files.key`, offers ALPN `h2`; TLS 1.3 and 1.2.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = files.load_roots()?;
    let chain = files.load_cert_chain()?;
    let key = files.load_key()?;
    let mut config = ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(crate::PROTOCOL_VERSIONS)
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| TlsError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        })?;
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that authenticates the server against `ca` and presents no
/// certificate: what an agent uses to enrol, before it has one.
pub fn server_only_client_config(ca: &std::path::Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = TlsFiles {
        ca: ca.to_owned(),
        cert: Default::default(),
        key: Default::default(),
    }
    .load_roots()?;
    let mut config = ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(crate::PROTOCOL_VERSIONS)
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// How to reach a collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The name to verify the collector's certificate against, when it differs from the
    /// endpoint's host (for example, connecting by IP to a certificate issued for a DNS
    /// name). `None` uses the endpoint's host.
    pub server_name: Option<String>,
    /// How long TCP connect plus TLS handshake may take.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            server_name: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Connects to `endpoint` (`https://host:port`) over mutual TLS and returns a tonic
/// [`Channel`]; fails if the collector cannot be reached, its certificate does not chain to
/// the CA or does not name the endpoint's host (DNS or IP SAN), or it refuses ours.
///
/// The channel reconnects by itself after the connection drops.
pub async fn connect(
    endpoint: &str,
    config: Arc<ClientConfig>,
    options: ConnectOptions,
) -> Result<Channel, TlsError> {
    let ep = parse_endpoint(endpoint)?.connect_timeout(options.connect_timeout);
    connect_named(endpoint, ep, config, options.server_name).await
}

/// Like [`connect`], but returns at once: the connection is made on the first request,
/// and a failure shows up as that request's error.
pub fn connect_lazy(
    endpoint: &str,
    config: Arc<ClientConfig>,
    options: ConnectOptions,
) -> Result<Channel, TlsError> {
    let ep = parse_endpoint(endpoint)?.connect_timeout(options.connect_timeout);
    connect_endpoint_lazy(ep, config, options.server_name)
}

/// Connects through an [`Endpoint`] the caller configured (keepalive, window sizes,
/// timeouts), doing TCP and TLS ourselves. The endpoint's URI must be `https://host:port`.
pub async fn connect_endpoint(
    endpoint: Endpoint,
    config: Arc<ClientConfig>,
    server_name: Option<String>,
) -> Result<Channel, TlsError> {
    let name = endpoint.uri().to_string();
    connect_named(&name, endpoint, config, server_name).await
}

/// [`connect_endpoint`], naming the endpoint in errors as the user wrote it.
async fn connect_named(
    name: &str,
    endpoint: Endpoint,
    config: Arc<ClientConfig>,
    server_name: Option<String>,
) -> Result<Channel, TlsError> {
    let connector = MtlsConnector::new(endpoint.uri(), config, server_name)?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| connector.clone().connect()))
        .await
        .map_err(|error| TlsError::Connect {
            endpoint: name.to_owned(),
            reason: describe_chain(&error),
            error,
        })
}

/// Like [`connect_endpoint`], connecting on first use.
pub fn connect_endpoint_lazy(
    endpoint: Endpoint,
    config: Arc<ClientConfig>,
    server_name: Option<String>,
) -> Result<Channel, TlsError> {
    let connector = MtlsConnector::new(endpoint.uri(), config, server_name)?;
    Ok(endpoint
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| connector.clone().connect())))
}

/// Parses and checks an `https://host[:port]` endpoint.
fn parse_endpoint(endpoint: &str) -> Result<Endpoint, TlsError> {
    Endpoint::from_shared(endpoint.to_owned()).map_err(|e| TlsError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: match std::error::Error::source(&e) {
            Some(source) => source.to_string(),
            None => e.to_string(),
        },
    })
}

/// TCP connect plus TLS handshake to one fixed host and port.
#[derive(Clone)]
struct MtlsConnector {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl MtlsConnector {
    fn new(
        uri: &Uri,
        config: Arc<ClientConfig>,
        server_name: Option<String>,
    ) -> Result<Self, TlsError> {
        let bad = |reason: &str| TlsError::Endpoint {
            endpoint: uri.to_string(),
            reason: reason.to_owned(),
        };
        match uri.scheme_str() {
            Some("https") => {}
            Some(_) => {
                return Err(bad(
                    "the scheme must be `https` (every connection is mutual TLS)",
                ));
            }
            None => return Err(bad("the scheme `https://` is missing")),
        }
        let host = uri.host().ok_or_else(|| bad("the host is missing"))?;
        // IPv6 literals come bracketed from the URI (`[::1]`).
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = uri.port_u16().unwrap_or(DEFAULT_PORT);
        let name = server_name.unwrap_or_else(|| host.clone());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName { name })?;
        Ok(MtlsConnector {
            host,
            port,
            server_name,
            tls: TlsConnector::from(config),
        })
    }

    async fn connect(self) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
        let MtlsConnector {
            host,
            port,
            server_name,
            tls,
        } = self;
        // Direct, or through the CONNECT tunnel of the proxy HTTPS_PROXY names.
        let tcp = crate::proxy::from_env()
            .connect("https", &host, port)
            .await?
            .stream;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY toward {host}:{port}: {e}");
        }
        let stream = tls.connect(server_name, tcp).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("tls handshake with {host}:{port} failed: {e}"),
            )
        })?;
        Ok(TokioIo::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(crate::crypto_provider())
                .with_protocol_versions(crate::PROTOCOL_VERSIONS)
                .expect("ring supports tls 1.2 and 1.3")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    fn connector(endpoint: &str, name: Option<&str>) -> Result<MtlsConnector, TlsError> {
        let ep = parse_endpoint(endpoint)?;
        MtlsConnector::new(ep.uri(), config(), name.map(str::to_owned))
    }

    #[test]
    fn endpoint_host_port_and_name() {
        let c = connector("https://collector.example:7443", None).expect("valid endpoint");
        assert_eq!((c.host.as_str(), c.port), ("collector.example", 7443));
        assert_eq!(c.server_name.to_str(), "collector.example");

        let c = connector("https://[::1]:7443", None).expect("valid endpoint");
        assert_eq!(c.host, "::1");
        assert!(matches!(c.server_name, ServerName::IpAddress(_)));

        let c = connector("https://10.1.2.3", Some("collector.internal")).expect("valid endpoint");
        assert_eq!((c.host.as_str(), c.port), ("10.1.2.3", 443));
        assert_eq!(c.server_name.to_str(), "collector.internal");
    }

    #[test]
    fn refuses_plaintext_and_garbage() {
        let e = connector("http://collector.example:7443", None).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("invalid endpoint `http://collector.example:7443/`: the scheme must be `https` (every connection is mutual TLS) (expected e.g. `https://collector.example:7443`)".to_owned())
        );
        assert!(matches!(
            connector("collector.example:7443", None),
            Err(TlsError::Endpoint { .. })
        ));
        assert!(matches!(
            connector("https://exa mple", None),
            Err(TlsError::Endpoint { .. })
        ));
        assert!(matches!(
            connector("https://collector.example", Some("bad name!")),
            Err(TlsError::ServerName { .. })
        ));
    }
}
