//! Findings: rows of `portolan findings`.

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::{enum_name, host_name};
use crate::output::{Column, Paint, Record};

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
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.host_id.clone()).wide(),
        Column::<Self>::key("FINGERPRINT", "fingerprint", |r, _| r.fingerprint.clone()).wide(),
    ];
}
