//! Mutual TLS over real sockets on 127.0.0.1, with certificates from the development PKI.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use portolan_tls::pki::{Ca, DEFAULT_LEAF_VALIDITY, IssuedCert, WriteMode};
use portolan_tls::{
    AcceptOptions, ConnectOptions, Identity, IdentityError, OperatorRole, PeerStream, TlsError,
    TlsFiles, TlsIncoming, client_config, connect, identity_from_der, peer_info, server_config,
};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

/// Every wait in these tests has this deadline; none should come near it.
const DEADLINE: Duration = Duration::from_secs(10);

/// A directory of PEM files for one test.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `cert` under `name` and a CA file holding `cas`, and returns the three paths.
    fn files(&self, name: &str, cert: &IssuedCert, cas: &[&Ca]) -> TlsFiles {
        cert.write_files(self.dir.path(), name, WriteMode::CreateNew)
            .expect("write cert");
        let ca_path = self.path(&format!("{name}-ca.pem"));
        let bundle: String = cas.iter().map(|ca| ca.cert_pem()).collect();
        std::fs::write(&ca_path, bundle).expect("write ca bundle");
        TlsFiles {
            ca: ca_path,
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        }
    }
}

fn new_ca(name: &str) -> Ca {
    Ca::generate(name).expect("generate ca")
}

fn localhost() -> Vec<IpAddr> {
    vec![IpAddr::from([127, 0, 0, 1])]
}

/// A collector listening on 127.0.0.1 with a certificate for 127.0.0.1, trusting `cas`.
async fn collector(pki: &Pki, issuer: &Ca, cas: &[&Ca], options: AcceptOptions) -> TlsIncoming {
    let cert = issuer
        .issue_collector("c0", &[], &localhost(), DEFAULT_LEAF_VALIDITY)
        .expect("collector cert");
    let config = server_config(&pki.files("collector", &cert, cas)).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    TlsIncoming::with_options(listener, config, options)
}

fn addr(incoming: &TlsIncoming) -> SocketAddr {
    incoming.local_addr().expect("bound address")
}

async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    handshake_over(tcp, config).await
}

async fn handshake_over(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::IpAddress(tcp.peer_addr()?.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

async fn next_peer(incoming: &mut TlsIncoming) -> PeerStream {
    tokio::time::timeout(DEADLINE, incoming.next())
        .await
        .expect("a connection within the deadline")
        .expect("the stream goes on")
        .expect("the stream yields no errors")
}

/// Completes a client handshake and a round trip of one byte, so that a refusal after the
/// client's own handshake (TLS 1.3 verifies the client certificate last) shows up.
async fn client_round_trip(tcp: TcpStream, config: Arc<ClientConfig>) -> std::io::Result<()> {
    let mut tls = handshake_over(tcp, config).await?;
    tls.write_all(b"x").await?;
    tls.flush().await?;
    let mut buf = [0u8; 1];
    match tls.read(&mut buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// Log lines written during a test, for checking what operators will see.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }

    async fn eventually_contains(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !self.text().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line contains {needle:?}; logs:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn valid_agent_certificate_yields_agent_identity() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let mut incoming = collector(&pki, &ca, &[&ca], AcceptOptions::default()).await;
    let agent = ca
        .issue_agent("web-1", DEFAULT_LEAF_VALIDITY)
        .expect("agent cert");
    let client = client_config(&pki.files("agent", &agent, &[&ca])).expect("client config");

    let (client, peer) = tokio::join!(handshake(addr(&incoming), client), next_peer(&mut incoming));
    let client = client.expect("client handshake");

    let info = peer.peer_info();
    assert_eq!(
        info.identity,
        Ok(Identity::Agent {
            host_id: "web-1".into()
        })
    );
    assert_eq!(
        info.remote_addr,
        client.get_ref().0.local_addr().expect("addr")
    );
    let der = CertificateDer::from_pem_slice(agent.cert_pem.as_bytes()).expect("pem");
    let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("parses");
    assert!(!info.serial.is_empty());
    assert_eq!(info.serial, x509.raw_serial());
    assert_eq!(
        peer.get_ref().get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN h2 is negotiated"
    );
}

#[tokio::test]
async fn tls_1_2_clients_are_authenticated_too() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let mut incoming = collector(&pki, &ca, &[&ca], AcceptOptions::default()).await;
    let agent = ca
        .issue_agent("old-1", DEFAULT_LEAF_VALIDITY)
        .expect("agent cert");
    let files = pki.files("agent", &agent, &[&ca]);
    let mut config = ClientConfig::builder_with_provider(portolan_tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls 1.2")
        .with_root_certificates(files.load_roots().expect("roots"))
        .with_client_auth_cert(
            files.load_cert_chain().expect("chain"),
            files.load_key().expect("key"),
        )
        .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let (client, peer) = tokio::join!(
        handshake(addr(&incoming), Arc::new(config)),
        next_peer(&mut incoming)
    );
    client.expect("client handshake");
    assert_eq!(
        peer.get_ref().get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(peer.peer_info().identity, Identity::agent("old-1"));
}

#[tokio::test]
async fn operator_identity_reaches_the_server() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let mut incoming = collector(&pki, &ca, &[&ca], AcceptOptions::default()).await;
    let op = ca
        .issue_operator("alice", OperatorRole::Reader, Duration::from_secs(3600))
        .expect("operator cert");
    let client = client_config(&pki.files("alice", &op, &[&ca])).expect("client config");
    let (client, peer) = tokio::join!(handshake(addr(&incoming), client), next_peer(&mut incoming));
    client.expect("client handshake");
    assert_eq!(
        peer.peer_info().identity,
        Ok(Identity::Operator {
            name: "alice".into(),
            role: OperatorRole::Reader
        })
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused_and_logged() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = Pki::new();
    let ca = new_ca("ca");
    let mut incoming = collector(&pki, &ca, &[&ca], AcceptOptions::default()).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("pem"))
        .expect("root");
    let mut anonymous = ClientConfig::builder_with_provider(portolan_tls::crypto_provider())
        .with_protocol_versions(portolan_tls::PROTOCOL_VERSIONS)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];

    let tcp = TcpStream::connect(addr(&incoming)).await.expect("tcp");
    let from = tcp.local_addr().expect("addr");
    let refused = tokio::time::timeout(DEADLINE, client_round_trip(tcp, Arc::new(anonymous)))
        .await
        .expect("refusal within the deadline");
    assert!(
        refused.is_err(),
        "a client without certificate must be refused"
    );
    logs.eventually_contains(&format!(
        "WARN portolan_tls::server: tls handshake from {from} failed: peer sent no certificates"
    ))
    .await;

    // The refused connection was never yielded: the next one is a valid agent.
    let agent = ca.issue_agent("h1", DEFAULT_LEAF_VALIDITY).expect("agent");
    let client = client_config(&pki.files("agent", &agent, &[&ca])).expect("client config");
    let (client, peer) = tokio::join!(handshake(addr(&incoming), client), next_peer(&mut incoming));
    client.expect("valid client");
    assert_eq!(peer.peer_info().identity, Identity::agent("h1"));
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = Pki::new();
    let ca = new_ca("ca");
    let rogue = new_ca("rogue");
    let mut incoming = collector(&pki, &ca, &[&ca], AcceptOptions::default()).await;

    // The rogue client trusts the real CA for the server, but its own certificate is
    // signed by the rogue CA.
    let cert = rogue
        .issue_agent("h1", DEFAULT_LEAF_VALIDITY)
        .expect("agent");
    let client = client_config(&pki.files("rogue", &cert, &[&ca])).expect("client config");
    let tcp = TcpStream::connect(addr(&incoming)).await.expect("tcp");
    let from = tcp.local_addr().expect("addr");
    let refused = tokio::time::timeout(DEADLINE, client_round_trip(tcp, client))
        .await
        .expect("refusal within the deadline");
    assert!(
        refused.is_err(),
        "a certificate from another CA must be refused"
    );
    logs.eventually_contains(&format!(
        "tls handshake from {from} failed: invalid peer certificate: UnknownIssuer"
    ))
    .await;

    let good = ca.issue_agent("h2", DEFAULT_LEAF_VALIDITY).expect("agent");
    let client = client_config(&pki.files("good", &good, &[&ca])).expect("client config");
    let (client, peer) = tokio::join!(handshake(addr(&incoming), client), next_peer(&mut incoming));
    client.expect("valid client");
    assert_eq!(peer.peer_info().identity, Identity::agent("h2"));
}

#[tokio::test]
async fn two_cas_in_the_ca_file_are_both_trusted() {
    let pki = Pki::new();
    let old = new_ca("old");
    let new = new_ca("new");
    let mut incoming = collector(&pki, &old, &[&old, &new], AcceptOptions::default()).await;
    for (i, issuer) in [&old, &new].into_iter().enumerate() {
        let host = format!("host-{i}");
        let cert = issuer
            .issue_agent(&host, DEFAULT_LEAF_VALIDITY)
            .expect("agent");
        // Each client trusts only the CA that signed the collector.
        let client =
            client_config(&pki.files(&format!("agent-{i}"), &cert, &[&old])).expect("client");
        let (client, peer) =
            tokio::join!(handshake(addr(&incoming), client), next_peer(&mut incoming));
        client.expect("client handshake");
        assert_eq!(peer.peer_info().identity, Identity::agent(host));
    }
}

#[tokio::test]
async fn client_refuses_server_certificate_without_the_right_san() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let cert = ca
        .issue_collector(
            "c0",
            &["collector.example".into()],
            &[],
            DEFAULT_LEAF_VALIDITY,
        )
        .expect("collector cert");
    let config = server_config(&pki.files("collector", &cert, &[&ca])).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let incoming = TlsIncoming::new(listener, config);
    let agent = ca.issue_agent("h1", DEFAULT_LEAF_VALIDITY).expect("agent");
    let client = client_config(&pki.files("agent", &agent, &[&ca])).expect("client config");

    let e = handshake(addr(&incoming), client.clone())
        .await
        .expect_err("127.0.0.1 is not in the certificate");
    assert!(e.to_string().contains("not valid for name"), "{e}");

    let endpoint = format!("https://{}", addr(&incoming));
    let e = connect(&endpoint, client.clone(), ConnectOptions::default())
        .await
        .expect_err("127.0.0.1 is not in the certificate");
    let chain = error_chain(&e);
    assert!(matches!(e, TlsError::Connect { .. }), "{chain}");
    assert!(
        chain.starts_with(&format!(
            "cannot connect to `{endpoint}`: tls handshake with {} failed: invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
            addr(&incoming)
        )),
        "{chain}"
    );
    assert_eq!(chain.matches("not valid for name").count(), 1, "{chain}");

    // With the right server name the same endpoint works.
    let options = ConnectOptions {
        server_name: Some("collector.example".into()),
        ..ConnectOptions::default()
    };
    connect(&endpoint, client, options)
        .await
        .expect("the certificate names collector.example");
}

#[tokio::test]
async fn a_silent_client_neither_blocks_others_nor_stays_forever() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = Pki::new();
    let ca = new_ca("ca");
    let options = AcceptOptions {
        handshake_timeout: Duration::from_millis(300),
        ..AcceptOptions::default()
    };
    let mut incoming = collector(&pki, &ca, &[&ca], options).await;

    // Connects and says nothing.
    let mut silent = TcpStream::connect(addr(&incoming)).await.expect("tcp");

    let agent = ca.issue_agent("h1", DEFAULT_LEAF_VALIDITY).expect("agent");
    let client = client_config(&pki.files("agent", &agent, &[&ca])).expect("client config");
    let (client, peer) = tokio::join!(handshake(addr(&incoming), client), next_peer(&mut incoming));
    client.expect("valid client while another is silent");
    assert_eq!(peer.peer_info().identity, Identity::agent("h1"));

    // The silent one is closed once its handshake time is up.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
        .await
        .expect("closed within the deadline");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    logs.eventually_contains("failed: timed out after 300ms")
        .await;
}

#[tokio::test]
async fn connect_yields_a_working_grpc_channel_and_handlers_see_the_peer() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let incoming = collector(&pki, &ca, &[&ca], AcceptOptions::default()).await;
    let endpoint = format!("https://{}", addr(&incoming));

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WhoAmI)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );

    let agent = ca
        .issue_agent("db-7", DEFAULT_LEAF_VALIDITY)
        .expect("agent");
    let client = client_config(&pki.files("agent", &agent, &[&ca])).expect("client config");
    let channel = tokio::time::timeout(
        DEADLINE,
        connect(&endpoint, client, ConnectOptions::default()),
    )
    .await
    .expect("connects within the deadline")
    .expect("connects");

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let reply: tonic::Response<String> = tokio::time::timeout(
        DEADLINE,
        grpc.unary(
            tonic::Request::new(()),
            tonic::codegen::http::uri::PathAndQuery::from_static("/portolan.test.WhoAmI/Who"),
            tonic_prost::ProstCodec::<(), String>::default(),
        ),
    )
    .await
    .expect("answers within the deadline")
    .expect("rpc succeeds");
    assert_eq!(reply.into_inner(), "spiffe://portolan/host/db-7");

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server ran cleanly");
}

#[tokio::test]
async fn connect_lazy_fails_on_first_request_not_before() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let agent = ca.issue_agent("h1", DEFAULT_LEAF_VALIDITY).expect("agent");
    let client = client_config(&pki.files("agent", &agent, &[&ca])).expect("client config");
    // A port nobody listens on: bind, note the port, close.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let endpoint = format!("https://127.0.0.1:{port}");
    let lazy = portolan_tls::connect_lazy(&endpoint, client.clone(), ConnectOptions::default())
        .expect("a lazy channel does not connect yet");
    let mut grpc = tonic::client::Grpc::new(lazy);
    let status = tokio::time::timeout(DEADLINE, async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        grpc.unary::<(), String, _>(
            tonic::Request::new(()),
            tonic::codegen::http::uri::PathAndQuery::from_static("/portolan.test.WhoAmI/Who"),
            tonic_prost::ProstCodec::<(), String>::default(),
        )
        .await
    })
    .await
    .expect("fails within the deadline")
    .expect_err("nobody listens");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    let e = connect(&endpoint, client, ConnectOptions::default())
        .await
        .expect_err("nobody listens");
    let chain = error_chain(&e);
    assert_eq!(
        chain,
        format!(
            "cannot connect to `https://127.0.0.1:{port}`: tcp connect to 127.0.0.1:{port} failed: connection refused"
        )
    );
}

/// A gRPC service answering `Who` with the caller's identity URI, read the way collector
/// handlers will read it.
#[derive(Clone)]
struct WhoAmI;

impl tonic::server::NamedService for WhoAmI {
    const NAME: &'static str = "portolan.test.WhoAmI";
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for WhoAmI {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let who = tower::service_fn(|req: tonic::Request<()>| async move {
                let info = peer_info(&req)
                    .ok_or_else(|| tonic::Status::unauthenticated("no peer info"))?;
                let identity = info
                    .identity
                    .as_ref()
                    .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
                Ok::<_, tonic::Status>(tonic::Response::new(identity.uri()))
            });
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<String, ()>::default());
            Ok(grpc.unary(who, req).await)
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// Identity parse errors on real certificates (made directly with rcgen, since the PKI
// refuses to issue them).

fn self_signed_with_sans(sans: Vec<rcgen::SanType>) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.self_signed(&key).expect("cert").der().to_vec()
}

fn uri(u: &str) -> rcgen::SanType {
    rcgen::SanType::URI(u.try_into().expect("ia5"))
}

#[test]
fn certificate_without_uri_has_no_identity() {
    let der = self_signed_with_sans(vec![rcgen::SanType::DnsName(
        "example.com".try_into().expect("ia5"),
    )]);
    assert_eq!(identity_from_der(&der), Err(IdentityError::NoUri));
    let der = self_signed_with_sans(vec![]);
    assert_eq!(identity_from_der(&der), Err(IdentityError::NoUri));
}

#[test]
fn certificate_with_two_uris_has_no_identity() {
    let der = self_signed_with_sans(vec![
        uri("spiffe://portolan/host/a"),
        uri("spiffe://portolan/operator/admin/b"),
    ]);
    assert!(matches!(
        identity_from_der(&der),
        Err(IdentityError::SeveralUris { uris }) if uris.len() == 2
    ));
    // A URI of another trust domain beside ours is fine.
    let der = self_signed_with_sans(vec![
        uri("spiffe://example.org/workload/x"),
        uri("spiffe://portolan/collector/c1"),
    ]);
    assert_eq!(identity_from_der(&der), Identity::collector("c1"));
}

#[test]
fn certificate_with_bad_role_or_characters_has_no_identity() {
    let der = self_signed_with_sans(vec![uri("spiffe://portolan/operator/root/alice")]);
    assert_eq!(
        identity_from_der(&der),
        Err(IdentityError::UnknownRole {
            role: "root".into()
        })
    );
    let der = self_signed_with_sans(vec![uri("spiffe://portolan/host/a;b")]);
    assert!(matches!(
        identity_from_der(&der),
        Err(IdentityError::InvalidName {
            what: "host_id",
            ..
        })
    ));
}

#[tokio::test]
async fn verified_certificate_without_identity_is_flagged_in_peer_info() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let mut incoming = collector(&pki, &ca, &[&ca], AcceptOptions::default()).await;

    // A client certificate signed by the right CA but without any Portolan URI.
    let issuer_key = rcgen::KeyPair::from_pem(ca.key_pem()).expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), issuer_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["client.example".to_owned()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("signed");
    write(&pki.path("anon.pem"), &cert.pem());
    write(&pki.path("anon.key"), &key.serialize_pem());
    write(&pki.path("anon-ca.pem"), ca.cert_pem());
    let client = client_config(&TlsFiles {
        ca: pki.path("anon-ca.pem"),
        cert: pki.path("anon.pem"),
        key: pki.path("anon.key"),
    })
    .expect("client config");

    let (client, peer) = tokio::join!(handshake(addr(&incoming), client), next_peer(&mut incoming));
    client.expect("the certificate chains to the CA");
    assert_eq!(peer.peer_info().identity, Err(IdentityError::NoUri));
}

fn write(path: &Path, contents: &str) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(contents.as_bytes()).expect("write");
}

#[test]
fn config_errors_name_the_file() {
    let pki = Pki::new();
    let ca = new_ca("ca");
    let agent = ca.issue_agent("h1", DEFAULT_LEAF_VALIDITY).expect("agent");
    let mut files = pki.files("agent", &agent, &[&ca]);

    // The key of another certificate.
    let other = ca.issue_agent("h2", DEFAULT_LEAF_VALIDITY).expect("agent");
    other
        .write_files(pki.dir.path(), "other", WriteMode::CreateNew)
        .expect("write");
    files.key = pki.path("other.key");
    let e = client_config(&files).expect_err("mismatched key");
    assert!(
        e.to_string().starts_with(&format!(
            "cannot use `tls.cert` at {} with `tls.key` at {}",
            files.cert.display(),
            files.key.display()
        )),
        "{e}"
    );

    // A certificate where the key should be.
    files.key = files.cert.clone();
    let e = server_config(&files).expect_err("no key");
    assert_eq!(
        e.to_string(),
        format!(
            "no private key found in `tls.key` at {} (check that the file holds a PEM `PRIVATE KEY` block)",
            files.key.display()
        )
    );

    // A key where the CA should be.
    files.key = pki.path("agent.key");
    files.ca = pki.path("agent.key");
    let e = server_config(&files).expect_err("no ca");
    assert!(
        e.to_string()
            .starts_with("no certificate found in `tls.ca`"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let ca = new_ca("ca");
    let written = ca
        .write_files(pki.dir.path(), "ca", WriteMode::CreateNew)
        .expect("write");
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&written.key), 0o600);
    assert!(matches!(
        ca.write_files(pki.dir.path(), "ca", WriteMode::CreateNew),
        Err(portolan_tls::pki::PkiError::Exists(_))
    ));
    // Overwriting a key that was made world-readable makes it private again.
    std::fs::set_permissions(&written.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    ca.write_files(pki.dir.path(), "ca", WriteMode::Overwrite)
        .expect("overwrite");
    assert_eq!(mode(&written.key), 0o600);
}
