//! What the store takes and gives back: host records, stored sockets, flows, events,
//! reports, and what each write and recovery did.

use std::collections::BTreeMap;
use std::time::SystemTime;

use portolan_core::{Flow, HostState, Process, ScanStats, Socket};

use crate::StoreError;
use crate::rows::{FlowCurrentRow, HostRow, SocketCurrentRow, from_datetime};
use crate::schema::table;

/// Whether a change is a full snapshot (diffed against the stored state) or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A snapshot, stored as its difference from the stored state.
    Snapshot,
    /// A delta from the agent.
    Delta,
}

impl ChangeKind {
    /// `snapshot` or `delta`, as in `host_reports.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Snapshot => "snapshot",
            ChangeKind::Delta => "delta",
        }
    }
}

/// Rows written per table by one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Rows into `socket_events`.
    pub socket_events: u64,
    /// Rows into `sockets_current`.
    pub sockets_current: u64,
    /// Rows into `flow_events`.
    pub flow_events: u64,
    /// Rows into `flows_current`.
    pub flows_current: u64,
    /// Rows into `hosts`.
    pub hosts: u64,
    /// Rows into `host_reports` (the commit marker).
    pub host_reports: u64,
}

impl WriteReceipt {
    /// All rows.
    pub fn total(&self) -> u64 {
        self.socket_events
            + self.sockets_current
            + self.flow_events
            + self.flows_current
            + self.hosts
            + self.host_reports
    }
}

/// The facts of a host's Hello, for [`crate::HostLedger::hello`] and [`crate::Store::upsert_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    /// Stable host identity.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// Operator-given labels.
    pub labels: BTreeMap<String, String>,
    /// Agent version.
    pub agent_version: String,
    /// Kernel release.
    pub kernel: String,
    /// OS description.
    pub os: String,
    /// The agent's scan interval.
    pub scan_interval_ms: u64,
    /// The collector replica serving the host.
    pub collector: String,
    /// Host facts. [`crate::Store::upsert_host`] stores them only for a host the store has
    /// no row of yet, and [`crate::HostLedger::hello`] never: host facts change through
    /// changes (a delta's `host`), so that they are committed and rolled back with the
    /// rest of a change.
    pub host: HostState,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHost {
    /// Stable host identity.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Agent version.
    pub agent_version: String,
    /// Kernel release.
    pub kernel: String,
    /// OS description.
    pub os: String,
    /// Scan interval.
    pub scan_interval_ms: u64,
    /// The collector replica that wrote the Hello facts.
    pub collector: String,
    /// When a collector last recorded the Hello facts (at a Hello that changed them, or
    /// the snapshot that starts a stream), second precision.
    pub connected_at: SystemTime,
    /// Host facts.
    pub state: HostState,
    /// The seq of the change that set the host facts (0: none yet).
    pub seq: u64,
}

/// The stored view of a `hosts` row.
pub(crate) fn stored_host(row: HostRow) -> Result<StoredHost, StoreError> {
    Ok(StoredHost {
        labels: row.labels()?,
        state: row.facts().decode(table::HOSTS)?,
        host_id: row.host_id,
        hostname: row.hostname,
        agent_version: row.agent_version,
        kernel: row.kernel,
        os: row.os,
        scan_interval_ms: row.scan_interval_ms,
        collector: row.collector,
        connected_at: from_datetime(row.connected_at),
        seq: row.seq,
    })
}

/// A current socket with its owning processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSocket {
    /// The socket.
    pub socket: Socket,
    /// The known processes among its pids, in pid order.
    pub processes: Vec<Process>,
    /// The seq that last changed it.
    pub seq: u64,
    /// The scan time of that seq (second precision).
    pub updated_at: SystemTime,
}

impl SocketCurrentRow {
    /// The socket this row holds, with its processes, seq and time.
    pub(crate) fn stored(&self) -> Result<StoredSocket, StoreError> {
        let (socket, processes) = self.cols().decode(table::SOCKETS_CURRENT)?;
        Ok(StoredSocket {
            socket,
            processes,
            seq: self.seq,
            updated_at: from_datetime(self.updated_at),
        })
    }
}

impl FlowCurrentRow {
    /// The flow this row holds, with its process, seq and time.
    pub(crate) fn stored(&self) -> Result<StoredFlow, StoreError> {
        let (flow, process) = self.cols().decode(table::FLOWS_CURRENT)?;
        Ok(StoredFlow {
            flow,
            process,
            seq: self.seq,
            updated_at: from_datetime(self.updated_at),
        })
    }
}

impl StoredSocket {
    /// The first owner's name, when known.
    pub fn process_name(&self) -> Option<&str> {
        let first = *self.socket.pids.first()?;
        self.processes
            .iter()
            .find(|p| p.pid == first)
            .map(|p| p.name.as_str())
    }
}

/// A current flow with its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFlow {
    /// The flow.
    pub flow: Flow,
    /// Its process, when known.
    pub process: Option<Process>,
    /// The seq that last changed it.
    pub seq: u64,
    /// The scan time of that seq (second precision).
    pub updated_at: SystemTime,
}

/// What happened to a socket in one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SocketEventKind {
    /// It appeared.
    Added,
    /// It disappeared (last content).
    Removed,
    /// Its content or owning process changed (new content).
    Changed,
}

impl SocketEventKind {
    /// `added`, `removed`, `changed`, as in `socket_events.event`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketEventKind::Added => "added",
            SocketEventKind::Removed => "removed",
            SocketEventKind::Changed => "changed",
        }
    }
}

/// What happened to a flow in one change. A delta does not say whether an upserted flow
/// is new or has a new count, so neither does the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowEventKind {
    /// It appeared, or its count or process changed (new content).
    Upserted,
    /// It disappeared (last count).
    Removed,
}

impl FlowEventKind {
    /// `upserted`, `removed`, as in `flow_events.event`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowEventKind::Upserted => "upserted",
            FlowEventKind::Removed => "removed",
        }
    }
}

/// One row of socket history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEvent {
    /// The change.
    pub seq: u64,
    /// Its scan time (second precision).
    pub at: SystemTime,
    /// What happened.
    pub event: SocketEventKind,
    /// The socket (new content; last content when removed).
    pub socket: Socket,
    /// Its known processes.
    pub processes: Vec<Process>,
}

/// One row of flow history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// The change.
    pub seq: u64,
    /// Its scan time (second precision).
    pub at: SystemTime,
    /// What happened.
    pub event: FlowEventKind,
    /// The flow.
    pub flow: Flow,
    /// Its process, when known.
    pub process: Option<Process>,
}

/// One row of `host_reports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// The seq (for heartbeats: the agent's last sent seq).
    pub seq: u64,
    /// `snapshot`, `delta` or `heartbeat`.
    pub kind: String,
    /// Scan (or heartbeat) time.
    pub at: SystemTime,
    /// The scan statistics.
    pub stats: ScanStats,
}

/// What [`crate::Store::recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The host's last committed seq.
    pub last_seq: u64,
    /// Uncommitted rows removed (0: nothing to do).
    pub rolled_back_rows: u64,
    /// Current rows restored from history because their committed version had been
    /// merged away with an uncommitted one.
    pub restored_rows: u64,
}

/// How the stored schema compares with the one this build needs
/// ([`crate::Store::schema_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The highest migration applied to the database (0: none).
    pub applied: u32,
    /// The highest migration this build knows.
    pub required: u32,
}

impl SchemaStatus {
    /// Whether every migration this build needs is applied (a newer collector may have
    /// applied more: its migrations only add).
    pub fn is_current(&self) -> bool {
        self.applied >= self.required
    }
}

/// What [`crate::Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty: the schema was current).
    pub applied: Vec<u32>,
    /// The schema version now.
    pub version: u32,
}
