//! Every socket on a node: one agent with `namespaces = "all"` sees the sockets of the
//! child network namespaces on its node (pods and a container, each with its own
//! processes, addresses and cgroup), attributes each socket to its namespace, process,
//! container and pod, and scopes wildcard binds by the interfaces of the socket's own
//! namespace. The oracle is `ss` run inside each namespace. Flows between the node's
//! namespaces are joined to the peer's pod by its pod IP (`portolan flows`), and rules
//! select sockets by pod on the real server.
//!
//! The node is a PID namespace of its own (`unshare --pid --mount-proc`): its agent sees
//! exactly the processes of this test, not those of the machine or of tests running in
//! parallel, as an agent with `hostPID` sees exactly its node's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use portolan_core::{Inventory, Protocol, Scope, SocketKey, SocketState};
use portolan_store::fleet::SocketFilter;
use portolan_testkit::{ChildGuard, Lab, NetnsHost, eventually_async};

use crate::query::Cli;
use crate::support::{Cluster, Limits, binary, inventory_from_ss};

const INTERVAL: Duration = Duration::from_secs(2);
const POD_A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const POD_B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";
const POD_D: &str = "0a1b2c3d-0000-4000-8000-00000000000d";

/// A server in one namespace: TCP on `0.0.0.0:80` (the same bind in every namespace) and
/// `127.0.0.1:8080` (accepting and holding what connects), UDP on `0.0.0.0:53`; optionally
/// one connection to `argv[2]:80`.
const SERVER: &str = r#"
import socket, sys, threading, time
held = []
def accept_all(s):
    while True:
        held.append(s.accept()[0])
def tcp(address, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(16)
    held.append(s)
    threading.Thread(target=accept_all, args=(s,), daemon=True).start()
tcp("0.0.0.0", 80)
tcp("127.0.0.1", 8080)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 53))
held.append(u)
if len(sys.argv) > 2:
    # The peer's server may start after this one: retry for a while.
    for attempt in range(100):
        try:
            held.append(socket.create_connection((sys.argv[2], 80), timeout=10))
            break
        except OSError:
            time.sleep(0.1)
time.sleep(3600)
"#;

/// One child namespace of the node and what the agent must say about it.
struct Child {
    host: NetnsHost,
    /// The cgroup its processes run in, relative to the cgroup v2 root.
    cgroup: String,
    container_id: String,
    pod_uid: &'static str,
    pod: Option<(&'static str, &'static str)>,
    /// Exposure of its `0.0.0.0:80`.
    wildcard_exposure: Scope,
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` (unified) or `/sys/fs/cgroup/unified`
/// (hybrid).
fn cgroup2_root() -> Result<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        .context("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

/// Cgroups made for the test, removed (deepest first) when dropped.
struct Cgroups {
    made: Vec<PathBuf>,
}

impl Cgroups {
    fn make(&mut self, root: &Path, relative: &str) -> Result<PathBuf> {
        let mut path = root.to_path_buf();
        for part in relative.split('/') {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .with_context(|| format!("cannot create cgroup {}", path.display()))?;
                self.made.push(path.clone());
            }
        }
        Ok(path)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // The processes were killed just before: their exit may take a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn netns_inode(host: &NetnsHost) -> Result<u64> {
    Ok(std::fs::metadata(format!("/run/netns/{}", host.netns))
        .with_context(|| format!("cannot stat the namespace of {host}"))?
        .ino())
}

fn id64(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// Sockets (keys in the host's terms, netns 0) and their states; flows without pids:
/// the agent's pids are those of the node's PID namespace, `ss`'s those of the machine.
type Comparable = (BTreeMap<SocketKey, SocketState>, BTreeMap<String, u32>);

fn comparable(inventory: &Inventory, netns: u64) -> Comparable {
    let sockets = inventory
        .sockets
        .iter()
        .filter(|(k, _)| k.netns == netns)
        .map(|(k, s)| (SocketKey { netns: 0, ..*k }, s.state))
        .collect();
    let mut flows = BTreeMap::new();
    for (k, n) in inventory.flows.iter().filter(|(k, _)| k.netns == netns) {
        let key = format!(
            "{} {} {} {} {} {}",
            k.protocol, k.direction, k.local_address, k.remote_address, k.service_port, k.state
        );
        *flows.entry(key).or_insert(0) += n;
    }
    (sockets, flows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_inventories_every_namespace_of_its_node() -> Result<()> {
    every_namespace_of_a_node(Entry::Enter).await
}

/// The same node with an agent that may not enter namespaces (no CAP_SYS_ADMIN, as the
/// Helm chart and the systemd unit run it): every namespace read from `/proc/<pid>/net`,
/// and wildcard binds still scoped by each namespace's own addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_cap_sys_admin_reads_every_namespace_through_procfs() -> Result<()> {
    every_namespace_of_a_node(Entry::Procfs).await
}

/// How the node's agent reads the other namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// As root: it enters each (setns) and dumps it through netlink.
    Enter,
    /// Without CAP_SYS_ADMIN in its bounding set: through `/proc/<pid>/net`.
    Procfs,
}

async fn every_namespace_of_a_node(entry: Entry) -> Result<()> {
    let lab = Lab::new(match entry {
        Entry::Enter => "nsinv",
        Entry::Procfs => "nsprc",
    })?;
    let node = lab.add_host("node")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    // The operator's CLI reaches the collector on loopback.
    let cluster = Cluster::start(
        "namespaces",
        &[bridge, IpAddr::from([127, 0, 0, 1])],
        Limits::default(),
    )
    .await?;
    let cg_root = cgroup2_root()?;
    let mut cgroups = Cgroups { made: Vec::new() };
    let base = format!("ptl-e2e-{}", std::process::id());

    // The node has a public address: a wildcard bind on the node is public, one in a
    // pod is scoped by the pod's interfaces.
    node.output("ip", ["addr", "add", "198.51.100.7/32", "dev", "eth0"])?;
    let children = vec![
        Child {
            host: lab.add_host("pod-a")?,
            cgroup: format!(
                "{base}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                POD_A.replace('-', "_"),
                id64('a')
            ),
            container_id: id64('a'),
            pod_uid: POD_A,
            pod: Some(("shop", "web-a")),
            wildcard_exposure: Scope::Private,
        },
        Child {
            host: lab.add_host("pod-b")?,
            cgroup: format!(
                "{base}/kubepods/besteffort/pod{POD_B}/crio-{}.scope",
                id64('b')
            ),
            container_id: id64('b'),
            pod_uid: POD_B,
            pod: Some(("shop", "web-b")),
            // Its only addresses are loopback ones.
            wildcard_exposure: Scope::Loopback,
        },
        Child {
            host: lab.add_host("ctr-c")?,
            cgroup: format!("{base}/system.slice/docker-{}.scope", id64('c')),
            container_id: id64('c'),
            pod_uid: "",
            pod: None,
            wildcard_exposure: Scope::Private,
        },
        Child {
            host: lab.add_host("pod-d")?,
            cgroup: format!(
                "{base}/kubepods/besteffort/pod{POD_D}/cri-containerd-{}.scope",
                id64('d')
            ),
            container_id: id64('d'),
            pod_uid: POD_D,
            pod: Some(("billing", "api-d")),
            wildcard_exposure: Scope::Private,
        },
    ];
    children[1]
        .host
        .output("ip", ["addr", "flush", "dev", "eth0"])?;

    // Files: the server, the kubelet's pod log directories, the agent's configuration.
    let dir = cluster.state.path().join("node");
    std::fs::create_dir_all(&dir)?;
    let server = dir.join("server.py");
    std::fs::write(&server, SERVER)?;
    let pod_logs = dir.join("pods");
    for c in &children {
        if let Some((namespace, name)) = c.pod {
            std::fs::create_dir_all(pod_logs.join(format!("{namespace}_{name}_{}", c.pod_uid)))?;
        }
    }
    let host_id = "node-1";
    let (cert, key) = cluster.pki.agent(host_id)?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nhost_id = {host_id:?}\nhostname = {host_id:?}\nscan_interval = \"{ms}ms\"\nnamespaces = \"all\"\npod_logs_dir = {pods:?}\n\n[collector]\nendpoint = {endpoint:?}\nack_timeout = \"20s\"\nmax_backoff = \"2s\"\n\n[spool]\ndir = {spool:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            ms = INTERVAL.as_millis(),
            spool = cluster.agent_spool_dir(host_id).display().to_string(),
            pods = pod_logs.display().to_string(),
            endpoint = format!(
                "https://{}",
                SocketAddr::new(bridge, cluster.collector_port)
            ),
            ca = cluster.pki.ca_path().display().to_string(),
            cert = cert.display().to_string(),
            key = key.display().to_string(),
        ),
    )?;

    // The node: a PID namespace holding the servers, each in its network namespace and
    // cgroup, and the agent in the node's network namespace.
    let mut script = String::from("set -e\n");
    let python = "/usr/bin/python3";
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut start = |cgroup: &Path, netns: &str, marker: &str, target: Option<IpAddr>| {
        script.push_str(&format!(
            "sh -c 'echo $$ > \"$1/cgroup.procs\" && exec ip netns exec \"$2\" {python} \"$3\" \"$4\" $5' sh {} {} {} {} {} &\n",
            quote(&cgroup.display().to_string()),
            quote(netns),
            quote(&server.display().to_string()),
            quote(marker),
            target.map(|t| t.to_string()).unwrap_or_default(),
        ));
    };
    let node_cgroup = cgroups.make(&cg_root, &format!("{base}/system.slice/node.service"))?;
    start(&node_cgroup, &node.netns, "server-node", None);
    for (i, c) in children.iter().enumerate() {
        let path = cgroups.make(&cg_root, &c.cgroup)?;
        // The container and the last pod connect to the first pod's address: flows
        // between namespaces.
        let target = (i >= 2).then_some(IpAddr::V4(children[0].host.ipv4));
        start(
            &path,
            &c.host.netns,
            &format!("server-{}", c.host.name),
            target,
        );
    }
    // `ip netns exec` itself needs CAP_SYS_ADMIN; the agent it starts drops it for good.
    let drop_sys_admin = match entry {
        Entry::Enter => "",
        Entry::Procfs => "setpriv --bounding-set -sys_admin --inh-caps -sys_admin -- ",
    };
    script.push_str(&format!(
        "exec ip netns exec {} {drop_sys_admin}{} run --config {}\n",
        quote(&node.netns),
        quote(&binary("portolan-agent")?.display().to_string()),
        quote(&config.display().to_string()),
    ));
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let _agent = ChildGuard::spawn(
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child=SIGKILL",
                "sh",
                "-c",
            ])
            .arg(&script)
            .env("PORTOLAN_LOG", "info,portolan_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut inodes = vec![(0u64, node.clone())];
    for c in &children {
        inodes.push((netns_inode(&c.host)?, c.host.clone()));
    }

    // ClickHouse equals `ss` inside every namespace, each socket in its own namespace.
    let store = &cluster.store;
    let stored = eventually_async!(
        timeout = Duration::from_secs(90),
        interval = Duration::from_millis(500),
        {
            let before: Vec<_> = inodes
                .iter()
                .map(|(_, h)| h.sockets())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let stored = store
                .load_current(host_id)
                .await
                .map_err(|e| e.to_string())?;
            let after: Vec<_> = inodes
                .iter()
                .map(|(_, h)| h.sockets())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            if before != after {
                return Err("the kernel's sockets changed while reading; again".to_string());
            }
            let mut problems = Vec::new();
            for ((inode, host), ss) in inodes.iter().zip(&after) {
                let kernel = inventory_from_ss(ss, stored.host.clone());
                let (s, k) = (comparable(&stored, *inode), comparable(&kernel, 0));
                if s != k {
                    problems.push(format!("{host} (netns {inode}): stored {s:?}\n  ss {k:?}"));
                }
            }
            let namespaces: BTreeSet<u64> = stored.sockets.keys().map(|k| k.netns).collect();
            let expected: BTreeSet<u64> = inodes.iter().map(|(i, _)| *i).collect();
            if namespaces != expected {
                problems.push(format!(
                    "namespaces stored {namespaces:?}, expected {expected:?}"
                ));
            }
            if problems.is_empty() {
                Ok(stored)
            } else {
                Err(format!(
                    "{}\nagent log:\n{}",
                    problems.join("\n"),
                    agent_log()
                ))
            }
        }
    );
    println!(
        "node-1 ({entry:?}): ClickHouse equals ss in {} namespaces: {} sockets, {} flows",
        inodes.len(),
        stored.sockets.len(),
        stored.flows.len()
    );
    let read_through_procfs = agent_log().contains("cannot enter network namespaces");
    assert_eq!(
        read_through_procfs,
        entry == Entry::Procfs,
        "{entry:?}: how the agent read the namespaces, per its log:\n{}",
        agent_log()
    );

    // Attribution and scopes, namespace by namespace.
    let wildcard_80 = |netns: u64| {
        stored
            .sockets
            .values()
            .find(|s| {
                s.key.netns == netns
                    && s.key.protocol == Protocol::Tcp
                    && s.key.local_port == 80
                    && s.key.local_address == IpAddr::from([0, 0, 0, 0])
            })
            .cloned()
    };
    let node_server = wildcard_80(0).context("the node's 0.0.0.0:80 is stored")?;
    assert_eq!(node_server.exposure, Scope::Public, "{node_server:?}");
    for ((inode, _), c) in inodes.iter().skip(1).zip(&children) {
        let socket = wildcard_80(*inode)
            .with_context(|| format!("the 0.0.0.0:80 of {} is stored", c.host))?;
        assert_eq!(
            (socket.scope, socket.exposure),
            (Scope::Wildcard, c.wildcard_exposure),
            "{}: a wildcard bind is scoped by its own namespace's interfaces",
            c.host
        );
        let pid = *socket
            .pids
            .first()
            .context("the server's socket has an owner")?;
        let process = stored
            .processes
            .get(&pid)
            .context("its process is stored")?;
        assert!(
            process
                .command_line
                .ends_with(&format!("server-{}", c.host.name))
                || process
                    .command_line
                    .contains(&format!("server-{} ", c.host.name)),
            "{}: owned by its own server, not another namespace's: {process:?}",
            c.host
        );
        assert_eq!(process.container_id, c.container_id, "{}", c.host);
        assert_eq!(process.pod_uid, c.pod_uid, "{}", c.host);
        let (namespace, name) = c.pod.unwrap_or(("", ""));
        assert_eq!(
            (process.pod_namespace.as_str(), process.pod_name.as_str()),
            (namespace, name),
            "{}",
            c.host
        );
        // All three of its sockets are its own server's.
        let owned = stored
            .sockets
            .values()
            .filter(|s| s.key.netns == *inode && s.pids == vec![pid])
            .count();
        assert!(owned >= 3, "{}: {owned} sockets owned by pid {pid}", c.host);
    }

    // Queries select by pod, container and namespace (what `portolan sockets --pod`,
    // `--container` and `--netns` ask), in ClickHouse.
    let listeners = |filter: SocketFilter| async move {
        let (found, _) = store
            .list_sockets(&SocketFilter {
                listening: true,
                limit: 1000,
                ..filter
            })
            .await?;
        let mut netns: Vec<u64> = found.iter().map(|f| f.socket.socket.key.netns).collect();
        netns.sort_unstable();
        netns.dedup();
        anyhow::Ok((found.len(), netns))
    };
    let (pod_a, pod_b, ctr_c, pod_d) = (inodes[1].0, inodes[2].0, inodes[3].0, inodes[4].0);
    let mut both = vec![pod_a, pod_b];
    both.sort_unstable();
    assert_eq!(
        listeners(SocketFilter {
            pod: "web-*".into(),
            ..SocketFilter::default()
        })
        .await?,
        (6, both)
    );
    assert_eq!(
        listeners(SocketFilter {
            pod: "shop/web-b".into(),
            ..SocketFilter::default()
        })
        .await?,
        (3, vec![pod_b])
    );
    assert_eq!(
        listeners(SocketFilter {
            container: "cccccc".into(),
            ..SocketFilter::default()
        })
        .await?,
        (3, vec![ctr_c])
    );
    assert_eq!(
        listeners(SocketFilter {
            netns: Some(pod_a),
            ..SocketFilter::default()
        })
        .await?,
        (3, vec![pod_a])
    );
    assert_eq!(
        listeners(SocketFilter {
            netns: Some(0),
            ..SocketFilter::default()
        })
        .await?
        .1,
        vec![0]
    );

    // Rules select by pod on the real server: the same `0.0.0.0:80` in every namespace,
    // and each rule fires for its pods' sockets only.
    let rules = portolan_rules::parse(
        "pods.yaml",
        "rules:\n  - {id: web-pods, kind: listener, severity: high, sockets: {pod: \"web-*\", ports: [80]}}\n  - {id: billing, kind: listener, severity: high, sockets: {pod: \"billing/*\", protocol: tcp, ports: [80]}}\n  - {id: node-only, kind: listener, severity: low, sockets: {netns: host, protocol: tcp, ports: [80]}}\n",
    )?;
    let mut fired = BTreeSet::new();
    for rule in &rules.rules {
        let sql = format!("{}\nFORMAT TabSeparated", portolan_rules::compile(rule));
        let rows = cluster
            .http_query(&sql)
            .with_context(|| format!("rule `{}`", rule.id))?;
        for row in rows.lines() {
            // rule_id, host_id, fingerprint, severity, subject, evidence
            let f: Vec<&str> = row.split('\t').collect();
            assert_eq!(f.len(), 6, "{row}");
            assert_eq!(f[1], host_id, "{row}");
            assert_eq!(f[2].len(), 16, "{row}");
            assert!(f[0] == "node-only" || f[5].contains(" pod="), "{row}");
            fired.insert((f[0].to_string(), f[4].to_string()));
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("web-pods", "tcp 0.0.0.0:80 in pod shop/web-a"),
        ("web-pods", "tcp 0.0.0.0:80 in pod shop/web-b"),
        ("billing", "tcp 0.0.0.0:80 in pod billing/api-d"),
        ("node-only", "tcp 0.0.0.0:80"),
    ]
    .into_iter()
    .map(|(r, s)| (r.to_string(), s.to_string()))
    .collect();
    assert_eq!(fired, expected);

    // Flows between the node's namespaces resolve to the peer's pod by its pod IP, on
    // both ends (what `portolan flows` shows).
    let op = cluster
        .pki
        .ca
        .issue_operator(
            "reader",
            portolan_tls::OperatorRole::Reader,
            Duration::from_secs(3600),
        )?
        .write_files(
            &cluster.pki.dir,
            "operator-reader",
            portolan_tls::pki::WriteMode::Overwrite,
        )?;
    let cli = Cli {
        cluster: &cluster,
        cert: op.cert.clone(),
        key: op.key.clone(),
        port: cluster.collector_port,
    };
    // The clients connect while the servers start: wait until both ends of both
    // connections are stored.
    let (c_ip, d_ip) = (
        children[2].host.ipv4.to_string(),
        children[3].host.ipv4.to_string(),
    );
    let doc = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(500),
        {
            let doc = cli
                .json(&["flows", "--port", "80", "-o", "json"])
                .map_err(|e| format!("{e:#}"))?;
            let remotes: BTreeSet<(String, String)> = doc
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| (f["direction"].to_string(), f["remote_address"].to_string()))
                .collect();
            let inbound = |ip: &str| ("\"inbound\"".to_string(), format!("{ip:?}"));
            if remotes.contains(&inbound(&c_ip)) && remotes.contains(&inbound(&d_ip)) {
                Ok(doc)
            } else {
                Err(format!("not yet both connections to pod-a: {doc:#}"))
            }
        }
    );
    let flows = doc.as_array().context("flows: a JSON array")?;
    let a_ip = children[0].host.ipv4.to_string();
    let find = |direction: &str, netns: u64| {
        flows
            .iter()
            .find(|f| {
                f["direction"] == direction
                    && f["netns"] == netns
                    && f["state"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("established"))
            })
            .with_context(|| format!("a {direction} flow in netns {netns}: {doc:#}"))
    };
    let pod_of = |v: &serde_json::Value| {
        format!(
            "{}/{}",
            v["pod_namespace"].as_str().unwrap_or_default(),
            v["pod_name"].as_str().unwrap_or_default()
        )
    };
    // pod-d (billing/api-d) → pod-a (shop/web-a).
    let out = find("outbound", pod_d)?;
    assert_eq!(out["remote_address"], a_ip.as_str(), "{out:#}");
    assert_eq!(pod_of(&out["process"]), "billing/api-d", "{out:#}");
    assert_eq!(
        (
            out["peer"].as_str(),
            out["peer_host_id"].as_str(),
            out["peer_netns"].as_u64(),
            out["peer_pod_namespace"].as_str(),
            out["peer_pod_name"].as_str(),
            out["peer_pod_uid"].as_str(),
        ),
        (
            Some("inside"),
            Some(host_id),
            Some(pod_a),
            Some("shop"),
            Some("web-a"),
            Some(POD_A)
        ),
        "{out:#}"
    );
    // The other end of the same connection: pod-a accepted it from pod-d's pod IP.
    let inbound: Vec<&serde_json::Value> = flows
        .iter()
        .filter(|f| f["direction"] == "inbound" && f["netns"] == pod_a)
        .collect();
    let from_d = inbound
        .iter()
        .find(|f| f["remote_address"] == d_ip.as_str())
        .with_context(|| format!("pod-a's flow from pod-d: {doc:#}"))?;
    assert_eq!(pod_of(&from_d["process"]), "shop/web-a", "{from_d:#}");
    assert_eq!(
        (
            from_d["peer_netns"].as_u64(),
            from_d["peer_pod_namespace"].as_str(),
            from_d["peer_pod_name"].as_str()
        ),
        (Some(pod_d), Some("billing"), Some("api-d")),
        "{from_d:#}"
    );
    // From the docker container: its namespace, and no pod.
    let from_c = inbound
        .iter()
        .find(|f| f["remote_address"] == c_ip.as_str())
        .with_context(|| format!("pod-a's flow from the container: {doc:#}"))?;
    assert_eq!(
        (
            from_c["peer_host_id"].as_str(),
            from_c["peer_netns"].as_u64(),
            from_c["peer_pod_name"].as_str()
        ),
        (Some(host_id), Some(ctr_c), Some("")),
        "{from_c:#}"
    );
    // People see the peer's pod in the table.
    let (code, table, err) = cli.run(&["flows", "--port", "80", "--direction", "out"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains(&format!("{host_id} pod shop/web-a")),
        "{table}"
    );
    Ok(())
}
