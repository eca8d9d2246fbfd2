//! The cluster under test: a managed ClickHouse, a development CA, a collector process,
//! and agents in lab hosts.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use portolan_core::inventory::ScannedSocket;
use portolan_core::{Attribution, FlowKey, HostState, Inventory, SocketKey, SocketState};
use portolan_store::managed::{ManagedClickHouse, ManagedHttps, ManagedOptions};
use portolan_store::{ClickHouseConfig, Store};
use portolan_testkit::{
    ChildGuard, NetnsHost, Protocol, SocketFixture, SsSocket, TempState, eventually_async,
    fixture_binary,
};
use portolan_tls::pki::{Ca, WriteMode};

/// A binary of this workspace, built next to the test executable's profile directory.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no profile directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; `just test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// Development PKI in a directory.
pub struct Pki {
    pub ca: Ca,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf, collector_ips: &[IpAddr]) -> Result<Pki> {
        let ca = Ca::generate("portolan e2e CA")?;
        ca.write_files(&dir, "ca", WriteMode::Overwrite)?;
        ca.issue_collector(
            "e2e",
            &["localhost".into()],
            collector_ips,
            Duration::from_secs(3600),
        )?
        .write_files(&dir, "collector", WriteMode::Overwrite)?;
        Ok(Pki { ca, dir })
    }

    /// Issues an agent certificate; returns (cert, key) paths.
    pub fn agent(&self, host_id: &str) -> Result<(PathBuf, PathBuf)> {
        let written = self
            .ca
            .issue_agent(host_id, Duration::from_secs(3600))?
            .write_files(&self.dir, &format!("agent-{host_id}"), WriteMode::Overwrite)?;
        Ok((written.cert, written.key))
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// HTTPS material for a managed ClickHouse: a server certificate for `localhost` and
    /// 127.0.0.1 issued by `ca`, written as `<name>.pem` and `<name>.key`.
    pub fn clickhouse_https(&self, ca: &Ca, name: &str) -> Result<ManagedHttps> {
        let written = ca
            .issue_collector(
                "clickhouse",
                &["localhost".into()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Duration::from_secs(3600),
            )?
            .write_files(&self.dir, name, WriteMode::Overwrite)?;
        Ok(ManagedHttps {
            cert: written.cert,
            key: written.key,
            client_ca: None,
        })
    }
}

/// `VmRSS` of a process in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// One look at whether what ClickHouse holds as `host_id`'s current inventory equals
/// what `ss` shows in `host` (for `eventually_async!`): the stored inventory, or the
/// difference.
pub async fn stored_equals_kernel(
    cluster: &Cluster,
    host_id: &str,
    host: &NetnsHost,
) -> Result<Inventory, String> {
    let stored = cluster
        .store
        .load_current(host_id)
        .await
        .map_err(|e| e.to_string())?;
    let kernel = inventory_from_ss(
        &host.sockets().map_err(|e| e.to_string())?,
        stored.host.clone(),
    );
    let (s, k) = (view(&stored), view(&kernel));
    if s == k {
        Ok(stored)
    } else {
        Err(describe_difference(&s, &k))
    }
}

/// Whether ClickHouse holds a current socket of `host` on `port` (for `eventually_async!`).
pub async fn stored_port(cluster: &Cluster, host: &str, port: u16) -> Result<(), String> {
    let current = cluster
        .store
        .load_current(host)
        .await
        .map_err(|e| e.to_string())?;
    if current.sockets.values().any(|s| s.key.local_port == port) {
        Ok(())
    } else {
        Err(format!("{host}: port {port} not stored yet"))
    }
}

/// ClickHouse, PKI and a running collector.
pub struct Cluster {
    pub state: TempState,
    /// Kept for the cluster's lifetime: dropping it stops the server.
    clickhouse: ManagedClickHouse,
    pub clickhouse_url: String,
    /// The URL collectors are configured with: [`Cluster::clickhouse_url`], or the
    /// server's `https://` URL with [`Limits::clickhouse_https`].
    pub collector_clickhouse_url: String,
    pub database: String,
    pub store: Store,
    pub pki: Pki,
    pub collector_port: u16,
    limits: Limits,
    collectors: Vec<CollectorProcess>,
}

/// One collector replica: its port and files, and its process while it runs.
struct CollectorProcess {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

/// Collector limits for a test.
pub struct Limits {
    pub max_message_bytes: u32,
    pub max_sockets_per_message: u32,
    /// A rule file (YAML) the first collector evaluates every second.
    pub rules: Option<String>,
    /// TOML appended to the first collector's configuration (e.g. `[notify]`).
    pub collector_extra: String,
    /// Collectors read a revocation list (`tls.revoked`), empty at first
    /// ([`Cluster::revoked_path`]).
    pub revocation_list: bool,
    /// `limits.max_messages_per_second` and `limits.max_message_burst`, when not the
    /// defaults.
    pub message_rate: Option<(u32, u32)>,
    /// Environment variables for the collector processes (e.g. `OTEL_*`); see
    /// [`Cluster::set_collector_env`].
    pub collector_env: Vec<(String, String)>,
    /// ClickHouse also serves HTTPS with a certificate of the e2e CA (for `localhost`),
    /// and collectors reach it there, trusting that CA (`[clickhouse.tls] ca`).
    pub clickhouse_https: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 * 1024 * 1024,
            max_sockets_per_message: 20_000,
            rules: None,
            collector_extra: String::new(),
            revocation_list: false,
            message_rate: None,
            collector_env: Vec::new(),
            clickhouse_https: false,
        }
    }
}

impl Cluster {
    /// Starts ClickHouse and a collector listening on every address (the lab's hosts
    /// reach it at the bridge address) with a certificate for `collector_ips`.
    pub async fn start(name: &str, collector_ips: &[IpAddr], limits: Limits) -> Result<Cluster> {
        let state = TempState::new(name)?;
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        ips.extend_from_slice(collector_ips);
        let pki = Pki::new(state.subdir("pki")?, &ips)?;
        let options = ManagedOptions {
            state_dir: state.subdir("clickhouse")?,
            binary: None,
        };
        let clickhouse = if limits.clickhouse_https {
            ManagedClickHouse::start_https(options, pki.clickhouse_https(&pki.ca, "clickhouse")?)
                .await?
        } else {
            ManagedClickHouse::start(options).await?
        };
        let database = format!("e2e_{name}");
        let store = Store::connect(&ClickHouseConfig {
            url: clickhouse.url(),
            database: database.clone(),
            user: None,
            password: None,
            tls: Default::default(),
        })
        .await?;
        store.migrate().await?;
        let clickhouse_url = clickhouse.url();
        let collector_clickhouse_url = clickhouse
            .https_url()
            .unwrap_or_else(|| clickhouse_url.clone());
        let mut cluster = Cluster {
            state,
            clickhouse,
            clickhouse_url,
            collector_clickhouse_url,
            database,
            store,
            pki,
            limits,
            collector_port: 0,
            collectors: Vec::new(),
        };
        cluster.collector_port = cluster.add_collector().await?;
        Ok(cluster)
    }

    /// Starts one more collector replica against the same ClickHouse database; returns
    /// its port. Replica `n` logs to `collector-n.log` (the first to `collector.log`).
    pub async fn add_collector(&mut self) -> Result<u16> {
        let n = self.collectors.len();
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let port = portolan_testkit::free_port()?;
        let config = self.state.path().join(format!("collector{suffix}.toml"));
        std::fs::write(
            &config,
            format!(
                "version = 1\nname = \"e2e{suffix}\"\nlisten = \"0.0.0.0:{port}\"\nstate_dir = {state:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n[clickhouse]\nurl = {url:?}\ndatabase = {database:?}\n{clickhouse_tls}\n[limits]\nmax_message_bytes = {mmb}\nmax_sockets_per_message = {msm}\n",
                state = self
                    .state
                    .subdir(&format!("collector{suffix}"))?
                    .display()
                    .to_string(),
                ca = self.pki.ca_path().display().to_string(),
                cert = self.pki.dir.join("collector.pem").display().to_string(),
                key = self.pki.dir.join("collector.key").display().to_string(),
                url = self.collector_clickhouse_url,
                database = self.database,
                clickhouse_tls = if self.limits.clickhouse_https {
                    format!(
                        "\n[clickhouse.tls]\nca = {:?}\n",
                        self.pki.ca_path().display().to_string()
                    )
                } else {
                    String::new()
                },
                mmb = self.limits.max_message_bytes,
                msm = self.limits.max_sockets_per_message,
            ),
        )?;
        if let (0, Some(rules)) = (n, &self.limits.rules) {
            let file = self.state.path().join("rules.yaml");
            std::fs::write(&file, rules)?;
            let mut text = std::fs::read_to_string(&config)?;
            text.push_str(&format!(
                "\n[rules]\nevaluate = true\nfiles = [{:?}]\ninterval = \"1s\"\n",
                file.display().to_string()
            ));
            std::fs::write(&config, text)?;
        }
        if let Some((rate, burst)) = self.limits.message_rate {
            let text = std::fs::read_to_string(&config)?.replacen(
                "\n[limits]\n",
                &format!(
                    "\n[limits]\nmax_messages_per_second = {rate}\nmax_message_burst = {burst}\n"
                ),
                1,
            );
            std::fs::write(&config, text)?;
        }
        if self.limits.revocation_list {
            let revoked = self.revoked_path();
            if !revoked.exists() {
                std::fs::write(&revoked, "# nothing revoked yet\n")?;
            }
            let text = std::fs::read_to_string(&config)?.replacen(
                "\n[clickhouse]\n",
                &format!(
                    "revoked = {:?}\n\n[clickhouse]\n",
                    revoked.display().to_string()
                ),
                1,
            );
            std::fs::write(&config, text)?;
        }
        if n == 0 && !self.limits.collector_extra.is_empty() {
            let mut text = std::fs::read_to_string(&config)?;
            text.push_str(&self.limits.collector_extra);
            std::fs::write(&config, text)?;
        }
        let log = self.state.path().join(format!("collector{suffix}.log"));
        self.collectors.push(CollectorProcess {
            port,
            config,
            log,
            child: None,
        });
        self.start_collector(n).await?;
        Ok(port)
    }

    /// (Re)starts collector replica `n` with its configuration, on its port, and waits
    /// until it listens. Its log is appended to.
    pub async fn start_collector(&mut self, n: usize) -> Result<()> {
        let Some(replica) = self.collectors.get_mut(n) else {
            bail!("no collector replica {n}")
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)?;
        replica.child = Some(ChildGuard::spawn(
            Command::new(binary("portolan-collector")?)
                .arg("--config")
                .arg(&replica.config)
                .env("PORTOLAN_LOG", "info,portolan_collector=debug")
                .envs(self.limits.collector_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?);
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, replica.port)).is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "collector did not listen within 60 s; log:\n{}",
                    std::fs::read_to_string(&replica.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Appends `toml` to collector replica `n`'s configuration (read at its next start).
    pub fn append_collector_config(&mut self, n: usize, toml: &str) -> Result<()> {
        let Some(replica) = self.collectors.get(n) else {
            bail!("no collector replica {n}")
        };
        let mut text = std::fs::read_to_string(&replica.config)?;
        text.push_str(toml);
        std::fs::write(&replica.config, text)?;
        Ok(())
    }

    /// Environment variables for collector processes started from now on.
    pub fn set_collector_env(&mut self, env: Vec<(String, String)>) {
        self.limits.collector_env = env;
    }

    /// The pid of collector replica `n` while it runs.
    pub fn collector_pid(&mut self, n: usize) -> Option<u32> {
        let child = self.collectors.get_mut(n)?.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// Stops collector replica `n` with SIGKILL, as a crash would.
    pub fn kill_collector(&mut self, n: usize) {
        if let Some(replica) = self.collectors.get_mut(n) {
            drop(replica.child.take());
        }
    }

    /// The revocation list the collectors read when `Limits::revocation_list` is set.
    pub fn revoked_path(&self) -> PathBuf {
        self.state.path().join("revoked.txt")
    }

    pub fn collector_log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("collector.log")).unwrap_or_default()
    }

    /// Starts an agent as `host_id` inside `host` (`None`: the root namespace),
    /// streaming to the collector at `collector`.
    pub fn spawn_agent(
        &self,
        host: Option<&NetnsHost>,
        host_id: &str,
        collector: SocketAddr,
        interval: Duration,
        labels: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        self.spawn_agent_with_env(host, host_id, collector, interval, labels, &[])
    }

    /// [`Cluster::spawn_agent`] with extra environment variables for the agent process.
    pub fn spawn_agent_with_env(
        &self,
        host: Option<&NetnsHost>,
        host_id: &str,
        collector: SocketAddr,
        interval: Duration,
        labels: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        let extra = AgentExtra {
            labels,
            env,
            toml: "",
        };
        self.spawn_agent_configured(host, host_id, collector, interval, extra)
    }

    /// [`Cluster::spawn_agent`] with TOML sections appended to the agent's configuration
    /// (e.g. `[metrics]`, `[footprint]`).
    pub fn spawn_agent_with_config(
        &self,
        host: Option<&NetnsHost>,
        host_id: &str,
        collector: SocketAddr,
        interval: Duration,
        extra_toml: &str,
    ) -> Result<ChildGuard> {
        let extra = AgentExtra {
            labels: &[],
            env: &[],
            toml: extra_toml,
        };
        self.spawn_agent_configured(host, host_id, collector, interval, extra)
    }

    fn spawn_agent_configured(
        &self,
        host: Option<&NetnsHost>,
        host_id: &str,
        collector: SocketAddr,
        interval: Duration,
        extra: AgentExtra<'_>,
    ) -> Result<ChildGuard> {
        let AgentExtra {
            labels,
            env,
            toml: extra_toml,
        } = extra;
        let (cert, key) = self.pki.agent(host_id)?;
        let endpoint = format!("https://{collector}");
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        let config = self.state.path().join(format!("agent-{host_id}.toml"));
        std::fs::write(
            &config,
            format!(
                "version = 1\nhost_id = {host_id:?}\nhostname = {host_id:?}\nscan_interval = \"{ms}ms\"\n\n[labels]\n{labels}\n[collector]\nendpoint = {endpoint:?}\nack_timeout = \"20s\"\nmax_backoff = \"2s\"\n\n[spool]\ndir = {spool:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
                ms = interval.as_millis(),
                spool = self.agent_spool_dir(host_id).display().to_string(),
                ca = self.pki.ca_path().display().to_string(),
                cert = cert.display().to_string(),
                key = key.display().to_string(),
            ) + extra_toml,
        )?;
        self.run_agent(host, host_id, &config, env)
    }

    /// Runs `portolan-agent run --config <config>` as `host_id` inside `host` (`None`: the
    /// root namespace), logging to `agent-<host_id>.log` ([`Cluster::agent_log`]).
    pub fn run_agent(
        &self,
        host: Option<&NetnsHost>,
        host_id: &str,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        // Appended to: an agent restarted under the same host_id keeps one log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join(format!("agent-{host_id}.log")))?;
        let mut command = match host {
            Some(host) => host.command(binary("portolan-agent")?),
            None => Command::new(binary("portolan-agent")?),
        };
        command
            .args(["run", "--config"])
            .arg(config)
            .env("PORTOLAN_LOG", "info,portolan_agent=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(ChildGuard::spawn(&mut command)?)
    }

    /// A listener on `port` in `host` and an agent `host_id` there (1 s scans) streaming
    /// to `collector`, once ClickHouse holds the listener: the usual start of a test
    /// about a streaming agent. The fixture opens and closes more sockets later.
    pub async fn streaming_agent(
        &self,
        host: &NetnsHost,
        host_id: &str,
        collector: SocketAddr,
        port: u16,
    ) -> Result<(SocketFixture, ChildGuard)> {
        let fixture = SocketFixture::spawn(Some(host), &fixture_binary()?)?;
        fixture.listen(Protocol::Tcp, host.ipv4_addr(port))?;
        let agent =
            self.spawn_agent(Some(host), host_id, collector, Duration::from_secs(1), &[])?;
        eventually_async!(
            timeout = Duration::from_secs(60),
            interval = Duration::from_millis(200),
            stored_port(self, host_id, port).await
        );
        Ok((fixture, agent))
    }

    /// Runs `query` in the cluster's database over ClickHouse's HTTP interface (plain
    /// HTTP/1.0, one connection per query); the body. For benchmarks and soaks that time
    /// their own reads.
    pub fn http_query(&self, query: &str) -> Result<String> {
        Ok(portolan_testkit::clickhouse::http_query(
            &self.clickhouse_url,
            &self.database,
            query,
        )?)
    }

    /// The native-protocol (TCP) port of the cluster's ClickHouse, for `clickhouse-client`.
    #[allow(dead_code)]
    pub fn clickhouse_tcp_port(&self) -> u16 {
        self.clickhouse.tcp_port()
    }

    /// The spool directory of the agent `host_id` (kept across its restarts).
    pub fn agent_spool_dir(&self, host_id: &str) -> PathBuf {
        self.state.path().join(format!("agent-{host_id}-spool"))
    }

    /// Stops ClickHouse (SIGTERM, waits for the exit); [`Cluster::start_clickhouse`]
    /// brings it back on the same ports and data.
    pub async fn stop_clickhouse(&mut self) -> Result<()> {
        self.clickhouse.stop().await?;
        Ok(())
    }

    /// Starts the stopped ClickHouse again and waits until it answers.
    /// Changes ClickHouse's HTTPS material; it takes effect at the next
    /// [`Cluster::start_clickhouse`].
    pub fn set_clickhouse_https(&mut self, https: ManagedHttps) {
        self.clickhouse.set_https(https);
    }

    pub async fn start_clickhouse(&mut self) -> Result<()> {
        self.clickhouse.start_again().await?;
        Ok(())
    }

    pub fn agent_log(&self, host_id: &str) -> String {
        std::fs::read_to_string(self.state.path().join(format!("agent-{host_id}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.collectors.clear();
        if std::thread::panicking() {
            eprintln!("--- collector log ---\n{}", self.collector_log());
        }
    }
}

/// What `ss` shows, folded exactly as the agent folds a scan: the oracle inventory.
/// Interfaces are taken from `host` (scopes are compared separately).
pub fn inventory_from_ss(ss: &[SsSocket], host: HostState) -> Inventory {
    let scanned = ss.iter().map(|s| {
        let local = s.local;
        let (remote_address, remote_port) = match s.remote {
            Some(r) => (r.ip(), r.port()),
            None => (unspecified_like(local.ip()), 0),
        };
        ScannedSocket {
            key: SocketKey {
                protocol: s.protocol,
                local_address: local.ip(),
                local_port: local.port(),
                remote_address,
                remote_port,
                inode: s.inode.unwrap_or(0),
                netns: 0,
            },
            state: s.state,
            uid: s.uid,
            pids: s.pids.clone(),
            attribution: if s.pids.is_empty() {
                Attribution::Kernel
            } else {
                Attribution::Owned
            },
            path: String::new(),
        }
    });
    Inventory::from_scan(host, scanned, [])
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The comparable view of an inventory: each unconnected TCP or UDP socket with its
/// state and owners (what `ss -tuanp` lists; Unix, raw and SCTP sockets are compared in
/// `protocols`); each flow with its count.
pub type View = (
    BTreeMap<SocketKey, (SocketState, Vec<u32>)>,
    BTreeMap<FlowKey, u32>,
);

pub fn view(inventory: &Inventory) -> View {
    (
        inventory
            .sockets
            .iter()
            .filter(|(k, _)| matches!(k.protocol, Protocol::Tcp | Protocol::Udp))
            .map(|(k, s)| (*k, (s.state, s.pids.clone())))
            .collect(),
        inventory.flows.clone(),
    )
}

/// Lines describing how two views differ, for failure messages.
pub fn describe_difference(stored: &View, kernel: &View) -> String {
    let mut lines = Vec::new();
    for (k, v) in &kernel.0 {
        match stored.0.get(k) {
            None => lines.push(format!("missing in ClickHouse: {k} {v:?}")),
            Some(s) if s != v => lines.push(format!("differs: {k} stored {s:?} kernel {v:?}")),
            _ => {}
        }
    }
    for (k, v) in &stored.0 {
        if !kernel.0.contains_key(k) {
            lines.push(format!("only in ClickHouse: {k} {v:?}"));
        }
    }
    for (k, n) in &kernel.1 {
        if stored.1.get(k) != Some(n) {
            lines.push(format!("flow {k}: stored {:?} kernel {n}", stored.1.get(k)));
        }
    }
    for (k, n) in &stored.1 {
        if !kernel.1.contains_key(k) {
            lines.push(format!("flow only in ClickHouse: {k} ({n})"));
        }
    }
    lines.join("\n")
}

/// What an agent gets beyond the cluster's defaults: labels, environment variables and
/// TOML sections appended to its configuration.
struct AgentExtra<'a> {
    labels: &'a [(&'a str, &'a str)],
    env: &'a [(&'a str, &'a str)],
    toml: &'a str,
}

/// `GET path` over plain HTTP/1.0 (metrics, health, probes): the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: portolan\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {response:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// The value of the metric sample whose name and labels are exactly `series`.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
