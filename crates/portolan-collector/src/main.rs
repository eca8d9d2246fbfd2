//! `portolan-collector`: the collector binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use portolan_collector::config::CollectorConfig;
use portolan_collector::evaluate::{CompiledRule, Evaluator};
use portolan_collector::notify::Notifier;
use portolan_config::exit::{self, Classified, EXIT_USAGE, Exit};
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_store::{Store, StoreError};
use tracing::info;

/// Thousands of streams building rows on two runtime threads and freeing them on the
/// batch task spent a third of the collector's ingest CPU in glibc's malloc
/// (`malloc_consolidate`, arena locks) and fragmented its arenas; with mimalloc, memory
/// per connected agent went from 306 KiB to 210 KiB in the fan-in benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives socket inventories from Portolan agents over mutual TLS and stores them in
/// ClickHouse.
#[derive(Debug, Parser)]
#[command(
    name = "portolan-collector",
    version,
    after_help = "Example:\n  portolan-collector --config /etc/portolan/collector.toml\n  PORTOLAN_CLICKHOUSE_URL=http://clickhouse:8123 portolan-collector --listen 0.0.0.0:7443"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "PORTOLAN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// ClickHouse HTTP URL (overrides `clickhouse.url`); empty runs a managed local server.
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// State directory (overrides `state_dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs on stderr (`PORTOLAN_LOG`); traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
    // is set. Held to the end of `main`: dropping it exports the last spans.
    let _telemetry = portolan_telemetry::init("portolan-collector");
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.print_config {
        // Secrets (passwords, header values) are never printed.
        return match portolan_config::to_toml(&config.redacted()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rules = if config.rules.evaluate {
        match portolan_collector::evaluate::load_rules(&config.rules.files) {
            Ok(rules) => rules,
            Err(problems) => {
                eprintln!("error: invalid rule files (see `rules.files`):\n{problems}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        Vec::new()
    };
    match runtime.block_on(run(config, rules)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::classify(e.chain()).code())
        }
    }
}

fn load_config(cli: &Cli) -> Result<CollectorConfig> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut flags = toml::Table::new();
    if let Some(listen) = &cli.listen {
        portolan_config::set_flag(&mut flags, "listen", listen.clone());
    }
    if let Some(url) = &cli.clickhouse_url {
        portolan_config::set_flag(&mut flags, "clickhouse.url", url.clone());
    }
    if let Some(dir) = &cli.state_dir {
        portolan_config::set_flag(&mut flags, "state_dir", dir.display().to_string());
    }
    let config: CollectorConfig =
        portolan_config::load(cli.config.as_deref(), &env, "PORTOLAN_", flags)?;
    if let Err(problems) = config.validate() {
        bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    Ok(config)
}

async fn run(config: CollectorConfig, rules: Vec<CompiledRule>) -> Result<()> {
    let name = if config.name.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "collector".into())
    } else {
        config.name.clone()
    };
    // Check the certificates and CRLs before anything slow starts.
    // A file the collector may not read is a missing right (77), else a mistake (64).
    let classify = |e: portolan_tls::TlsError| {
        let exit = e.io_error_kind().and_then(Exit::of_io);
        Classified::new(exit.unwrap_or(Exit::Usage), e)
    };
    portolan_tls::server_config(&config.tls_files())
        .map_err(classify)
        .context("cannot load the collector's TLS files (see `[tls]`)")?;
    if !config.tls.crls.is_empty() {
        let crls = portolan_tls::CrlSet::load(&config.tls.crls, &config.tls.ca)
            .map_err(classify)
            .context("cannot load the CRLs (see `tls.crls`)")?;
        portolan_tls::server_config_with_crls(&config.tls_files(), &crls)
            .map_err(classify)
            .context("cannot load the CRLs (see `tls.crls`)")?;
        info!(
            crls = crls.crls().len(),
            "CRLs loaded: their certificates are refused in the handshake and on every call"
        );
    }
    if let Some(revoked) = config.revoked_file() {
        portolan_tls::RevocationList::load(&revoked).context(
            "cannot load the revocation list (see `tls.revoked`; an empty file revokes nothing)",
        )?;
    }
    // And the notification receivers (CA files, system CAs).
    let notifier = notifier(&config)?;

    let mut managed = None;
    let url = if config.clickhouse.url.is_empty() {
        let options = ManagedOptions {
            state_dir: config.state_dir.clone(),
            binary: (!config.clickhouse.binary.is_empty())
                .then(|| PathBuf::from(&config.clickhouse.binary)),
        };
        let server = ManagedClickHouse::start(options)
            .await
            .context("cannot start the managed local ClickHouse")?;
        info!(url = %server.url(), "managed local clickhouse is up (set `clickhouse.url` to use your own server)");
        let url = server.url().to_string();
        // Tools on this machine (`portolan demo`, scripts) find the managed server here.
        let url_file = config.state_dir.join("clickhouse.url");
        std::fs::write(&url_file, format!("{url}\n"))
            .with_context(|| format!("cannot write {}", url_file.display()))?;
        managed = Some(server);
        url
    } else {
        config.clickhouse.url.clone()
    };
    let ch = config
        .clickhouse
        .store_config(url)
        .map_err(|e| {
            let exit = Exit::of_io(e.error.kind()).unwrap_or(Exit::Usage);
            Classified::new(exit, e)
        })
        .context("cannot read the ClickHouse password")?;
    let store = Store::connect(&ch)
        .await
        .map_err(|e| {
            let exit = match e {
                StoreError::Unreachable { .. } => Exit::Unavailable,
                // Something to configure: `[clickhouse.tls]` or the URL.
                StoreError::Tls { .. } | StoreError::TlsFile { .. } | StoreError::TlsSetup(_) => {
                    Exit::Usage
                }
                _ => Exit::Failure,
            };
            Classified::new(exit, e)
        })
        .context("cannot connect to ClickHouse")?
        .with_batching(config.clickhouse.batching());
    store
        .migrate()
        .await
        .context("cannot create or migrate the ClickHouse schema")?;
    if config.rules.evaluate {
        // A rule the server cannot run is refused now, not at 3 a.m.
        portolan_collector::evaluate::check_rules(&store, &rules)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("a rule does not run on this ClickHouse server; fix or remove it (`portolan rules check FILE --sql` shows its query)")?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another collector running? change `listen`)",
                config.listen
            )
        })?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    info!(listen = %local, collector = %name, "collector ready");
    let store = Arc::new(store);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Readiness (`/readyz`, gRPC health): ClickHouse answers and its schema is current.
    tokio::spawn({
        let store = store.clone();
        let url = ch.url.clone();
        let stopped = stopped.clone();
        async move { portolan_collector::health::watch_clickhouse(store, &url, stopped).await }
    });
    portolan_collector::metrics::global().set_tls_files(config.tls_files());
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    if let Some(addr) = config.metrics.listen_addr() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr} (change `metrics.listen`)"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        info!(listen = %addr, "serving /metrics, /healthz and /readyz");
        let mut stop = stopped.clone();
        tokio::spawn(portolan_collector::metrics::serve(listener, async move {
            let _ = stop.changed().await;
        }));
    }
    let evaluator = config.rules.evaluate.then(|| {
        let mut evaluator = Evaluator::new(store.clone(), rules);
        if let Some(notifier) = notifier {
            evaluator = evaluator.with_notifier(notifier);
        }
        tokio::spawn(evaluator.run(config.rules.interval, stopped.clone()))
    });
    let mut server_stop = stopped.clone();
    let result = portolan_collector::server::serve(&config, &name, store, listener, async move {
        let _ = server_stop.changed().await;
    })
    .await;
    if let Some(task) = evaluator {
        task.abort();
    }
    if let Some(server) = managed
        && let Err(e) = server.shutdown().await
    {
        tracing::warn!(error = %e, "the managed clickhouse did not stop cleanly");
    }
    result.context("collector server failed")?;
    info!("collector stopped");
    Ok(())
}

/// The notifier of `[notify]`, on the evaluating replica when it names receivers.
fn notifier(config: &CollectorConfig) -> Result<Option<Notifier>> {
    let receivers = config.notify.alertmanager.len() + config.notify.webhook.len();
    if receivers == 0 {
        return Ok(None);
    }
    if !config.rules.evaluate {
        info!(
            "`[notify]` names receivers but this replica does not evaluate rules (`rules.evaluate = false`): only the evaluating replica notifies"
        );
        return Ok(None);
    }
    Notifier::start(&config.notify, config.rules.interval)
        .map(Some)
        .context("cannot set up notifications (see `[notify]`)")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
}
