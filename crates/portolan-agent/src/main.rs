//! `portolan-agent`: scans the host's sockets.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use portolan_agent::config::AgentConfig;
use portolan_agent::output::{self, View};
use portolan_agent::scan::{Namespaces, ScanOptions, Scanner};
use portolan_agent::stream::{self, HostFacts};
use portolan_config::exit::{self, Classified, EXIT_USAGE, Exit};
use std::collections::BTreeMap;

/// The Portolan agent: inventories every socket on this host.
#[derive(Debug, Parser)]
#[command(name = "portolan-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scan this host once and print every TCP and UDP socket with its owner and exposure.
    Scan(ScanArgs),
    /// Stream this host's inventory to a collector: a snapshot, then deltas every scan interval.
    #[command(
        after_help = "Examples:\n  portolan-agent run --config /etc/portolan/agent.toml\n  PORTOLAN_COLLECTOR_ENDPOINT=https://collector:7443 portolan-agent run --config agent.toml\n  portolan-agent run --config agent.toml --print-config"
    )]
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "PORTOLAN_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Collector endpoint, `https://host:port` (overrides `collector.endpoint`).
    #[arg(long)]
    collector: Option<String>,
    /// Scan interval, e.g. `10s` (overrides `scan_interval`).
    #[arg(long)]
    scan_interval: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Args)]
struct ScanArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Show listeners only (TCP LISTEN, bound unconnected UDP).
    #[arg(long)]
    listening: bool,
    /// Do not walk /proc to find the processes that own sockets.
    #[arg(long)]
    no_processes: bool,
    /// Inventory every network namespace (containers, pods, `ip netns`), not only this one.
    #[arg(long)]
    all_namespaces: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for programs.
    Json,
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::classify(e.chain()).code())
        }
    }
}

/// Blocks of at least this many bytes get their own mapping from glibc's malloc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes glibc's mmap threshold at its default, and keeps every thread on one malloc
/// arena.
///
/// Left dynamic, the threshold rises to the largest block freed so far, and a scan's
/// buffers (megabytes at 20,000 sockets) are then carved from the arenas of the threads
/// that scan, walk `/proc` and send, which keep the memory once it is freed: the agent's
/// resident size grew by a scan's working set per arena (22.8 MiB after a minute at
/// 20,000 sockets; 13.9 MiB with the threshold fixed).
///
/// glibc also gives threads their own arenas (up to eight per core), and tokio's
/// blocking threads come and go between scans, so over minutes the scan's small blocks
/// were spread over several arenas, each keeping its share when freed: 39.6 MiB after
/// three minutes at 20,000 sockets with 1% churn, 21.9 MiB with one arena, at the same
/// CPU (the agent's threads rarely allocate at the same time).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    // SAFETY: mallopt sets one allocator parameter; it takes no pointers and is safe to
    // call at any time. On failure (0) the parameter keeps its default, which costs
    // memory only.
    unsafe {
        let _ = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        let _ = libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Scan(args) => scan(&args),
        Command::Run(args) => run_agent(&args),
    }
}

/// A configuration problem: exit code 64.
fn usage(message: String) -> Classified {
    Classified::new(Exit::Usage, message)
}

fn load_config(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut flags = toml::Table::new();
    if let Some(endpoint) = &args.collector {
        portolan_config::set_flag(&mut flags, "collector.endpoint", endpoint.clone());
    }
    if let Some(interval) = &args.scan_interval {
        portolan_config::set_flag(&mut flags, "scan_interval", interval.clone());
    }
    let config: AgentConfig =
        portolan_config::load(args.config.as_deref(), &env, "PORTOLAN_", flags)
            .map_err(|e| usage(e.to_string()))?;
    if let Err(problems) = config.validate() {
        return Err(usage(format!(
            "invalid configuration:\n  {}",
            problems.join("\n  ")
        ))
        .into());
    }
    Ok(config)
}

fn run_agent(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    if args.print_config {
        let mut shown = config.clone();
        if !shown.enrollment.token.is_empty() {
            shown.enrollment.token = "**REDACTED**".into();
        }
        print!("{}", portolan_config::to_toml(&shown)?);
        return Ok(());
    }
    // Logs on stderr (`PORTOLAN_LOG`); traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
    // is set. Held to the end: dropping it exports the last spans.
    let _telemetry = portolan_telemetry::init("portolan-agent");
    let host_id = config.resolve_host_id().map_err(usage)?;
    portolan_tls::identity::validate_name("host_id", &host_id).map_err(|e| usage(e.to_string()))?;
    // Check the certificates now: a typo should stop the agent at once, not loop; a key
    // the agent may not read is a missing right (77), not a typo. An enrolling agent needs
    // only its CA now: it makes its key and obtains its certificate.
    let enroller = portolan_agent::enroll::Enroller::new(&config, &host_id);
    let checked = match &enroller {
        Some(_) => portolan_tls::server_only_client_config(&config.tls.ca).map(|_| ()),
        None => portolan_tls::client_config(&config.tls_files()).map(|_| ()),
    };
    checked.map_err(|e| {
        let exit = e.io_error_kind().and_then(Exit::of_io);
        Classified::new(exit.unwrap_or(Exit::Usage), e.to_string())
    })?;
    let facts = HostFacts {
        host_id: host_id.clone(),
        hostname: config.resolve_hostname(),
        kernel: portolan_agent::config::read_trimmed(
            &config.proc_root.join("sys/kernel/osrelease"),
        )
        .unwrap_or_default(),
        os: portolan_agent::config::os_pretty_name(),
    };
    tracing::info!(host_id = %host_id, collector = %config.collector.endpoint, interval = ?config.scan_interval, "agent starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        if let Some(addr) = config.metrics.listen_addr() {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                usage(format!(
                    "cannot serve metrics on {addr}: {e} (change `metrics.listen`)"
                ))
            })?;
            let addr = listener.local_addr().unwrap_or(addr);
            tracing::info!(listen = %addr, "serving /metrics, /healthz and /readyz");
            let mut stop = stopped.clone();
            tokio::spawn(portolan_agent::metrics::serve(listener, async move {
                let _ = stop.changed().await;
            }));
        }
        portolan_agent::metrics::global().set_tls_files(config.tls_files());
        if let Some(enroller) = enroller {
            let mut stop = stopped.clone();
            if !enroller.obtain(&mut stop).await {
                return Ok(());
            }
            tokio::spawn(enroller.maintain(stopped.clone()));
        }
        stream::run(config, facts, stopped)
            .await
            .map_err(anyhow::Error::from)
    })?;
    tracing::info!("agent stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn scan(args: &ScanArgs) -> anyhow::Result<()> {
    let mut scanner = Scanner::new(ScanOptions {
        attribute_processes: !args.no_processes,
        namespaces: if args.all_namespaces {
            Namespaces::All
        } else {
            Namespaces::Own
        },
        ..ScanOptions::default()
    });
    let scan = scanner.scan().context("cannot scan this host's sockets")?;
    let view = View {
        listening_only: args.listening,
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match args.output {
        OutputFormat::Table => {
            output::write_table(&mut out, &scan, view).context("cannot write to stdout")?;
            for warning in &scan.warnings {
                eprintln!("warning: {warning}");
            }
        }
        OutputFormat::Json => {
            output::write_json(&mut out, &scan, view).context("cannot write to stdout")?;
        }
    }
    out.flush().context("cannot write to stdout")?;
    Ok(())
}

/// A closed stdout (`portolan-agent scan | head`) is how the reader says it has enough.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
