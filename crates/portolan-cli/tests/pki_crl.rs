//! `portolan pki crl` as a user runs it: the real binary writes and updates a CRL, which
//! x509-parser reads back and the collector's server configuration enforces in a real
//! mutual-TLS handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portolan_tls::{CrlSet, TlsFiles, TlsIncoming, serial_hex};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

fn portolan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portolan"))
        .args(args)
        .output()
        .expect("run portolan")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> (String, String) {
    let o = portolan(args);
    assert!(
        o.status.success(),
        "portolan {args:?} failed: {}",
        stderr(&o)
    );
    (String::from_utf8_lossy(&o.stdout).into_owned(), stderr(&o))
}

fn refused(args: &[&str], expected: &str) -> Output {
    let o = portolan(args);
    assert!(!o.status.success(), "portolan {args:?} succeeded");
    assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    o
}

fn serial_of(path: &Path) -> String {
    let der = CertificateDer::from_pem_file(path).expect("a PEM certificate");
    serial_hex(&portolan_tls::certificate_serial(&der).expect("a serial"))
}

/// The CRL at `path` as x509-parser reads it: number, serials (hex), next update (Unix
/// seconds), issuer.
fn read_crl(path: &Path) -> (u64, Vec<String>, i64, String) {
    let der = CertificateRevocationListDer::from_pem_file(path).expect("a PEM CRL");
    let (rest, crl) = x509_parser::parse_x509_crl(&der).expect("x509-parser reads it");
    assert!(rest.is_empty());
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .expect("a CRL number");
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    let next = crl.next_update().expect("a next update").timestamp();
    (number, serials, next, crl.issuer().to_string())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

fn issue_agent(d: &str, host: &str) {
    ok(&["pki", "issue-agent", "--host-id", host, "--dir", d]);
}

/// A handshake and a one-byte round trip against `addr` presenting `host`'s certificate
/// (TLS 1.3 verifies the client certificate after the client is done, so the round trip
/// shows a refusal).
async fn round_trip(addr: SocketAddr, dir: &Path, host: &str) -> Result<(), String> {
    let client = portolan_tls::client_config(&TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("agent-{host}.pem")),
        key: dir.join(format!("agent-{host}.key")),
    })
    .expect("client config");
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut buf = [0u8; 1];
        match tls.read(&mut buf).await? {
            0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            _ => Ok(()),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_crl_verb_revokes_keeps_entries_counts_up_and_the_collector_enforces_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("pki");
    let d = dir.to_str().expect("utf-8 path");
    ok(&["pki", "init", "--dir", d]);
    ok(&[
        "pki",
        "issue-collector",
        "--name",
        "c0",
        "--ip",
        "127.0.0.1",
        "--dir",
        d,
    ]);
    for host in ["web-1", "web-2", "web-3"] {
        issue_agent(d, host);
    }
    let (web1, web2) = (
        serial_of(&dir.join("agent-web-1.pem")),
        serial_of(&dir.join("agent-web-2.pem")),
    );

    let (out, err) = ok(&[
        "pki",
        "crl",
        "--revoke-cert",
        &format!("{d}/agent-web-1.pem"),
        "--dir",
        d,
    ]);
    let crl_path = dir.join("crl.pem");
    assert_eq!(out, format!("{d}/crl.pem\n"));
    assert!(
        err.starts_with("wrote CRL number 1 with 1 revoked certificate (1 new), next update "),
        "{err}"
    );
    let (number, serials, next, issuer) = read_crl(&crl_path);
    assert_eq!((number, serials), (1, vec![web1.clone()]));
    assert_eq!(issuer, "CN=Portolan development CA, O=Portolan");
    let week = 7 * 24 * 3600;
    assert!((next - now() - week).abs() < 60, "next update in 7 days");

    // Again: web-2 by serial (as `openssl` prints it: colons, upper case), web-1 again.
    let web2_colons = web2
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let (_, err) = ok(&[
        "pki",
        "crl",
        "--revoke",
        &web2_colons,
        "--revoke-cert",
        &format!("{d}/agent-web-1.pem"),
        "--next-update",
        "1h",
        "--out",
        &format!("{d}/crl.pem"),
        "--dir",
        d,
    ]);
    assert!(
        err.starts_with("wrote CRL number 2 with 2 revoked certificates (1 new)"),
        "{err}"
    );
    let (number, serials, next, _) = read_crl(&crl_path);
    assert_eq!((number, serials), (2, vec![web1, web2]));
    assert!((next - now() - 3600).abs() < 60, "next update in an hour");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("the directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind");

    // The collector's server configuration with this CRL: web-1 and web-2 are refused in
    // the handshake, web-3 is served.
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("collector-c0.pem"),
        key: dir.join("collector-c0.key"),
    };
    let crls = CrlSet::load(std::slice::from_ref(&crl_path), &files.ca).expect("the CRL loads");
    let server = portolan_tls::server_config_with_crls(&files, &crls).expect("server config");
    let addr = serve(server).await;
    for host in ["web-1", "web-2"] {
        let e = round_trip(addr, &dir, host)
            .await
            .expect_err("a revoked certificate is refused");
        assert!(e.contains("CertificateRevoked"), "{host}: {e}");
    }
    round_trip(addr, &dir, "web-3")
        .await
        .expect("a certificate the CRL does not list is served");
}

async fn serve(config: Arc<tokio_rustls::rustls::ServerConfig>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut incoming = TlsIncoming::new(listener, config);
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
    addr
}

#[test]
fn bad_input_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    let (d, t) = (
        ours.to_str().expect("utf-8"),
        theirs.to_str().expect("utf-8"),
    );
    ok(&["pki", "init", "--dir", d]);
    ok(&["pki", "init", "--dir", t, "--common-name", "Other CA"]);
    issue_agent(t, "stranger");
    ok(&["pki", "crl", "--dir", t]);

    refused(
        &["pki", "crl", "--revoke", "zz", "--dir", d],
        "not hexadecimal",
    );
    let o = refused(
        &[
            "pki",
            "crl",
            "--revoke-cert",
            &format!("{t}/agent-stranger.pem"),
            "--dir",
            d,
        ],
        "issued by `CN=Other CA, O=Portolan`, not by this CA",
    );
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    let o = refused(
        &["pki", "crl", "--out", &format!("{t}/crl.pem"), "--dir", d],
        "cannot update the existing CRL: it was signed by `CN=Other CA, O=Portolan`",
    );
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "garbage").expect("written");
    refused(
        &[
            "pki",
            "crl",
            "--out",
            garbage.to_str().expect("utf-8"),
            "--dir",
            d,
        ],
        "cannot update the existing CRL: it is not a valid X.509 CRL",
    );
    assert_eq!(
        std::fs::read_to_string(&garbage).expect("still there"),
        "garbage",
        "a refused update leaves the file alone"
    );
    refused(
        &["pki", "crl", "--dir", &format!("{d}/missing")],
        "create the CA first with `portolan pki init",
    );
}
