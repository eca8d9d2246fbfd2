//! `portolan rules test`: what a rule file would have found over stored history.

use std::io::{self, Write};
use std::time::Duration;

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::finding::severity_paint;
use super::{host_name, plural};
use crate::output::{self, Column, Context, Format, Paint, Record, age_text};

/// One finding the dry run found (JSON: an element of the report's `findings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestedFindingRow {
    /// The rule.
    pub rule_id: String,
    /// The host it is about; empty for a fleet-wide finding.
    pub host_id: String,
    /// That host's hostname; empty when the host is unknown now.
    pub hostname: String,
    /// The fingerprint the finding would have (as `portolan findings` shows it).
    pub fingerprint: String,
    /// `info` … `critical`.
    pub severity: String,
    /// What it is about, at the last instant it matched.
    pub subject: String,
    /// `key=value` pairs, at the last instant it matched.
    pub evidence: String,
    /// The first instant it matched, Unix seconds.
    pub first_unix: i64,
    /// The last instant it matched, Unix seconds.
    pub last_unix: i64,
    /// At how many instants it matched.
    pub instants: u32,
    /// How many times it would have opened (runs of consecutive instants).
    pub episodes: u32,
    /// It matched at the last instant (now): it would be open now.
    pub open_now: bool,
}

impl From<&pb::TestedFinding> for TestedFindingRow {
    fn from(f: &pb::TestedFinding) -> Self {
        TestedFindingRow {
            rule_id: f.rule_id.clone(),
            host_id: f.host_id.clone(),
            hostname: f.hostname.clone(),
            fingerprint: f.fingerprint.clone(),
            severity: f.severity.clone(),
            subject: f.subject.clone(),
            evidence: f.evidence.clone(),
            first_unix: f.first_unix,
            last_unix: f.last_unix,
            instants: f.instants,
            episodes: f.episodes,
            open_now: f.open_now,
        }
    }
}

impl Record for TestedFindingRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("RULE", "rule_id", |r, _| r.rule_id.clone()),
        Column::<Self>::key("SEVERITY", "severity", |r, ctx| {
            if ctx.machine() {
                r.severity.clone()
            } else {
                r.severity.to_uppercase()
            }
        })
        .paint(|r| severity_paint(&r.severity)),
        Column::<Self>::key("HOST", "host", |r, ctx| {
            match (host_name(&r.hostname, &r.host_id), ctx.machine()) {
                ("", false) => "(fleet)".into(),
                (name, _) => name.to_string(),
            }
        }),
        Column::<Self>::free("SUBJECT", "subject", 12, |r, _| r.subject.clone()),
        Column::<Self>::key("FIRST", "first", |r, ctx| ctx.time(r.first_unix)),
        Column::<Self>::key("LAST", "last", |r, ctx| ctx.time(r.last_unix)),
        Column::<Self>::key("OPENED", "episodes", |r, ctx| {
            if ctx.machine() {
                r.episodes.to_string()
            } else {
                format!("{}×", r.episodes)
            }
        }),
        Column::<Self>::key("INSTANTS", "instants", |r, _| r.instants.to_string()),
        Column::<Self>::key("OPEN NOW", "open_now", |r, ctx| {
            match (ctx.machine(), r.open_now) {
                (true, open) => open.to_string(),
                (false, true) => "yes".into(),
                (false, false) => "no".into(),
            }
        })
        .paint(|r| r.open_now.then_some(Paint::Red)),
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.host_id.clone()).wide(),
        Column::<Self>::key("FINGERPRINT", "fingerprint", |r, _| r.fingerprint.clone()).wide(),
        Column::<Self>::free("EVIDENCE", "evidence", 8, |r, _| r.evidence.clone()).wide(),
    ];
}

/// A rule whose query the collector refused (JSON: an element of `failures`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleFailureRow {
    /// The rule.
    pub rule_id: String,
    /// The collector's message.
    pub message: String,
}

/// The whole answer of `portolan rules test` (JSON: one object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RulesTestReport {
    /// The rule file, as named on the command line.
    pub file: String,
    /// How many rules it holds.
    pub rules: u32,
    /// How many instants each rule was evaluated at.
    pub evaluations: usize,
    /// How far back the first instant is, seconds (as asked).
    pub since_seconds: u64,
    /// Seconds between two instants (as the collector chose them; 0 with one instant).
    pub step_seconds: u64,
    /// The first and last instants, Unix seconds (the last is now).
    pub first_instant_unix: i64,
    /// See `first_instant_unix`.
    pub last_instant_unix: i64,
    /// What would have fired, one entry per finding, by first instant.
    pub findings: Vec<TestedFindingRow>,
    /// Rules the collector could not run: their findings are missing.
    pub failures: Vec<RuleFailureRow>,
}

impl RulesTestReport {
    /// The report of an answer to a request for `file` over `since`.
    pub fn new(file: &str, since: Duration, r: &pb::TestRulesResponse) -> Self {
        let first = r.instants_unix.first().copied().unwrap_or(0);
        let last = r.instants_unix.last().copied().unwrap_or(0);
        let step = match r.instants_unix.as_slice() {
            [a, b, ..] => u64::try_from(b - a).unwrap_or(0),
            _ => 0,
        };
        RulesTestReport {
            file: file.to_string(),
            rules: r.rules,
            evaluations: r.instants_unix.len(),
            since_seconds: since.as_secs(),
            step_seconds: step,
            first_instant_unix: first,
            last_instant_unix: last,
            findings: r.findings.iter().map(TestedFindingRow::from).collect(),
            failures: r
                .failures
                .iter()
                .map(|f| RuleFailureRow {
                    rule_id: f.rule_id.clone(),
                    message: f.message.clone(),
                })
                .collect(),
        }
    }

    /// Findings that would be open now.
    pub fn open_now(&self) -> usize {
        self.findings.iter().filter(|f| f.open_now).count()
    }

    /// `3 rules × 168 evaluations over 7d: 2 findings would have fired (1 open now)`.
    pub fn summary(&self) -> String {
        format!(
            "{} × {} over {}: {} would have fired ({} open now)",
            plural(self.rules as usize, "rule", "rules"),
            plural(self.evaluations, "evaluation", "evaluations"),
            age_text(Duration::from_secs(self.since_seconds)),
            plural(self.findings.len(), "finding", "findings"),
            self.open_now()
        )
    }

    /// Prints the report: for people, the table of findings and the summary line (the
    /// summary alone goes to `err` when nothing fired); for programs, the JSON document
    /// or the CSV of findings on `out`, the summary on `err`. Rule failures always go
    /// to `err`.
    pub fn write(&self, out: &mut dyn Write, err: &mut dyn Write, ctx: &Context) -> io::Result<()> {
        match ctx.format {
            Format::Json => output::write_document(out, self)?,
            Format::Csv => output::write_list(out, ctx, &self.findings)?,
            Format::Table | Format::Wide if self.findings.is_empty() => {}
            Format::Table | Format::Wide => {
                output::write_list(out, ctx, &self.findings)?;
                writeln!(out)?;
                writeln!(out, "{}", self.summary())?;
            }
        }
        if ctx.machine() || self.findings.is_empty() {
            writeln!(err, "{}", self.summary())?;
        }
        for f in &self.failures {
            writeln!(
                err,
                "rule `{}`: the collector could not run its query, its findings are missing: {}",
                f.rule_id, f.message
            )?;
        }
        Ok(())
    }
}
