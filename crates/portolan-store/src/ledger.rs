//! A host's ledger: the one way a host's changes are written.
//!
//! A [`HostLedger`] belongs to the stream that serves its host. It holds what the store
//! knows of the host at its last stored seq (the inventory, the latest `hosts` row, the
//! Hello facts the agent sent) and offers the operations of the protocol: [`hello`],
//! [`snapshot`], [`delta`], [`heartbeat`], and [`forget`] after a Resync. The stream sees
//! seqs, inventories and deltas, never a row.
//!
//! The ledger reads the host's stored state from ClickHouse once, when a stream resumes
//! with a delta (or diffs a snapshot), and from then on keeps it by applying its own
//! changes: a delta is written without reading anything. While the stream is idle the
//! inventory is held encoded ([`HostLedger::rest`]): a tenth of the memory, for every
//! connected agent between two scans.
//!
//! [`hello`]: HostLedger::hello
//! [`snapshot`]: HostLedger::snapshot
//! [`delta`]: HostLedger::delta
//! [`heartbeat`]: HostLedger::heartbeat
//! [`forget`]: HostLedger::forget

use std::sync::Arc;
use std::time::SystemTime;

use portolan_core::wire::EncodedInventory;
use portolan_core::{Delta, Inventory, ScanStats, apply_after_check, check_applies, diff};

use crate::change::{Change, KnownHost};
use crate::gaps::SpoolGap;
use crate::rows::HostRow;
use crate::{
    ChangeKind, HostRecord, PendingWrite, Recovery, Store, StoreError, WriteReceipt, hello_row,
};

/// One host's stored state as its stream holds it (see the [module](self)).
#[derive(Debug)]
pub struct HostLedger {
    store: Arc<Store>,
    host_id: String,
    last_seq: u64,
    /// The Hello facts of the stream (`host` is empty: host facts come with changes).
    facts: HostRecord,
    /// Whether the stored `hosts` row holds `facts`.
    facts_stored: bool,
    /// The host's inventory at `last_seq`, once this stream knows it.
    held: Option<Held>,
    /// The host's latest `hosts` row, as read or written with `held`.
    known: KnownHost,
}

/// How the ledger holds its host's inventory.
#[derive(Debug)]
enum Held {
    /// As the last change left it, while changes keep coming.
    Decoded(Inventory),
    /// Encoded while the stream is idle; decoded again by the next delta.
    Encoded(EncodedInventory),
}

/// What [`HostLedger::delta`] did with a delta.
#[derive(Debug)]
#[must_use]
pub enum DeltaOutcome {
    /// Queued for the next batch: what it writes, and a handle that resolves once durable.
    Queued(WriteReceipt, PendingWrite),
    /// The delta does not apply to the stored state (why): nothing was written, and the
    /// agent should send a snapshot.
    DoesNotApply(String),
}

impl HostLedger {
    /// Opens the ledger of `host_id`: rolls back what an interrupted write of the host
    /// left uncommitted (see [`Store::recover`]), so that its last seq is what is really
    /// stored.
    pub async fn open(
        store: Arc<Store>,
        host_id: &str,
    ) -> Result<(HostLedger, Recovery), StoreError> {
        let recovery = store.recover(host_id).await?;
        let ledger = HostLedger {
            store,
            host_id: host_id.to_string(),
            last_seq: recovery.last_seq,
            facts: empty_record(host_id),
            facts_stored: false,
            held: None,
            known: KnownHost::default(),
        };
        Ok((ledger, recovery))
    }

    /// The host.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The last seq stored or queued.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether the ledger holds the host's inventory at [`HostLedger::last_seq`]. When it
    /// does not, the next delta reads it from ClickHouse: every write queued before must
    /// be durable by then.
    pub fn holds_state(&self) -> bool {
        self.held.is_some()
    }

    /// Records the Hello facts of the stream. For a host the store knows they are stored
    /// at once, and waited for, when they differ from the stored ones (a host restarted
    /// with new labels, hostname or version), so that rules see them whether the stream
    /// goes on with a snapshot or with deltas; a new host's are stored with its first
    /// change. `record.host` is ignored: host facts are stored with the changes that bring
    /// them, committed and rolled back with them. Returns whether a row was written now.
    pub async fn hello(&mut self, record: HostRecord) -> Result<bool, StoreError> {
        let record = HostRecord {
            host: Default::default(),
            ..record
        };
        let latest = self.store.latest_host_row(&self.host_id).await?;
        self.facts_stored = latest
            .as_ref()
            .is_some_and(|row| row.same_hello_facts(&record));
        let write_now = latest.is_some() && !self.facts_stored;
        self.facts = record;
        if write_now {
            self.store_facts(latest.as_ref()).await?;
        }
        Ok(write_now)
    }

    /// Writes the stream's Hello facts over the stored host facts of `latest`.
    async fn store_facts(&mut self, latest: Option<&HostRow>) -> Result<(), StoreError> {
        self.store
            .write_host_row(hello_row(&self.facts, latest))
            .await?;
        self.facts_stored = true;
        Ok(())
    }

    /// Queues a snapshot at `seq`: stored as its difference from the stored state, with
    /// the Hello facts, after `gap` (what the agent's spool folded before it) when there
    /// is one. Every write queued before must be durable: the snapshot is diffed against
    /// what ClickHouse holds.
    pub async fn snapshot(
        &mut self,
        seq: u64,
        scanned_at: SystemTime,
        inventory: Inventory,
        stats: &ScanStats,
        gap: Option<SpoolGap>,
    ) -> Result<(WriteReceipt, PendingWrite), StoreError> {
        let (stored, mut known) = self.store.load_known(&self.host_id).await?;
        let change = diff(&stored, &inventory);
        if let Some(gap) = gap {
            // Before the snapshot: a crash in between leaves the gap, written again on
            // the replay, never a snapshot that hides it.
            self.store.write_spool_gap(&self.host_id, &gap).await?;
        }
        let record = HostRecord {
            host: inventory.host.clone(),
            ..self.facts.clone()
        };
        let (receipt, pending) = self
            .store
            .submit_snapshot_from(
                &record,
                &Change::new(
                    &self.host_id,
                    seq,
                    ChangeKind::Snapshot,
                    scanned_at,
                    &change,
                    stats,
                ),
                &stored,
                &mut known,
            )
            .await?;
        self.last_seq = seq;
        self.held = Some(Held::Decoded(inventory));
        self.known = known;
        self.facts_stored = true;
        Ok((receipt, pending))
    }

    /// Queues the delta `base_seq → seq` (the caller checked that `seq` follows
    /// [`HostLedger::last_seq`]), or says why it does not apply to the stored state. When
    /// the ledger holds no state (see [`HostLedger::holds_state`]) it reads it first.
    pub async fn delta(
        &mut self,
        seq: u64,
        scanned_at: SystemTime,
        delta: &Delta,
        stats: &ScanStats,
    ) -> Result<DeltaOutcome, StoreError> {
        let mut current = match self.held.take() {
            Some(Held::Decoded(inventory)) => inventory,
            Some(Held::Encoded(encoded)) => match encoded.decode() {
                Ok(inventory) => inventory,
                Err(e) => {
                    return Ok(DeltaOutcome::DoesNotApply(format!(
                        "the held copy of the host's inventory does not decode: {e}"
                    )));
                }
            },
            None => {
                if !self.facts_stored {
                    // A host whose first change since Hello is a delta, with no row yet.
                    let latest = self.store.latest_host_row(&self.host_id).await?;
                    self.store_facts(latest.as_ref()).await?;
                }
                self.read_stored().await?
            }
        };
        if let Err(e) = check_applies(&current, delta) {
            // The state read or held stays valid: only this delta is refused.
            self.held = Some(Held::Decoded(current));
            return Ok(DeltaOutcome::DoesNotApply(format!(
                "delta {seq} does not apply: {e}"
            )));
        }
        let (receipt, pending) = self
            .store
            .submit_change_from(
                &Change::new(
                    &self.host_id,
                    seq,
                    ChangeKind::Delta,
                    scanned_at,
                    delta,
                    stats,
                ),
                &current,
                &mut self.known,
            )
            .await?;
        // The next delta applies to this one, durable or not yet.
        apply_after_check(&mut current, delta);
        self.last_seq = seq;
        self.held = Some(Held::Decoded(current));
        Ok(DeltaOutcome::Queued(receipt, pending))
    }

    /// Reads the host's stored state now, rather than on the next delta: a stream that
    /// must hold the state of one instant (every write queued before must be durable).
    pub async fn load(&mut self) -> Result<(), StoreError> {
        let current = self.read_stored().await?;
        self.held = Some(Held::Decoded(current));
        Ok(())
    }

    async fn read_stored(&mut self) -> Result<Inventory, StoreError> {
        let (current, known) = self.store.load_known(&self.host_id).await?;
        self.known = known;
        Ok(current)
    }

    /// Queues a heartbeat at the last seq.
    pub async fn heartbeat(
        &self,
        at: SystemTime,
        stats: &ScanStats,
    ) -> Result<PendingWrite, StoreError> {
        self.store
            .submit_heartbeat(&self.host_id, self.last_seq, at, stats)
            .await
    }

    /// Drops the held state (the agent resends a snapshot after a Resync).
    pub fn forget(&mut self) {
        self.held = None;
        self.known = KnownHost::default();
    }

    /// Whether the held inventory is decoded (and [`HostLedger::rest`] would shrink it).
    pub fn is_awake(&self) -> bool {
        matches!(self.held, Some(Held::Decoded(_)))
    }

    /// Holds the inventory encoded while the stream is idle.
    pub fn rest(&mut self) {
        if let Some(Held::Decoded(inventory)) = &self.held {
            self.held = Some(Held::Encoded(EncodedInventory::encode(inventory)));
        }
    }
}

/// The facts of a host that has not said Hello (never stored: Hello comes first).
fn empty_record(host_id: &str) -> HostRecord {
    HostRecord {
        host_id: host_id.to_string(),
        hostname: String::new(),
        labels: Default::default(),
        agent_version: String::new(),
        kernel: String::new(),
        os: String::new(),
        scan_interval_ms: 0,
        collector: String::new(),
        host: Default::default(),
    }
}
