//! Gaps in a host's history: changes an agent folded into one snapshot because its spool
//! filled up while no collector was reachable. History between `from` and `to` holds
//! their net effect at `to`, not each change; a gap row says so, so that nobody reads the
//! quiet stretch as "nothing happened".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::rows::to_datetime;
use super::schema::table;
use super::{Store, StoreError};

/// `spool_gaps`: one row per gap, keyed by host and the seq of the snapshot that closed it
/// (a replayed snapshot writes the same key again: ReplacingMergeTree keeps one).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub(crate) struct SpoolGapRow {
    pub(crate) host_id: String,
    pub(crate) seq: u64,
    pub(crate) gap_from: u32,
    pub(crate) gap_to: u32,
    pub(crate) dropped_changes: u64,
    pub(crate) received_at: u32,
}

const GAPS_OF_HOST: &str = "SELECT ?fields FROM spool_gaps FINAL WHERE host_id = ? ORDER BY seq";

/// A gap in a host's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolGap {
    /// The snapshot that closed it.
    pub seq: u64,
    /// Scan time of the first change folded away.
    pub from: SystemTime,
    /// Scan time of the snapshot that holds their net effect.
    pub to: SystemTime,
    /// How many deltas were folded.
    pub dropped_changes: u64,
}

impl Store {
    /// Records a gap closed by the snapshot `seq` of `host_id`. Written before the
    /// snapshot itself, so that a crash in between leaves the gap (rewritten on replay)
    /// rather than a snapshot without it.
    pub async fn write_spool_gap(&self, host_id: &str, gap: &SpoolGap) -> Result<(), StoreError> {
        let row = SpoolGapRow {
            host_id: host_id.to_string(),
            seq: gap.seq,
            gap_from: to_datetime(gap.from),
            gap_to: to_datetime(gap.to),
            dropped_changes: gap.dropped_changes,
            received_at: to_datetime(SystemTime::now()),
        };
        self.insert(table::SPOOL_GAPS, &[row]).await?;
        Ok(())
    }

    /// The gaps of a host, oldest first.
    pub async fn spool_gaps(&self, host_id: &str) -> Result<Vec<SpoolGap>, StoreError> {
        let rows: Vec<SpoolGapRow> = self
            .fetch(
                table::SPOOL_GAPS,
                self.client.query(GAPS_OF_HOST).bind(host_id),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SpoolGap {
                seq: r.seq,
                from: UNIX_EPOCH + Duration::from_secs(u64::from(r.gap_from)),
                to: UNIX_EPOCH + Duration::from_secs(u64::from(r.gap_to)),
                dropped_changes: r.dropped_changes,
            })
            .collect())
    }
}
