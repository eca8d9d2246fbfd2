//! The store over `https://`, against a real ClickHouse 18.16 serving HTTPS with a
//! certificate of a test CA: trusted only when told to, a clear refusal otherwise, and a
//! client certificate presented when the server requires one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use portolan_store::managed::{ManagedClickHouse, ManagedHttps, ManagedOptions};
use portolan_store::{ClickHouseConfig, ClickHouseTls, Store, StoreError};
use portolan_testkit::eventually_async;
use portolan_tls::pki::{Ca, WriteMode};

const VALIDITY: Duration = Duration::from_secs(86_400);

/// A test CA's files: its certificate, and a server and a client certificate it issued.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path, name: &str) -> Result<Pki> {
    let ca = Ca::generate(&format!("{name} test CA"))?;
    let ca_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_path, ca.cert_pem())?;
    let server = ca
        .issue_collector(
            "clickhouse",
            &["localhost".to_string()],
            &["127.0.0.1".parse()?],
            VALIDITY,
        )?
        .write_files(dir, &format!("{name}-server"), WriteMode::CreateNew)?;
    let client = ca.issue_agent("ingest", VALIDITY)?.write_files(
        dir,
        &format!("{name}-client"),
        WriteMode::CreateNew,
    )?;
    Ok(Pki {
        ca: ca_path,
        server: (server.cert, server.key),
        client: (client.cert, client.key),
    })
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("portolan_store=info")
        .with_test_writer()
        .try_init();
}

fn config(url: &str, tls: ClickHouseTls) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.to_string(),
        database: "tls".into(),
        user: None,
        password: None,
        tls,
    }
}

fn trusting(ca: &Path) -> ClickHouseTls {
    ClickHouseTls {
        ca: Some(ca.to_path_buf()),
        ..ClickHouseTls::default()
    }
}

/// The store connects, migrates, writes and reads back over HTTPS.
async fn round_trip(url: &str, tls: ClickHouseTls) -> Result<()> {
    let store = Store::connect(&config(url, tls)).await?;
    store.migrate().await?;
    let status = store.schema_status().await?;
    anyhow::ensure!(status.is_current(), "schema {status:?}");
    anyhow::ensure!(store.last_seq("nobody").await? == 0);
    Ok(())
}

///
/// In TLS 1.3 the server judges the client's certificate after the client finished its
/// handshake, so a request can race the server's alert and see only the connection
/// closing; the alert comes with one of the next attempts, as for a collector retrying.
async fn refused(url: &str, tls: ClickHouseTls) -> StoreError {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match Store::connect(&config(url, tls.clone())).await {
            Ok(store) => panic!("connected to {url} with {store:?}"),
            Err(e) if !matches!(e, StoreError::Tls { .. }) && attempt < 5 => {
                eprintln!("attempt {attempt}: {e} (the alert may come next)");
            }
            Err(e) => {
                eprintln!("refused: {e}");
                return e;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_works_only_with_the_servers_ca_and_says_what_to_configure() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let ours = pki(dir.path(), "ours")?;
    let theirs = pki(dir.path(), "theirs")?;
    let started = Instant::now();
    let mut server = ManagedClickHouse::start_https(
        ManagedOptions {
            state_dir: dir.path().join("state"),
            binary: None,
        },
        ManagedHttps {
            cert: ours.server.0.clone(),
            key: ours.server.1.clone(),
            client_ca: None,
        },
    )
    .await?;
    let url = server.https_url().context("started with https")?;
    assert!(url.starts_with("https://localhost:"), "{url}");
    eprintln!("https clickhouse up in {:?} at {url}", started.elapsed());

    // Trusting the CA that issued the server's certificate: it works.
    round_trip(&url, trusting(&ours.ca)).await?;
    // By IP too: the certificate names 127.0.0.1.
    let by_ip = url.replace("localhost", "127.0.0.1");
    round_trip(&by_ip, trusting(&ours.ca)).await?;

    // Another CA: refused, and the message says what to set.
    let err = refused(&url, trusting(&theirs.ca)).await;
    assert!(matches!(err, StoreError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot open a TLS connection to ClickHouse at {url}: "
        )),
        "{text}"
    );
    assert!(text.contains("set `[clickhouse.tls] ca`"), "{text}");
    assert!(text.contains(&theirs.ca.display().to_string()), "{text}");
    // The system's CAs do not hold a test CA either.
    let err = refused(&url, ClickHouseTls::default()).await;
    let text = err.to_string();
    assert!(text.contains("`[clickhouse.tls] ca`"), "{text}");
    // TLS to the plain HTTP port: the advice names `https_port`.
    let plain = format!("https://localhost:{}", server.http_port());
    let err = refused(&plain, trusting(&ours.ca)).await;
    assert!(matches!(err, StoreError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("`https_port`"), "{err}");

    // The server's certificate changes to one of a CA the store does not trust: the
    // connected store's next request fails with the same advice (what readiness shows).
    let store = Store::connect(&config(&url, trusting(&ours.ca))).await?;
    server.stop().await?;
    server.set_https(ManagedHttps {
        cert: theirs.server.0.clone(),
        key: theirs.server.1.clone(),
        client_ca: None,
    });
    server.start_again().await?;
    let err = eventually_async!(match store.schema_status().await {
        Err(e @ StoreError::Tls { .. }) => Ok(e),
        other => Err(format!("{other:?}")),
    });
    assert!(
        err.to_string().contains("set `[clickhouse.tls] ca`"),
        "{err}"
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_a_client_certificate_gets_one() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let ours = pki(dir.path(), "ours")?;
    let theirs = pki(dir.path(), "theirs")?;
    let server = ManagedClickHouse::start_https(
        ManagedOptions {
            state_dir: dir.path().join("state"),
            binary: None,
        },
        ManagedHttps {
            cert: ours.server.0.clone(),
            key: ours.server.1.clone(),
            client_ca: Some(ours.ca.clone()),
        },
    )
    .await?;
    let url = server.https_url().context("started with https")?;

    // Without a client certificate: refused, and told to set one.
    let err = refused(&url, trusting(&ours.ca)).await;
    assert!(matches!(err, StoreError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("requires a client certificate; set `[clickhouse.tls] cert` and `key`"),
        "{err}"
    );
    // With one of a CA the server does not trust: refused, and told why.
    let err = refused(
        &url,
        ClickHouseTls {
            ca: Some(ours.ca.clone()),
            cert: Some(theirs.client.0.clone()),
            key: Some(theirs.client.1.clone()),
        },
    )
    .await;
    assert!(matches!(err, StoreError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("refused the client certificate of `[clickhouse.tls] cert`"),
        "{err}"
    );
    // With one its CA issued: it works.
    round_trip(
        &url,
        ClickHouseTls {
            ca: Some(ours.ca.clone()),
            cert: Some(ours.client.0.clone()),
            key: Some(ours.client.1.clone()),
        },
    )
    .await?;
    // A key that is not the certificate's is caught before any connection.
    let err = refused(
        &url,
        ClickHouseTls {
            ca: Some(ours.ca.clone()),
            cert: Some(ours.client.0.clone()),
            key: Some(theirs.client.1.clone()),
        },
    )
    .await;
    assert!(matches!(err, StoreError::TlsFile { .. }), "{err:?}");
    assert!(err.to_string().contains("`clickhouse.tls.cert`"), "{err}");
    server.shutdown().await?;
    Ok(())
}
