//! Certificates, CAs and revocation lists reloaded from disk by a running server, and
//! short-lived certificates, over real sockets on 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portolan_tls::pki::{Ca, DEFAULT_LEAF_VALIDITY, IssuedCert, WriteMode};
use portolan_tls::{
    AcceptOptions, RevocationFiles, ServerTls, TlsFiles, TlsIncoming, client_config, serial_hex,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

fn localhost() -> Vec<IpAddr> {
    vec![IpAddr::from([127, 0, 0, 1])]
}

fn write(dir: &Path, name: &str, cert: &IssuedCert) {
    cert.write_files(dir, name, WriteMode::Overwrite)
        .expect("write cert");
}

fn write_cas(path: &Path, cas: &[&Ca]) {
    let bundle: String = cas.iter().map(|ca| ca.cert_pem()).collect();
    std::fs::write(path, bundle).expect("write ca bundle");
}

fn deny_list(path: &Path) -> RevocationFiles {
    RevocationFiles {
        revoked: Some(path.to_owned()),
        crls: Vec::new(),
    }
}

fn serial_of_pem(pem: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("parses");
    serial_hex(x509.raw_serial())
}

/// Connects, completes the handshake and a one-byte round trip; returns the serial of
/// the certificate the server presented.
async fn round_trip(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    tls.write_all(b"x").await?;
    tls.flush().await?;
    let mut buf = [0u8; 1];
    if tls.read(&mut buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(leaf).map_err(|_| std::io::ErrorKind::InvalidData)?;
    Ok(serial_hex(x509.raw_serial()))
}

/// Accepts connections and echoes one byte on each, forever.
fn echo(mut incoming: TlsIncoming) {
    tokio::spawn(async move {
        while let Some(Ok(mut peer)) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1];
                if peer.read(&mut buf).await.is_ok() {
                    let _ = peer.write_all(&buf).await;
                    let _ = peer.flush().await;
                }
            });
        }
    });
}

/// Log lines written during a test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
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

/// Retries `f` until it returns `Some`, or panics at the deadline naming `what`.
async fn until<T, F, Fut>(what: &str, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(t) = f().await {
            return (t, started.elapsed());
        }
        assert!(started.elapsed() < DEADLINE, "{what} within {DEADLINE:?}");
        tokio::time::sleep(POLL).await;
    }
}

// Current-thread runtime: the log capture is the thread's default subscriber.
#[tokio::test]
async fn a_renewed_certificate_and_a_new_ca_serve_new_connections_without_restart() {
    let logs = Logs::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("temp dir");
    let old = Ca::generate("old").expect("ca");
    let new = Ca::generate("new").expect("ca");
    let first = old
        .issue_collector("c0", &[], &localhost(), DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    write(dir.path(), "collector", &first);
    let files = TlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("collector.pem"),
        key: dir.path().join("collector.key"),
    };
    write_cas(&files.ca, &[&old]);
    let tls = ServerTls::start(
        files.clone(),
        RevocationFiles::default(),
        Duration::from_millis(200),
    )
    .expect("loads");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    echo(TlsIncoming::reloading(
        listener,
        tls.config(),
        AcceptOptions::default(),
    ));

    // Agents of both CAs trust both (the client side of a rotation).
    let agent_files = |name: &str, issuer: &Ca| {
        let cert = issuer
            .issue_agent(name, DEFAULT_LEAF_VALIDITY)
            .expect("agent");
        write(dir.path(), name, &cert);
        let ca = dir.path().join(format!("{name}-ca.pem"));
        write_cas(&ca, &[&old, &new]);
        TlsFiles {
            ca,
            cert: dir.path().join(format!("{name}.pem")),
            key: dir.path().join(format!("{name}.key")),
        }
    };
    let old_agent = client_config(&agent_files("a-old", &old)).expect("client");
    let new_agent = client_config(&agent_files("a-new", &new)).expect("client");
    let served = round_trip(addr, old_agent.clone())
        .await
        .expect("old agent");
    assert_eq!(served, serial_of_pem(&first.cert_pem));
    assert!(
        round_trip(addr, new_agent.clone()).await.is_err(),
        "the new CA is not trusted yet"
    );

    // Rotation: the bundle gains the new CA, the collector gets a certificate from it.
    let second = new
        .issue_collector("c0", &[], &localhost(), DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    write_cas(&files.ca, &[&old, &new]);
    write(dir.path(), "collector", &second);
    let (served, took) = until("the new CA trusted", || {
        let config = new_agent.clone();
        async move { round_trip(addr, config).await.ok() }
    })
    .await;
    println!(
        "renewed collector certificate served {} ms after the files changed",
        took.as_millis()
    );
    assert_eq!(served, serial_of_pem(&second.cert_pem));
    assert_eq!(
        round_trip(addr, old_agent.clone())
            .await
            .expect("old CA still trusted"),
        serial_of_pem(&second.cert_pem)
    );

    // A broken certificate file is logged and the previous material stays in force.
    std::fs::write(&files.cert, "not a certificate").expect("write");
    until("the broken file logged", || {
        let text = logs.text();
        async move { text.contains("cannot reload the tls files").then_some(()) }
    })
    .await;
    assert_eq!(
        round_trip(addr, new_agent.clone())
            .await
            .expect("still served"),
        serial_of_pem(&second.cert_pem)
    );
    assert!(
        logs.text()
            .contains("still serving the previous certificate")
    );
}

// Current-thread runtime: the log capture is the thread's default subscriber.
#[tokio::test]
async fn the_revocation_list_reloads_and_a_broken_one_keeps_the_previous() {
    let logs = Logs::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::generate("ca").expect("ca");
    let cert = ca
        .issue_collector("c0", &[], &localhost(), DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    write(dir.path(), "collector", &cert);
    let files = TlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("collector.pem"),
        key: dir.path().join("collector.key"),
    };
    write_cas(&files.ca, &[&ca]);
    let revoked = dir.path().join("revoked.txt");
    assert!(
        ServerTls::start(files.clone(), deny_list(&revoked), POLL).is_err(),
        "a configured list that is missing stops the start"
    );
    std::fs::write(&revoked, "# nothing yet\n").expect("write");
    let tls = ServerTls::start(files, deny_list(&revoked), POLL).expect("loads");
    let mut list = tls.revocations();
    assert!(list.borrow().is_empty());
    std::fs::write(&revoked, "host:web-1\nserial:0a0b\n").expect("write");
    tokio::time::timeout(DEADLINE, list.changed())
        .await
        .expect("reloaded in time")
        .expect("sender alive");
    assert_eq!(list.borrow_and_update().len(), 2);
    std::fs::write(&revoked, "host:web-1\nbogus\n").expect("write");
    until("the broken list logged", || {
        let text = logs.text();
        async move { text.contains("line 2").then_some(()) }
    })
    .await;
    assert_eq!(list.borrow().len(), 2, "the previous list stays in force");
    assert!(!list.has_changed().expect("sender alive"));
}

// Current-thread runtime: the log capture is the thread's default subscriber.
#[tokio::test]
async fn a_short_lived_certificate_is_refused_once_expired() {
    let logs = Logs::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::generate("ca").expect("ca");
    write(
        dir.path(),
        "collector",
        &ca.issue_collector("c0", &[], &localhost(), DEFAULT_LEAF_VALIDITY)
            .expect("cert"),
    );
    let ca_path = dir.path().join("ca.pem");
    write_cas(&ca_path, &[&ca]);
    let config = portolan_tls::server_config(&TlsFiles {
        ca: ca_path.clone(),
        cert: dir.path().join("collector.pem"),
        key: dir.path().join("collector.key"),
    })
    .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    echo(TlsIncoming::new(listener, config));

    // What `portolan pki issue-agent --validity 2s` issues.
    let short = ca
        .issue_agent("web-1", Duration::from_secs(2))
        .expect("agent");
    write(dir.path(), "agent", &short);
    let client = client_config(&TlsFiles {
        ca: ca_path,
        cert: dir.path().join("agent.pem"),
        key: dir.path().join("agent.key"),
    })
    .expect("client");
    round_trip(addr, client.clone())
        .await
        .expect("served while valid");
    let wait = short
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        + Duration::from_millis(1100);
    tokio::time::sleep(wait).await;
    assert!(
        round_trip(addr, client).await.is_err(),
        "an expired certificate is refused"
    );
    let (_, _) = until("the expiry logged", || {
        let text = logs.text();
        async move { text.contains("expired").then_some(()) }
    })
    .await;
}
