//! `portolan ack FINGERPRINT` and `portolan unack FINGERPRINT`: acknowledging (silencing)
//! a finding, and clearing that. Admin certificates only; who acknowledged is the
//! certificate's identity, never something the command line says.

use std::io::Write;

use anyhow::{Context as _, Result};
use clap::Args;
use portolan_cli::config::Settings;
use portolan_cli::output::{self, Context, Format};
use portolan_cli::rows::FindingRow;
use portolan_cli::when;
use portolan_proto::v1 as pb;

use super::{CallError, connect, refused};
use crate::usage::usage;

/// `portolan ack FINGERPRINT --reason TEXT [--until TIME | --for DURATION]`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan ack a41f0c9d2e7b5a11 --reason 'firewalled upstream, TICKET-123' --for 4h\n  portolan ack a41f0c9d2e7b5a11 --reason 'decommissioned in December' --until 2026-12-01T00:00:00Z\n  portolan ack a41f0c9d2e7b5a11 --reason 'accepted risk, reviewed by security'\n\nThe fingerprint is in `portolan findings -o wide` (or -o json). Without --until or --for the\nacknowledgement holds until the finding's status changes (it resolves, or reopens). A new\nacknowledgement replaces the previous one; `portolan unack` clears it.\n\nAn admin certificate is needed (`portolan pki issue-operator --role admin`); the collector\nrecords its identity as who acknowledged. Exit status: 0 acknowledged, 1 no such finding,\n64 bad usage, 77 not an admin certificate."
)]
pub struct AckArgs {
    /// The finding's fingerprint.
    fingerprint: String,
    /// Why the finding needs no action now (at most 1,000 characters).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Until this instant: RFC 3339 (2026-12-01T00:00:00Z) or a Unix timestamp.
    #[arg(long, value_name = "TIME", conflicts_with = "for_")]
    until: Option<String>,
    /// For this long from now (4h, 7d).
    #[arg(long = "for", value_name = "DURATION")]
    for_: Option<String>,
}

/// `portolan unack FINGERPRINT`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  portolan unack a41f0c9d2e7b5a11\n\nClearing a finding without an acknowledgement succeeds and changes nothing. An admin\ncertificate is needed. Exit status: 0 cleared, 1 no such finding, 77 not an admin certificate."
)]
pub struct UnackArgs {
    /// The finding's fingerprint.
    fingerprint: String,
}

/// The longest reason the collector takes.
const MAX_REASON_CHARS: usize = 1000;

/// Runs `portolan ack`.
pub async fn ack(
    settings: &Settings,
    ctx: &Context,
    args: AckArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let now = when::unix(ctx.now);
    let reason = args.reason.trim();
    if reason.is_empty() {
        return Err(usage(
            "--reason is empty: say why the finding needs no action",
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(usage(format!(
            "--reason is {} characters long, over {MAX_REASON_CHARS}: shorten it and link to the details",
            reason.chars().count()
        )));
    }
    let until_unix = match (&args.until, &args.for_) {
        (Some(text), _) => {
            let until = when::parse_absolute(text).map_err(|e| usage(format!("--until: {e}")))?;
            if until <= now {
                return Err(usage(format!(
                    "--until {text} is not in the future; give a later time, or --for 4h"
                )));
            }
            until
        }
        (None, Some(text)) => {
            let d = when::parse_duration(text).map_err(|e| usage(format!("--for: {e}")))?;
            now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        }
        (None, None) => 0,
    };
    let request = pb::AckFindingRequest {
        fingerprint: args.fingerprint.clone(),
        reason: reason.to_string(),
        until_unix,
    };
    let mut client = connect(settings).await?;
    let answer = client
        .ack_finding(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| admin_refusal(&s, settings, "acknowledging"))?;
    print_finding(out, ctx, answer.finding)
}

/// Runs `portolan unack`.
pub async fn unack(
    settings: &Settings,
    ctx: &Context,
    args: UnackArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let request = pb::UnackFindingRequest {
        fingerprint: args.fingerprint.clone(),
    };
    let mut client = connect(settings).await?;
    let answer = client
        .unack_finding(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| admin_refusal(&s, settings, "clearing an acknowledgement"))?;
    print_finding(out, ctx, answer.finding)
}

/// The error of a refused admin call: a refusal names the admin certificate needed.
fn admin_refusal(status: &tonic::Status, settings: &Settings, what: &str) -> anyhow::Error {
    if status.code() == tonic::Code::PermissionDenied && !status.message().contains("admin") {
        return anyhow::Error::new(CallError::new(
            status.code(),
            format!(
                "{what} needs an admin certificate (`portolan pki issue-operator --role admin`); collector {} answered PermissionDenied: {}",
                settings.collector,
                status.message()
            ),
        ));
    }
    refused(status, settings)
}

/// Prints the finding as it is now: every field, one per line, for people (the record
/// has room for the reason); one object for programs.
fn print_finding(out: &mut dyn Write, ctx: &Context, finding: Option<pb::Finding>) -> Result<bool> {
    let finding = finding.context("the collector answered without the finding; check with `portolan findings --status all -o wide`")?;
    let row = FindingRow::from(&finding);
    let ctx = if ctx.format == Format::Table {
        Context {
            format: Format::Wide,
            ..ctx.clone()
        }
    } else {
        ctx.clone()
    };
    output::write_one(out, &ctx, &row)?;
    Ok(true)
}
