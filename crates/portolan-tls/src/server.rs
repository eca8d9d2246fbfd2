//! The collector side: a server configuration that requires client certificates, and an
//! acceptor that hands tonic only connections whose TLS handshake succeeded.
//!
//! ```no_run
//! # async fn run(files: portolan_tls::TlsFiles, router: tonic::transport::server::Router) -> Result<(), Box<dyn std::error::Error>> {
//! let config = portolan_tls::server_config(&files)?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7443").await?;
//! let incoming = portolan_tls::TlsIncoming::new(listener, config);
//! router.serve_with_incoming_shutdown(incoming, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::crl::CrlSet;
use crate::error::TlsError;
use crate::files::TlsFiles;
use crate::identity::{CertFacts, Identity, IdentityError, parse_certificate};

/// How long a client may take to complete its TLS handshake before the connection is
/// closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TLS handshakes may run at once before accepting pauses.
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 1024;

/// Pause after an `accept` error that is not about one connection (for example, out of
/// file descriptors), so that the accept loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Whether a client must present a certificate to complete the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Every client presents a certificate of the fleet's CAs, or the handshake fails.
    #[default]
    Required,
    /// A client may connect without a certificate (one it presents is still verified in
    /// full). Such a peer has no identity: the collector lets it call enrollment only.
    Optional,
}

/// Builds the server configuration of a collector: its certificate and key from `files`,
/// and a client certificate verifier that **requires** every client to present a
/// certificate signed by one of the CAs in `files.ca`. ALPN offers `h2`; TLS 1.3 and 1.2.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for(files, &CrlSet::empty(), ClientAuth::Required)
}

/// [`server_config`], and the handshake also refuses a client certificate that a CRL of
/// `crls` revokes ([`CrlSet::load`] checked them against `files.ca`).
pub fn server_config_with_crls(
    files: &TlsFiles,
    crls: &CrlSet,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for(files, crls, ClientAuth::Required)
}

/// [`server_config_with_crls`], with client certificates required or optional
/// ([`ClientAuth`]).
///
/// Only the client's own certificate is looked up in the CRLs (intermediates are not:
/// Portolan's CAs issue leaves directly). A certificate whose issuer publishes no CRL is
/// accepted: CRLs are one CA's word about its own certificates, and the fleet may trust
/// CAs that publish none (the enrollment signer's certificates are refused by retirement
/// instead). A CRL past its `nextUpdate` still applies and does not refuse anyone by
/// itself (rustls' default; `enforce_revocation_expiration` is not set): refusing every
/// certificate of a CA because its CRL was not refreshed in time would lock the fleet out,
/// while the revoked serials it lists stay revoked whatever its age. The collector warns
/// about a stale CRL instead ([`ServerTls`](crate::ServerTls)).
pub fn server_config_for(
    files: &TlsFiles,
    crls: &CrlSet,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(files.load_roots()?);
    let chain = files.load_cert_chain()?;
    let key = files.load_key()?;
    let provider = crate::crypto_provider();
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls.ders())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    if client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| match e {
        rustls::server::VerifierBuilderError::InvalidCrl(e) => {
            unusable_crl(files, crls, &provider, format!("{e:?}"))
        }
        e => TlsError::Verifier {
            path: files.ca.clone(),
            reason: e.to_string(),
        },
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(crate::PROTOCOL_VERSIONS)
        .map_err(TlsError::Protocol)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        })?;
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    // No session resumption: every handshake verifies the client certificate in full. A
    // resumed session would skip its expiry and the CAs in force now (short-lived
    // certificates, CA rotation); agents hold long-lived connections, so the cost is nil.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The error naming the CRL of `crls` that rustls refuses (each is tried on its own);
/// `reason` is what rustls said about the whole set.
fn unusable_crl(
    files: &TlsFiles,
    crls: &CrlSet,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    reason: String,
) -> TlsError {
    let culprit = crls.crls().iter().find(|crl| {
        files.load_roots().is_ok_and(|roots| {
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls([crl.der().clone()])
                .build()
                .is_err()
        })
    });
    TlsError::Crl {
        path: culprit.map_or_else(|| files.ca.clone(), |crl| crl.path().to_owned()),
        reason: format!(
            "rustls cannot use it ({reason}; check it with `openssl crl -noout -text -in FILE`, or write it again with `portolan pki crl`)"
        ),
    }
}

/// Who is on the other end of an accepted connection, as tonic hands it to handlers in the
/// request extensions (see [`peer_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's address and port.
    pub remote_addr: SocketAddr,
    /// The identity in the peer's (verified) certificate, or why it names none. A
    /// certificate can chain to the CA and still carry no valid identity: handlers must
    /// refuse such peers.
    pub identity: Result<Identity, IdentityError>,
    /// The serial number of the peer's certificate (the big-endian bytes of the DER
    /// INTEGER), for revocation checks. Empty if the certificate could not be parsed.
    pub serial: Vec<u8>,
    /// The DER of the certificate's issuer name: a CRL revokes a serial of its own issuer
    /// only (two CAs may hand out the same serial). Empty if the certificate could not be
    /// parsed, or if the peer was described without it ([`PeerInfo::new`]).
    pub issuer: Vec<u8>,
    /// The certificate's key, issuer and validity; `None` without a parsable certificate.
    pub cert: Option<CertFacts>,
}

impl PeerInfo {
    /// A peer as a handshake would describe it (for tests and in-process transports).
    pub fn new(
        remote_addr: SocketAddr,
        identity: Result<Identity, IdentityError>,
        serial: Vec<u8>,
    ) -> Self {
        PeerInfo {
            remote_addr,
            identity,
            serial,
            cert: None,
            issuer: Vec::new(),
        }
    }

    /// The same peer, its certificate issued by the CA named `issuer` (DER of the name).
    pub fn with_issuer(mut self, issuer: Vec<u8>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Reads identity and serial from the leaf certificate a peer presented (`None`: it
    /// presented none), as [`PeerStream`] does after a handshake; for transports other
    /// than TCP, such as in-process tests over `tokio::io::duplex`.
    pub fn from_certificate(remote_addr: SocketAddr, cert_der: Option<&[u8]>) -> Self {
        let parsed = match cert_der {
            None => Err(IdentityError::NoCertificate),
            Some(der) => parse_certificate(der),
        };
        match parsed {
            Ok(parsed) => PeerInfo {
                remote_addr,
                identity: parsed.identity,
                serial: parsed.serial,
                cert: Some(parsed.facts),
                issuer: parsed.issuer,
            },
            Err(e) => PeerInfo {
                remote_addr,
                identity: Err(e),
                serial: Vec::new(),
                cert: None,
                issuer: Vec::new(),
            },
        }
    }
}

/// The [`PeerInfo`] of the connection a request arrived on, when the server was fed by a
/// [`TlsIncoming`].
///
/// tonic inserts the `ConnectInfo` of the connection's IO type ([`PeerStream`]) into every
/// request's extensions; this reads it back.
pub fn peer_info<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
    request.extensions().get::<PeerInfo>()
}

/// A server-side TLS connection whose handshake succeeded, with the peer's [`PeerInfo`].
///
/// Reads and writes go straight to the underlying [`TlsStream`]. The transport is TCP;
/// tests run the same type over an in-memory stream.
#[derive(Debug)]
pub struct PeerStream<S = TcpStream> {
    inner: TlsStream<S>,
    info: PeerInfo,
}

impl<S> PeerStream<S> {
    /// Wraps a finished handshake and reads the peer's identity from its certificate.
    pub fn new(inner: TlsStream<S>, remote_addr: SocketAddr) -> Self {
        let cert = inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| cert.as_ref());
        let info = PeerInfo::from_certificate(remote_addr, cert);
        PeerStream { inner, info }
    }

    /// Who the peer is.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }

    /// The TLS stream.
    pub fn get_ref(&self) -> &TlsStream<S> {
        &self.inner
    }

    /// Gives back the TLS stream.
    pub fn into_inner(self) -> TlsStream<S> {
        self.inner
    }
}

impl<S: Send + Sync + 'static> Connected for PeerStream<S> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Limits of a [`TlsIncoming`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptOptions {
    /// How long a client may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// How many handshakes may run at once; further connections wait in the listen backlog.
    pub max_concurrent_handshakes: usize,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        AcceptOptions {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
        }
    }
}

/// A stream of TLS connections for
/// [`tonic::transport::server::Router::serve_with_incoming_shutdown`].
///
/// A background task accepts TCP connections and runs each TLS handshake in its own task,
/// under a timeout, so that a slow or silent client never holds up the others. Failed
/// handshakes are logged (`warn`, with the peer address and the reason) and never yielded:
/// the stream yields only connections with a verified client certificate, and never an
/// error. Dropping the stream stops accepting and closes the listening socket.
#[derive(Debug)]
pub struct TlsIncoming {
    connections: mpsc::Receiver<PeerStream>,
    accept_task: JoinHandle<()>,
    local_addr: Option<SocketAddr>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` with the default [`AcceptOptions`].
    ///
    /// Must be called from within a Tokio runtime (it spawns the accept task).
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self::with_options(listener, config, AcceptOptions::default())
    }

    /// Starts accepting on `listener` with the given limits.
    ///
    /// Must be called from within a Tokio runtime (it spawns the accept task).
    pub fn with_options(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        options: AcceptOptions,
    ) -> Self {
        // The sender goes away at once: the receiver keeps the one configuration.
        let (_, config) = watch::channel(config);
        Self::reloading(listener, config, options)
    }

    /// Starts accepting on `listener`; each handshake uses the configuration `config`
    /// holds at that moment, so that certificates and CAs swapped in by a
    /// [`ServerTls`](crate::ServerTls) serve new connections without a restart (open
    /// connections keep theirs).
    ///
    /// Must be called from within a Tokio runtime (it spawns the accept task).
    pub fn reloading(
        listener: TcpListener,
        config: watch::Receiver<Arc<ServerConfig>>,
        options: AcceptOptions,
    ) -> Self {
        let local_addr = listener.local_addr().ok();
        let (tx, connections) = mpsc::channel(16);
        let accept_task = tokio::spawn(accept_loop(listener, config, tx, options));
        TlsIncoming {
            connections,
            accept_task,
            local_addr,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = Result<PeerStream, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().connections.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    tx: mpsc::Sender<PeerStream>,
    options: AcceptOptions,
) {
    let permits = Arc::new(Semaphore::new(options.max_concurrent_handshakes.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                match e.kind() {
                    // About one connection that went away before we took it.
                    io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::Interrupted => {
                        tracing::debug!("accept failed: {e}");
                    }
                    _ => {
                        tracing::warn!("cannot accept connections: {e} (retrying)");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let acceptor = TlsAcceptor::from(config.borrow().clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY for {remote_addr}: {e}");
            }
            match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let stream = PeerStream::new(tls, remote_addr);
                    match &stream.info.identity {
                        Ok(identity) => {
                            tracing::debug!(
                                "tls connection from {remote_addr} as {identity} (certificate serial {})",
                                crate::revocation::serial_hex(&stream.info.serial)
                            )
                        }
                        Err(e) => tracing::warn!(
                            "tls connection from {remote_addr} has a certificate without identity: {e}"
                        ),
                    }
                    // The receiver is gone only when the server stopped: drop the connection.
                    let _ = tx.send(stream).await;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // Load balancer and port probes connect and close without a word.
                    tracing::debug!("tls handshake from {remote_addr} failed: {e}");
                }
                Ok(Err(e)) => tracing::warn!("tls handshake from {remote_addr} failed: {e}"),
                Err(_) => tracing::warn!(
                    "tls handshake from {remote_addr} failed: timed out after {}",
                    humanize(options.handshake_timeout)
                ),
            }
        });
    }
}

/// `10s`, `250ms`: enough for log lines.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_info_without_certificate() {
        let addr: SocketAddr = "127.0.0.1:4432".parse().expect("valid addr");
        let info = PeerInfo::from_certificate(addr, None);
        assert_eq!(info.identity, Err(IdentityError::NoCertificate));
        assert!(info.serial.is_empty());
        let info = PeerInfo::from_certificate(addr, Some(b"garbage"));
        assert!(matches!(
            info.identity,
            Err(IdentityError::Unparsable { .. })
        ));
    }

    #[test]
    fn humanize_durations() {
        assert_eq!(humanize(Duration::from_secs(10)), "10s");
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
    }
}
