//! Enrollment end to end: agents with only the CA and a bootstrap token join, stream,
//! renew, survive collector outages and expiry; every refusal stores nothing; a retired
//! host's streams end, its current state leaves, its findings resolve, its history stays.
//! Tokens, approvals and retirements go through the `portolan` CLI with operator
//! certificates, as an admin would.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use portolan_core::Protocol;
use portolan_proto::v1 as pb;
use portolan_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use portolan_testkit::{
    ChildGuard, Lab, NetnsHost, SocketFixture, eventually_async, fixture_binary,
};
use portolan_tls::pki::WriteMode;
use portolan_tls::{ConnectOptions, OperatorRole};
use tonic::Code;

use crate::faults::{Churn, assert_nothing_lost, wait_connected};
use crate::refusals::{Ending, attempt, hello};
use crate::support::{Cluster, Limits, binary};

/// The collector's `[enrollment]`, with a signer issued by the cluster's CA.
fn enrollment_toml(
    cluster_dir: &Path,
    pki: &crate::support::Pki,
    lifetime: &str,
    extra: &str,
) -> Result<String> {
    let signer = pki.ca.issue_signer("e2e", Duration::from_secs(3600))?;
    let written = signer.write_files(cluster_dir, "signer", WriteMode::Overwrite)?;
    Ok(format!(
        "\n[enrollment]\nenabled = true\nsigner_cert = {:?}\nsigner_key = {:?}\ncertificate_lifetime = {lifetime:?}\nrefresh_interval = \"1s\"\n{extra}",
        written.cert.display().to_string(),
        written.key.display().to_string(),
    ))
}

/// A cluster whose first collector enrols agents (its signer is issued before it starts).
async fn enrolling_cluster(
    name: &str,
    ips: &[IpAddr],
    lifetime: &str,
    extra: &str,
    rules: Option<&str>,
) -> Result<Cluster> {
    // `Cluster::start` makes the CA and starts a collector; the signer is issued by that
    // CA, so the collector is restarted with `[enrollment]` once the signer is written.
    let mut cluster = Cluster::start(
        name,
        ips,
        Limits {
            rules: rules.map(str::to_owned),
            ..Limits::default()
        },
    )
    .await?;
    let toml = enrollment_toml(&cluster.pki.dir, &cluster.pki, lifetime, extra)?;
    cluster.append_collector_config(0, &toml)?;
    cluster.kill_collector(0);
    cluster.start_collector(0).await?;
    Ok(cluster)
}

/// An operator certificate of `role`; returns (cert, key).
fn operator(cluster: &Cluster, name: &str, role: OperatorRole) -> Result<(PathBuf, PathBuf)> {
    let written = cluster
        .pki
        .ca
        .issue_operator(name, role, Duration::from_secs(3600))?
        .write_files(
            &cluster.pki.dir,
            &format!("operator-{name}"),
            WriteMode::Overwrite,
        )?;
    Ok((written.cert, written.key))
}

/// Runs the `portolan` CLI against the first collector with an operator certificate;
/// (exit code, stdout, stderr).
fn portolan(
    cluster: &Cluster,
    op: &(PathBuf, PathBuf),
    args: &[&str],
) -> Result<(i32, String, String)> {
    portolan_at(cluster, cluster.collector_port, op, args)
}

/// [`portolan`] against the collector replica listening on `port`.
fn portolan_at(
    cluster: &Cluster,
    port: u16,
    op: &(PathBuf, PathBuf),
    args: &[&str],
) -> Result<(i32, String, String)> {
    let output = Command::new(binary("portolan")?)
        .args(args)
        .arg("--collector")
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--ca")
        .arg(cluster.pki.ca_path())
        .arg("--cert")
        .arg(&op.0)
        .arg("--key")
        .arg(&op.1)
        .env_remove("PORTOLAN_CONFIG")
        .stdin(Stdio::null())
        .output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `portolan token create …` by `admin`: the token.
fn create_token(cluster: &Cluster, admin: &(PathBuf, PathBuf), args: &[&str]) -> Result<String> {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let (code, out, err) = portolan(cluster, admin, &all)?;
    ensure!(code == 0, "token create failed ({code}): {err}");
    Ok(out.trim().to_owned())
}

/// Starts an agent that has only the CA and a token file: its key and certificate do not
/// exist yet.
fn spawn_enrolling_agent(
    cluster: &Cluster,
    host: Option<&NetnsHost>,
    host_id: &str,
    collector: SocketAddr,
    token: &str,
) -> Result<ChildGuard> {
    let dir = cluster
        .state
        .path()
        .join(format!("agent-{host_id}-identity"));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let config = cluster.state.path().join(format!("agent-{host_id}.toml"));
    std::fs::write(
        &config,
        format!(
            "version = 1\nhost_id = {host_id:?}\nhostname = {host_id:?}\nscan_interval = \"1s\"\n\n[collector]\nendpoint = {endpoint:?}\nack_timeout = \"20s\"\nmax_backoff = \"1s\"\n\n[spool]\ndir = {spool:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n[enrollment]\ntoken_file = {token_file:?}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            endpoint = format!("https://{collector}"),
            spool = cluster.agent_spool_dir(host_id).display().to_string(),
            ca = cluster.pki.ca_path().display().to_string(),
            cert = dir.join("agent.pem").display().to_string(),
            key = dir.join("agent.key").display().to_string(),
            token_file = token_file.display().to_string(),
        ),
    )?;
    cluster.run_agent(host, host_id, &config, &[])
}

fn agent_identity(cluster: &Cluster, host_id: &str) -> (PathBuf, PathBuf) {
    let dir = cluster
        .state
        .path()
        .join(format!("agent-{host_id}-identity"));
    (dir.join("agent.pem"), dir.join("agent.key"))
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_join_with_a_token_renew_and_lose_no_change() -> Result<()> {
    let lab = Lab::new("enr3")?;
    let hosts: Vec<NetnsHost> = (0..3)
        .map(|i| lab.add_host(&format!("h{i}")))
        .collect::<Result<_, _>>()?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    // Certificates live 8 s: renewed every ~5 s, so a 25 s churn sees several renewals.
    let cluster = enrolling_cluster("enroll3", &[bridge], "8s", "", None).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let admin = operator(&cluster, "alice", OperatorRole::Admin)?;
    let token = create_token(
        &cluster,
        &admin,
        &[
            "--host", "enr-*", "--uses", "3", "--ttl", "1h", "--label", "team=web",
        ],
    )?;
    let ids = ["enr-a", "enr-b", "enr-c"];
    let mut agents = Vec::new();
    let mut churns = Vec::new();
    for (i, (host, id)) in hosts.iter().zip(ids).enumerate() {
        let (cert, key) = agent_identity(&cluster, id);
        ensure!(
            !cert.exists() && !key.exists(),
            "the agent starts without a certificate"
        );
        churns.push(Churn::new(host, id, 21_000 + 100 * i as u16)?);
        agents.push(spawn_enrolling_agent(
            &cluster,
            Some(host),
            id,
            collector,
            &token,
        )?);
    }
    for id in ids {
        wait_connected(&cluster, id).await?;
    }
    // Churn listeners on every host while certificates come and go.
    let runs = churns
        .iter_mut()
        .map(|c| c.run_for(Duration::from_secs(25)));
    for r in futures_util::future::join_all(runs).await {
        r?;
    }
    for c in &mut churns {
        c.close_all().await?;
    }
    for c in &churns {
        assert_nothing_lost(&cluster, c, "enrolled and renewing").await?;
    }
    for id in ids {
        let log = cluster.agent_log(id);
        let renewals = count(&log, "renewed the certificate");
        println!("{id}: enrolled once, renewed {renewals} times");
        ensure!(
            count(&log, "enrolled: certificate obtained") == 1,
            "{id} enrolled once:\n{log}"
        );
        ensure!(renewals >= 2, "{id} renewed at least twice:\n{log}");
        let (_, key) = agent_identity(&cluster, id);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
        ensure!(
            mode & 0o077 == 0,
            "{id}: the key is private (mode {mode:o})"
        );
        let host = cluster.store.host(id).await?.context("host stored")?;
        ensure!(
            host.labels.get("team").map(String::as_str) == Some("web"),
            "{id} carries the token's label: {:?}",
            host.labels
        );
    }
    // The admin sees three bound keys, and the token used up.
    let (code, keys, err) = portolan(
        &cluster,
        &admin,
        &["keys", "--state", "bound", "-o", "json"],
    )?;
    ensure!(code == 0, "{err}");
    let keys: serde_json::Value = serde_json::from_str(&keys)?;
    ensure!(keys.as_array().map(Vec::len) == Some(3), "{keys}");
    let (_, tokens, _) = portolan(&cluster, &admin, &["token", "list", "-o", "json"])?;
    let tokens: serde_json::Value = serde_json::from_str(&tokens)?;
    ensure!(
        tokens[0]["uses"] == 3 && tokens[0]["max_uses"] == 3,
        "{tokens}"
    );
    ensure!(
        !tokens.to_string().contains(&token[17..]),
        "the secret is never listed"
    );
    Ok(())
}

/// An enrollment attempt as an agent would make it, with a fresh key unless one is given.
type Answer = Result<pb::EnrollResponse, tonic::Status>;

async fn enrol(
    cluster: &Cluster,
    token: &str,
    host_id: &str,
    key: Option<&str>,
) -> Result<(Answer, String)> {
    let key = match key {
        Some(k) => k.to_owned(),
        None => portolan_tls::enroll::new_key_pem()?,
    };
    let csr = portolan_tls::enroll::csr_der(&key, host_id)?;
    let answer = enrol_csr(cluster, token, host_id, csr).await?;
    Ok((answer, key))
}

async fn enrol_csr(
    cluster: &Cluster,
    token: &str,
    host_id: &str,
    csr_der: Vec<u8>,
) -> Result<Answer> {
    let tls = portolan_tls::server_only_client_config(&cluster.pki.ca_path())?;
    let endpoint = format!("https://127.0.0.1:{}", cluster.collector_port);
    let channel = portolan_tls::connect(&endpoint, tls, ConnectOptions::default()).await?;
    Ok(EnrollmentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.to_owned(),
            host_id: host_id.to_owned(),
            csr_der,
        })
        .await
        .map(tonic::Response::into_inner))
}

fn refused(answer: &Answer, code: Code, says: &str) -> Result<()> {
    match answer {
        Err(s) if s.code() == code && s.message().contains(says) => {
            println!("refused as expected: {:?}: {}", s.code(), s.message());
            Ok(())
        }
        other => bail!("expected {code:?} saying `{says}`, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_store_nothing_and_a_held_key_streams_once_approved() -> Result<()> {
    let cluster =
        enrolling_cluster("enrollrefuse", &[], "1h", "second_key = \"hold\"\n", None).await?;
    let admin = operator(&cluster, "alice", OperatorRole::Admin)?;
    let reader = operator(&cluster, "rita", OperatorRole::Reader)?;
    let store = &cluster.store;

    // A token that expires at once.
    let expiring = create_token(&cluster, &admin, &["--ttl", "1s"])?;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    refused(
        &enrol(&cluster, &expiring, "r-expired", None).await?.0,
        Code::PermissionDenied,
        "expired",
    )?;
    // A token for one host, used.
    let once = create_token(&cluster, &admin, &["--uses", "1"])?;
    let (first, _) = enrol(&cluster, &once, "r-first", None).await?;
    ensure!(
        first.as_ref().is_ok_and(|a| a.status == "issued"),
        "{first:?}"
    );
    refused(
        &enrol(&cluster, &once, "r-second", None).await?.0,
        Code::PermissionDenied,
        "used up",
    )?;
    // A revoked token.
    let revoked = create_token(&cluster, &admin, &[])?;
    let (code, _, err) = portolan(&cluster, &admin, &["token", "revoke", &revoked[..16]])?;
    ensure!(code == 0, "{err}");
    refused(
        &enrol(&cluster, &revoked, "r-revoked", None).await?.0,
        Code::PermissionDenied,
        "revoked",
    )?;
    // A host_id outside the token's patterns.
    let web = create_token(&cluster, &admin, &["--host", "web-*"])?;
    refused(
        &enrol(&cluster, &web, "db-1", None).await?.0,
        Code::PermissionDenied,
        "matches none",
    )?;
    // A wrong secret, a malformed token.
    let wrong = format!("{}.{}", &web[..16], "0".repeat(64));
    refused(
        &enrol(&cluster, &wrong, "web-9", None).await?.0,
        Code::PermissionDenied,
        "unknown or its secret is wrong",
    )?;
    refused(
        &enrol(&cluster, "garbage", "web-9", None).await?.0,
        Code::InvalidArgument,
        "malformed",
    )?;
    // A CSR asking for an operator or a collector identity.
    for asked in [
        "spiffe://portolan/operator/admin/mallory",
        "spiffe://portolan/collector/evil",
    ] {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(asked.try_into()?)];
        let csr = params.serialize_request(&key)?.der().to_vec();
        refused(
            &enrol_csr(&cluster, &web, "web-2", csr).await?,
            Code::InvalidArgument,
            "asks for",
        )?;
    }
    // A reader may not use admin verbs.
    for args in [
        vec!["token", "create"],
        vec!["token", "list"],
        vec!["retire", "r-first"],
        vec!["approve", "r-first"],
    ] {
        let (code, _, err) = portolan(&cluster, &reader, &args)?;
        ensure!(
            code == 77 && err.contains("admin"),
            "{args:?} by a reader: {code} {err}"
        );
    }
    // Whoever holds the signer's key cannot make an operator: the collector refuses an
    // operator identity that a CA of its `tls.ca` did not issue directly.
    let forged = forge_admin_with_signer(&cluster)?;
    let (code, _, err) = portolan(&cluster, &forged, &["token", "list"])?;
    ensure!(
        code == 77 && err.contains("not issued directly by a CA"),
        "an admin certificate made with the signer: {code} {err}"
    );
    // Nothing was stored for any refusal: only r-first has a key, no refused host exists.
    let keys = store.host_keys().await?;
    ensure!(
        keys.len() == 1 && keys[0].record.host_id == "r-first",
        "{keys:?}"
    );
    for host in [
        "r-expired",
        "r-second",
        "r-revoked",
        "db-1",
        "web-9",
        "web-2",
    ] {
        ensure!(store.host(host).await?.is_none(), "{host} stored");
    }

    // A second key for the enrolled host is held for approval, visible to admins.
    let (second, second_key) = enrol(&cluster, &web, "web-1", None).await?;
    ensure!(
        second.as_ref().is_ok_and(|a| a.status == "issued"),
        "{second:?}"
    );
    let (held, other_key) = enrol(&cluster, &web, "web-1", None).await?;
    let held = held.map_err(|s| anyhow::anyhow!("{s:?}"))?;
    ensure!(
        held.status == "pending" && held.certificate_chain_pem.is_empty(),
        "{held:?}"
    );
    let (code, pending, err) = portolan(
        &cluster,
        &reader,
        &["keys", "--state", "pending", "-o", "json"],
    )?;
    ensure!(code == 0, "{err}");
    let pending: serde_json::Value = serde_json::from_str(&pending)?;
    ensure!(
        pending.as_array().map(Vec::len) == Some(1) && pending[0]["host_id"] == "web-1",
        "{pending}"
    );
    // The first key's agent streams; then the admin approves the second key.
    let agent_dir = cluster.state.path().join("web-1-first");
    std::fs::create_dir_all(&agent_dir)?;
    let first_chain = second
        .map_err(|s| anyhow::anyhow!("{s:?}"))?
        .certificate_chain_pem;
    let first_agent = write_identity(&agent_dir, &first_chain, &second_key)?;
    let streams = first_stream(&cluster, &first_agent, "web-1").await?;
    ensure!(
        matches!(streams, Ending::Acked(_)),
        "the bound key streams: {streams:?}"
    );
    let (code, _, err) = portolan(&cluster, &admin, &["approve", "web-1"])?;
    ensure!(code == 0, "approve: {err}");
    let (issued, _) = enrol(&cluster, &web, "web-1", Some(&other_key)).await?;
    let issued = issued.map_err(|s| anyhow::anyhow!("{s:?}"))?;
    ensure!(issued.status == "issued", "{issued:?}");
    let approved_dir = cluster.state.path().join("web-1-approved");
    std::fs::create_dir_all(&approved_dir)?;
    let approved = write_identity(&approved_dir, &issued.certificate_chain_pem, &other_key)?;
    let streams = first_stream(&cluster, &approved, "web-1").await?;
    ensure!(
        matches!(streams, Ending::Acked(_)),
        "the approved key streams: {streams:?}"
    );
    // The superseded key is refused now.
    match first_stream(&cluster, &first_agent, "web-1").await? {
        Ending::Status(Code::PermissionDenied, m)
            if m.contains("approved in place of this one") => {}
        other => bail!("the superseded key must be refused, got {other:?}"),
    }
    // A third key is held, denied by the admin, and refused from then on.
    let (held, third_key) = enrol(&cluster, &web, "web-1", None).await?;
    ensure!(
        held.as_ref().is_ok_and(|a| a.status == "pending"),
        "{held:?}"
    );
    let (code, _, err) = portolan(&cluster, &admin, &["deny", "web-1"])?;
    ensure!(code == 0, "deny: {err}");
    refused(
        &enrol(&cluster, &web, "web-1", Some(&third_key)).await?.0,
        Code::PermissionDenied,
        "denied",
    )?;
    Ok(())
}

/// An admin operator certificate made with the enrollment signer's key (and its chain),
/// as a thief of a collector replica could make one; (cert, key) paths.
fn forge_admin_with_signer(cluster: &Cluster) -> Result<(PathBuf, PathBuf)> {
    let dir = &cluster.pki.dir;
    let signer_pem = std::fs::read_to_string(dir.join("signer.pem"))?;
    let signer_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("signer.key"))?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&signer_pem, signer_key)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://portolan/operator/admin/mallory".try_into()?,
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (dir.join("forged.pem"), dir.join("forged.key"));
    std::fs::write(&cert_path, format!("{}{signer_pem}", cert.pem()))?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}

fn write_identity(dir: &Path, chain: &str, key: &str) -> Result<portolan_tls::TlsFiles> {
    std::fs::write(dir.join("agent.pem"), chain)?;
    std::fs::write(dir.join("agent.key"), key)?;
    Ok(portolan_tls::TlsFiles {
        ca: PathBuf::new(),
        cert: dir.join("agent.pem"),
        key: dir.join("agent.key"),
    })
}

/// Opens an ingest stream with `files` as `host_id` and sends Hello: how it ended
/// (`Acked([])` once the collector welcomed it).
async fn first_stream(
    cluster: &Cluster,
    files: &portolan_tls::TlsFiles,
    host_id: &str,
) -> Result<Ending> {
    let files = portolan_tls::TlsFiles {
        ca: cluster.pki.ca_path(),
        ..files.clone()
    };
    let config = portolan_tls::client_config(&files)?;
    Ok(attempt(cluster, config, vec![hello(host_id)]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_shorter_than_the_lifetime_do_not_interrupt_and_expiry_recovers_by_itself()
-> Result<()> {
    let lab = Lab::new("enrout")?;
    let host = lab.add_host("h0")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    // 24 s certificates: renewal due at ~16 s.
    let mut cluster = enrolling_cluster("enrolloutage", &[bridge], "24s", "", None).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let admin = operator(&cluster, "alice", OperatorRole::Admin)?;
    let token = create_token(&cluster, &admin, &["--ttl", "1h"])?;
    let id = "out-1";
    let mut churn = Churn::new(&host, id, 23_000)?;
    let _agent = spawn_enrolling_agent(&cluster, Some(&host), id, collector, &token)?;
    wait_connected(&cluster, id).await?;
    let (cert, _) = agent_identity(&cluster, id);
    let not_after = |p: &Path| -> Result<i64> {
        let der = rustls::pki_types::CertificateDer::from_pem_file(p)?;
        Ok(portolan_tls::certificate_facts(&der)?.not_after)
    };
    use rustls::pki_types::pem::PemObject as _;
    let first_expiry = not_after(&cert)?;
    // The collector goes down before the renewal point and comes back after it, before
    // the certificate expires.
    churn.run_for(Duration::from_secs(4)).await?;
    cluster.kill_collector(0);
    let down_for = Duration::from_secs(14);
    churn.run_for(down_for).await?;
    cluster.start_collector(0).await?;
    churn.run_for(Duration::from_secs(8)).await?;
    let renewed_expiry = not_after(&cert)?;
    ensure!(
        renewed_expiry > first_expiry,
        "renewed after the outage ({first_expiry} → {renewed_expiry})"
    );
    let log = cluster.agent_log(id);
    ensure!(
        count(&log, "expired before it could be renewed") == 0,
        "no expiry:\n{log}"
    );
    ensure!(
        count(&log, "cannot renew the certificate") >= 1,
        "the renewal was retried:\n{log}"
    );
    churn.close_all().await?;
    assert_nothing_lost(&cluster, &churn, "outage shorter than the lifetime").await?;

    // Now an outage longer than the lifetime: the certificate expires with no way to
    // renew; the agent says so once, and enrols again by itself when it can.
    cluster.kill_collector(0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let log = cluster.agent_log(id);
    ensure!(
        count(&log, "expired before it could be renewed") == 1,
        "said once:\n{log}"
    );
    let reports_before = cluster.store.reports(id).await?.len();
    cluster.start_collector(0).await?;
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(500),
        {
            let n = cluster
                .store
                .reports(id)
                .await
                .map_err(|e| e.to_string())?
                .len();
            if n > reports_before {
                Ok(())
            } else {
                Err(format!("{n} reports, no new one yet"))
            }
        }
    );
    let log = cluster.agent_log(id);
    ensure!(
        count(&log, "enrolled: certificate obtained") == 2,
        "enrolled again:\n{log}"
    );
    ensure!(not_after(&cert)? > renewed_expiry);
    println!(
        "outage {}s < lifetime 24s: no interruption; outage 30s > lifetime: expired once, enrolled again by itself",
        down_for.as_secs()
    );
    ensure!(
        cluster.collector_log().contains("renewed"),
        "the collector logs renewals"
    );
    Ok(())
}

const RETIRE_RULES: &str = r#"
version: 1
rules:
  - id: web-db-port
    kind: listener
    severity: high
    hosts: {labels: {team: web}}
    sockets: {ports: [24432]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_host_stops_its_current_state_leaves_its_findings_resolve_its_history_stays()
-> Result<()> {
    let lab = Lab::new("enrret")?;
    let host = lab.add_host("h0")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let mut cluster =
        enrolling_cluster("enrollretire", &[bridge], "1h", "", Some(RETIRE_RULES)).await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let admin = operator(&cluster, "alice", OperatorRole::Admin)?;
    let token = create_token(&cluster, &admin, &["--label", "team=web"])?;
    let id = "ret-1";
    let fixture = SocketFixture::spawn(Some(&host), &fixture_binary()?)?;
    fixture.listen(Protocol::Tcp, "0.0.0.0:24432".parse()?)?;
    let _agent = spawn_enrolling_agent(&cluster, Some(&host), id, collector, &token)?;
    wait_connected(&cluster, id).await?;
    // The token's label reaches the rules: the finding opens.
    eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(500),
        {
            let open = cluster
                .store
                .findings()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .any(|f| f.latest.host_id == id && f.status.as_str() == "open");
            if open {
                Ok(())
            } else {
                Err("no open finding yet".to_string())
            }
        }
    );
    let history = cluster.store.socket_events(id).await?.len();
    let current = cluster.store.current_rows(id).await?;
    ensure!(history > 0 && current > 0);
    // The admin retires the host on another replica than the one its agent streams to:
    // the streaming replica learns it from ClickHouse.
    let other = cluster.add_collector().await?;
    let (code, out, err) = portolan_at(&cluster, other, &admin, &["retire", id])?;
    ensure!(code == 0, "retire: {err}");
    println!("{out}{err}");
    // Its stream ends and reconnections are refused: no report is stored after it.
    eventually_async!(
        timeout = Duration::from_secs(10),
        interval = Duration::from_millis(500),
        {
            let log = cluster.agent_log(id);
            if log.contains("retired") {
                Ok(())
            } else {
                Err("the agent was not told".to_string())
            }
        }
    );
    let reports = cluster.store.reports(id).await?.len();
    // Current state leaves; the finding resolves; history stays.
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(500),
        {
            let rows = cluster
                .store
                .current_rows(id)
                .await
                .map_err(|e| e.to_string())?;
            let resolved = cluster
                .store
                .findings()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|f| f.latest.host_id == id)
                .all(|f| f.status.as_str() == "resolved");
            if rows == 0 && resolved {
                Ok(())
            } else {
                Err(format!("{rows} current rows, resolved {resolved}"))
            }
        }
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(
        cluster.store.reports(id).await?.len() == reports,
        "nothing stored after retirement"
    );
    ensure!(
        cluster.store.socket_events(id).await?.len() == history,
        "history stays"
    );
    // `portolan hosts` no longer lists it unless asked, and then says when.
    let (code, listed, err) = portolan(&cluster, &admin, &["hosts", "-o", "json"])?;
    ensure!(code == 0, "{err}");
    ensure!(
        !listed.contains(id),
        "a retired host is not listed: {listed}"
    );
    let (code, listed, err) = portolan(&cluster, &admin, &["hosts", "--retired", "-o", "json"])?;
    ensure!(code == 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    ensure!(
        listed[0]["host_id"] == id && listed[0]["retired_unix"].as_i64().is_some_and(|t| t > 0),
        "{listed}"
    );
    println!(
        "retired {id}: current rows {current} → 0, finding resolved, {history} history events kept"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_silent_past_the_policy_retires_by_itself() -> Result<()> {
    let lab = Lab::new("enrsil")?;
    let host = lab.add_host("h0")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = enrolling_cluster(
        "enrollsilent",
        &[bridge],
        "1h",
        "retire_after_silence = \"5s\"\n",
        None,
    )
    .await?;
    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let id = "sil-1";
    // A hand-issued agent: retirement applies to every host, enrolled or not.
    let (_fixture, agent) = cluster
        .streaming_agent(&host, id, collector, 24_500)
        .await?;
    let rows = cluster.store.current_rows(id).await?;
    let history = cluster.store.socket_events(id).await?.len();
    drop(agent);
    let started = std::time::Instant::now();
    eventually_async!(
        timeout = Duration::from_secs(40),
        interval = Duration::from_millis(500),
        {
            let keys = cluster
                .store
                .host_keys_of(id)
                .await
                .map_err(|e| e.to_string())?;
            let retired = keys
                .iter()
                .any(|k| k.decided_by.starts_with("policy: silent for"));
            let left = cluster
                .store
                .current_rows(id)
                .await
                .map_err(|e| e.to_string())?;
            if retired && left == 0 {
                Ok(())
            } else {
                Err(format!("retired {retired}, {left} current rows"))
            }
        }
    );
    ensure!(
        cluster.store.socket_events(id).await?.len() == history,
        "history stays"
    );
    println!(
        "{id} silent: retired by the policy {:.1}s after its agent stopped ({rows} current rows → 0, {history} history events kept)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
