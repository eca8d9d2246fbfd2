//! X.509 CRLs for open streams and calls: the real services over in-memory mutual TLS,
//! a CRL file reloaded as the collector reloads `tls.crls`, a managed ClickHouse.

mod support;

use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use portolan_collector::config::LimitsSection;
use portolan_tls::pki::DEFAULT_CRL_VALIDITY;
use tonic::Code;

use support::{AgentStream, Collector, Who, delta, hello, snapshot};

#[tokio::test]
async fn a_crl_written_while_a_stream_is_open_ends_it_and_refuses_the_next_call() -> Result<()> {
    let collector = Collector::start_with_crl("crl_open_stream", LimitsSection::default()).await?;
    let (channel, revoked_cert) = collector
        .channel_with_cert(&Who::Agent("h1".into()))
        .await?;
    let mut revoked = AgentStream::open(channel).await?;
    revoked.send(hello("h1")).await?;
    revoked.welcome().await?;
    revoked.send(snapshot(1, &[22])).await?;
    revoked.acked(1).await?;
    let mut other = AgentStream::open(collector.channel(&Who::Agent("h2".into())).await?).await?;
    other.send(hello("h2")).await?;
    other.welcome().await?;
    other.send(snapshot(1, &[22])).await?;
    other.acked(1).await?;

    // The CA revokes h1's certificate: the CRL is updated in place, as `portolan pki crl`
    // does (a new file renamed over the old one).
    let ca = collector.ca();
    let path = collector.crl_path();
    let previous = std::fs::read(&path)?;
    let serial = ca.serial_of(&revoked_cert.cert_pem)?;
    let crl = ca.crl(Some(&previous), &[serial], DEFAULT_CRL_VALIDITY)?;
    ensure!(crl.number == "2", "the CRL number went up: {}", crl.number);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &crl.pem)?;
    std::fs::rename(&tmp, &path)?;
    let written = Instant::now();

    let status = revoked.ended().await.context("h1's stream ends")?;
    println!(
        "h1's open stream ended {} ms after the CRL was written: {}",
        written.elapsed().as_millis(),
        status.message()
    );
    let serial_hex = revoked_cert.serial_hex().unwrap_or_default();
    ensure!(status.code() == Code::PermissionDenied, "{status:?}");
    ensure!(
        status.message().contains(&format!(
            "certificate serial {serial_hex} is revoked (CRL `{}` (number 2, issuer `CN=portolan grpc tests",
            path.display()
        )),
        "the refusal names the CRL: {status:?}"
    );

    // h2 goes on.
    other.send(delta(1, 2, &[80])).await?;
    other.acked(2).await?;

    // A new call with h1's certificate is refused before any service, naming the CRL
    // (this in-process transport does no CRL check in the handshake: the call's check is
    // what refuses it here).
    let status = open_with(&collector, &revoked_cert).await;
    ensure!(status.code() == Code::PermissionDenied, "{status:?}");
    ensure!(status.message().contains("CRL `"), "{status:?}");
    // A new certificate for h1 is another serial: it is served.
    let mut renewed = AgentStream::open(collector.channel(&Who::Agent("h1".into())).await?).await?;
    renewed.send(hello("h1")).await?;
    renewed.welcome().await?;
    collector.stop().await
}

/// Opens an ingest stream presenting `cert`; the status the call is refused with.
async fn open_with(collector: &Collector, cert: &portolan_tls::pki::IssuedCert) -> tonic::Status {
    let attempt = async {
        let channel = collector.channel_presenting("h1-again", cert).await?;
        let mut stream = AgentStream::open(channel).await?;
        stream.send(hello("h1")).await?;
        stream.ended().await
    };
    match attempt.await {
        Ok(status) => status,
        Err(e) => match e.downcast::<tonic::Status>() {
            Ok(status) => status,
            Err(e) => tonic::Status::unknown(format!("not refused with a status: {e:#}")),
        },
    }
}
