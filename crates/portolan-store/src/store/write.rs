//! The write path: Hello facts, changes and heartbeats of a host.

use std::collections::BTreeMap;
use std::time::SystemTime;

use portolan_core::{Delta, Inventory, ScanStats};

use crate::batch::Rows;
use crate::change::{Before, Change, KnownHost};
use crate::rows::HostRow;
use crate::schema::table;
use crate::tracked::{Flows, Sockets};
use crate::{
    ChangeKind, HostRecord, PendingWrite, Store, StoreError, WriteReceipt, hello_row, report_row,
};

impl Store {
    /// Records a host's Hello facts, keeping the stored host facts; `record.host` is
    /// used only when the host has no row yet (see [`HostRecord::host`]). For tools and
    /// tests that write a host outside a stream (a stream's Hello goes through
    /// [`crate::HostLedger::hello`]). Written with the changes of other streams (see
    /// [`crate::batch`]).
    pub async fn upsert_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.recover_if_dirty(&record.host_id).await?;
        let latest = self.latest_host_row(&record.host_id).await?;
        let row = hello_row(record, latest.as_ref());
        let rows = Rows {
            hosts: vec![row],
            ..Rows::default()
        };
        self.batcher.commit(&record.host_id, rows).await
    }

    /// Writes one `hosts` row now, outside any change: Hello facts that differ from the
    /// stored ones ([`crate::HostLedger::hello`]). The row keeps the seq of the change that
    /// set the host facts, so recovery never rolls it back.
    pub(crate) async fn write_host_row(&self, row: HostRow) -> Result<(), StoreError> {
        let host_id = row.host_id.clone();
        self.recover_if_dirty(&host_id).await?;
        let rows = Rows {
            hosts: vec![row],
            ..Rows::default()
        };
        self.batcher.commit(&host_id, rows).await
    }

    /// A snapshot's write, queued as one (see [`Store::submit_change_from`]): the host's
    /// Hello facts over `known` (its latest `hosts` row as [`Store::load_known`] read it)
    /// and `change` (a snapshot's difference from `prior`, the stored inventory). `known`
    /// becomes the host's latest row. The write path of [`crate::HostLedger::snapshot`].
    pub(crate) async fn submit_snapshot_from(
        &self,
        record: &HostRecord,
        change: &Change<'_>,
        prior: &Inventory,
        known: &mut KnownHost,
    ) -> Result<(WriteReceipt, PendingWrite), StoreError> {
        let host_id = change.host_id;
        self.refuse_if_dirty(host_id)?;
        let hello = hello_row(record, known.row.as_ref());
        let before = Before::from_inventory(prior, change.delta, Some(&hello));
        let (mut rows, mut receipt, facts) = change.rows(before);
        // The Hello row first: the change's own facts row, when it has one, is newer.
        rows.hosts.insert(0, hello.clone());
        receipt.hosts += 1;
        let pending = self.batcher.enqueue(host_id, rows).await?;
        known.row = Some(facts.unwrap_or(hello));
        Ok((receipt, pending))
    }

    /// Stores one change of a host: history rows, current rows, host facts when
    /// `delta.host` is set, and last the `host_reports` row that commits `seq`.
    ///
    /// `delta` must apply to the stored state ([`Store::load_current`]): the history is
    /// the sequence of deltas, and removed sockets and flows take their last-known
    /// processes from the stored rows, which this reads. A stream that holds its host's
    /// inventory writes through its [`crate::HostLedger`] instead, which reads nothing.
    /// This path is kept as the oracle the ledger is tested against.
    ///
    /// Idempotent: writing the same change again leaves what queries see unchanged.
    /// When it fails, the rows it wrote are rolled back before the host's next read or
    /// write (see [`Store::recover`]).
    pub async fn write_change(
        &self,
        host_id: &str,
        seq: u64,
        kind: ChangeKind,
        scanned_at: SystemTime,
        delta: &Delta,
        stats: &ScanStats,
    ) -> Result<WriteReceipt, StoreError> {
        self.recover_if_dirty(host_id).await?;
        let before = match self.read_before(host_id, kind, delta).await {
            Ok(before) => before,
            Err(e) => {
                self.batcher.writer().mark_dirty(host_id);
                return Err(e);
            }
        };
        let change = Change::new(host_id, seq, kind, scanned_at, delta, stats);
        self.commit_change(&change, before).await.map(|(r, _)| r)
    }

    /// [`Store::write_change`] for a stream that holds its host's stored state, without
    /// waiting for the write: `prior` is the host's inventory before the change (what
    /// [`Store::load_known`] returned, with every change since applied) and `host` its
    /// latest `hosts` row as this stream read or wrote it; `host` is updated when the
    /// change writes new host facts. Reads nothing from ClickHouse; returns once the
    /// change is queued for its batch, with what it writes and a [`PendingWrite`] that
    /// resolves once it is durable. A stream may queue its host's next changes before
    /// this one is durable (`prior` of the next is this one applied): they are stored in
    /// order, and none after one that failed. Refuses to queue while an earlier write of
    /// the host has failed and is not rolled back yet (the stream must end). The write
    /// path of [`crate::HostLedger::delta`].
    pub(crate) async fn submit_change_from(
        &self,
        change: &Change<'_>,
        prior: &Inventory,
        host: &mut KnownHost,
    ) -> Result<(WriteReceipt, PendingWrite), StoreError> {
        self.refuse_if_dirty(change.host_id)?;
        let before = Before::from_inventory(prior, change.delta, host.row.as_ref());
        let (rows, receipt, row) = change.rows(before);
        let pending = self.batcher.enqueue(change.host_id, rows).await?;
        if let Some(row) = row {
            host.row = Some(row);
        }
        Ok((receipt, pending))
    }

    pub(crate) fn refuse_if_dirty(&self, host_id: &str) -> Result<(), StoreError> {
        if self.batcher.writer().is_dirty(host_id) {
            return Err(StoreError::EarlierWriteFailed {
                host_id: host_id.to_string(),
            });
        }
        Ok(())
    }

    /// What the rows of a change need of the stored state before it, read from
    /// ClickHouse.
    pub(crate) async fn read_before(
        &self,
        host_id: &str,
        kind: ChangeKind,
        delta: &Delta,
    ) -> Result<Before<'static>, StoreError> {
        let removed_keys: Vec<String> = delta.removed.iter().map(|s| s.key.to_string()).collect();
        let stored_sockets = self.rows_by_key::<Sockets>(host_id, &removed_keys).await?;
        let removed_flow_keys: Vec<String> = delta
            .flows_removed
            .iter()
            .map(|f| f.key.to_string())
            .collect();
        let stored_flows = self
            .rows_by_key::<Flows>(host_id, &removed_flow_keys)
            .await?;
        let mut removed_sockets = Vec::with_capacity(removed_keys.len());
        for key in &removed_keys {
            removed_sockets.push(match stored_sockets.get(key) {
                Some(row) => row
                    .cols()
                    .decode(table::SOCKETS_CURRENT)?
                    .1
                    .into_iter()
                    .map(|p| (p.pid, p))
                    .collect(),
                None => BTreeMap::new(),
            });
        }
        let mut removed_flows = Vec::with_capacity(removed_flow_keys.len());
        for key in &removed_flow_keys {
            removed_flows.push(match stored_flows.get(key) {
                Some(row) => row.cols().decode(table::FLOWS_CURRENT)?.1,
                None => None,
            });
        }
        // New host facts are written on the latest row; a snapshot's report carries the
        // unchanged ones.
        let host = if delta.host.is_some() || kind == ChangeKind::Snapshot {
            self.latest_host_row(host_id).await?
        } else {
            None
        };
        Ok(Before {
            removed_sockets,
            removed_flows,
            host: host.map(std::borrow::Cow::Owned),
        })
    }

    /// Builds the rows of `change` and commits them (through the batcher); returns the
    /// receipt and the `hosts` row written, if any.
    pub(crate) async fn commit_change(
        &self,
        change: &Change<'_>,
        before: Before<'_>,
    ) -> Result<(WriteReceipt, Option<HostRow>), StoreError> {
        let (rows, receipt, host_row) = change.rows(before);
        self.batcher.commit(change.host_id, rows).await?;
        tracing::debug!(
            host_id = change.host_id,
            seq = change.seq,
            kind = change.kind.as_str(),
            rows = receipt.total(),
            "change stored"
        );
        Ok((receipt, host_row))
    }

    /// Records a heartbeat: `seq` is the agent's last sent seq. Does not commit anything:
    /// [`Store::last_seq`] ignores heartbeats. Written with the changes of other streams
    /// (see [`crate::batch`]).
    pub async fn write_heartbeat(
        &self,
        host_id: &str,
        seq: u64,
        at: SystemTime,
        stats: &ScanStats,
    ) -> Result<(), StoreError> {
        self.submit_heartbeat(host_id, seq, at, stats)
            .await?
            .wait()
            .await
    }

    /// [`Store::write_heartbeat`] without waiting for the write: resolves once it is
    /// durable.
    pub async fn submit_heartbeat(
        &self,
        host_id: &str,
        seq: u64,
        at: SystemTime,
        stats: &ScanStats,
    ) -> Result<PendingWrite, StoreError> {
        self.refuse_if_dirty(host_id)?;
        let rows = Rows {
            host_reports: vec![report_row(host_id, seq, "heartbeat", at, stats)],
            ..Rows::default()
        };
        self.batcher.enqueue(host_id, rows).await
    }
}
