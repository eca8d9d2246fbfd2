//! The enrollment signer, with real keys, CSRs and TLS handshakes on 127.0.0.1: what it
//! signs is a working agent identity, what it refuses, and what its certificates can never
//! be used for.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portolan_tls::crl::CrlSet;
use portolan_tls::enroll::{self, EnrollError, Signer};
use portolan_tls::pki::{Ca, DEFAULT_LEAF_VALIDITY, IssuedCert, WriteMode};
use portolan_tls::{
    ClientAuth, Identity, PeerInfo, TlsFiles, certificate_facts, client_config, identity_from_der,
    server_only_client_config,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Fleet {
    dir: TempDir,
    ca: Ca,
    signer: Signer,
    signer_cert: IssuedCert,
}

fn fleet() -> Fleet {
    let ca = Ca::generate("fleet CA").expect("ca");
    let signer_cert = ca
        .issue_signer("s1", Duration::from_secs(3600))
        .expect("signer");
    let signer = Signer::from_pem(&signer_cert.cert_pem, &signer_cert.key_pem).expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write ca");
    Fleet {
        dir,
        ca,
        signer,
        signer_cert,
    }
}

impl Fleet {
    /// The collector's TLS files (certificate for 127.0.0.1 from the fleet CA).
    fn collector_files(&self) -> TlsFiles {
        let cert = self
            .ca
            .issue_collector(
                "c0",
                &[],
                &[IpAddr::from([127, 0, 0, 1])],
                DEFAULT_LEAF_VALIDITY,
            )
            .expect("collector cert");
        cert.write_files(self.dir.path(), "collector", WriteMode::Overwrite)
            .expect("write");
        TlsFiles {
            ca: self.dir.path().join("ca.pem"),
            cert: self.dir.path().join("collector.pem"),
            key: self.dir.path().join("collector.key"),
        }
    }

    /// Enrolls `host_id` as an agent would: key on the host, CSR, signed chain.
    fn enrol(&self, host_id: &str, lifetime: Duration) -> (String, enroll::Issued) {
        let key = enroll::new_key_pem().expect("key");
        let csr = enroll::csr_der(&key, host_id).expect("csr");
        let checked = enroll::check_csr(&csr, host_id).expect("valid csr");
        assert_eq!(
            checked.key_sha256,
            enroll::key_pem_sha256(&key).expect("key hash")
        );
        let issued = self
            .signer
            .sign_agent(checked, host_id, lifetime)
            .expect("signed");
        (key, issued)
    }

    fn agent_files(&self, name: &str, key: &str, chain: &str) -> TlsFiles {
        let files = TlsFiles {
            ca: self.dir.path().join("ca.pem"),
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, chain).expect("write chain");
        std::fs::write(&files.key, key).expect("write key");
        files
    }
}

fn leaf(chain_pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("valid pem")
}

/// One TLS server on 127.0.0.1 with `config`: accepts one connection, echoes a byte, and
/// reports the peer as the collector would see it.
async fn serve_once(
    config: Arc<rustls::ServerConfig>,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<PeerInfo>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (tcp, remote) = listener.accept().await?;
        let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        tls.write_all(&byte).await?;
        tls.flush().await?;
        Ok(PeerInfo::from_certificate(remote, cert.as_deref()))
    });
    (addr, task)
}

async fn round_trip(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    tls.write_all(b"x").await?;
    tls.flush().await?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await?;
    Ok(())
}

#[tokio::test]
async fn an_enrolled_certificate_is_a_working_agent_identity() {
    let fleet = fleet();
    let (key, issued) = fleet.enrol("web-1", Duration::from_secs(600));
    let der = leaf(&issued.chain_pem);
    assert_eq!(
        identity_from_der(&der),
        Ok(Identity::Agent {
            host_id: "web-1".into()
        })
    );
    let facts = certificate_facts(&der).expect("facts");
    assert_eq!(
        facts.key_sha256,
        enroll::key_pem_sha256(&key).expect("hash")
    );
    assert!((590..=600).contains(&(facts.not_after - facts.not_before - 60)));
    // The chain (leaf + signer) authenticates against a collector that trusts only the
    // fleet CA, and the collector reads the agent's identity and key from it.
    let collector = fleet.collector_files();
    let (addr, server) = serve_once(
        portolan_tls::server::server_config_for(&collector, &CrlSet::empty(), ClientAuth::Required)
            .expect("server"),
    )
    .await;
    let agent = fleet.agent_files("web-1", &key, &issued.chain_pem);
    round_trip(addr, client_config(&agent).expect("client"))
        .await
        .expect("the enrolled agent connects");
    let peer = server.await.expect("join").expect("served");
    assert_eq!(peer.identity.expect("identity").host_id(), Some("web-1"));
    assert_eq!(
        peer.cert.map(|c| c.key_sha256),
        Some(enroll::key_pem_sha256(&key).expect("hash"))
    );
}

#[tokio::test]
async fn a_client_without_certificate_connects_only_where_optional() {
    let fleet = fleet();
    let collector = fleet.collector_files();
    let anonymous = server_only_client_config(&collector.ca).expect("client");
    let (addr, server) = serve_once(
        portolan_tls::server::server_config_for(&collector, &CrlSet::empty(), ClientAuth::Optional)
            .expect("server"),
    )
    .await;
    round_trip(addr, anonymous.clone())
        .await
        .expect("optional: connects without a certificate");
    let peer = server.await.expect("join").expect("served");
    assert!(peer.identity.is_err(), "no certificate, no identity");
    assert!(peer.cert.is_none());

    let (addr, server) = serve_once(
        portolan_tls::server::server_config_for(&collector, &CrlSet::empty(), ClientAuth::Required)
            .expect("server"),
    )
    .await;
    assert!(round_trip(addr, anonymous).await.is_err());
    assert!(server.await.expect("join").is_err(), "required: refused");
}

#[tokio::test]
async fn the_signer_can_never_authenticate_a_server() {
    // Whoever holds the signer's key signs a collector certificate for 127.0.0.1.
    let fleet = fleet();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &fleet.signer_cert.cert_pem,
        KeyPair::from_pem(&fleet.signer_cert.key_pem).expect("key"),
    )
    .expect("issuer");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::URI("spiffe://portolan/collector/evil".try_into().expect("uri")),
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let forged = params.signed_by(&key, &issuer).expect("signed");
    std::fs::write(
        fleet.dir.path().join("evil.pem"),
        format!("{}{}", forged.pem(), fleet.signer_cert.cert_pem),
    )
    .expect("write");
    std::fs::write(fleet.dir.path().join("evil.key"), key.serialize_pem()).expect("write");
    let evil = TlsFiles {
        ca: fleet.dir.path().join("ca.pem"),
        cert: fleet.dir.path().join("evil.pem"),
        key: fleet.dir.path().join("evil.key"),
    };
    let (addr, _server) = serve_once(
        portolan_tls::server::server_config_for(&evil, &CrlSet::empty(), ClientAuth::Optional)
            .expect("server"),
    )
    .await;
    let agent = server_only_client_config(&evil.ca).expect("client");
    let err = round_trip(addr, agent)
        .await
        .expect_err("an agent refuses a server certificate made by the signer");
    assert!(
        err.to_string().to_lowercase().contains("purpose")
            || err.to_string().to_lowercase().contains("usage"),
        "{err}"
    );
}

#[test]
fn a_csr_for_another_identity_is_refused() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr_with = |sans: Vec<SanType>, cn: &str, ca: bool| -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.serialize_request(&key).expect("csr").der().to_vec()
    };
    let uri = |u: &str| SanType::URI(u.try_into().expect("uri"));
    for asked in [
        "spiffe://portolan/operator/admin/mallory",
        "spiffe://portolan/collector/c9",
        "spiffe://portolan/host/db-1",
    ] {
        let csr = csr_with(vec![uri(asked)], "x", false);
        assert_eq!(
            enroll::check_csr(&csr, "web-1").map(|_| ()),
            Err(EnrollError::IdentityRequest {
                asked: asked.into()
            }),
        );
        let csr = csr_with(vec![], asked, false);
        assert!(matches!(
            enroll::check_csr(&csr, "web-1"),
            Err(EnrollError::IdentityRequest { .. })
        ));
    }
    let dns = csr_with(
        vec![SanType::DnsName(
            "collector.example".try_into().expect("dns"),
        )],
        "x",
        false,
    );
    assert!(matches!(
        enroll::check_csr(&dns, "web-1"),
        Err(EnrollError::IdentityRequest { .. })
    ));
    let ca = csr_with(vec![], "x", true);
    assert_eq!(
        enroll::check_csr(&ca, "web-1").map(|_| ()),
        Err(EnrollError::CaRequest)
    );
    // The agent's own request passes.
    let good = csr_with(vec![uri("spiffe://portolan/host/web-1")], "x", false);
    assert!(enroll::check_csr(&good, "web-1").is_ok());
}

#[test]
fn a_forged_or_garbled_csr_is_refused() {
    assert!(matches!(
        enroll::check_csr(b"not a csr", "web-1"),
        Err(EnrollError::BadCsr(_))
    ));
    let key = enroll::new_key_pem().expect("key");
    let mut csr = enroll::csr_der(&key, "web-1").expect("csr");
    // Flip a bit of the signature: the requester does not prove it holds the key.
    let last = csr.len() - 1;
    csr[last] ^= 1;
    assert!(matches!(
        enroll::check_csr(&csr, "web-1"),
        Err(EnrollError::BadCsr(_))
    ));
}

#[test]
fn only_a_client_auth_intermediate_loads_as_signer() {
    let fleet = fleet();
    // The fleet CA itself may sign servers: refused as a signer.
    let key_pem = fleet.ca.key_pem().to_owned();
    let err = Signer::from_pem(fleet.ca.cert_pem(), &key_pem).expect_err("refused");
    assert!(err.to_string().contains("path length must be 0"), "{err}");
    // A signer with another certificate's key.
    let other = fleet
        .ca
        .issue_signer("s2", Duration::from_secs(60))
        .expect("signer");
    let err = Signer::from_pem(&fleet.signer_cert.cert_pem, &other.key_pem).expect_err("refused");
    assert!(err.to_string().contains("does not belong"), "{err}");
    assert!(fleet.ca.allows_intermediate());
}

#[test]
fn no_certificate_outlives_the_signer() {
    let fleet = fleet();
    let (_, issued) = fleet.enrol("web-1", Duration::from_secs(10 * 365 * 24 * 3600));
    assert_eq!(issued.not_after, fleet.signer.not_after());
}
