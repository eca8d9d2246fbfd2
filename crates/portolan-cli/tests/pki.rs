//! `portolan pki` as a user runs it: the real binary, then the certificates in a real
//! mutual-TLS handshake.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use portolan_tls::{Identity, OperatorRole, TlsFiles, TlsIncoming, identity_from_der};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_stream::StreamExt;

fn portolan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portolan"))
        .args(args)
        .output()
        .expect("run portolan")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = portolan(args);
    assert!(
        o.status.success(),
        "portolan {args:?} failed: {}",
        stderr(&o)
    );
    stdout(&o)
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("a PEM certificate")
}

#[tokio::test]
async fn init_and_issue_give_certificates_for_real_mtls() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("pki");
    let d = dir.to_str().expect("utf-8 path");

    let out = ok(&["pki", "init", "--dir", d]);
    assert_eq!(out, format!("{d}/ca.pem\n{d}/ca.key\n"));

    let out = ok(&[
        "pki",
        "issue-agent",
        "--host-id",
        "web-1",
        "--dir",
        d,
        "--validity",
        "1h",
    ]);
    assert_eq!(out, format!("{d}/agent-web-1.pem\n{d}/agent-web-1.key\n"));

    let out = ok(&[
        "pki",
        "issue-collector",
        "--name",
        "c0",
        "--ip",
        "127.0.0.1",
        "--dir",
        d,
    ]);
    assert_eq!(out, format!("{d}/collector-c0.pem\n{d}/collector-c0.key\n"));

    let out = ok(&[
        "pki",
        "issue-operator",
        "--name",
        "alice",
        "--role",
        "admin",
        "--dir",
        d,
    ]);
    assert_eq!(
        out,
        format!("{d}/operator-alice.pem\n{d}/operator-alice.key\n")
    );

    assert_eq!(
        identity_from_der(&cert_der(&dir.join("agent-web-1.pem"))),
        Identity::agent("web-1")
    );
    assert_eq!(
        identity_from_der(&cert_der(&dir.join("collector-c0.pem"))),
        Identity::collector("c0")
    );
    assert_eq!(
        identity_from_der(&cert_der(&dir.join("operator-alice.pem"))),
        Identity::operator("alice", OperatorRole::Admin)
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "agent-web-1.key", "collector-c0.key"] {
            let mode = std::fs::metadata(dir.join(key))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    // The agent certificate chains to the CA: a collector trusting the CA accepts it and
    // sees its identity.
    let server = portolan_tls::server_config(&TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("collector-c0.pem"),
        key: dir.join("collector-c0.key"),
    })
    .expect("server config from the written files");
    let client = portolan_tls::client_config(&TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("agent-web-1.pem"),
        key: dir.join("agent-web-1.key"),
    })
    .expect("client config from the written files");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut incoming = TlsIncoming::new(listener, server);

    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
    };
    let (client, peer) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(handshake, incoming.next())
    })
    .await
    .expect("handshake within the deadline");
    client.expect("the collector accepts the agent and the agent the collector");
    let peer = peer.expect("a connection").expect("no error");
    assert_eq!(peer.peer_info().identity, Identity::agent("web-1"));
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let d = tmp.path().to_str().expect("utf-8 path");
    ok(&["pki", "init", "--dir", d]);
    let before = std::fs::read(tmp.path().join("ca.pem")).expect("ca.pem");

    let o = portolan(&["pki", "init", "--dir", d]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "error: {d}/ca.pem exists already: a CA is there (pass `--force` to replace it; certificates it issued will no longer be trusted)\n"
        )
    );
    assert_eq!(
        std::fs::read(tmp.path().join("ca.pem")).expect("ca.pem"),
        before
    );

    ok(&["pki", "init", "--dir", d, "--force"]);
    assert_ne!(
        std::fs::read(tmp.path().join("ca.pem")).expect("ca.pem"),
        before
    );
}

#[test]
fn usage_errors_exit_64_with_one_line() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let d = tmp.path().to_str().expect("utf-8 path");

    // No CA yet.
    let o = portolan(&["pki", "issue-agent", "--host-id", "h1", "--dir", d]);
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(
        stderr(&o),
        format!(
            "error: cannot read {d}/ca.pem: no such file (create the CA first with `portolan pki init --dir {d}`)\n"
        )
    );

    ok(&["pki", "init", "--dir", d]);
    let o = portolan(&["pki", "issue-agent", "--host-id", "bad/id", "--dir", d]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).starts_with("error: invalid host_id `bad/id`"),
        "{}",
        stderr(&o)
    );

    let o = portolan(&[
        "pki",
        "issue-operator",
        "--name",
        "bob",
        "--role",
        "root",
        "--dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));

    let o = portolan(&[
        "pki",
        "issue-agent",
        "--host-id",
        "h1",
        "--validity",
        "soon",
        "--dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));

    // Issuing twice for the same host needs --force.
    ok(&["pki", "issue-agent", "--host-id", "h1", "--dir", d]);
    let o = portolan(&["pki", "issue-agent", "--host-id", "h1", "--dir", d]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("pass `--force` to overwrite"),
        "{}",
        stderr(&o)
    );
    ok(&[
        "pki",
        "issue-agent",
        "--host-id",
        "h1",
        "--dir",
        d,
        "--force",
    ]);

    let o = portolan(&[]);
    assert_eq!(o.status.code(), Some(64));
}

#[test]
fn every_verb_help_has_an_example() {
    for verb in ["init", "issue-collector", "issue-agent", "issue-operator"] {
        let o = portolan(&["pki", verb, "--help"]);
        assert!(o.status.success());
        let help = stdout(&o);
        assert!(
            help.contains(&format!("Example:\n  portolan pki {verb}")),
            "{verb} --help has no example:\n{help}"
        );
    }
}
