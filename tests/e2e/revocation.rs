//! Identity lifecycle without restarts: a certificate revoked while its stream is open
//! (the stream ends within seconds, reconnects are refused, nothing more is stored, other
//! agents go on), an operator's watch stream ended the same way, and renewed agent and
//! collector certificates (a new CA among them) taken up by a running collector.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use portolan_core::Protocol;
use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_client::QueryServiceClient;
use portolan_testkit::{Lab, eventually_async};
use portolan_tls::pki::{Ca, WriteMode};
use portolan_tls::{ConnectOptions, OperatorRole, TlsFiles};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;

use crate::refusals::{Ending, attempt, files, hello, listener_socket, snapshot};
use crate::support::{Cluster, Limits, stored_port};

/// How long a revoked stream may stay open: the list is polled every second.
const REVOCATION_DEADLINE: Duration = Duration::from_secs(5);

fn serial_of(cert: &Path) -> Result<String> {
    let der = CertificateDer::from_pem_file(cert).context("read certificate")?;
    let serial = portolan_tls::certificate_serial(&der)?;
    Ok(portolan_tls::serial_hex(&serial))
}

/// Appends `entry` to the revocation list; returns when it was written.
fn revoke(cluster: &Cluster, entry: &str) -> Result<Instant> {
    let path = cluster.revoked_path();
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(entry);
    text.push('\n');
    // Written to a temporary file and renamed, as an operator's tooling would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(Instant::now())
}

async fn reports(cluster: &Cluster, host: &str) -> Result<usize> {
    Ok(cluster.store.reports(host).await?.len())
}

async fn query_client(
    cluster: &Cluster,
    cert: &Path,
    key: &Path,
) -> Result<QueryServiceClient<tonic::transport::Channel>> {
    let config = portolan_tls::client_config(&files(cluster, cert, key))?;
    let endpoint = format!("https://127.0.0.1:{}", cluster.collector_port);
    let channel = portolan_tls::connect(&endpoint, config, ConnectOptions::default()).await?;
    Ok(QueryServiceClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_loses_its_open_streams_and_stays_out() -> Result<()> {
    let lab = Lab::new("revok")?;
    let host_a = lab.add_host("a")?;
    let host_b = lab.add_host("b")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let limits = Limits {
        revocation_list: true,
        ..Limits::default()
    };
    let cluster = Cluster::start("revocation", &[bridge], limits).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let (fixture_a, _agent_a) = cluster
        .streaming_agent(&host_a, "host-a", collector, 7101)
        .await?;
    let (fixture_b, _agent_b) = cluster
        .streaming_agent(&host_b, "host-b", collector, 7201)
        .await?;

    // An operator watches host-b: a stream that must end too when the operator is revoked.
    let op = cluster
        .pki
        .ca
        .issue_operator("watcher", OperatorRole::Reader, Duration::from_secs(3600))?
        .write_files(&cluster.pki.dir, "operator-watcher", WriteMode::Overwrite)?;
    let mut watcher = query_client(&cluster, &op.cert, &op.key).await?;
    let mut watch = watcher
        .watch_host(pb::WatchHostRequest {
            host_id: "host-b".into(),
            ..pb::WatchHostRequest::default()
        })
        .await?
        .into_inner();

    // Revoke host-a's certificate by serial while its stream is open.
    let serial = serial_of(&cluster.pki.dir.join("agent-host-a.pem"))?;
    let revoked_at = revoke(&cluster, &format!("serial:{serial}  # host-a's laptop"))?;
    println!("injected: `serial:{serial}` (host-a) into the revocation list");
    // The agent learns it from the status that ends its stream.
    let ended = eventually_async!(
        timeout = REVOCATION_DEADLINE,
        interval = Duration::from_millis(20),
        {
            let log = cluster.agent_log("host-a");
            match log
                .lines()
                .find(|l| l.contains("collector stream failed") && l.contains("is revoked"))
            {
                Some(line) => Ok((revoked_at.elapsed(), line.to_owned())),
                None => Err("host-a's stream is still open".to_string()),
            }
        }
    );
    println!(
        "host-a's open stream ended {} ms after the revocation: {}",
        ended.0.as_millis(),
        ended.1
    );
    assert!(
        ended.1.contains("permission") || ended.1.contains("PermissionDenied"),
        "{}",
        ended.1
    );
    assert!(
        ended
            .1
            .contains(&format!("certificate serial {serial} is revoked")),
        "{}",
        ended.1
    );
    // Counted once the stream ended: a change the agent sent before the collector saw
    // the new list may still have been stored (its scans go on into the spool); after
    // the end, nothing more may be.
    let reports_before = reports(&cluster, "host-a").await?;
    let seq_before = cluster.store.last_seq("host-a").await?;
    let log = cluster.collector_log();
    assert!(
        log.contains("agent stream ended with an error") && log.contains("is revoked"),
        "the collector logs why it ended the stream"
    );

    // host-a keeps trying (every 2 s): each attempt is refused; nothing more is stored.
    // host-b goes on: a listener opened now lands.
    fixture_a.listen(Protocol::Tcp, host_a.ipv4_addr(7102))?;
    fixture_b.listen(Protocol::Tcp, host_b.ipv4_addr(7202))?;
    let refused = eventually_async!(
        timeout = Duration::from_secs(20),
        interval = Duration::from_millis(200),
        {
            let n = cluster
                .collector_log()
                .matches("refused call: revoked certificate")
                .count();
            if n >= 2 {
                Ok(n)
            } else {
                Err(format!("{n} refused reconnects of host-a so far"))
            }
        }
    );
    eventually_async!(
        timeout = Duration::from_secs(20),
        interval = Duration::from_millis(200),
        stored_port(&cluster, "host-b", 7202).await
    );
    let reports_after = reports(&cluster, "host-a").await?;
    let seq_after = cluster.store.last_seq("host-a").await?;
    let a_has_7102 = stored_port(&cluster, "host-a", 7102).await.is_ok();
    println!(
        "host-a: {refused} reconnects refused; reports stored {reports_before} before, {reports_after} after; last seq {seq_before} → {seq_after}; port 7102 stored: {a_has_7102}"
    );
    println!(
        "host-b: {} reports stored, port 7202 landed after the revocation",
        reports(&cluster, "host-b").await?
    );
    assert_eq!(reports_after, reports_before, "nothing stored for host-a");
    assert_eq!(seq_after, seq_before);
    assert!(!a_has_7102, "host-a's new listener was not stored");
    let agent_log = cluster.agent_log("host-a");
    assert!(
        agent_log.matches("is revoked").count() >= 2,
        "the agent sees its reconnects refused as revoked"
    );

    // The operator's watch stream ends once the operator is revoked by name.
    let revoked_at = revoke(&cluster, "operator:watcher")?;
    println!("injected: `operator:watcher` into the revocation list");
    let status = tokio::time::timeout(REVOCATION_DEADLINE, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .context("the watch stream outlived the revocation deadline")?
    .context("the watch stream ended without a status")?;
    println!(
        "watcher's WatchHost stream ended {} ms after the revocation: {:?} {}",
        revoked_at.elapsed().as_millis(),
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("operator `watcher` is revoked"));
    let refused = watcher
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .expect_err("a revoked operator is refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    println!(
        "watcher's next call: {:?} {}",
        refused.code(),
        refused.message()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_and_a_new_ca_are_used_without_restart() -> Result<()> {
    let lab = Lab::new("renew")?;
    let host = lab.add_host("c")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let limits = Limits {
        revocation_list: true,
        ..Limits::default()
    };
    let cluster = Cluster::start("renewal", &[bridge], limits).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let (fixture, _agent) = cluster
        .streaming_agent(&host, "host-c", collector, 7301)
        .await?;

    // The agent's certificate is renewed on disk, then the old one revoked: the open
    // stream ends, and the agent's next connection presents the renewed certificate.
    let old_serial = serial_of(&cluster.pki.dir.join("agent-host-c.pem"))?;
    let (cert, _) = cluster.pki.agent("host-c")?;
    let new_serial = serial_of(&cert)?;
    println!("host-c renewed on disk: serial {old_serial} → {new_serial}");
    let revoked_at = revoke(&cluster, &format!("serial:{old_serial}"))?;
    fixture.listen(Protocol::Tcp, host.ipv4_addr(7302))?;
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(100),
        stored_port(&cluster, "host-c", 7302).await
    );
    println!(
        "host-c streams again with the renewed certificate {} ms after the old one was revoked",
        revoked_at.elapsed().as_millis()
    );
    assert!(
        cluster.agent_log("host-c").contains("is revoked"),
        "the old certificate's stream was ended"
    );

    // A client that trusts only a new CA, with a certificate from it: refused while the
    // collector has its first certificate and trusts only the first CA...
    let dir = cluster.state.subdir("rotation")?;
    let new_ca = Ca::generate("portolan e2e CA 2")?;
    new_ca.write_files(&dir, "ca2", WriteMode::Overwrite)?;
    let d = new_ca
        .issue_agent("host-d", Duration::from_secs(3600))?
        .write_files(&dir, "agent-host-d", WriteMode::Overwrite)?;
    let new_only = portolan_tls::client_config(&TlsFiles {
        ca: dir.join("ca2.pem"),
        cert: d.cert.clone(),
        key: d.key.clone(),
    })?;
    let messages = || {
        vec![
            hello("host-d"),
            snapshot(1, vec![listener_socket(22)], vec![]),
        ]
    };
    let before = attempt(&cluster, new_only.clone(), messages()).await;
    println!("new-CA client before the rotation: {before:?}");
    assert!(matches!(before, Ending::Connect(_)), "{before:?}");

    // ...then the collector's files change under it: both CAs trusted, a certificate from
    // the new CA. No restart.
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(cluster.pki.ca_path())?,
        new_ca.cert_pem()
    );
    let renewed = new_ca.issue_collector(
        "e2e",
        &["localhost".into()],
        &[IpAddr::from([127, 0, 0, 1]), bridge],
        Duration::from_secs(3600),
    )?;
    let changed_at = Instant::now();
    std::fs::write(cluster.pki.ca_path(), bundle)?;
    renewed.write_files(&cluster.pki.dir, "collector", WriteMode::Overwrite)?;
    let new_collector_serial = serial_of(&cluster.pki.dir.join("collector.pem"))?;
    let (ending, took) = eventually_async!(
        timeout = Duration::from_secs(10),
        interval = Duration::from_millis(100),
        match attempt(&cluster, new_only.clone(), messages()).await {
            Ending::Acked(seqs) if seqs == [1] => Ok((seqs, changed_at.elapsed())),
            other => Err(format!("{other:?}")),
        }
    );
    println!(
        "new-CA client served {} ms after the collector's files changed (acked {ending:?})",
        took.as_millis()
    );
    let log = cluster.collector_log();
    assert!(
        log.contains("reloaded the tls certificate") && log.contains(&new_collector_serial),
        "the collector logs the reload with the new serial {new_collector_serial}"
    );
    assert_eq!(cluster.store.current_sockets("host-d").await?.len(), 1);
    // The running agent, on the old CA's certificate, still lands its changes.
    fixture.listen(Protocol::Tcp, host.ipv4_addr(7303))?;
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(200),
        stored_port(&cluster, "host-c", 7303).await
    );
    let starts = std::fs::read_to_string(cluster.state.path().join("collector.log"))?
        .matches("collector ready")
        .count();
    assert_eq!(starts, 1, "the collector was never restarted");
    Ok(())
}
