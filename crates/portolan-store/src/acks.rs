//! Acknowledgements of findings: an admin decided a finding needs no action, for a
//! while or until its status changes. The latest row per fingerprint wins
//! (ReplacingMergeTree on the write's version); clearing writes a row with `acked` = 0.
//!
//! Whether an acknowledgement is *in force* depends on the finding and the time:
//! [`StoredAck::in_force`].

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use portolan_rules::lifecycle::{Finding, Status};
use serde::{Deserialize, Serialize};

use super::rows::to_nanos;
use super::schema::table;
use super::{Store, StoreError};

/// `finding_acks`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub(crate) struct FindingAckRow {
    pub(crate) fingerprint: String,
    pub(crate) acked: u8,
    pub(crate) acked_by: String,
    pub(crate) reason: String,
    pub(crate) until: u32,
    pub(crate) at: u32,
    pub(crate) status: String,
    pub(crate) episode: u32,
    pub(crate) version: u64,
}

/// Every acknowledgement row, latest per fingerprint.
pub(crate) const ALL_ACKS: &str = "SELECT ?fields FROM finding_acks FINAL ORDER BY fingerprint";
/// The latest acknowledgement row of one finding.
pub(crate) const ACK_BY_FINGERPRINT: &str =
    "SELECT ?fields FROM finding_acks FINAL WHERE fingerprint = ? ORDER BY version DESC LIMIT 1";

/// The latest acknowledgement (or clearing) of a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAck {
    /// The finding.
    pub fingerprint: String,
    /// False when this row cleared the acknowledgement.
    pub acked: bool,
    /// The identity URI of the admin certificate that wrote it.
    pub acked_by: String,
    /// Why.
    pub reason: String,
    /// Unix seconds until which it holds whatever the finding does; `None`: until the
    /// finding's status changes.
    pub until: Option<u64>,
    /// Unix seconds when it was written.
    pub at: u64,
    /// The finding's status when it was written.
    pub status: Status,
    /// The finding's reopen count when it was written.
    pub episode: u32,
    /// Orders writes (nanoseconds, strictly increasing per fingerprint).
    pub version: u64,
}

impl StoredAck {
    /// Whether it holds for `finding` at `now` (Unix seconds): acknowledged, and either
    /// before `until`, or (without `until`) the finding's status and reopen count are
    /// those it was acknowledged in.
    pub fn in_force(&self, finding: &Finding, now: u64) -> bool {
        if !self.acked {
            return false;
        }
        match self.until {
            Some(until) => now < until,
            None => finding.status == self.status && finding.reopened == self.episode,
        }
    }
}

impl From<FindingAckRow> for StoredAck {
    fn from(r: FindingAckRow) -> StoredAck {
        StoredAck {
            acked: r.acked != 0,
            until: (r.until != 0).then_some(u64::from(r.until)),
            at: u64::from(r.at),
            // An unknown status never equals the finding's: the acknowledgement lapses.
            status: Status::parse(&r.status).unwrap_or(Status::Resolved),
            episode: r.episode,
            version: r.version,
            fingerprint: r.fingerprint,
            acked_by: r.acked_by,
            reason: r.reason,
        }
    }
}

/// What to store for one finding: an acknowledgement or its clearing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// The finding as it is now (its status and reopen count are recorded).
    pub finding: Finding,
    /// True to acknowledge, false to clear.
    pub acked: bool,
    /// The identity URI of the admin certificate.
    pub acked_by: String,
    /// Why (empty when clearing).
    pub reason: String,
    /// Unix seconds; `None`: until the finding's status changes.
    pub until: Option<u64>,
}

fn secs(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Store {
    /// The latest acknowledgement row of every finding that has one (cleared ones too:
    /// see [`StoredAck::acked`]).
    pub async fn finding_acks(&self) -> Result<HashMap<String, StoredAck>, StoreError> {
        let rows: Vec<FindingAckRow> = self
            .fetch(table::FINDING_ACKS, self.client.query(ALL_ACKS))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.fingerprint.clone(), StoredAck::from(r)))
            .collect())
    }

    /// The latest acknowledgement row of one finding.
    pub async fn finding_ack(&self, fingerprint: &str) -> Result<Option<StoredAck>, StoreError> {
        let rows: Vec<FindingAckRow> = self
            .fetch(
                table::FINDING_ACKS,
                self.client.query(ACK_BY_FINGERPRINT).bind(fingerprint),
            )
            .await?;
        Ok(rows.into_iter().next().map(StoredAck::from))
    }

    /// Stores an acknowledgement or its clearing, after any previous one (its version
    /// is above the previous row's even when replicas' clocks disagree).
    pub async fn write_finding_ack(&self, record: &AckRecord) -> Result<StoredAck, StoreError> {
        let fingerprint = &record.finding.latest.fingerprint;
        let previous = self.finding_ack(fingerprint).await?;
        let now = SystemTime::now();
        let row = FindingAckRow {
            fingerprint: fingerprint.clone(),
            acked: u8::from(record.acked),
            acked_by: record.acked_by.clone(),
            reason: record.reason.clone(),
            until: record.until.map_or(0, secs),
            at: secs(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
            status: record.finding.status.as_str().to_string(),
            episode: record.finding.reopened,
            version: to_nanos(now).max(previous.map_or(0, |p| p.version.saturating_add(1))),
        };
        self.insert(table::FINDING_ACKS, std::slice::from_ref(&row))
            .await?;
        Ok(StoredAck::from(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portolan_rules::lifecycle::Match;

    fn finding(status: Status, reopened: u32) -> Finding {
        Finding {
            latest: Match {
                rule_id: "r".into(),
                host_id: "h".into(),
                fingerprint: "f".into(),
                severity: "high".into(),
                subject: "s".into(),
                evidence: String::new(),
            },
            status,
            first_seen: 1,
            last_seen: 2,
            resolved_at: 0,
            reopened,
        }
    }

    fn ack(until: Option<u64>) -> StoredAck {
        StoredAck {
            fingerprint: "f".into(),
            acked: true,
            acked_by: "spiffe://portolan/operator/admin/alice".into(),
            reason: "known".into(),
            until,
            at: 100,
            status: Status::Open,
            episode: 0,
            version: 1,
        }
    }

    #[test]
    fn an_ack_without_until_holds_while_the_status_is_unchanged() {
        let a = ack(None);
        assert!(a.in_force(&finding(Status::Open, 0), 1_000_000));
        assert!(!a.in_force(&finding(Status::Resolved, 0), 200));
        assert!(
            !a.in_force(&finding(Status::Open, 1), 200),
            "resolved and reopened since"
        );
    }

    #[test]
    fn an_ack_with_until_holds_until_then_whatever_happens() {
        let a = ack(Some(300));
        assert!(a.in_force(&finding(Status::Resolved, 2), 299));
        assert!(!a.in_force(&finding(Status::Open, 0), 300));
    }

    #[test]
    fn a_cleared_ack_never_holds() {
        let a = StoredAck {
            acked: false,
            ..ack(None)
        };
        assert!(!a.in_force(&finding(Status::Open, 0), 150));
    }
}
