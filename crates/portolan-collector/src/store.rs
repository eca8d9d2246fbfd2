//! The ClickHouse store: everything the stateless collector knows lives here.
//!
//! # Tables
//!
//! See [`schema`] for the DDL. In short:
//!
//! - `hosts` — Hello facts and host facts (interfaces, ephemeral ports); the latest row
//!   per host wins (`FINAL`, or `ORDER BY updated_ns DESC LIMIT 1`).
//! - `host_reports` — one row per stored snapshot, delta and heartbeat with the scan
//!   statistics. The snapshot/delta row of a seq is written last, after all other data of
//!   that seq: it is the **commit marker**, and [`Store::last_seq`] is the highest of them.
//! - `socket_events` / `flow_events` — history: one row per added, removed or changed
//!   socket (per upserted or removed flow) per seq, with the content and the owning
//!   processes.
//! - `sockets_current` / `flows_current` — current state: the latest row per socket (flow)
//!   with `present` = 0 for removed ones. A host's current sockets are
//!   `FROM sockets_current FINAL WHERE host_id = ? AND present = 1`. The same state at a
//!   past instant is rebuilt from the history by [`history::sockets_as_of`] and its
//!   siblings.
//! - `findings` / `finding_acks` — findings of the rules and their acknowledgements, the
//!   latest row per fingerprint.
//!
//! # Idempotency
//!
//! Every table is a `ReplacingMergeTree` whose sorting key identifies what a row is
//! about, and every row of a change is a function of the change alone (times are the scan
//! time, not the write time; `hosts` and `host_reports.received_at` excepted). Writing the
//! same (host, seq, change) twice therefore leaves what `FINAL` queries see unchanged:
//! events collapse on (host, seq, event, key), current rows on (host, key) with the
//! highest seq winning, reports on (host, seq, kind, scan time).
//!
//! # Failed writes
//!
//! A change is several INSERTs, and ClickHouse has no transaction across them: a write
//! that fails half-way leaves rows of an uncommitted seq. [`Store::recover`] removes them
//! (and restores current rows their removal would lose); call it when a stream starts,
//! before answering Hello. The store also remembers hosts whose write failed in this
//! process and recovers them before their next read or write.

pub mod acks;
pub mod batch;
mod change;
pub mod findings;
pub mod fleet;
pub mod gaps;
pub mod history;
pub mod queries;
mod rowbinary;
mod rows;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use clickhouse::sql::Identifier;
use clickhouse::{Client, Row, RowOwned, RowRead, RowWrite};
use portolan_core::{Delta, Flow, HostState, Inventory, Process, ScanStats, Socket};

pub use self::batch::{BatchConfig, PendingWrite, WriteStats};
use self::batch::{Batcher, Rows, Writer};
pub use self::change::KnownHost;
use self::change::{Before, Change};
use self::rows::{
    FlowCurrentRow, FlowEventRow, HostFactsCols, HostRow, MigrationRow, ReportRow,
    SocketCurrentRow, SocketEventRow, from_datetime, to_datetime, to_nanos,
};
pub use self::schema::Flavor;
use self::schema::table;

/// Where the store's ClickHouse is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// HTTP URL, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database; created when missing. Letters, digits and `_`.
    pub database: String,
    /// User; `None`: the server's `default` user.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
}

/// What the server is, detected once at [`Store::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerInfo {
    /// `SELECT version()`, first three components.
    pub version: (u32, u32, u32),
    /// True for servers before [`schema::MODERN_SINCE`]: legacy schema, row validation
    /// off.
    pub legacy: bool,
}

impl ServerInfo {
    /// Which schema dialect the server gets.
    pub fn flavor(&self) -> Flavor {
        if self.legacy {
            Flavor::Legacy
        } else {
            Flavor::Modern
        }
    }

    fn describe(&self) -> String {
        let (a, b, c) = self.version;
        if self.legacy {
            format!(
                "clickhouse {a}.{b}.{c}: legacy schema path (no TTL, no LowCardinality, row validation off)"
            )
        } else {
            format!(
                "clickhouse {a}.{b}.{c}: modern schema path (LowCardinality, TTL on history, row validation on)"
            )
        }
    }
}

/// Parses `18.16.1`, `24.8.4.13`, `25.3.1.2703-lts` into the first three components.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim().split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The server could not be reached.
    #[error(
        "cannot reach ClickHouse at {url}: {error} (is the server running? check `clickhouse.url`)"
    )]
    Unreachable {
        /// The configured URL.
        url: String,
        /// The client's error.
        error: clickhouse::error::Error,
    },
    /// The server refused or failed a statement.
    #[error("cannot {op} `{table}`: {error}")]
    Query {
        /// What was being done (`insert into`, `read`, `create`…).
        op: &'static str,
        /// The table (or database) concerned.
        table: String,
        /// The client's error, with the server's message.
        error: clickhouse::error::Error,
    },
    /// A stored value cannot be read back.
    #[error(
        "`{table}.{column}` holds `{value}`, which this collector cannot read (was it written by a newer version?)"
    )]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// The value.
        value: String,
    },
    /// `SELECT version()` answered something unexpected.
    #[error("cannot read the server version from `{0}` (is `clickhouse.url` a ClickHouse server?)")]
    Version(String),
    /// The database name is not a plain identifier.
    #[error(
        "`{0}` is not a valid database name: use letters, digits and `_` (check `clickhouse.database`)"
    )]
    InvalidDatabase(String),
    /// A batched write failed: nothing in it is acknowledged, and each of its hosts is
    /// rolled back before its next read or write.
    #[error(
        "{error} (in a batched write of {writes} changes; each of their hosts is rolled back before its next write)"
    )]
    Batch {
        /// Writes in the batch.
        writes: usize,
        /// What failed.
        error: Arc<StoreError>,
    },
    /// A write queued behind an earlier write of the same host that failed: refused, so
    /// that the host's stored changes never skip one.
    #[error(
        "an earlier write of host `{host_id}` failed; its later changes wait until it is rolled back (the agent reconnects and resends them)"
    )]
    EarlierWriteFailed {
        /// The host.
        host_id: String,
    },
    /// The batch task ended before the write was stored (its runtime shut down).
    #[error(
        "the batched writer stopped before this change was stored (is the collector shutting down?)"
    )]
    BatchLost,
    /// Rolling back an uncommitted write did not finish.
    #[error(
        "rolling back the uncommitted rows of host `{host_id}` did not finish within {secs} s (see `system.mutations` on the server)"
    )]
    RollbackTimeout {
        /// The host.
        host_id: String,
        /// The deadline.
        secs: u64,
    },
}

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

/// The facts of a host's Hello, for [`Store::upsert_host`].
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
    /// Host facts. Stored only for a host the store has no row of yet: afterwards host
    /// facts change only through [`Store::write_change`] (a delta's `host`), so that they
    /// are committed and rolled back with the rest of a change.
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
    /// When a collector last recorded the Hello facts ([`Store::upsert_host`], at the
    /// snapshot that starts every stream), second precision.
    pub connected_at: SystemTime,
    /// Host facts.
    pub state: HostState,
    /// The seq of the change that set the host facts (0: none yet).
    pub seq: u64,
}

/// The stored view of a `hosts` row.
fn stored_host(row: HostRow) -> Result<StoredHost, StoreError> {
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

/// What [`Store::recover`] did.
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

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty: the schema was current).
    pub applied: Vec<u32>,
    /// The schema version now.
    pub version: u32,
}

/// How long [`Store::recover`] waits for its deletions.
const ROLLBACK_DEADLINE: Duration = Duration::from_secs(120);

/// The ClickHouse store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    client: Client,
    url: String,
    database: String,
    info: ServerInfo,
    /// Hosts whose last write failed in this process: recovered before their next
    /// read or write.
    dirty: Arc<Mutex<HashSet<String>>>,
    /// Bounds this process's concurrent ClickHouse requests (see [`MAX_CONCURRENT_REQUESTS`]).
    requests: Arc<tokio::sync::Semaphore>,
    /// Groups the writes of all streams into batches (see [`batch`]).
    batcher: Batcher,
}

/// Concurrent ClickHouse requests of one collector. ClickHouse refuses queries past its
/// `max_concurrent_queries` (100 by default) with TOO_MANY_SIMULTANEOUS_QUERIES; a fleet
/// reconnecting at once (every stream reads its host's state) would hit it and fail every
/// stream. Past this bound, streams wait for their turn instead: they stop reading from
/// their agents, which wait for their acknowledgements, and nothing fails. 32 leaves room
/// for a few replicas and for the people querying the same server.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn is_connect_error(error: &clickhouse::error::Error) -> bool {
    use std::error::Error as _;
    if !matches!(error, clickhouse::error::Error::Network(_)) {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = e.source();
    }
    let text = error.to_string();
    text.contains("connect") || text.contains("Connection")
}

fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Store {
    /// Connects: detects the server version (and logs which schema path it takes),
    /// creates the database when missing. Does not create tables: see
    /// [`Store::migrate`].
    pub async fn connect(config: &ClickHouseConfig) -> Result<Store, StoreError> {
        if !valid_identifier(&config.database) {
            return Err(StoreError::InvalidDatabase(config.database.clone()));
        }
        let mut base = Client::default()
            .with_url(&config.url)
            .with_validation(false);
        if let Some(user) = &config.user {
            base = base.with_user(user);
        }
        if let Some(password) = &config.password {
            base = base.with_password(password);
        }
        let map = |op: &'static str, table: &str| {
            let url = config.url.clone();
            let table = table.to_string();
            move |error: clickhouse::error::Error| {
                if is_connect_error(&error) {
                    StoreError::Unreachable { url, error }
                } else {
                    StoreError::Query { op, table, error }
                }
            }
        };
        let text: String = base
            .query(queries::VERSION)
            .fetch_one()
            .await
            .map_err(map("read the version of", "server"))?;
        let version = parse_version(&text).ok_or_else(|| StoreError::Version(text.clone()))?;
        let info = ServerInfo {
            version,
            legacy: Flavor::for_version(version) == Flavor::Legacy,
        };
        tracing::info!(url = %config.url, database = %config.database, "{}", info.describe());
        base.query(queries::CREATE_DATABASE)
            .bind(Identifier(&config.database))
            .execute()
            .await
            .map_err(map("create database", &config.database))?;
        // LZ4-compressed INSERT bodies (`decompress=1`, ClickHouse's native block
        // framing): understood by 18.16 and by current servers.
        let client = base
            .with_database(&config.database)
            .with_validation(!info.legacy)
            .with_compression(clickhouse::Compression::Lz4);
        let dirty = Arc::new(Mutex::new(HashSet::new()));
        let requests = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
        let writer = Arc::new(Writer::new(
            client.clone(),
            config.url.clone(),
            requests.clone(),
            dirty.clone(),
        ));
        Ok(Store {
            client,
            url: config.url.clone(),
            database: config.database.clone(),
            info,
            dirty,
            requests,
            batcher: Batcher::new(BatchConfig::default(), writer),
        })
    }

    /// The same store, grouping writes as `config` says (the default:
    /// [`BatchConfig::default`]). Call before the first write.
    pub fn with_batching(self, config: BatchConfig) -> Store {
        let writer = Arc::new(Writer::new(
            self.client.clone(),
            self.url.clone(),
            self.requests.clone(),
            self.dirty.clone(),
        ));
        Store {
            batcher: Batcher::new(config, writer),
            ..self
        }
    }

    /// How writes are grouped.
    pub fn batching(&self) -> BatchConfig {
        self.batcher.config()
    }

    /// What this store has written since it connected: INSERTs, rows, batches.
    pub fn write_stats(&self) -> WriteStats {
        self.batcher.writer().stats()
    }

    /// The server's version and path.
    pub fn server(&self) -> ServerInfo {
        self.info
    }

    /// The database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The underlying client (database selected), for the rule engine and tests.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn map_err(
        &self,
        op: &'static str,
        table: &str,
    ) -> impl FnOnce(clickhouse::error::Error) -> StoreError {
        let url = self.url.clone();
        let table = table.to_string();
        move |error| {
            if is_connect_error(&error) {
                StoreError::Unreachable { url, error }
            } else {
                StoreError::Query { op, table, error }
            }
        }
    }

    /// Creates or migrates the schema. Idempotent, and safe to run from several
    /// collectors at once: every statement is `CREATE … IF NOT EXISTS`, and applied
    /// versions are recorded in `schema_migrations`.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let flavor = self.info.flavor();
        self.ddl(&schema::migrations_table(flavor), table::SCHEMA_MIGRATIONS)
            .await?;
        let applied: BTreeSet<u32> = self
            .client
            .query(queries::APPLIED_MIGRATIONS)
            .fetch_all::<u32>()
            .await
            .map_err(self.map_err("read", table::SCHEMA_MIGRATIONS))?
            .into_iter()
            .collect();
        let mut report = MigrationReport {
            applied: Vec::new(),
            version: applied.last().copied().unwrap_or(0),
        };
        for migration in schema::migrations(flavor) {
            if applied.contains(&migration.version) {
                continue;
            }
            for statement in &migration.statements {
                self.ddl(statement, statement_table(statement)).await?;
            }
            let row = MigrationRow {
                version: migration.version,
                name: migration.name.to_string(),
                applied_at: to_datetime(SystemTime::now()),
                collector: this_host(),
            };
            self.insert(table::SCHEMA_MIGRATIONS, std::slice::from_ref(&row))
                .await?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                database = %self.database,
                "schema migration applied"
            );
            report.applied.push(migration.version);
            report.version = report.version.max(migration.version);
        }
        Ok(report)
    }

    /// Runs one DDL statement; a concurrent creator winning the race is success.
    async fn ddl(&self, statement: &str, table: &str) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.client.query(statement).execute().await {
                Ok(()) => return Ok(()),
                Err(e) if e.to_string().contains("already exists") => return Ok(()),
                // Old servers can report a table that another session is creating.
                Err(e) if attempt < 5 && e.to_string().contains("is being created") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(self.map_err("create", table)(e)),
            }
        }
    }

    async fn insert<T>(&self, table: &'static str, rows: &[T]) -> Result<u64, StoreError>
    where
        T: Row + RowOwned + RowWrite,
    {
        self.batcher.writer().insert(table, rows).await
    }

    async fn fetch<T>(
        &self,
        table: &'static str,
        query: clickhouse::query::Query,
    ) -> Result<Vec<T>, StoreError>
    where
        T: Row + RowOwned + RowRead,
    {
        let _turn = self.turn().await;
        query
            .fetch_all::<T>()
            .await
            .map_err(self.map_err("read", table))
    }

    /// Waits for a free ClickHouse request slot; released when the permit drops.
    async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed: `None` cannot happen, and would only mean no bound.
        self.requests.acquire().await.ok()
    }

    async fn recover_if_dirty(&self, host_id: &str) -> Result<(), StoreError> {
        if self.batcher.writer().is_dirty(host_id) {
            self.recover(host_id).await?;
        }
        Ok(())
    }

    /// The highest committed seq of a host (its latest stored snapshot or delta); 0 when
    /// none.
    pub async fn last_seq(&self, host_id: &str) -> Result<u64, StoreError> {
        let _turn = self.turn().await;
        self.client
            .query(queries::LAST_SEQ)
            .bind(host_id)
            .fetch_one::<u64>()
            .await
            .map_err(self.map_err("read", table::HOST_REPORTS))
    }

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
        let socket_keys: Vec<String> = self
            .fetch(
                table::SOCKETS_CURRENT,
                self.client
                    .query(queries::UNCOMMITTED_SOCKET_KEYS)
                    .bind(host_id)
                    .bind(last_seq),
            )
            .await?;
        let flow_keys: Vec<String> = self
            .fetch(
                table::FLOWS_CURRENT,
                self.client
                    .query(queries::UNCOMMITTED_FLOW_KEYS)
                    .bind(host_id)
                    .bind(last_seq),
            )
            .await?;
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
            .restore_sockets(host_id, last_seq, &socket_keys)
            .await?;
        restored += self.restore_flows(host_id, last_seq, &flow_keys).await?;
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

    async fn count_uncommitted(
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

    async fn restore_sockets(
        &self,
        host_id: &str,
        last_seq: u64,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let surviving: HashSet<String> = self
            .socket_rows_by_key(host_id, keys)
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
        let events: Vec<SocketEventRow> = self
            .fetch(
                table::SOCKET_EVENTS,
                self.client
                    .query(queries::LAST_SOCKET_EVENTS)
                    .bind(host_id)
                    .bind(last_seq)
                    .bind(&missing)
                    .with_setting("max_query_size", queries::MAX_QUERY_SIZE),
            )
            .await?;
        // Ordered by seq: the last row per key is its committed content.
        let latest: BTreeMap<String, SocketEventRow> = events
            .into_iter()
            .map(|e| (e.socket_key.clone(), e))
            .collect();
        let rows: Vec<SocketCurrentRow> = latest
            .into_values()
            .map(|e| {
                SocketCurrentRow::with_cols(
                    e.host_id.clone(),
                    e.socket_key.clone(),
                    e.seq,
                    u8::from(e.event != SocketEventKind::Removed.as_str()),
                    e.at,
                    e.cols(),
                )
            })
            .collect();
        self.insert(table::SOCKETS_CURRENT, &rows).await
    }

    async fn restore_flows(
        &self,
        host_id: &str,
        last_seq: u64,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let surviving: HashSet<String> = self
            .flow_rows_by_key(host_id, keys)
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
        let events: Vec<FlowEventRow> = self
            .fetch(
                table::FLOW_EVENTS,
                self.client
                    .query(queries::LAST_FLOW_EVENTS)
                    .bind(host_id)
                    .bind(last_seq)
                    .bind(&missing)
                    .with_setting("max_query_size", queries::MAX_QUERY_SIZE),
            )
            .await?;
        let latest: BTreeMap<String, FlowEventRow> = events
            .into_iter()
            .map(|e| (e.flow_key.clone(), e))
            .collect();
        let rows: Vec<FlowCurrentRow> = latest
            .into_values()
            .map(|e| {
                FlowCurrentRow::with_cols(
                    e.host_id.clone(),
                    e.flow_key.clone(),
                    e.seq,
                    u8::from(e.event != FlowEventKind::Removed.as_str()),
                    e.at,
                    e.cols(),
                )
            })
            .collect();
        self.insert(table::FLOWS_CURRENT, &rows).await
    }

    async fn restore_host(&self, host_id: &str, last_seq: u64) -> Result<u64, StoreError> {
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

    async fn latest_host_row(&self, host_id: &str) -> Result<Option<HostRow>, StoreError> {
        Ok(self
            .fetch::<HostRow>(
                table::HOSTS,
                self.client.query(queries::LATEST_HOST).bind(host_id),
            )
            .await?
            .into_iter()
            .next())
    }

    async fn socket_rows_by_key(
        &self,
        host_id: &str,
        keys: &[String],
    ) -> Result<HashMap<String, SocketCurrentRow>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<SocketCurrentRow> = self
            .fetch(
                table::SOCKETS_CURRENT,
                self.client
                    .query(queries::SOCKETS_BY_KEY)
                    .bind(host_id)
                    .bind(keys)
                    .with_setting("max_query_size", queries::MAX_QUERY_SIZE),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.socket_key.clone(), r))
            .collect())
    }

    async fn flow_rows_by_key(
        &self,
        host_id: &str,
        keys: &[String],
    ) -> Result<HashMap<String, FlowCurrentRow>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<FlowCurrentRow> = self
            .fetch(
                table::FLOWS_CURRENT,
                self.client
                    .query(queries::FLOWS_BY_KEY)
                    .bind(host_id)
                    .bind(keys)
                    .with_setting("max_query_size", queries::MAX_QUERY_SIZE),
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.flow_key.clone(), r)).collect())
    }

    /// The stored host, or `None` when it never said Hello nor sent host facts.
    pub async fn host(&self, host_id: &str) -> Result<Option<StoredHost>, StoreError> {
        let Some(row) = self.latest_host_row(host_id).await? else {
            return Ok(None);
        };
        stored_host(row).map(Some)
    }

    /// Records a host's Hello facts, keeping the stored host facts; `record.host` is
    /// used only when the host has no row yet (see [`HostRecord::host`]). Returns the row
    /// written, for [`Store::write_change_from`]. Written with the changes of other
    /// streams (see [`batch`]).
    pub async fn upsert_host(&self, record: &HostRecord) -> Result<KnownHost, StoreError> {
        self.recover_if_dirty(&record.host_id).await?;
        let latest = self.latest_host_row(&record.host_id).await?;
        let row = hello_row(record, latest.as_ref());
        let rows = Rows {
            hosts: vec![row.clone()],
            ..Rows::default()
        };
        self.batcher.commit(&record.host_id, rows).await?;
        Ok(KnownHost { row: Some(row) })
    }

    /// A snapshot's write, queued as one (see [`Store::submit_change_from`]): the host's
    /// Hello facts ([`Store::upsert_host`], over `known`, its latest `hosts` row as
    /// [`Store::load_known`] read it) and `delta` from `prior`, the stored inventory, to
    /// the snapshot. `known` becomes the host's latest row.
    #[allow(clippy::too_many_arguments)]
    pub async fn submit_snapshot_from(
        &self,
        record: &HostRecord,
        seq: u64,
        scanned_at: SystemTime,
        delta: &Delta,
        stats: &ScanStats,
        prior: &Inventory,
        known: &mut KnownHost,
    ) -> Result<(WriteReceipt, PendingWrite), StoreError> {
        let host_id = record.host_id.as_str();
        self.refuse_if_dirty(host_id)?;
        let hello = hello_row(record, known.row.as_ref());
        let before = Before::from_inventory(prior, delta, Some(&hello));
        let change = Change::new(host_id, seq, ChangeKind::Snapshot, scanned_at, delta, stats);
        let (mut rows, mut receipt, facts) = change.rows(before);
        // The Hello row first: the change's own facts row, when it has one, is newer.
        rows.hosts.insert(0, hello.clone());
        receipt.hosts += 1;
        let pending = self.batcher.enqueue(host_id, rows).await?;
        known.row = Some(facts.unwrap_or(hello));
        Ok((receipt, pending))
    }

    /// The current sockets of a host, ordered by key.
    pub async fn current_sockets(&self, host_id: &str) -> Result<Vec<StoredSocket>, StoreError> {
        self.recover_if_dirty(host_id).await?;
        let rows: Vec<SocketCurrentRow> = self
            .fetch(
                table::SOCKETS_CURRENT,
                self.client.query(queries::CURRENT_SOCKETS).bind(host_id),
            )
            .await?;
        rows.iter().map(SocketCurrentRow::stored).collect()
    }

    /// The current flows of a host, ordered by key.
    pub async fn current_flows(&self, host_id: &str) -> Result<Vec<StoredFlow>, StoreError> {
        self.recover_if_dirty(host_id).await?;
        let rows: Vec<FlowCurrentRow> = self
            .fetch(
                table::FLOWS_CURRENT,
                self.client.query(queries::CURRENT_FLOWS).bind(host_id),
            )
            .await?;
        rows.iter().map(FlowCurrentRow::stored).collect()
    }

    /// The stored inventory of a host: host facts from its latest `hosts` row, current
    /// sockets and flows, and the processes they reference. Equal to the inventory whose
    /// changes were written (the collector diffs snapshots against it).
    pub async fn load_current(&self, host_id: &str) -> Result<Inventory, StoreError> {
        Ok(self.load_known(host_id).await?.0)
    }

    /// [`Store::load_current`], with the host's latest `hosts` row: what a stream holds
    /// to write its host's changes with [`Store::write_change_from`].
    pub async fn load_known(&self, host_id: &str) -> Result<(Inventory, KnownHost), StoreError> {
        self.recover_if_dirty(host_id).await?;
        let latest = self.latest_host_row(host_id).await?;
        let host = match &latest {
            Some(row) => row.facts().decode(table::HOSTS)?,
            None => HostState::default(),
        };
        let mut inventory = Inventory {
            host,
            ..Inventory::default()
        };
        // Every row that references a pid is rewritten when the process changes, so all
        // present rows agree; the newest wins should they not.
        let mut newest: BTreeMap<u32, u64> = BTreeMap::new();
        let mut keep = |inventory: &mut Inventory, seq: u64, p: Process| {
            if newest.get(&p.pid).is_none_or(|s| *s <= seq) {
                newest.insert(p.pid, seq);
                inventory.processes.insert(p.pid, p);
            }
        };
        for s in self.current_sockets(host_id).await? {
            for p in s.processes {
                keep(&mut inventory, s.seq, p);
            }
            inventory.sockets.insert(s.socket.key, s.socket);
        }
        for f in self.current_flows(host_id).await? {
            if let Some(p) = f.process.filter(|p| p.pid != 0) {
                keep(&mut inventory, f.seq, p);
            }
            inventory.flows.insert(f.flow.key, f.flow.connections);
        }
        Ok((inventory, KnownHost { row: latest }))
    }

    /// Stores one change of a host: history rows, current rows, host facts when
    /// `delta.host` is set, and last the `host_reports` row that commits `seq`.
    ///
    /// `delta` must apply to the stored state ([`Store::load_current`]): the history is
    /// the sequence of deltas, and removed sockets and flows take their last-known
    /// processes from the stored rows, which this reads. A stream that holds its host's
    /// inventory writes with [`Store::write_change_from`] instead, which reads nothing.
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

    /// [`Store::write_change`] for a stream that holds its host's stored state: `prior`
    /// is the host's inventory before `delta` (what [`Store::load_known`] returned, with
    /// every change since applied) and `host` its latest `hosts` row as this stream read
    /// or wrote it; `host` is updated when the change writes new host facts. Reads
    /// nothing from ClickHouse, and writes with the changes of other streams (see
    /// [`batch`]): it resolves once the change is durable.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_change_from(
        &self,
        host_id: &str,
        seq: u64,
        kind: ChangeKind,
        scanned_at: SystemTime,
        delta: &Delta,
        stats: &ScanStats,
        prior: &Inventory,
        host: &mut KnownHost,
    ) -> Result<WriteReceipt, StoreError> {
        self.recover_if_dirty(host_id).await?;
        let (receipt, pending) = self
            .submit_change_from(host_id, seq, kind, scanned_at, delta, stats, prior, host)
            .await?;
        pending.wait().await?;
        Ok(receipt)
    }

    /// [`Store::write_change_from`] without waiting for the write: returns once the
    /// change is queued for its batch, with what it writes and a [`PendingWrite`] that
    /// resolves once it is durable. A stream may queue its host's next changes before
    /// this one is durable (`prior` of the next is this one applied): they are stored in
    /// order, and none after one that failed. Refuses to queue while an earlier write of
    /// the host has failed and is not rolled back yet (the stream must end).
    #[allow(clippy::too_many_arguments)]
    pub async fn submit_change_from(
        &self,
        host_id: &str,
        seq: u64,
        kind: ChangeKind,
        scanned_at: SystemTime,
        delta: &Delta,
        stats: &ScanStats,
        prior: &Inventory,
        host: &mut KnownHost,
    ) -> Result<(WriteReceipt, PendingWrite), StoreError> {
        self.refuse_if_dirty(host_id)?;
        let before = Before::from_inventory(prior, delta, host.row.as_ref());
        let change = Change::new(host_id, seq, kind, scanned_at, delta, stats);
        let (rows, receipt, row) = change.rows(before);
        let pending = self.batcher.enqueue(host_id, rows).await?;
        if let Some(row) = row {
            host.row = Some(row);
        }
        Ok((receipt, pending))
    }

    fn refuse_if_dirty(&self, host_id: &str) -> Result<(), StoreError> {
        if self.batcher.writer().is_dirty(host_id) {
            return Err(StoreError::EarlierWriteFailed {
                host_id: host_id.to_string(),
            });
        }
        Ok(())
    }

    /// What the rows of a change need of the stored state before it, read from
    /// ClickHouse.
    async fn read_before(
        &self,
        host_id: &str,
        kind: ChangeKind,
        delta: &Delta,
    ) -> Result<Before<'static>, StoreError> {
        let removed_keys: Vec<String> = delta.removed.iter().map(|s| s.key.to_string()).collect();
        let stored_sockets = self.socket_rows_by_key(host_id, &removed_keys).await?;
        let removed_flow_keys: Vec<String> = delta
            .flows_removed
            .iter()
            .map(|f| f.key.to_string())
            .collect();
        let stored_flows = self.flow_rows_by_key(host_id, &removed_flow_keys).await?;
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
    async fn commit_change(
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
    /// (see [`batch`]).
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

    /// [`Store::write_heartbeat`] without waiting for the write (see
    /// [`Store::submit_change_from`]).
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

    /// The socket history of a host, ordered by seq (deduplicated with `FINAL`).
    pub async fn socket_events(&self, host_id: &str) -> Result<Vec<SocketEvent>, StoreError> {
        let rows: Vec<SocketEventRow> = self
            .fetch(
                table::SOCKET_EVENTS,
                self.client.query(queries::SOCKET_EVENTS).bind(host_id),
            )
            .await?;
        rows.into_iter().map(history::socket_event).collect()
    }

    /// The flow history of a host, ordered by seq (deduplicated with `FINAL`).
    pub async fn flow_events(&self, host_id: &str) -> Result<Vec<FlowEvent>, StoreError> {
        let rows: Vec<FlowEventRow> = self
            .fetch(
                table::FLOW_EVENTS,
                self.client.query(queries::FLOW_EVENTS).bind(host_id),
            )
            .await?;
        rows.into_iter().map(history::flow_event).collect()
    }

    /// The reports of a host (snapshots, deltas, heartbeats), ordered by seq and time
    /// (deduplicated with `FINAL`).
    pub async fn reports(&self, host_id: &str) -> Result<Vec<HostReport>, StoreError> {
        let rows: Vec<ReportRow> = self
            .fetch(
                table::HOST_REPORTS,
                self.client.query(queries::REPORTS).bind(host_id),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| HostReport {
                seq: r.seq,
                kind: r.kind,
                at: from_datetime(r.at),
                stats: ScanStats {
                    sockets: r.sockets,
                    listeners: r.listeners,
                    connections: r.connections,
                    unattributed_no_permission: r.unattributed_no_permission,
                    unattributed_process_gone: r.unattributed_process_gone,
                    unattributed_unknown: r.unattributed_unknown,
                    kernel_owned: r.kernel_owned,
                    scan_duration_micros: r.scan_duration_micros,
                    state_counts: r.state_names.into_iter().zip(r.state_counts).collect(),
                    // Namespace counts are not stored (metrics and logs carry them).
                    ..ScanStats::default()
                },
            })
            .collect())
    }
}

/// The statement's table, for error messages: the word after `TABLE IF NOT EXISTS`, or
/// after `ALTER TABLE`.
fn statement_table(statement: &str) -> &str {
    let after = |marker: &str| {
        statement
            .split_whitespace()
            .skip_while(|w| *w != marker)
            .nth(1)
    };
    if statement.starts_with("ALTER TABLE") {
        after("TABLE").unwrap_or("schema")
    } else {
        after("EXISTS").unwrap_or("schema")
    }
}

/// The `hosts` row of a host's Hello facts: `record`'s names, labels and versions, with
/// the stored host facts of `latest` (or `record.host` when the host has none yet).
fn hello_row(record: &HostRecord, latest: Option<&HostRow>) -> HostRow {
    let mut row = HostRow {
        host_id: record.host_id.clone(),
        hostname: record.hostname.clone(),
        label_keys: record.labels.keys().cloned().collect(),
        label_values: record.labels.values().cloned().collect(),
        agent_version: record.agent_version.clone(),
        kernel: record.kernel.clone(),
        os: record.os.clone(),
        scan_interval_ms: record.scan_interval_ms,
        collector: record.collector.clone(),
        connected_at: to_datetime(SystemTime::now()),
        ..empty_host_row(&record.host_id)
    };
    match latest {
        Some(prev) => {
            row.set_facts(prev.facts());
            row.seq = prev.seq;
        }
        None => row.set_facts(HostFactsCols::encode(&record.host)),
    }
    stamp(&mut row, latest);
    row
}

fn empty_host_row(host_id: &str) -> HostRow {
    HostRow {
        host_id: host_id.to_string(),
        hostname: String::new(),
        label_keys: Vec::new(),
        label_values: Vec::new(),
        agent_version: String::new(),
        kernel: String::new(),
        os: String::new(),
        scan_interval_ms: 0,
        collector: String::new(),
        connected_at: 0,
        interface_names: Vec::new(),
        interfaces: Vec::new(),
        ephemeral_known: 0,
        ephemeral_min: 0,
        ephemeral_max: 0,
        seq: 0,
        updated_at: 0,
        updated_ns: 0,
        interface_netns: Vec::new(),
    }
}

/// Sets the row's write time, strictly after the previous row's even when clocks of
/// collector replicas disagree.
fn stamp(row: &mut HostRow, previous: Option<&HostRow>) {
    let now = SystemTime::now();
    row.updated_at = to_datetime(now);
    row.updated_ns = to_nanos(now).max(previous.map_or(0, |p| p.updated_ns.saturating_add(1)));
}

fn report_row(host_id: &str, seq: u64, kind: &str, at: SystemTime, stats: &ScanStats) -> ReportRow {
    ReportRow {
        host_id: host_id.to_string(),
        seq,
        kind: kind.to_string(),
        at: to_datetime(at),
        received_at: to_datetime(SystemTime::now()),
        sockets: stats.sockets,
        listeners: stats.listeners,
        connections: stats.connections,
        unattributed_no_permission: stats.unattributed_no_permission,
        unattributed_process_gone: stats.unattributed_process_gone,
        unattributed_unknown: stats.unattributed_unknown,
        kernel_owned: stats.kernel_owned,
        scan_duration_micros: stats.scan_duration_micros,
        state_names: stats.state_counts.keys().cloned().collect(),
        state_counts: stats.state_counts.values().copied().collect(),
        added: 0,
        removed: 0,
        changed: 0,
        flows_upserted: 0,
        flows_removed: 0,
        has_host: 0,
        interface_names: Vec::new(),
        interfaces: Vec::new(),
        ephemeral_known: 0,
        ephemeral_min: 0,
        ephemeral_max: 0,
        interface_netns: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gRPC handlers spawn these futures: they must be `Send` (checked at compile
    /// time, never run).
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(store: &Store, delta: &Delta, stats: &ScanStats, record: &HostRecord) {
        fn send<T: Send>(_: T) {}
        let now = SystemTime::now();
        send(store.write_change("h", 1, ChangeKind::Delta, now, delta, stats));
        send(store.write_heartbeat("h", 1, now, stats));
        send(store.load_current("h"));
        send(store.write_change_from(
            "h",
            1,
            ChangeKind::Delta,
            now,
            delta,
            stats,
            &Inventory::default(),
            &mut KnownHost::default(),
        ));
        send(store.last_seq("h"));
        send(store.recover("h"));
        send(store.upsert_host(record));
        send(store.migrate());
        send(Store::connect(&ClickHouseConfig {
            url: String::new(),
            database: String::new(),
            user: None,
            password: None,
        }));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("18.16.1"), Some((18, 16, 1)));
        assert_eq!(parse_version("24.8.4.13\n"), Some((24, 8, 4)));
        assert_eq!(parse_version("25.3.1.2703-lts"), Some((25, 3, 1)));
        assert_eq!(parse_version("26.1"), Some((26, 1, 0)));
        assert_eq!(parse_version("nope"), None);
    }

    #[test]
    fn database_names_are_identifiers() {
        assert!(valid_identifier("portolan"));
        assert!(valid_identifier("test_write_change_2"));
        assert!(!valid_identifier("a-b"));
        assert!(!valid_identifier("1abc"));
        assert!(!valid_identifier("x; DROP TABLE y"));
        assert!(!valid_identifier(""));
    }

    #[test]
    fn statement_tables_are_named() {
        let s = schema::statements(Flavor::Legacy);
        assert_eq!(statement_table(&s[0]), "schema_migrations");
        assert_eq!(statement_table(&s[1]), "hosts");
    }
}
