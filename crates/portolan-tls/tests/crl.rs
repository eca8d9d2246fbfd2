//! X.509 CRLs enforced by the collector's server configuration and reloaded while it runs,
//! over real sockets on 127.0.0.1, with certificates and CRLs from the development PKI.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portolan_tls::pki::{Ca, DEFAULT_CRL_VALIDITY, DEFAULT_LEAF_VALIDITY, IssuedCert, WriteMode};
use portolan_tls::{
    AcceptOptions, CrlSet, PeerInfo, RevocationFiles, ServerTls, TlsFiles, TlsIncoming,
    client_config, server_config_with_crls,
};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

/// A directory with a collector's files, trusting `cas`.
struct Site {
    dir: TempDir,
    files: TlsFiles,
}

impl Site {
    fn new(issuer: &Ca, cas: &[&Ca]) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = issuer
            .issue_collector(
                "c0",
                &[],
                &[IpAddr::from([127, 0, 0, 1])],
                DEFAULT_LEAF_VALIDITY,
            )
            .expect("collector cert");
        cert.write_files(dir.path(), "collector", WriteMode::CreateNew)
            .expect("written");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cas.iter().map(|ca| ca.cert_pem()).collect::<String>())
            .expect("written");
        let files = TlsFiles {
            ca,
            cert: dir.path().join("collector.pem"),
            key: dir.path().join("collector.key"),
        };
        Site { dir, files }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client configuration presenting `cert`, trusting the collector's CAs.
    fn client(&self, name: &str, cert: &IssuedCert) -> Arc<ClientConfig> {
        cert.write_files(self.dir.path(), name, WriteMode::CreateNew)
            .expect("written");
        client_config(&TlsFiles {
            ca: self.files.ca.clone(),
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        })
        .expect("client config")
    }
}

/// Writes `contents` at `path` the way a careful tool does: a new file renamed over it.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("written");
    std::fs::rename(&tmp, path).expect("renamed");
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

/// A handshake and a one-byte round trip (TLS 1.3 verifies the client certificate after
/// the client's side of the handshake is done, so only the round trip shows a refusal).
async fn round_trip(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<(), String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut buf = [0u8; 1];
        match tls.read(&mut buf).await? {
            0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            _ => Ok(()),
        }
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
}

fn peer_of(cert: &IssuedCert) -> PeerInfo {
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("pem");
    PeerInfo::from_certificate("127.0.0.1:1".parse().expect("addr"), Some(&der))
}

async fn serve(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    echo(TlsIncoming::new(listener, config));
    addr
}

#[tokio::test]
async fn the_handshake_refuses_what_a_crl_revokes_and_accepts_the_rest() {
    let fleet = Ca::generate("fleet").expect("ca");
    // A second trusted CA that publishes no CRL: its certificates stay accepted.
    let enrolment = Ca::generate("enrolment").expect("ca");
    let site = Site::new(&fleet, &[&fleet, &enrolment]);
    let revoked = fleet
        .issue_agent("web-1", DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    let good = fleet
        .issue_agent("web-2", DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    let other = enrolment
        .issue_agent("web-3", DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    let crl = fleet
        .crl(
            None,
            &[fleet.serial_of(&revoked.cert_pem).expect("ours")],
            DEFAULT_CRL_VALIDITY,
        )
        .expect("crl");
    let crl_path = site.path("fleet.crl.pem");
    std::fs::write(&crl_path, &crl.pem).expect("written");
    let crls = CrlSet::load(std::slice::from_ref(&crl_path), &site.files.ca).expect("loads");
    let addr = serve(server_config_with_crls(&site.files, &crls).expect("config")).await;

    let refused = round_trip(addr, site.client("revoked", &revoked))
        .await
        .expect_err("a revoked certificate is refused in the handshake");
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    round_trip(addr, site.client("good", &good))
        .await
        .expect("another certificate of the same CA is accepted");
    round_trip(addr, site.client("other", &other))
        .await
        .expect("a certificate of a CA without CRL is accepted");
}

#[tokio::test]
async fn an_expired_crl_locks_nobody_out_and_still_revokes() {
    let ca = Ca::generate("fleet").expect("ca");
    let site = Site::new(&ca, &[&ca]);
    let revoked = ca
        .issue_agent("web-1", DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    let good = ca
        .issue_agent("web-2", DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    let crl = ca
        .crl(
            None,
            &[ca.serial_of(&revoked.cert_pem).expect("ours")],
            Duration::from_secs(1),
        )
        .expect("crl");
    let crl_path = site.path("fleet.crl.pem");
    std::fs::write(&crl_path, &crl.pem).expect("written");
    let crls = CrlSet::load(std::slice::from_ref(&crl_path), &site.files.ca).expect("loads");
    let addr = serve(server_config_with_crls(&site.files, &crls).expect("config")).await;
    // Wait until the CRL is past its next update (whole seconds, so one more).
    let left = crl
        .next_update
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(1100)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    assert_eq!(crls.stale(now).len(), 1, "the CRL is stale now");

    round_trip(addr, site.client("good", &good))
        .await
        .expect("a stale CRL does not refuse its CA's certificates");
    let refused = round_trip(addr, site.client("revoked", &revoked))
        .await
        .expect_err("what it lists stays revoked");
    assert!(refused.contains("CertificateRevoked"), "{refused}");
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
async fn a_new_crl_is_enforced_without_restart_and_a_broken_one_keeps_the_previous() {
    let logs = Logs::default();
    let _guard = logs.install();
    let ca = Ca::generate("fleet").expect("ca");
    let site = Site::new(&ca, &[&ca]);
    let agent = ca
        .issue_agent("web-1", DEFAULT_LEAF_VALIDITY)
        .expect("cert");
    let client = site.client("agent", &agent);
    let crl_path = site.path("fleet.crl.pem");
    let first = ca.crl(None, &[], DEFAULT_CRL_VALIDITY).expect("crl");
    std::fs::write(&crl_path, &first.pem).expect("written");
    let deny = site.path("revoked.txt");
    std::fs::write(&deny, "host:web-9\n").expect("written");
    let tls = ServerTls::start(
        site.files.clone(),
        RevocationFiles {
            revoked: Some(deny),
            crls: vec![crl_path.clone()],
        },
        POLL,
    )
    .expect("loads");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    echo(TlsIncoming::reloading(
        listener,
        tls.config(),
        AcceptOptions::default(),
    ));
    let mut list = tls.revocations();
    let peer = peer_of(&agent);
    assert_eq!(list.borrow().len(), 1, "the deny list's one line");
    assert_eq!(
        list.borrow()
            .check(&peer.issuer, &peer.serial, peer.identity.as_ref().ok()),
        None
    );
    round_trip(addr, client.clone()).await.expect("served");

    // The CA revokes the agent: a new CRL, number 2.
    let second = ca
        .crl(
            Some(first.pem.as_bytes()),
            &[ca.serial_of(&agent.cert_pem).expect("ours")],
            DEFAULT_CRL_VALIDITY,
        )
        .expect("crl");
    replace(&crl_path, &second.pem);
    tokio::time::timeout(DEADLINE, list.changed())
        .await
        .expect("reloaded in time")
        .expect("sender alive");
    let reason = list
        .borrow_and_update()
        .check(&peer.issuer, &peer.serial, peer.identity.as_ref().ok())
        .expect("the open stream's certificate is revoked now");
    assert_eq!(
        reason,
        format!(
            "certificate serial {} is revoked (CRL `{}` (number 2, issuer `CN=fleet, O=Portolan`))",
            agent.serial_hex().expect("serial"),
            crl_path.display()
        )
    );
    assert_eq!(
        list.borrow().len(),
        2,
        "the deny list's line and the CRL entry"
    );
    let (refusal, took) = until("new handshakes refused", || {
        let client = client.clone();
        async move { round_trip(addr, client).await.err() }
    })
    .await;
    println!(
        "a new CRL refused the handshake {} ms after it was written",
        took.as_millis()
    );
    assert!(refusal.contains("CertificateRevoked"), "{refusal}");
    assert!(logs.text().contains("reloaded the CRLs"), "{}", logs.text());

    // A CRL of an unknown CA is refused at reload; the previous one stays in force.
    let stranger = Ca::generate("stranger").expect("ca");
    replace(
        &crl_path,
        &stranger
            .crl(None, &[], DEFAULT_CRL_VALIDITY)
            .expect("crl")
            .pem,
    );
    until("the broken CRL logged", || {
        let text = logs.text();
        async move { text.contains("cannot reload the CRLs").then_some(()) }
    })
    .await;
    assert!(logs.text().contains("none of the CAs in `tls.ca`"));
    assert!(!list.has_changed().expect("sender alive"));
    assert!(round_trip(addr, client).await.is_err(), "still revoked");
}
