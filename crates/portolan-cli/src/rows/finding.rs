//! Findings: rows of `portolan findings`.

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::{enum_name, host_name};
use crate::output::{Column, Context, Paint, Record};

/// A finding of an exposure rule (JSON: an element of the array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingRow {
    /// Stable identity of the situation, the same across evaluations and reopenings.
    pub fingerprint: String,
    /// The rule.
    pub rule_id: String,
    /// The host it is about; empty for a fleet-wide finding.
    pub host_id: String,
    /// That host's hostname.
    pub hostname: String,
    /// `info`, `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// What it is about (`tcp 0.0.0.0:5432`).
    pub subject: String,
    /// `key=value` pairs.
    pub evidence: String,
    /// `open` or `resolved`.
    pub status: String,
    /// Unix seconds it was first seen.
    pub first_seen_unix: i64,
    /// Unix seconds it was last seen.
    pub last_seen_unix: i64,
    /// Unix seconds it was resolved; 0 while open.
    pub resolved_at_unix: i64,
    /// How many times it opened again after being resolved.
    pub reopened: u32,
    /// The acknowledgement in force; `null` when none.
    pub ack: Option<AckRow>,
}

/// An acknowledgement in force: an admin decided the finding needs no action now (JSON:
/// a finding's `ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckRow {
    /// The admin certificate's identity (`spiffe://portolan/operator/admin/alice`).
    pub acked_by: String,
    /// Why, as the admin wrote it.
    pub reason: String,
    /// Unix seconds until which it holds; 0: until the finding's status changes.
    pub until_unix: i64,
    /// Unix seconds when it was given.
    pub at_unix: i64,
}

impl From<&pb::FindingAck> for AckRow {
    fn from(a: &pb::FindingAck) -> Self {
        AckRow {
            acked_by: a.acked_by.clone(),
            reason: a.reason.clone(),
            until_unix: a.until_unix,
            at_unix: a.at_unix,
        }
    }
}

impl AckRow {
    /// The operator's name (`alice` of `spiffe://portolan/operator/admin/alice`), or
    /// the whole identity when it is not an operator's.
    pub fn name(&self) -> &str {
        self.acked_by
            .strip_prefix("spiffe://portolan/operator/")
            .and_then(|rest| rest.split_once('/'))
            .map_or(self.acked_by.as_str(), |(_, name)| name)
    }
}

impl From<&pb::Finding> for FindingRow {
    fn from(f: &pb::Finding) -> Self {
        FindingRow {
            fingerprint: f.fingerprint.clone(),
            rule_id: f.rule_id.clone(),
            host_id: f.host_id.clone(),
            hostname: f.hostname.clone(),
            severity: f.severity.clone(),
            subject: f.subject.clone(),
            evidence: f.evidence.clone(),
            status: enum_name::<pb::FindingStatus>(f.status),
            first_seen_unix: f.first_seen_unix,
            last_seen_unix: f.last_seen_unix,
            resolved_at_unix: f.resolved_at_unix,
            reopened: f.reopened,
            ack: f.ack.as_ref().map(AckRow::from),
        }
    }
}

impl FindingRow {
    /// Who acknowledged it: the operator's name for people, the identity for programs.
    fn acked_by(&self, ctx: &Context) -> String {
        match &self.ack {
            None => String::new(),
            Some(a) if ctx.machine() => a.acked_by.clone(),
            Some(a) => a.name().to_string(),
        }
    }

    /// Until when the acknowledgement holds: a time, or (people) the status change that
    /// ends it: `resolved` for an open finding, `reopened` for a resolved one.
    fn ack_until(&self, ctx: &Context) -> String {
        match &self.ack {
            None => String::new(),
            Some(a) if a.until_unix > 0 => ctx.deadline(a.until_unix),
            Some(_) if ctx.machine() => String::new(),
            Some(_) if self.status == "resolved" => "reopened".into(),
            Some(_) => "resolved".into(),
        }
    }
}

/// The colour of a severity.
pub fn severity_paint(severity: &str) -> Option<Paint> {
    match severity {
        "critical" => Some(Paint::BoldRed),
        "high" => Some(Paint::Red),
        "medium" => Some(Paint::Yellow),
        "low" => Some(Paint::Cyan),
        "info" => Some(Paint::Dim),
        _ => None,
    }
}

impl Record for FindingRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("SEVERITY", "severity", |r, ctx| {
            if ctx.machine() {
                r.severity.clone()
            } else {
                r.severity.to_uppercase()
            }
        })
        .paint(|r| severity_paint(&r.severity)),
        Column::<Self>::key("RULE", "rule_id", |r, _| r.rule_id.clone()),
        Column::<Self>::key("HOST", "host", |r, ctx| {
            match (host_name(&r.hostname, &r.host_id), ctx.machine()) {
                ("", false) => "(fleet)".into(),
                (name, _) => name.to_string(),
            }
        }),
        Column::<Self>::free("SUBJECT", "subject", 12, |r, _| r.subject.clone()),
        Column::<Self>::key("STATUS", "status", |r, _| r.status.clone())
            .paint(|r| (r.status == "resolved").then_some(Paint::Dim)),
        Column::<Self>::key("SINCE", "first_seen", |r, ctx| ctx.time(r.first_seen_unix)),
        Column::<Self>::key("ACKED BY", "acked_by", |r, ctx| r.acked_by(ctx))
            .paint(|r| r.ack.as_ref().map(|_| Paint::Cyan)),
        Column::<Self>::key("UNTIL", "ack_until", |r, ctx| r.ack_until(ctx)),
        Column::<Self>::free("EVIDENCE", "evidence", 8, |r, _| r.evidence.clone()),
        Column::<Self>::key("LAST SEEN", "last_seen", |r, ctx| {
            ctx.time(r.last_seen_unix)
        })
        .wide(),
        Column::<Self>::key("RESOLVED", "resolved_at", |r, ctx| {
            if r.resolved_at_unix > 0 {
                ctx.time(r.resolved_at_unix)
            } else {
                String::new()
            }
        })
        .wide(),
        Column::<Self>::key("REOPENED", "reopened", |r, _| r.reopened.to_string()).wide(),
        Column::<Self>::free("ACK REASON", "ack_reason", 12, |r, _| {
            r.ack.as_ref().map(|a| a.reason.clone()).unwrap_or_default()
        })
        .wide(),
        Column::<Self>::key("ACKED", "acked_at", |r, ctx| {
            r.ack
                .as_ref()
                .map(|a| ctx.time(a.at_unix))
                .unwrap_or_default()
        })
        .wide(),
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.host_id.clone()).wide(),
        Column::<Self>::key("FINGERPRINT", "fingerprint", |r, _| r.fingerprint.clone()).wide(),
    ];
}

/// A change to a finding as `portolan watch findings` prints it (JSON: one NDJSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingChangeRow {
    /// `opened`, `reopened`, `resolved`, `acked`, `unacked`; `current` for the listing
    /// that `--current` asks for first.
    pub change: String,
    /// Unix seconds when the collector noticed the change.
    pub observed_unix: i64,
    /// The finding after the change, as `portolan findings` prints it.
    pub finding: FindingRow,
}

impl FindingChangeRow {
    /// The row of a message; `None` for one that is not about a finding (the end of the
    /// initial listing).
    pub fn from_message(m: &pb::WatchFindingsResponse) -> Option<Self> {
        Some(FindingChangeRow {
            change: enum_name::<pb::FindingChange>(m.change),
            observed_unix: m.observed_unix,
            finding: FindingRow::from(m.finding.as_ref()?),
        })
    }
}

/// The colour of a change: opening loud, resolving quiet.
fn change_paint(change: &str) -> Option<Paint> {
    match change {
        "opened" | "reopened" => Some(Paint::Red),
        "resolved" => Some(Paint::Green),
        "acked" | "unacked" => Some(Paint::Cyan),
        _ => None,
    }
}

impl Record for FindingChangeRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("TIME", "observed", |r, ctx| ctx.instant(r.observed_unix)),
        Column::<Self>::key("CHANGE", "change", |r, _| r.change.clone())
            .paint(|r| change_paint(&r.change))
            .stream_width("reopened".len()),
        Column::<Self>::key("SEVERITY", "severity", |r, ctx| {
            if ctx.machine() {
                r.finding.severity.clone()
            } else {
                r.finding.severity.to_uppercase()
            }
        })
        .paint(|r| severity_paint(&r.finding.severity)),
        Column::<Self>::key("RULE", "rule_id", |r, _| r.finding.rule_id.clone()).stream_width(20),
        Column::<Self>::key("HOST", "host", |r, ctx| {
            match (
                host_name(&r.finding.hostname, &r.finding.host_id),
                ctx.machine(),
            ) {
                ("", false) => "(fleet)".into(),
                (name, _) => name.to_string(),
            }
        })
        .stream_width(12),
        Column::<Self>::free("SUBJECT", "subject", 12, |r, _| r.finding.subject.clone()),
        Column::<Self>::key("STATUS", "status", |r, _| r.finding.status.clone()).wide(),
        Column::<Self>::key("ACKED BY", "acked_by", |r, ctx| r.finding.acked_by(ctx)).wide(),
        Column::<Self>::key("UNTIL", "ack_until", |r, ctx| r.finding.ack_until(ctx)).wide(),
        Column::<Self>::free("ACK REASON", "ack_reason", 12, |r, _| {
            r.finding
                .ack
                .as_ref()
                .map(|a| a.reason.clone())
                .unwrap_or_default()
        })
        .wide(),
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.finding.host_id.clone()).wide(),
        Column::<Self>::key("FINGERPRINT", "fingerprint", |r, _| {
            r.finding.fingerprint.clone()
        })
        .wide(),
        Column::<Self>::free("EVIDENCE", "evidence", 8, |r, _| r.finding.evidence.clone()).wide(),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acknowledger_is_shown_by_name() {
        let ack = |by: &str| AckRow {
            acked_by: by.into(),
            reason: String::new(),
            until_unix: 0,
            at_unix: 0,
        };
        assert_eq!(
            ack("spiffe://portolan/operator/admin/alice").name(),
            "alice"
        );
        assert_eq!(
            ack("spiffe://example/other").name(),
            "spiffe://example/other"
        );
    }
}
