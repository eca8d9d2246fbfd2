//! `portolan watch findings` and `portolan watch host HOST`: changes as they happen, a
//! line each, until Ctrl-C (exit 0). A stream that breaks is not resumed: the command
//! says so and exits 69, and the caller decides (`watch host --after SEQ` resumes).

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use portolan_cli::config::Settings;
use portolan_cli::output::Context;
use portolan_cli::output::stream::Lines;
use portolan_cli::rows::{EventRow, FindingChangeRow};
use portolan_cli::when;
use portolan_proto::v1 as pb;

use super::{CallError, HostArgs, call, connect};
use crate::usage::usage;

/// `portolan watch`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan watch findings --severity high\n  portolan watch host db-1 --flows\n  portolan watch findings -o json | jq -c 'select(.change == \"opened\")'\n\nA line per change as it arrives (-o json: one JSON object per line). Ctrl-C ends (exit 0).\nWhen the stream breaks, the command exits 69 instead of reconnecting."
)]
pub struct WatchArgs {
    #[command(subcommand)]
    what: WatchCommand,
}

#[derive(Debug, Subcommand)]
enum WatchCommand {
    /// Finding changes as they happen: opened, reopened, resolved, acked, unacked.
    Findings(WatchFindingsArgs),
    /// A host's socket (and flow) events as they are stored.
    Host(WatchHostArgs),
}

/// `portolan watch findings`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan watch findings\n  portolan watch findings --severity high -l env=prod --current\n  portolan watch findings -o json >> findings.ndjson\n\nEach line: when the collector noticed the change, the change (opened, reopened, resolved,\nacked, unacked; `current` for the listing --current asks for), severity, rule, host and\nsubject; -o wide adds the status, the acknowledgement, the fingerprint and the evidence.\n-o json prints one object per line: {\"change\", \"observed_unix\", \"finding\"}, the finding as\n`portolan findings -o json` prints it. Ctrl-C ends (exit 0); a broken stream exits 69."
)]
pub struct WatchFindingsArgs {
    #[command(flatten)]
    hosts: HostArgs,
    /// Only this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Lowest severity: info, low, medium, high, critical.
    #[arg(long)]
    severity: Option<String>,
    /// First list every current finding (change `current`), then the changes.
    #[arg(long)]
    current: bool,
    /// How often the collector looks for changes (1s to 60s) [default: the collector's, 5s].
    #[arg(long, value_name = "DURATION")]
    poll: Option<String>,
}

/// `portolan watch host HOST`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan watch host db-1\n  portolan watch host db-1 --flows -o wide\n  portolan watch host db-1 -o json | jq -c 'select(.kind == \"added\")'\n  portolan watch host db-1 --after 4211\n\nEach line is an event as `portolan history` prints it. -o json prints one object per line.\nCtrl-C ends (exit 0); a broken stream exits 69: resume it with --after and the last SEQ\n(-o wide or -o json shows it)."
)]
pub struct WatchHostArgs {
    /// The host's id.
    #[arg(value_name = "HOST")]
    host_id: String,
    /// Flow events too.
    #[arg(long)]
    flows: bool,
    /// First the events of the changes after this seq (resuming a watch); default: only
    /// what is stored from now on.
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// How often the collector looks for changes (1s to 60s) [default: the collector's, 2s].
    #[arg(long, value_name = "DURATION")]
    poll: Option<String>,
}

/// `--poll` in milliseconds; 0 (the collector's default) when absent.
fn poll_ms(poll: Option<&str>) -> Result<u32> {
    let Some(text) = poll else { return Ok(0) };
    let d = when::parse_duration(text).map_err(|e| usage(format!("--poll: {e}")))?;
    if d > Duration::from_secs(60) {
        return Err(usage(format!(
            "--poll {text} is over 60s, the longest the collector takes"
        )));
    }
    Ok(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
}

/// The next message of a stream; a stream that ends or fails is an error with code
/// UNAVAILABLE (exit 69), whatever the collector's status.
fn received<T>(
    message: Result<Option<T>, tonic::Status>,
    settings: &Settings,
    what: &str,
) -> Result<T> {
    match message {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(anyhow::Error::new(CallError::new(
            tonic::Code::Unavailable,
            format!(
                "collector {} ended the {what} watch; run the command again to go on watching",
                settings.collector
            ),
        ))),
        Err(status) => Err(anyhow::Error::new(CallError::new(
            tonic::Code::Unavailable,
            format!(
                "the {what} watch broke: collector {} answered {:?}: {}; run the command again to go on watching",
                settings.collector,
                status.code(),
                status.message()
            ),
        ))),
    }
}

/// A future that resolves at Ctrl-C (SIGINT) or SIGTERM. The handlers are installed
/// now, not when the future is first polled, so that no signal slips between.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use anyhow::Context as _;
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt =
            signal(SignalKind::interrupt()).context("cannot handle Ctrl-C (SIGINT)")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Runs `portolan watch …`.
pub async fn watch(
    settings: &Settings,
    ctx: &Context,
    args: WatchArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    match args.what {
        WatchCommand::Findings(args) => findings(settings, ctx, args, out).await,
        WatchCommand::Host(args) => host(settings, ctx, args, out).await,
    }
}

async fn findings(
    settings: &Settings,
    ctx: &Context,
    args: WatchFindingsArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let request = pb::WatchFindingsRequest {
        hosts: Some(args.hosts.selector()),
        rule_id: args.rule.unwrap_or_default(),
        min_severity: args.severity.unwrap_or_default(),
        initial: args.current,
        poll_interval_ms: poll_ms(args.poll.as_deref())?,
    };
    let mut client = connect(settings).await?;
    let mut stream = call(client.watch_findings(request).await, settings)?;
    let mut lines = Lines::<FindingChangeRow>::new();
    lines.start(out, ctx)?;
    let stop = stop_signal()?;
    tokio::pin!(stop);
    eprintln!("watching findings (Ctrl-C to stop)");
    loop {
        let message = tokio::select! {
            () = &mut stop => return Ok(true),
            m = stream.message() => m,
        };
        let m = received(message, settings, "findings")?;
        if let Some(row) = FindingChangeRow::from_message(&m) {
            lines.write(out, ctx, &row)?;
        }
    }
}

async fn host(
    settings: &Settings,
    ctx: &Context,
    args: WatchHostArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let request = pb::WatchHostRequest {
        host_id: args.host_id.clone(),
        after_seq: args.after.unwrap_or(0),
        include_flows: args.flows,
        poll_interval_ms: poll_ms(args.poll.as_deref())?,
    };
    let mut client = connect(settings).await?;
    let mut stream = call(client.watch_host(request).await, settings)?;
    let mut lines = Lines::<EventRow>::new();
    lines.start(out, ctx)?;
    let stop = stop_signal()?;
    tokio::pin!(stop);
    eprintln!("watching host `{}` (Ctrl-C to stop)", args.host_id);
    loop {
        let message = tokio::select! {
            () = &mut stop => return Ok(true),
            m = stream.message() => m,
        };
        for event in &received(message, settings, "host")?.events {
            lines.write(out, ctx, &EventRow::from(event))?;
        }
    }
}
