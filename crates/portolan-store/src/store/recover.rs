//! Recovery of a host whose write was interrupted: uncommitted rows removed, committed
//! current rows restored.

use std::collections::{BTreeMap, HashSet};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use clickhouse::sql::Identifier;

use crate::rows::ReportRow;
use crate::schema::table;
use crate::tracked::{Flows, Sockets, Tracked};
use crate::{Recovery, Store, StoreError, empty_host_row, queries, stamp};

use super::ROLLBACK_DEADLINE;

impl Store {
    /// Removes the rows of uncommitted seqs (written by a change whose commit marker
    /// was never written) and returns the last committed seq. Cheap when there is
    /// nothing to do (one query). Call it when a host's stream starts.
    ///
    /// History rows of uncommitted seqs are deleted. Current rows are deleted too, and
    /// where the committed version of a socket or flow had already been merged away with
    /// the uncommitted one, it is restored from its latest committed history row.
    pub async fn recover(&self, host_id: &str) -> Result<Recovery, StoreError> {
        let last_seq = self.last_seq(host_id).await?;
        let mut uncommitted = 0;
        for t in queries::SEQ_TABLES {
            uncommitted += self.count_uncommitted(t, host_id, last_seq).await?;
        }
        if uncommitted == 0 {
            self.dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(host_id);
            return Ok(Recovery {
                last_seq,
                rolled_back_rows: 0,
                restored_rows: 0,
            });
        }
        tracing::warn!(
            host_id,
            last_seq,
            rows = uncommitted,
            "rolling back rows of an uncommitted write"
        );
        let socket_keys = self.uncommitted_keys::<Sockets>(host_id, last_seq).await?;
        let flow_keys = self.uncommitted_keys::<Flows>(host_id, last_seq).await?;
        let host_touched = self
            .count_uncommitted(table::HOSTS, host_id, last_seq)
            .await?
            > 0;
        for t in queries::SEQ_TABLES {
            let _turn = self.turn().await;
            self.client
                .query(queries::ROLLBACK)
                .bind(Identifier(t))
                .bind(host_id)
                .bind(last_seq)
                .execute()
                .await
                .map_err(self.map_err("roll back", t))?;
        }
        let deadline = Instant::now() + ROLLBACK_DEADLINE;
        for t in queries::SEQ_TABLES {
            while self.count_uncommitted(t, host_id, last_seq).await? > 0 {
                if Instant::now() > deadline {
                    return Err(StoreError::RollbackTimeout {
                        host_id: host_id.to_string(),
                        secs: ROLLBACK_DEADLINE.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut restored = 0;
        restored += self
            .restore::<Sockets>(host_id, last_seq, &socket_keys)
            .await?;
        restored += self.restore::<Flows>(host_id, last_seq, &flow_keys).await?;
        if host_touched {
            restored += self.restore_host(host_id, last_seq).await?;
        }
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(host_id);
        Ok(Recovery {
            last_seq,
            rolled_back_rows: uncommitted,
            restored_rows: restored,
        })
    }

    pub(crate) async fn count_uncommitted(
        &self,
        table: &'static str,
        host_id: &str,
        last_seq: u64,
    ) -> Result<u64, StoreError> {
        let _turn = self.turn().await;
        self.client
            .query(queries::COUNT_UNCOMMITTED)
            .bind(Identifier(table))
            .bind(host_id)
            .bind(last_seq)
            .fetch_one::<u64>()
            .await
            .map_err(self.map_err("read", table))
    }

    /// The keys of `K` that rows above `last_seq` touch.
    async fn uncommitted_keys<K: Tracked>(
        &self,
        host_id: &str,
        last_seq: u64,
    ) -> Result<Vec<String>, StoreError> {
        let query = self.client.query(K::UNCOMMITTED_KEYS);
        self.fetch(K::CURRENT, query.bind(host_id).bind(last_seq))
            .await
    }

    /// Restores the current rows of `keys` that the rollback removed, from their latest
    /// committed history rows.
    async fn restore<K: Tracked>(
        &self,
        host_id: &str,
        last_seq: u64,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let surviving: HashSet<String> = self
            .rows_by_key::<K>(host_id, keys)
            .await?
            .into_keys()
            .collect();
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !surviving.contains(*k))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let events: Vec<K::Event> = self
            .fetch(
                K::EVENTS,
                self.client
                    .query(K::LAST_EVENTS)
                    .bind(host_id)
                    .bind(last_seq)
                    .bind(&missing)
                    .with_setting("max_query_size", queries::MAX_QUERY_SIZE),
            )
            .await?;
        // Ordered by seq: the last row per key is its committed content.
        let latest: BTreeMap<String, K::Event> = events
            .into_iter()
            .map(|e| (K::event_key(&e).to_string(), e))
            .collect();
        let rows: Vec<K::Current> = latest.into_values().map(K::current_after).collect();
        self.insert(K::CURRENT, &rows).await
    }

    pub(crate) async fn restore_host(
        &self,
        host_id: &str,
        last_seq: u64,
    ) -> Result<u64, StoreError> {
        let latest = self.latest_host_row(host_id).await?;
        let facts: Option<ReportRow> = self
            .fetch(
                table::HOST_REPORTS,
                self.client
                    .query(queries::LAST_HOST_FACTS)
                    .bind(host_id)
                    .bind(last_seq),
            )
            .await?
            .into_iter()
            .next();
        let want = facts.as_ref().map_or(0, |r| r.seq);
        if latest.as_ref().map(|h| h.seq) == Some(want) || (latest.is_none() && facts.is_none()) {
            return Ok(0);
        }
        let mut row = latest.clone().unwrap_or_else(|| empty_host_row(host_id));
        row.set_facts(facts.map(|r| r.facts()).unwrap_or_default());
        row.seq = want;
        stamp(&mut row, latest.as_ref());
        self.insert(table::HOSTS, &[row]).await
    }
}
