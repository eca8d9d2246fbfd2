//! The Helm chart's own manifests, started by `podman kube play` from the image `just image`
//! built: the collector Deployment and the evaluator Deployment in their own pods on a podman
//! network (as pods have their own addresses), the agent DaemonSet's pod on the host network
//! and pid namespace. Their commands, arguments, environment, ConfigMap, Secret and hostPath
//! mounts and security contexts must start the binaries: the agent's inventory of this host
//! reaches ClickHouse through the collector, every probe the chart declares answers as the
//! kubelet would ask it, and each process runs as the user, with the capabilities and the
//! read-only root its security context says. What is converted for podman, and why, is in
//! `kube.rs`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use portolan_core::Protocol;
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_store::{ClickHouseConfig, Store};
use portolan_testkit::{SocketFixture, TempState, eventually_async, fixture_binary};
use portolan_tls::pki::{Ca, WriteMode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::kube::{Conversion, PROBES, name_of};
use crate::podman;
use crate::support::http_get;

/// The user the image runs as when nothing says otherwise (its `USER`).
const IMAGE_USER: u64 = 65532;

/// The namespace `deploy/helm/tests/render.py` renders into (conftest.py's).
const NAMESPACE: &str = "portolan";

/// Where the agents' certificates come from in a played chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentIdentity {
    /// The node's own files, issued by hand (`agent.tls.source: hostPath`).
    HandIssued,
    /// A bootstrap token Secret and the collector's enrollment (`agent.tls.source:
    /// enrollment`): no per-node certificate exists anywhere before the agent starts.
    Enrolled,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_manifests_start_every_workload_from_the_image() -> Result<()> {
    play_chart(AgentIdentity::HandIssued).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_agents_enrol_with_a_token_secret_and_no_per_node_certificate() -> Result<()> {
    play_chart(AgentIdentity::Enrolled).await
}

/// Plays the chart rendered for `identity` and checks what the module says.
async fn play_chart(identity: AgentIdentity) -> Result<()> {
    let _image = podman::image()?;
    let state = TempState::new(match identity {
        AgentIdentity::HandIssued => "chart",
        AgentIdentity::Enrolled => "chart-enrol",
    })?;
    let pid = std::process::id();
    let node = format!("chart-node-{pid}");
    let clickhouse = ManagedClickHouse::start(ManagedOptions {
        state_dir: state.subdir("clickhouse")?,
        binary: None,
    })
    .await?;

    // The pods' network, and ClickHouse reachable from it (it listens on loopback only).
    let network = Network::create(&format!("portolan-chart-{pid}"))?;
    let relay = relay(network.subnet, clickhouse.http_port()).await?;

    let mut values = json!({
        "clickhouse": {
            "url": format!("http://{}:{relay}", network.gateway),
            // Through the chart's Secret and secretKeyRef variables.
            "user": "default",
        },
        "agent": {
            "tls": { "hostPath": state.subdir("agent-tls")?.display().to_string() },
            "spoolHostPath": state.subdir("spool")?.display().to_string(),
            "podLogsHostPath": "",
            "config": { "scan_interval": "1s" },
        },
        "evaluator": { "config": { "rules": { "interval": "2s" } } },
    });
    let spool = state.path().join("spool");
    if identity == AgentIdentity::Enrolled {
        values["agent"]["tls"] = json!({ "source": "enrollment" });
        values["enrollment"] = json!({
            "enabled": true,
            "signerSecret": "portolan-signer",
            "tokenSecret": "portolan-enrollment-token",
        });
        // Short-lived certificates: the agent renews one while the test watches.
        values["collector"] =
            json!({ "config": { "enrollment": { "certificate_lifetime": "24s" } } });
    }
    let mut manifests = render(&state, &values)?;
    let endpoint = agent_endpoint(&manifests)?;
    let (service_host, service_port) = endpoint
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .context("the agent's endpoint has no port")?;

    // The PKI an operator prepares: the collector's Secret (as the chart's README creates
    // it) for the Service's names, and the node's own agent files (agent.tls.source hostPath).
    let ca = Ca::generate("portolan chart CA")?;
    let collector = ca.issue_collector(
        "chart",
        std::slice::from_ref(&service_host),
        &[],
        Duration::from_secs(3600),
    )?;
    manifests.push(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": "portolan-collector-tls", "namespace": NAMESPACE },
        "stringData": {
            "ca.crt": ca.cert_pem(),
            "tls.crt": collector.cert_pem,
            "tls.key": collector.key_pem,
        },
    }));
    match identity {
        AgentIdentity::HandIssued => {
            let agent_tls = state.path().join("agent-tls");
            ca.write_files(&agent_tls, "ca", WriteMode::Overwrite)?;
            ca.issue_agent(&node, Duration::from_secs(3600))?
                .write_files(&agent_tls, "agent", WriteMode::Overwrite)?;
        }
        AgentIdentity::Enrolled => {
            // The signer Secret, as the chart's values document it (kubectl create secret tls).
            let signer = ca.issue_signer("chart", Duration::from_secs(3600))?;
            manifests.push(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": { "name": "portolan-signer", "namespace": NAMESPACE },
                "type": "kubernetes.io/tls",
                "stringData": { "tls.crt": signer.cert_pem, "tls.key": signer.key_pem },
            }));
        }
    }

    let secrets_dir = state.subdir("secrets")?;
    let conversion = Conversion {
        node: &node,
        secrets_dir: &secrets_dir,
    };
    let is_agent = |d: &Value| {
        d["kind"] == "Pod" || (d["kind"] == "ConfigMap" && name_of(d).ends_with("-agent"))
    };
    // The agents are played later, once the collector runs (their token Secret, when they
    // enrol, is created against it).
    let without_agents: Vec<Value> = manifests
        .iter()
        .filter(|m| m["kind"] != "DaemonSet")
        .cloned()
        .collect();
    let workload_docs: Vec<Value> = conversion
        .convert(&without_agents)?
        .into_iter()
        .filter(|d| !is_agent(d))
        .collect();
    let containers_conf = containers_conf(&state)?;

    // Collectors and the evaluator first, in their own pods on the network.
    let workloads = Played::play(
        &containers_conf,
        &state.path().join("workloads.yaml"),
        &workload_docs,
        &["--network", &network.name],
    )?;
    // The collector Deployment's first replica, as podman 4.3 names it.
    let collector_pod = workloads
        .container_specs()
        .into_iter()
        .map(|(pod, _, _)| pod)
        .find(|pod| pod.ends_with("-collector-pod-0"))
        .context("the render has no collector Deployment")?;
    let collector_ip = pod_ip(&collector_pod, &network.name)?;

    // The agent, rendered again to reach that pod: without cluster DNS the Service's name
    // cannot resolve (and podman 4.3 ignores hostAliases on the host network), so the
    // endpoint is the pod's address and the certificate is still checked for the Service's
    // name (agent.config.collector.server_name), as for an agent outside the cluster.
    values["agent"]["config"]["collector"] = json!({
        "endpoint": format!("https://{collector_ip}:{service_port}"),
        "server_name": service_host,
    });
    manifests.retain(|m| m["kind"] == "Secret" && name_of(m).starts_with("portolan-"));
    if identity == AgentIdentity::Enrolled {
        // The admin creates a token against the running collector and stores it in the
        // Secret the agents mount.
        // (Once the collector pod listens: it was just started.)
        let token = eventually_async!(
            timeout = Duration::from_secs(90),
            interval = Duration::from_millis(500),
            {
                create_token(&state, &ca, collector_ip, &service_port, &service_host)
                    .map_err(|e| format!("{e:#}"))
            }
        );
        manifests.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": "portolan-enrollment-token", "namespace": NAMESPACE },
            "stringData": { "token": token },
        }));
    }
    manifests.extend(render(&state, &values)?);
    let agent_docs: Vec<Value> = conversion
        .convert(&manifests)?
        .into_iter()
        .filter(is_agent)
        .collect();
    println!(
        "collector pod at {collector_ip}; the agent checks its certificate for {service_host}"
    );
    let fixture = SocketFixture::spawn(None, &fixture_binary()?)?;
    let (_, listening) = fixture.listen(
        Protocol::Tcp,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
    )?;
    let agent = Played::play(
        &containers_conf,
        &state.path().join("agent.yaml"),
        &agent_docs,
        &[],
    )?;

    // The agent's inventory, through the collector, in ClickHouse.
    let store = Store::connect(&ClickHouseConfig {
        url: clickhouse.url(),
        database: "portolan".into(),
        user: None,
        password: None,
        tls: Default::default(),
    })
    .await?;
    let fixture_pid = fixture.pid();
    let containers: Vec<String> = workloads
        .containers()
        .into_iter()
        .chain(agent.containers())
        .collect();
    let logs = || {
        containers
            .iter()
            .map(|c| {
                format!(
                    "--- {c} (last lines):\n{}",
                    last_lines(&podman::logs(c), 12)
                )
            })
            .collect::<String>()
    };
    let stored = eventually_async!(
        timeout = Duration::from_secs(120),
        interval = Duration::from_millis(500),
        {
            let sockets = store
                .current_sockets(&node)
                .await
                .map_err(|e| format!("{e}\n{}", logs()))?;
            match sockets
                .iter()
                .find(|s| s.socket.key.local_port == listening.port() && s.socket.is_listener())
            {
                Some(s) if s.processes.iter().any(|p| p.pid == fixture_pid) => Ok(sockets.len()),
                _ => Err(format!(
                    "{} sockets of {node} stored, {listening} (pid {fixture_pid}) not yet\n{}",
                    sockets.len(),
                    logs()
                )),
            }
        }
    );
    println!("{stored} sockets of {node} stored; {listening} attributed to pid {fixture_pid}");

    // Every probe the chart declares answers, asked as the kubelet asks: at the pod's
    // address (the node's for the host-network agent).
    let mut probed = BTreeSet::new();
    for (played, ip) in [
        (&workloads, None),
        (&agent, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))),
    ] {
        for (pod, container, spec) in played.container_specs() {
            let ip = match ip {
                Some(ip) => ip,
                None => pod_ip(&pod, &network.name)?,
            };
            for probe in PROBES {
                let Some(p) = spec.get(probe) else { continue };
                eventually_async!(
                    timeout = Duration::from_secs(60),
                    interval = Duration::from_millis(500),
                    {
                        ask(ip, p)
                            .await
                            .map_err(|e| format!("{container} {probe} {p}: {e:#}"))
                    }
                );
                probed.insert(format!("{container} {probe}"));
            }
            check_security_context(&container, &spec)?;
        }
    }
    println!("probes answered: {probed:?}");
    if identity == AgentIdentity::Enrolled {
        // The agent made its key on the node and renews the certificate it enrolled for.
        let key = spool.join("agent.key");
        let mode = std::fs::metadata(&key)
            .with_context(|| format!("the agent made no key at {}", key.display()))?
            .permissions()
            .mode();
        anyhow::ensure!(mode & 0o077 == 0, "the key is private (mode {mode:o})");
        let agent_container = agent
            .containers()
            .into_iter()
            .next()
            .context("no agent container")?;
        eventually_async!(
            timeout = Duration::from_secs(60),
            interval = Duration::from_millis(500),
            {
                let log = podman::logs(&agent_container);
                if log.contains("enrolled: certificate obtained")
                    && log.contains("renewed the certificate")
                {
                    Ok(())
                } else {
                    Err(format!(
                        "not enrolled and renewed yet:\n{}",
                        last_lines(&log, 12)
                    ))
                }
            }
        );
        println!(
            "the agent enrolled with the token Secret, made its key (mode {mode:o}) on the node, and renewed its certificate"
        );
    }
    Ok(())
}

/// `portolan token create` by an admin against the collector pod at `ip`, verifying its
/// certificate for `server_name`: the token.
fn create_token(
    state: &TempState,
    ca: &Ca,
    ip: IpAddr,
    port: &str,
    server_name: &str,
) -> Result<String> {
    let admin = ca
        .issue_operator(
            "chart-admin",
            portolan_tls::OperatorRole::Admin,
            Duration::from_secs(3600),
        )?
        .write_files(state.path(), "admin", WriteMode::Overwrite)?;
    let ca_file = state.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let output = std::process::Command::new(podman::repo().join("target/debug/portolan"))
        .args(["token", "create", "--host", "chart-node-*", "--ttl", "1h"])
        .arg("--collector")
        .arg(format!("https://{ip}:{port}"))
        .arg("--server-name")
        .arg(server_name)
        .arg("--ca")
        .arg(&ca_file)
        .arg("--cert")
        .arg(&admin.cert)
        .arg("--key")
        .arg(&admin.key)
        .env_remove("PORTOLAN_CONFIG")
        .output()
        .context("cannot run target/debug/portolan (`cargo build` first)")?;
    if !output.status.success() {
        bail!(
            "portolan token create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The last `n` lines of a log.
fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Renders the chart with `values` through `deploy/helm/tests/render.py`.
fn render(state: &TempState, values: &Value) -> Result<Vec<Value>> {
    let file = state.path().join("values.json");
    std::fs::write(&file, values.to_string())?;
    let python = std::env::var_os("PORTOLAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| podman::repo().join(".venv/bin/python"));
    let output = std::process::Command::new(&python)
        .arg(podman::repo().join("deploy/helm/tests/render.py"))
        .arg(&file)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (run `just setup-python`, or set PORTOLAN_PYTHON to a Python with helm-python-sdk)",
                python.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "the chart does not render: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// `collector.endpoint` of the rendered agent configuration.
fn agent_endpoint(manifests: &[Value]) -> Result<String> {
    let config = manifests
        .iter()
        .find(|m| m["kind"] == "ConfigMap" && name_of(m) == "portolan-agent")
        .and_then(|m| m["data"]["agent.toml"].as_str())
        .context("the render has no ConfigMap portolan-agent with agent.toml")?;
    let toml: toml::Table = config.parse()?;
    toml.get("collector")
        .and_then(|c| c.get("endpoint"))
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .context("agent.toml has no collector.endpoint")
}

/// A containers.conf for `podman kube play` (it takes no `--ulimit` or `--runtime` flag):
/// runc, cgroupfs, and limits within this process's own.
fn containers_conf(state: &TempState) -> Result<PathBuf> {
    let limits = podman::ulimits();
    let quoted: Vec<String> = limits
        .iter()
        .filter(|l| l.contains('='))
        .map(|l| format!("{l:?}"))
        .collect();
    let path = state.path().join("containers.conf");
    std::fs::write(
        &path,
        format!(
            "[containers]\ndefault_ulimits = [{}]\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n",
            quoted.join(", ")
        ),
    )?;
    Ok(path)
}

/// A podman network for the test's pods, removed on drop.
struct Network {
    name: String,
    gateway: Ipv4Addr,
    subnet: (Ipv4Addr, u8),
}

impl Network {
    fn create(name: &str) -> Result<Network> {
        let _ = podman::output(&["network", "rm", "-f", name]);
        podman::run(&["network", "create", name])?;
        let inspect: Value = serde_json::from_str(&podman::run(&["network", "inspect", name])?)?;
        let subnet = &inspect[0]["subnets"][0];
        let gateway: Ipv4Addr = subnet["gateway"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .context("the podman network has no IPv4 gateway")?;
        let (address, prefix) = subnet["subnet"]
            .as_str()
            .and_then(|s| s.split_once('/'))
            .context("the podman network has no subnet")?;
        Ok(Network {
            name: name.to_string(),
            gateway,
            subnet: (address.parse()?, prefix.parse()?),
        })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = podman::output(&["network", "rm", "-f", &self.name]);
    }
}

/// Forwards connections from `subnet` (and only from there) to ClickHouse on loopback;
/// returns the port it listens on (every address: the network's gateway exists only once a
/// pod is on it).
async fn relay(subnet: (Ipv4Addr, u8), clickhouse_port: u16) -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let port = listener.local_addr()?.port();
    let mask = u32::MAX.checked_shl(32 - u32::from(subnet.1)).unwrap_or(0);
    let network = u32::from(subnet.0) & mask;
    tokio::spawn(async move {
        while let Ok((mut inbound, peer)) = listener.accept().await {
            let inside = matches!(peer.ip(), IpAddr::V4(ip) if u32::from(ip) & mask == network);
            if !inside {
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    TcpStream::connect((Ipv4Addr::LOCALHOST, clickhouse_port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(port)
}

/// Documents played by `podman kube play`, taken down on drop.
struct Played {
    file: PathBuf,
    containers_conf: PathBuf,
    documents: Vec<Value>,
}

impl Played {
    fn play(
        containers_conf: &Path,
        file: &Path,
        documents: &[Value],
        flags: &[&str],
    ) -> Result<Played> {
        let text: String = documents.iter().map(|d| format!("---\n{d}\n")).collect();
        std::fs::write(file, text)?;
        let played = Played {
            file: file.to_path_buf(),
            containers_conf: containers_conf.to_path_buf(),
            documents: documents.to_vec(),
        };
        let _ = played.kube(&["down"]);
        played.remove_leftovers();
        let mut args = vec!["play"];
        args.extend(flags);
        let output = played.kube(&args)?;
        if !output.status.success() {
            bail!(
                "podman kube play {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(played)
    }

    /// Removes pods of these documents' names that an interrupted earlier run left (a
    /// play that failed half-way leaves a pod `kube down` does not know).
    fn remove_leftovers(&self) {
        let prefixes: Vec<String> = self
            .documents
            .iter()
            .filter_map(|d| match d["kind"].as_str() {
                Some("Deployment") => Some(format!("{}-pod-", name_of(d))),
                Some("Pod") => Some(name_of(d).to_string()),
                _ => None,
            })
            .collect();
        let Ok(listed) = podman::run(&["pod", "ls", "--format", "{{.Name}}"]) else {
            return;
        };
        for pod in listed.lines().map(str::trim) {
            if prefixes.iter().any(|p| pod.starts_with(p.as_str())) {
                let _ = podman::run(&["pod", "rm", "-f", pod]);
            }
        }
    }

    fn kube(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut command = podman::command(&["kube"]);
        command
            .args(args)
            .arg(&self.file)
            .env("CONTAINERS_CONF", &self.containers_conf);
        command.output().context("cannot run podman kube")
    }

    /// (pod name, container name, container spec) as podman 4.3 names them: a Pod keeps its
    /// name, a Deployment's first replica is `<name>-pod-0`; containers are `<pod>-<name>`.
    fn container_specs(&self) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for d in &self.documents {
            let (pod, spec) = match d["kind"].as_str() {
                Some("Pod") => (name_of(d).to_string(), &d["spec"]),
                Some("Deployment") => (
                    format!("{}-pod-0", name_of(d)),
                    &d["spec"]["template"]["spec"],
                ),
                _ => continue,
            };
            for c in spec["containers"].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or_default();
                // The pod's runAsUser applies where the container sets none.
                let mut c = c.clone();
                let pod_user = &spec["securityContext"]["runAsUser"];
                if c["securityContext"]["runAsUser"].is_null() && !pod_user.is_null() {
                    c["securityContext"]["runAsUser"] = pod_user.clone();
                }
                out.push((pod.clone(), format!("{pod}-{name}"), c));
            }
        }
        out
    }

    fn containers(&self) -> Vec<String> {
        self.container_specs()
            .into_iter()
            .map(|(_, c, _)| c)
            .collect()
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        let _ = self.kube(&["down"]);
    }
}

/// The address of `pod` on `network` (its infra container's).
fn pod_ip(pod: &str, network: &str) -> Result<IpAddr> {
    let inspect: Value = serde_json::from_str(&podman::run(&["pod", "inspect", pod])?)?;
    let infra = inspect["InfraContainerID"]
        .as_str()
        .or_else(|| inspect[0]["InfraContainerID"].as_str())
        .with_context(|| format!("pod {pod} has no infra container"))?
        .to_string();
    let container: Value = serde_json::from_str(&podman::run(&["inspect", &infra])?)?;
    container[0]["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("pod {pod} has no address on {network}"))
}

/// Asks a probe once, as the kubelet does: an HTTP GET answered 200–399, or a TCP connect.
async fn ask(ip: IpAddr, probe: &Value) -> Result<()> {
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
    if let Some(get) = probe.get("httpGet") {
        let port = get["port"]
            .as_u64()
            .context("httpGet port is not a number")? as u16;
        let path = get["path"].as_str().unwrap_or("/");
        let (status, body) =
            tokio::time::timeout(timeout, http_get(SocketAddr::new(ip, port), path))
                .await?
                .map_err(anyhow::Error::msg)?;
        if !(200..400).contains(&status) {
            bail!("HTTP {status}: {body}");
        }
        Ok(())
    } else if let Some(tcp) = probe.get("tcpSocket") {
        let port = tcp["port"]
            .as_u64()
            .context("tcpSocket port is not a number")? as u16;
        tokio::time::timeout(timeout, TcpStream::connect((ip, port))).await??;
        Ok(())
    } else {
        bail!("a probe this test cannot ask: {probe}")
    }
}

/// The container's main process runs as its security context says: user, effective
/// capabilities (exactly those added), read-only root.
fn check_security_context(container: &str, spec: &Value) -> Result<()> {
    let inspect: Value = serde_json::from_str(&podman::run(&["inspect", container])?)?;
    let pid = inspect[0]["State"]["Pid"].as_u64().unwrap_or(0);
    let read_only = inspect[0]["HostConfig"]["ReadonlyRootfs"] == true;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("{container} is not running (pid {pid})"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let uid: u64 = field("Uid:")
        .split_whitespace()
        .nth(1)
        .and_then(|u| u.parse().ok())
        .unwrap_or(u64::MAX);
    let cap_eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX);
    let context = &spec["securityContext"];
    // Unset: the image's user.
    let want_uid = context["runAsUser"].as_u64().unwrap_or(IMAGE_USER);
    let want_caps = context["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(capability_bit)
        .collect::<Result<Vec<u64>>>()?
        .into_iter()
        .fold(0, |all, bit| all | bit);
    println!(
        "{container}: uid {uid} (wants {want_uid}), CapEff {cap_eff:#x} (wants {want_caps:#x}), read-only root {read_only}"
    );
    if uid != want_uid || cap_eff != want_caps {
        bail!(
            "{container} runs as uid {uid} with CapEff {cap_eff:#x}; its securityContext says uid {want_uid}, {want_caps:#x}"
        );
    }
    if context["readOnlyRootFilesystem"] == true && !read_only {
        bail!("{container} has a writable root though readOnlyRootFilesystem is set");
    }
    Ok(())
}

/// The bit of a capability in /proc's masks (linux/capability.h).
fn capability_bit(name: &str) -> Result<u64> {
    let number = match name.trim_start_matches("CAP_") {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "BPF" => 39,
        "PERFMON" => 38,
        other => bail!("capability {other} is not known to this test: add its number"),
    };
    Ok(1 << number)
}
