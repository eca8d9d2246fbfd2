//! The image `just image` builds, run by a real runtime: a collector container and an agent
//! container stream this host's real inventory into a real ClickHouse, and the image's own
//! `portolan hosts` lists the host.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use portolan_core::Protocol;
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_store::{ClickHouseConfig, Store};
use portolan_testkit::{
    SocketFixture, SsSocket, TempState, eventually_async, fixture_binary, free_port, ss_sockets,
};
use portolan_tls::OperatorRole;
use portolan_tls::pki::WriteMode;
use serde_json::Value;

use crate::podman::{self, Container};
use crate::support::Pki;

/// The user the image runs as unless told otherwise (distroless's nonroot).
const NONROOT: u32 = 65532;
/// The issue's target for the image's size.
const MAX_IMAGE_MIB: f64 = 30.0;

#[test]
fn image_is_minimal_labelled_and_runs_as_nonroot() -> Result<()> {
    let image = podman::image()?;
    let inspect: Value = serde_json::from_str(&podman::run(&["image", "inspect", &image])?)?;
    let config = &inspect[0]["Config"];
    println!("{image}: config {config}");
    assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
    let labels = &config["Labels"];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(labels["org.opencontainers.image.version"], version);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    for label in ["revision", "created", "source", "title", "description"] {
        let value = labels[format!("org.opencontainers.image.{label}")]
            .as_str()
            .unwrap_or_default();
        assert!(!value.is_empty(), "label {label} is missing: {labels}");
    }
    // The chart's default image is the one `just image` tags.
    assert!(
        image.ends_with(&format!(":{version}")),
        "{image} is not tagged with the workspace version {version}"
    );
    let size = inspect[0]["Size"].as_f64().unwrap_or(f64::MAX) / 1_048_576.0;
    println!("image size: {size:.1} MiB (target < {MAX_IMAGE_MIB} MiB)");
    assert!(size < MAX_IMAGE_MIB, "the image is {size:.1} MiB");
    // The three binaries are on PATH and run on an empty base: static, nothing to load.
    for binary in ["portolan", "portolan-agent", "portolan-collector"] {
        let out = podman::run_once(&[&image, binary, "--version"])?;
        assert!(
            out.contains(version),
            "{binary} --version printed {out:?}, not version {version}"
        );
    }
    Ok(())
}

/// (protocol, local address) of the listeners `ss` lists.
fn listener_keys(ss: &[SsSocket]) -> BTreeSet<(Protocol, SocketAddr)> {
    ss.iter()
        .filter(|s| s.is_listener())
        .map(|s| (s.protocol, s.local))
        .collect()
}

/// Files the containers read, owned by the user that reads them.
fn share(from: &Path, to: &Path, owner: u32) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    chown(to, Some(owner), Some(owner))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o400))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_and_agent_containers_stream_this_hosts_sockets() -> Result<()> {
    let image = podman::image()?;
    let state = TempState::new("image")?;
    let clickhouse = ManagedClickHouse::start(ManagedOptions {
        state_dir: state.subdir("clickhouse")?,
        binary: None,
    })
    .await?;
    let pki = Pki::new(state.subdir("pki")?, &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
    let host_id = format!("image-{}", std::process::id());
    let port = free_port()?;
    let database = "portolan_image";

    // The collector's files, readable by nonroot alone.
    let collector_dir = state.subdir("collector")?;
    for name in ["ca.pem", "collector.pem", "collector.key"] {
        share(&pki.dir.join(name), &collector_dir.join(name), NONROOT)?;
    }
    std::fs::write(
        collector_dir.join("collector.toml"),
        format!(
            "version = 1\nname = \"image\"\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"/var/lib/portolan-collector\"\n\n[tls]\nca = \"/etc/portolan/ca.pem\"\ncert = \"/etc/portolan/collector.pem\"\nkey = \"/etc/portolan/collector.key\"\n\n[clickhouse]\nurl = {url:?}\ndatabase = {database:?}\n",
            url = clickhouse.url(),
        ),
    )?;
    let collector_mount = format!("{}:/etc/portolan:ro", collector_dir.display());
    let collector = Container::start(
        &format!("portolan-test-collector-{}", std::process::id()),
        &[
            "--network",
            "host",
            "--read-only",
            "--cap-drop",
            "all",
            "--security-opt",
            "no-new-privileges",
            "--tmpfs",
            "/var/lib/portolan-collector:rw,mode=1777",
            "--tmpfs",
            "/tmp:rw,mode=1777",
            "-v",
            &collector_mount,
            &image,
            "portolan-collector",
            "--config",
            "/etc/portolan/collector.toml",
        ],
    )?;

    // The agent: root with only its two capabilities, the host's network and processes.
    let agent_dir = state.subdir("agent")?;
    let spool = state.subdir("spool")?;
    let (cert, key) = pki.agent(&host_id)?;
    share(&pki.ca_path(), &agent_dir.join("ca.pem"), 0)?;
    share(&cert, &agent_dir.join("agent.pem"), 0)?;
    share(&key, &agent_dir.join("agent.key"), 0)?;
    std::fs::write(
        agent_dir.join("agent.toml"),
        format!(
            "version = 1\nhost_id = {host_id:?}\nhostname = {host_id:?}\nscan_interval = \"1s\"\nproc_root = \"/host/proc\"\n\n[collector]\nendpoint = \"https://127.0.0.1:{port}\"\n\n[tls]\nca = \"/etc/portolan/ca.pem\"\ncert = \"/etc/portolan/agent.pem\"\nkey = \"/etc/portolan/agent.key\"\n\n[spool]\ndir = \"/var/lib/portolan-agent\"\n"
        ),
    )?;
    // A real listener held by a real process of this host, which the agent must attribute.
    let fixture = SocketFixture::spawn(None, &fixture_binary()?)?;
    let (_, listening) = fixture.listen(
        Protocol::Tcp,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
    )?;
    let agent_mount = format!("{}:/etc/portolan:ro", agent_dir.display());
    let spool_mount = format!("{}:/var/lib/portolan-agent", spool.display());
    let agent = Container::start(
        &format!("portolan-test-agent-{}", std::process::id()),
        &[
            "--network",
            "host",
            "--pid",
            "host",
            "--user",
            "0:0",
            "--read-only",
            "--cap-drop",
            "all",
            "--cap-add",
            "DAC_READ_SEARCH",
            "--cap-add",
            "SYS_PTRACE",
            "--security-opt",
            "no-new-privileges",
            "-v",
            "/proc:/host/proc:ro",
            // The host's users and OS, as the chart mounts them (agent.hostFiles).
            "-v",
            "/etc/passwd:/etc/passwd:ro",
            "-v",
            "/etc/os-release:/etc/os-release:ro",
            "-v",
            &agent_mount,
            "-v",
            &spool_mount,
            &image,
            "portolan-agent",
            "run",
            "--config",
            "/etc/portolan/agent.toml",
        ],
    )?;

    let store = Store::connect(&ClickHouseConfig {
        url: clickhouse.url(),
        database: database.into(),
        user: None,
        password: None,
        tls: Default::default(),
    })
    .await?;
    let fixture_pid = fixture.pid();
    let logs = |why: String| {
        format!(
            "{why}\ncollector log:\n{}\nagent log:\n{}",
            collector.logs(),
            agent.logs()
        )
    };
    let (stored, listeners) = eventually_async!(
        timeout = Duration::from_secs(90),
        interval = Duration::from_millis(500),
        {
            if !collector.running() || !agent.running() {
                return Err(logs("a container stopped".into()));
            }
            // This host's inventory, not a sample: every listener `ss` lists before and
            // after the read (not opened or closed meanwhile) is stored.
            let before = listener_keys(&ss_sockets(None).map_err(|e| e.to_string())?);
            let sockets = store
                .current_sockets(&host_id)
                .await
                .map_err(|e| logs(e.to_string()))?;
            let after = listener_keys(&ss_sockets(None).map_err(|e| e.to_string())?);
            let stored: BTreeSet<(Protocol, SocketAddr)> = sockets
                .iter()
                .filter(|s| s.socket.is_listener())
                .map(|s| {
                    let k = &s.socket.key;
                    (k.protocol, SocketAddr::new(k.local_address, k.local_port))
                })
                .collect();
            let missing: Vec<_> = before
                .intersection(&after)
                .filter(|k| !stored.contains(k))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{} listeners stored; not yet {missing:?}",
                    stored.len()
                ));
            }
            let ours = sockets
                .iter()
                .find(|s| s.socket.key.local_port == listening.port() && s.socket.is_listener());
            match ours {
                Some(s) if s.processes.iter().any(|p| p.pid == fixture_pid) => {
                    Ok((sockets.len(), stored.len()))
                }
                Some(s) => Err(format!(
                    "{listening} stored without its process {fixture_pid}: {:?}",
                    s.processes
                )),
                None => Err(format!("{listening} is not stored yet")),
            }
        }
    );
    println!(
        "{stored} sockets of this host stored from the containers ({listeners} listeners, every one `ss` lists); {listening} attributed to pid {fixture_pid}"
    );

    // The image's own CLI, as an operator runs it.
    let operator_dir = state.subdir("operator")?;
    pki.ca
        .issue_operator(
            "image-test",
            OperatorRole::Reader,
            Duration::from_secs(3600),
        )?
        .write_files(&operator_dir, "operator", WriteMode::Overwrite)?;
    share(&pki.ca_path(), &operator_dir.join("ca.pem"), NONROOT)?;
    for name in ["operator.pem", "operator.key"] {
        chown(operator_dir.join(name), Some(NONROOT), Some(NONROOT))?;
    }
    let operator_mount = format!("{}:/etc/portolan:ro", operator_dir.display());
    let collector_url = format!("https://127.0.0.1:{port}");
    let hosts = podman::run_once(&[
        "--network",
        "host",
        "--read-only",
        "-v",
        &operator_mount,
        &image,
        "portolan",
        "--collector",
        &collector_url,
        "--ca",
        "/etc/portolan/ca.pem",
        "--cert",
        "/etc/portolan/operator.pem",
        "--key",
        "/etc/portolan/operator.key",
        "hosts",
        "-o",
        "json",
    ])?;
    let hosts: Value = serde_json::from_str(&hosts)
        .context("`portolan hosts -o json` in the image printed no JSON")?;
    println!("portolan hosts (in the image): {hosts}");
    let ours = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["host_id"] == host_id.as_str()))
        .with_context(|| format!("{host_id} is not among the hosts: {hosts}"))?;
    // The host's OS, read from the mounted /etc/os-release, not the image's (it has none).
    let os = ours["os"].as_str().unwrap_or_default();
    assert!(!os.is_empty(), "the host's OS is not reported: {ours}");
    Ok(())
}
