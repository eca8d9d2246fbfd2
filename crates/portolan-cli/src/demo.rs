//! `portolan demo`: the first thing a user runs.
//!
//! Generates development certificates, starts a collector (which starts its managed local
//! ClickHouse) and an agent for this host as child processes, waits until this host's
//! inventory is stored, and prints the host's listeners with process and exposure as
//! read back from ClickHouse. The demo runs exactly the code paths production runs:
//! the real binaries, mutual TLS, the managed ClickHouse.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use portolan_core::Scope;
use portolan_store::{ClickHouseConfig, Store, StoredSocket};
use portolan_tls::pki::{Ca, WriteMode};

/// Arguments of `portolan demo`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan demo\n  portolan demo --keep-running\n  PORTOLAN_CLICKHOUSE_URL=http://127.0.0.1:8123 portolan demo"
)]
pub struct DemoArgs {
    /// Directory for certificates, configuration, logs and the managed ClickHouse's data.
    #[arg(long, default_value = ".portolan/demo")]
    dir: PathBuf,
    /// ClickHouse to use instead of the managed local one.
    #[arg(long, env = "PORTOLAN_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    /// Leave the collector and agent running until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// How long to wait for the first inventory.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Child processes stopped (SIGTERM, then kill) when dropped.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for (name, child) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    _ => {
                        eprintln!("{name} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs, out: &mut dyn Write) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let host_id = host_id();
    let pki = dir.join("pki");
    make_certificates(&pki, &host_id)?;

    // The default rule pack, evaluated by the demo's collector.
    let rules_file = dir.join("rules.yaml");
    write_file(&rules_file, DEFAULT_RULES)?;
    let port = free_port()?;
    let state_dir = dir.join("collector-state");
    let clickhouse_url = args.clickhouse_url.clone().unwrap_or_default();
    let database = "portolan_demo";
    write_file(
        &dir.join("collector.toml"),
        &format!(
            "version = 1\nname = \"demo-collector\"\nlisten = \"127.0.0.1:{port}\"\nstate_dir = {state:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n[clickhouse]\nurl = {clickhouse_url:?}\ndatabase = \"{database}\"\n\n[rules]\nevaluate = true\nfiles = [{rules:?}]\ninterval = \"2s\"\n",
            rules = rules_file.display().to_string(),
            state = state_dir.display().to_string(),
            ca = pki.join("ca.pem").display().to_string(),
            cert = pki.join("collector-demo.pem").display().to_string(),
            key = pki.join("collector-demo.key").display().to_string(),
        ),
    )?;
    write_file(
        &dir.join("agent.toml"),
        &format!(
            "version = 1\nhost_id = {host_id:?}\nscan_interval = \"2s\"\n\n[labels]\nenv = \"demo\"\n\n[collector]\nendpoint = \"https://127.0.0.1:{port}\"\nserver_name = \"localhost\"\n\n[spool]\ndir = {spool:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            spool = dir.join("agent-spool").display().to_string(),
            ca = pki.join("ca.pem").display().to_string(),
            cert = pki
                .join(format!("agent-{host_id}.pem"))
                .display()
                .to_string(),
            key = pki
                .join(format!("agent-{host_id}.key"))
                .display()
                .to_string(),
        ),
    )?;

    let mut children = Children(Vec::new());
    let url_file = state_dir.join("clickhouse.url");
    let _ = std::fs::remove_file(&url_file);
    eprintln!(
        "starting the collector on 127.0.0.1:{port} (log: {})",
        dir.join("collector.log").display()
    );
    children.0.push((
        "collector".into(),
        spawn(
            &sibling("portolan-collector")?,
            &["--config"],
            &dir.join("collector.toml"),
            &dir.join("collector.log"),
        )?,
    ));
    let url = if clickhouse_url.is_empty() {
        eprintln!(
            "the collector is starting its managed local ClickHouse (data in {})",
            state_dir.join("clickhouse").display()
        );
        wait_for(
            args.timeout,
            "the managed ClickHouse to start",
            &mut children,
            &dir.join("collector.log"),
            || {
                std::fs::read_to_string(&url_file)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            },
        )?
    } else {
        clickhouse_url.clone()
    };
    wait_for(
        args.timeout,
        "the collector to listen",
        &mut children,
        &dir.join("collector.log"),
        || {
            std::net::TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_millis(200),
            )
            .ok()
            .map(|_| ())
        },
    )?;
    // The state directory may hold an earlier demo's data: what counts is a change stored
    // after this agent started.
    let store = runtime.block_on(Store::connect(&ClickHouseConfig {
        url: url.clone(),
        database: database.into(),
        user: None,
        password: None,
        tls: Default::default(),
    }))?;
    let seq_before = runtime.block_on(store.last_seq(&host_id)).unwrap_or(0);
    eprintln!(
        "starting the agent for host `{host_id}` (log: {})",
        dir.join("agent.log").display()
    );
    children.0.push((
        "agent".into(),
        spawn(
            &sibling("portolan-agent")?,
            &["run", "--config"],
            &dir.join("agent.toml"),
            &dir.join("agent.log"),
        )?,
    ));

    let sockets = wait_for(
        args.timeout,
        "this host's inventory in ClickHouse",
        &mut children,
        &dir.join("agent.log"),
        || {
            let seq = runtime.block_on(store.last_seq(&host_id)).ok()?;
            if seq <= seq_before {
                return None;
            }
            runtime.block_on(store.current_sockets(&host_id)).ok()
        },
    )?;
    let flows = runtime
        .block_on(store.current_flows(&host_id))
        .context("cannot read this host's flows")?;
    print_listeners(out, &host_id, &url, database, &sockets, &flows)?;
    out.flush()?;
    // Findings: wait for an evaluation that ran after the inventory was stored.
    let collector_log = dir.join("collector.log");
    let evaluations_before = std::fs::read_to_string(&collector_log)
        .unwrap_or_default()
        .matches("rules evaluated")
        .count();
    let evaluated = wait_for(
        Duration::from_secs(30),
        "a rule evaluation",
        &mut children,
        &collector_log,
        || {
            let n = std::fs::read_to_string(&collector_log)
                .unwrap_or_default()
                .matches("rules evaluated")
                .count();
            (n > evaluations_before).then_some(())
        },
    );
    if evaluated.is_ok() {
        let findings = runtime
            .block_on(store.findings())
            .context("cannot read the findings")?;
        print_findings(out, &host_id, &findings)?;
    } else {
        writeln!(
            out,
            "\n(the rules have not been evaluated yet; see {})",
            collector_log.display()
        )?;
    }
    out.flush()?;

    if args.keep_running {
        eprintln!("\nthe collector and agent keep running; press Ctrl-C to stop them");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    drop(children);
    Ok(())
}

fn print_listeners(
    out: &mut dyn Write,
    host_id: &str,
    url: &str,
    database: &str,
    sockets: &[StoredSocket],
    flows: &[portolan_store::StoredFlow],
) -> Result<()> {
    let mut listeners: Vec<&StoredSocket> =
        sockets.iter().filter(|s| s.socket.is_listener()).collect();
    listeners.sort_by_key(|s| {
        (
            std::cmp::Reverse(s.socket.exposure),
            s.socket.key.local_port,
            s.socket.key.protocol,
        )
    });
    writeln!(
        out,
        "Listeners of host `{host_id}`, as stored in ClickHouse ({url}, database `{database}`):\n"
    )?;
    let rows: Vec<[String; 7]> = listeners
        .iter()
        .map(|s| {
            let k = &s.socket.key;
            let first = s
                .socket
                .pids
                .first()
                .and_then(|pid| s.processes.iter().find(|p| p.pid == *pid));
            let owner = match first {
                Some(p) => format!("{}/{}", p.pid, p.display_name()),
                None => format!("({})", s.socket.attribution.as_str()),
            };
            let user = first.map(|p| p.user.clone()).unwrap_or_default();
            let unit = first
                .map(|p| {
                    if !p.container_id.is_empty() {
                        format!(
                            "container {}",
                            &p.container_id[..12.min(p.container_id.len())]
                        )
                    } else {
                        p.systemd_unit.clone()
                    }
                })
                .unwrap_or_default();
            [
                k.protocol.to_string(),
                portolan_core::socket::Endpoint(k.local_address, k.local_port).to_string(),
                s.socket.scope.to_string(),
                s.socket.exposure.to_string(),
                owner,
                user,
                unit,
            ]
        })
        .collect();
    let header = [
        "PROTO", "LOCAL", "BIND", "EXPOSURE", "PROCESS", "USER", "UNIT",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&header.map(String::from)))?;
    for row in &rows {
        writeln!(out, "{}", line(row))?;
    }
    let beyond = listeners
        .iter()
        .filter(|s| s.socket.exposure >= Scope::Private)
        .count();
    let public = listeners
        .iter()
        .filter(|s| s.socket.exposure == Scope::Public)
        .count();
    let unowned = listeners
        .iter()
        .filter(|s| s.socket.pids.is_empty())
        .count();
    let connections: u32 = flows.iter().map(|f| f.flow.connections).sum();
    writeln!(
        out,
        "\n{} listeners: {} reachable from other hosts ({} on public addresses), {} loopback or link-local only; {} without a known owner. {} connections in {} flows.",
        listeners.len(),
        beyond,
        public,
        listeners.len() - beyond,
        unowned,
        connections,
        flows.len()
    )?;
    Ok(())
}

/// The default rule pack, shipped in the binary.
const DEFAULT_RULES: &str = include_str!("../../../deploy/rules/default.yaml");

fn print_findings(
    out: &mut dyn Write,
    host_id: &str,
    findings: &[portolan_rules::lifecycle::Finding],
) -> Result<()> {
    let open: Vec<_> = findings
        .iter()
        .filter(|f| f.status == portolan_rules::lifecycle::Status::Open)
        .filter(|f| f.latest.host_id == host_id || f.latest.host_id.is_empty())
        .collect();
    if open.is_empty() {
        writeln!(
            out,
            "\nNo open findings: nothing on this host breaks the default rule pack."
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "\nOpen findings of the default rule pack (deploy/rules/default.yaml):\n"
    )?;
    let mut widths = [8usize, 4, 7];
    for f in &open {
        widths[0] = widths[0].max(f.latest.severity.len());
        widths[1] = widths[1].max(f.latest.rule_id.len());
        widths[2] = widths[2].max(f.latest.subject.chars().count());
    }
    let [w0, w1, w2] = widths;
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  EVIDENCE",
        "SEVERITY", "RULE", "SUBJECT"
    )?;
    for f in &open {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            f.latest.severity.to_uppercase(),
            f.latest.rule_id,
            f.latest.subject,
            f.latest.evidence
        )?;
    }
    writeln!(out, "\n{} open findings.", open.len())?;
    Ok(())
}

fn make_certificates(pki: &Path, host_id: &str) -> Result<()> {
    let validity = Duration::from_secs(30 * 24 * 3600);
    let ca = if pki.join("ca.pem").exists() {
        let cert =
            std::fs::read_to_string(pki.join("ca.pem")).context("cannot read the demo CA")?;
        let key =
            std::fs::read_to_string(pki.join("ca.key")).context("cannot read the demo CA key")?;
        Ca::from_pem(&cert, &key)
            .context("the demo CA is unusable; delete the demo directory and run again")?
    } else {
        let ca = Ca::generate("Portolan demo CA")?;
        ca.write_files(pki, "ca", WriteMode::Overwrite)?;
        ca
    };
    ca.issue_collector(
        "demo",
        &["localhost".to_string()],
        &[std::net::IpAddr::from(Ipv4Addr::LOCALHOST)],
        validity,
    )?
    .write_files(pki, "collector-demo", WriteMode::Overwrite)?;
    ca.issue_agent(host_id, validity)?.write_files(
        pki,
        &format!("agent-{host_id}"),
        WriteMode::Overwrite,
    )?;
    Ok(())
}

/// This host's id: /etc/machine-id, as the agent would use, or its hostname.
fn host_id() -> String {
    let id = std::fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .to_string();
    if !id.is_empty() && portolan_tls::identity::validate_name("host_id", &id).is_ok() {
        return id;
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    if !hostname.is_empty() && portolan_tls::identity::validate_name("host_id", &hostname).is_ok() {
        hostname
    } else {
        "demo-host".into()
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the portolan binary's own path")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "`{name}` not found next to {}: build every binary first (`cargo build --workspace --bins`, or `just demo`)",
            exe.display()
        );
    }
    Ok(path)
}

fn spawn(binary: &Path, args: &[&str], config: &Path, log: &Path) -> Result<Child> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err_file = log_file.try_clone()?;
    Command::new(binary)
        .args(args)
        .arg(config)
        .env_remove("PORTOLAN_CLICKHOUSE_URL")
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

fn wait_for<T>(
    timeout: Duration,
    what: &str,
    children: &mut Children,
    log: &Path,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        for (name, child) in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "{name} exited ({status}) while waiting for {what}; its log ends with:\n{}",
                    tail(log, 15)
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "gave up waiting for {what} after {}; the log ends with:\n{}",
                humantime::format_duration(timeout),
                tail(log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn write_file(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}
