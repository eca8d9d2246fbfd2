//! The past of a host: `portolan history HOST` (its events over a time range) and
//! `portolan at TIME HOST` (what was open on it at an instant).

use std::io::Write;

use anyhow::Result;
use clap::Args;
use portolan_cli::config::Settings;
use portolan_cli::output::{Context, Format};
use portolan_cli::rows::{EventRow, SnapshotDoc};
use portolan_cli::when;
use portolan_proto::v1 as pb;

use super::{call, connect, cut, pages, parse_limit, print_list};
use crate::usage::usage;

/// `portolan history HOST`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan history db-1 --port 5432\n  portolan history db-1 --since 24h --flows\n  portolan history db-1 --from 2026-11-17T00:00:00Z --to 2026-11-17T06:00:00Z --oldest-first\n  portolan history db-1 --socket-key 'tcp 0.0.0.0:5432 0.0.0.0:0 #48213' -o json\n\nNewest first unless --oldest-first. TIME is RFC 3339 (2026-11-17T03:00:00Z), a Unix\ntimestamp, or how long ago (2h, 3d); the TIME column is what `portolan at` takes. KEY is\nthe KEY column of -o wide. Events are those of stored changes: a socket that opened and\nclosed between two scans of the agent is not there."
)]
pub struct HistoryArgs {
    /// The host's id.
    #[arg(value_name = "HOST")]
    host_id: String,
    /// Only this port: a socket's local port, a flow's service port.
    #[arg(long)]
    port: Option<u16>,
    /// Only this socket or flow, by its key (the KEY column of -o wide; `--key` is the
    /// certificate's key).
    #[arg(long = "socket-key", value_name = "KEY")]
    socket_key: Option<String>,
    /// Only the last DURATION (24h, 7d).
    #[arg(long, value_name = "DURATION", conflicts_with = "from")]
    since: Option<String>,
    /// From this instant on (inclusive).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Up to this instant (exclusive).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Flow events too (connections folded by endpoint).
    #[arg(long)]
    flows: bool,
    /// Oldest events first.
    #[arg(long)]
    oldest_first: bool,
    /// Most events.
    #[arg(long, default_value_t = 1_000, value_parser = parse_limit)]
    limit: u32,
}

/// `portolan at TIME HOST`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan at 2026-11-17T03:00:00Z db-1\n  portolan at 2h db-1 --flows\n  portolan at 1794884400 db-1 -o json | jq '.sockets[] | select(.state == \"listen\") | .local_port'\n\nTIME is RFC 3339 (2026-11-17T03:00:00Z), a Unix timestamp, or how long ago (2h, 3d). The\nfirst line says the instant and the last change stored at or before it; listeners come\nfirst. Host names and labels are those of now (they have no history). -o csv prints the\nsockets; for the flows at an instant as CSV, use `portolan flows --host HOST --at TIME -o csv`.\n\nExit status: 0, 1 when the host is unknown or had not reported yet at TIME."
)]
pub struct AtArgs {
    /// The instant.
    #[arg(value_name = "TIME")]
    time: String,
    /// The host's id.
    #[arg(value_name = "HOST")]
    host_id: String,
    /// Flows too.
    #[arg(long)]
    flows: bool,
}

/// An instant of the command line, not in the future.
fn past_instant(flag: &str, text: &str, now: i64) -> Result<i64> {
    let at = when::parse_instant(text, now).map_err(|e| usage(format!("{flag}{e}")))?;
    if at > now {
        return Err(usage(format!(
            "{flag}{text} is in the future; the collector only knows the past"
        )));
    }
    if at <= 0 {
        return Err(usage(format!("{flag}{text} is not after 1970")));
    }
    Ok(at)
}

/// Runs `portolan history`.
pub async fn history(
    settings: &Settings,
    ctx: &Context,
    args: HistoryArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let now = when::unix(ctx.now);
    let from = match (&args.since, &args.from) {
        (Some(since), _) => {
            let d = when::parse_duration(since).map_err(|e| usage(format!("--since: {e}")))?;
            now.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .max(1)
        }
        (None, Some(from)) => past_instant("--from ", from, now)?,
        (None, None) => 0,
    };
    let to = match &args.to {
        Some(to) => when::parse_instant(to, now).map_err(|e| usage(format!("--to: {e}")))?,
        None => 0,
    };
    if to > 0 && to <= from {
        return Err(usage(format!(
            "--to {} is not after the start {}; the range is [start, end)",
            when::rfc3339(to),
            when::rfc3339(from)
        )));
    }
    let request = pb::ListEventsRequest {
        host_id: args.host_id.clone(),
        from_unix: from,
        to_unix: to,
        port: args.port.map_or(0, u32::from),
        key: args.socket_key.clone().unwrap_or_default(),
        include_flows: args.flows,
        order: if args.oldest_first {
            pb::EventOrder::OldestFirst
        } else {
            pb::EventOrder::NewestFirst
        } as i32,
        ..Default::default()
    };
    let client = connect(settings).await?;
    let found = pages(settings, request, args.limit, |r| {
        let mut c = client.clone();
        async move { c.list_events(r).await }
    })
    .await?;
    let rows: Vec<EventRow> = found.rows.iter().map(EventRow::from).collect();
    print_list(
        out,
        ctx,
        &rows,
        &format!("no events of host `{}` matched", args.host_id),
    )?;
    if found.more {
        cut("events", args.limit);
    }
    Ok(true)
}

/// Runs `portolan at`.
pub async fn at(
    settings: &Settings,
    ctx: &Context,
    args: AtArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let now = when::unix(ctx.now);
    let at = past_instant("", &args.time, now)?;
    if args.flows && ctx.format == Format::Csv {
        return Err(usage(format!(
            "-o csv prints one table, the sockets; for the flows use `portolan flows --host {} --at {} -o csv`",
            args.host_id, args.time
        )));
    }
    let mut client = connect(settings).await?;
    let request = pb::GetSnapshotRequest {
        host_id: args.host_id.clone(),
        at_unix: at,
    };
    let r = call(client.get_snapshot(request).await, settings)?;
    let doc = SnapshotDoc::new(&args.host_id, at, args.flows, &r);
    doc.write(out, ctx)?;
    if doc.truncated {
        eprintln!("(more than 100,000 sockets or flows: the lists are cut)");
    }
    if doc.seq == 0 {
        if ctx.machine() {
            eprintln!(
                "host `{}` had not reported yet at {}",
                args.host_id,
                when::rfc3339(at)
            );
        }
        return Ok(false);
    }
    Ok(true)
}
