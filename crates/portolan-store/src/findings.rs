//! Findings of the exposure rules: the latest row per fingerprint (ReplacingMergeTree on
//! the evaluation's version), open or resolved, never deleted.

use clickhouse::Row;
use portolan_rules::lifecycle::{Finding, Match, Status};
use serde::{Deserialize, Serialize};

use super::schema::table;
use super::{Store, StoreError};

/// `findings`.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(crate) struct FindingRow {
    pub(crate) fingerprint: String,
    pub(crate) rule_id: String,
    pub(crate) host_id: String,
    pub(crate) severity: String,
    pub(crate) subject: String,
    pub(crate) evidence: String,
    pub(crate) status: String,
    pub(crate) first_seen: u32,
    pub(crate) last_seen: u32,
    pub(crate) resolved_at: u32,
    pub(crate) reopened: u32,
    pub(crate) version: u64,
}

/// One row of a compiled rule's answer (the finding contract of `portolan-rules`).
#[derive(Debug, Clone, Row, Deserialize)]
pub struct MatchRow {
    /// The rule.
    pub rule_id: String,
    /// The host.
    pub host_id: String,
    /// Stable identity.
    pub fingerprint: String,
    /// Severity.
    pub severity: String,
    /// Subject.
    pub subject: String,
    /// Evidence.
    pub evidence: String,
}

impl From<MatchRow> for Match {
    fn from(r: MatchRow) -> Match {
        Match {
            rule_id: r.rule_id,
            host_id: r.host_id,
            fingerprint: r.fingerprint,
            severity: r.severity,
            subject: r.subject,
            evidence: r.evidence,
        }
    }
}

/// Every finding, latest state.
pub(crate) const ALL_FINDINGS: &str = "SELECT ?fields FROM findings FINAL ORDER BY fingerprint";
/// One finding by fingerprint, latest state.
pub(crate) const FINDING_BY_FINGERPRINT: &str =
    "SELECT ?fields FROM findings FINAL WHERE fingerprint = ? LIMIT 1";

impl From<FindingRow> for Finding {
    fn from(r: FindingRow) -> Finding {
        Finding {
            status: Status::parse(&r.status).unwrap_or(Status::Open),
            first_seen: u64::from(r.first_seen),
            last_seen: u64::from(r.last_seen),
            resolved_at: u64::from(r.resolved_at),
            reopened: r.reopened,
            latest: Match {
                rule_id: r.rule_id,
                host_id: r.host_id,
                fingerprint: r.fingerprint,
                severity: r.severity,
                subject: r.subject,
                evidence: r.evidence,
            },
        }
    }
}

fn secs(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Store {
    /// Runs one compiled rule and returns its matches.
    pub async fn run_rule(&self, sql: &str) -> Result<Vec<Match>, StoreError> {
        let rows: Vec<MatchRow> = self.fetch(table::FINDINGS, self.client.query(sql)).await?;
        Ok(rows.into_iter().map(Match::from).collect())
    }

    /// Every finding, open or resolved, latest state.
    pub async fn findings(&self) -> Result<Vec<Finding>, StoreError> {
        let rows: Vec<FindingRow> = self
            .fetch(table::FINDINGS, self.client.query(ALL_FINDINGS))
            .await?;
        Ok(rows.into_iter().map(Finding::from).collect())
    }

    /// One finding by fingerprint, latest state; `None` when no finding has it.
    pub async fn finding(&self, fingerprint: &str) -> Result<Option<Finding>, StoreError> {
        let rows: Vec<FindingRow> = self
            .fetch(
                table::FINDINGS,
                self.client.query(FINDING_BY_FINGERPRINT).bind(fingerprint),
            )
            .await?;
        Ok(rows.into_iter().next().map(Finding::from))
    }

    /// Writes new states of findings; `version` orders evaluations (nanoseconds).
    pub async fn write_findings(
        &self,
        findings: &[Finding],
        version: u64,
    ) -> Result<u64, StoreError> {
        let rows: Vec<FindingRow> = findings
            .iter()
            .map(|f| FindingRow {
                fingerprint: f.latest.fingerprint.clone(),
                rule_id: f.latest.rule_id.clone(),
                host_id: f.latest.host_id.clone(),
                severity: f.latest.severity.clone(),
                subject: f.latest.subject.clone(),
                evidence: f.latest.evidence.clone(),
                status: f.status.as_str().to_string(),
                first_seen: secs(f.first_seen),
                last_seen: secs(f.last_seen),
                resolved_at: secs(f.resolved_at),
                reopened: f.reopened,
                version,
            })
            .collect();
        self.insert(table::FINDINGS, &rows).await
    }
}
