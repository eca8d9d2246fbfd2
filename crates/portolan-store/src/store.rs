//! The [`Store`]: one ClickHouse database, its connection, schema migration and the
//! reads of one host's stored state. Writes are in `store/write.rs`, recovery of
//! interrupted writes in `store/recover.rs`.

mod recover;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clickhouse::sql::Identifier;
use clickhouse::{Client, Row, RowOwned, RowRead, RowWrite};

use crate::error::Endpoint;
use portolan_core::{HostState, Inventory, Process, ScanStats};

use crate::batch::{BatchConfig, Batcher, WriteStats, Writer};
use crate::change::KnownHost;
use crate::rows::{HostRow, MigrationRow, ReportRow, from_datetime, to_datetime};
use crate::schema::{self, Flavor, table};
use crate::tracked::{Flows, Sockets, Tracked};
use crate::{
    ClickHouseConfig, FlowEvent, HostReport, MigrationReport, SchemaStatus, ServerInfo,
    SocketEvent, StoreError, StoredFlow, StoredHost, StoredSocket, parse_version, queries,
    stored_host,
};

/// How long [`Store::recover`] waits for its deletions.
const ROLLBACK_DEADLINE: Duration = Duration::from_secs(120);

/// The ClickHouse store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    pub(crate) client: Client,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) database: String,
    pub(crate) info: ServerInfo,
    /// Hosts whose last write failed in this process: recovered before their next
    /// read or write.
    pub(crate) dirty: Arc<Mutex<HashSet<String>>>,
    /// Bounds this process's concurrent ClickHouse requests (see [`MAX_CONCURRENT_REQUESTS`]).
    pub(crate) requests: Arc<tokio::sync::Semaphore>,
    /// Groups the writes of all streams into batches (see [`batch`]).
    pub(crate) batcher: Batcher,
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
            .field("url", &self.endpoint.url)
            .field("database", &self.database)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
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
        let endpoint = Arc::new(Endpoint {
            url: config.url.clone(),
            tls: config.tls.clone(),
        });
        let mut base = crate::tls::client(&config.url, &config.tls)?.with_validation(false);
        if let Some(user) = &config.user {
            base = base.with_user(user);
        }
        if let Some(password) = &config.password {
            base = base.with_password(password);
        }
        let map = |op: &'static str, table: &str| {
            let endpoint = endpoint.clone();
            let table = table.to_string();
            move |error: clickhouse::error::Error| endpoint.error(op, &table, error)
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
            endpoint.clone(),
            requests.clone(),
            dirty.clone(),
        ));
        Ok(Store {
            client,
            endpoint,
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
            self.endpoint.clone(),
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

    pub(crate) fn map_err(
        &self,
        op: &'static str,
        table: &str,
    ) -> impl FnOnce(clickhouse::error::Error) -> StoreError {
        let endpoint = self.endpoint.clone();
        let table = table.to_string();
        move |error| endpoint.error(op, &table, error)
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

    /// Reads the applied schema version and compares it with this build's: one small
    /// query, which also proves the server answers. It does not wait for a request slot
    /// (writes may hold them all): readiness checks call it every few seconds.
    pub async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let applied = match self
            .client
            .query(queries::APPLIED_MIGRATIONS)
            .fetch_all::<u32>()
            .await
        {
            Ok(versions) => versions.into_iter().max().unwrap_or(0),
            // No `schema_migrations` at all (a new or emptied database): nothing applied.
            // Code 60 is UNKNOWN_TABLE, on every server version.
            Err(e)
                if e.to_string().contains("Code: 60")
                    || e.to_string().contains("UNKNOWN_TABLE") =>
            {
                0
            }
            Err(e) => return Err(self.map_err("read", table::SCHEMA_MIGRATIONS)(e)),
        };
        let required = schema::migrations(self.info.flavor())
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        Ok(SchemaStatus { applied, required })
    }

    /// Runs one DDL statement; a concurrent creator winning the race is success.
    pub(crate) async fn ddl(&self, statement: &str, table: &str) -> Result<(), StoreError> {
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

    pub(crate) async fn insert<T>(&self, table: &'static str, rows: &[T]) -> Result<u64, StoreError>
    where
        T: Row + RowOwned + RowWrite,
    {
        self.batcher.writer().insert(table, rows).await
    }

    pub(crate) async fn fetch<T>(
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
    pub(crate) async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed: `None` cannot happen, and would only mean no bound.
        self.requests.acquire().await.ok()
    }

    pub(crate) async fn recover_if_dirty(&self, host_id: &str) -> Result<(), StoreError> {
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

    pub(crate) async fn latest_host_row(
        &self,
        host_id: &str,
    ) -> Result<Option<HostRow>, StoreError> {
        Ok(self
            .fetch::<HostRow>(
                table::HOSTS,
                self.client.query(queries::LATEST_HOST).bind(host_id),
            )
            .await?
            .into_iter()
            .next())
    }

    /// The latest current rows of `keys` (present or not), by key.
    pub(crate) async fn rows_by_key<K: Tracked>(
        &self,
        host_id: &str,
        keys: &[String],
    ) -> Result<HashMap<String, K::Current>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<K::Current> = self
            .fetch(
                K::CURRENT,
                self.client
                    .query(K::BY_KEY)
                    .bind(host_id)
                    .bind(keys)
                    .with_setting("max_query_size", queries::MAX_QUERY_SIZE),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (K::current_key(&r).to_string(), r))
            .collect())
    }

    /// The stored host, or `None` when it never said Hello nor sent host facts.
    pub async fn host(&self, host_id: &str) -> Result<Option<StoredHost>, StoreError> {
        let Some(row) = self.latest_host_row(host_id).await? else {
            return Ok(None);
        };
        stored_host(row).map(Some)
    }

    /// The current sockets of a host, ordered by key.
    pub async fn current_sockets(&self, host_id: &str) -> Result<Vec<StoredSocket>, StoreError> {
        self.current::<Sockets>(host_id).await
    }

    /// The current flows of a host, ordered by key.
    pub async fn current_flows(&self, host_id: &str) -> Result<Vec<StoredFlow>, StoreError> {
        self.current::<Flows>(host_id).await
    }

    async fn current<K: Tracked>(&self, host_id: &str) -> Result<Vec<K::Stored>, StoreError> {
        self.recover_if_dirty(host_id).await?;
        let query = self.client.query(K::CURRENT_OF_HOST).bind(host_id);
        let rows: Vec<K::Current> = self.fetch(K::CURRENT, query).await?;
        rows.iter().map(K::stored).collect()
    }

    /// The stored inventory of a host: host facts from its latest `hosts` row, current
    /// sockets and flows, and the processes they reference. Equal to the inventory whose
    /// changes were written (the collector diffs snapshots against it).
    pub async fn load_current(&self, host_id: &str) -> Result<Inventory, StoreError> {
        Ok(self.load_known(host_id).await?.0)
    }

    /// [`Store::load_current`], with the host's latest `hosts` row: what a stream holds
    /// to write its host's changes from ([`crate::HostLedger`]).
    pub(crate) async fn load_known(
        &self,
        host_id: &str,
    ) -> Result<(Inventory, KnownHost), StoreError> {
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

    /// The socket history of a host, ordered by seq (deduplicated with `FINAL`).
    pub async fn socket_events(&self, host_id: &str) -> Result<Vec<SocketEvent>, StoreError> {
        self.stored_events::<Sockets>(host_id).await
    }

    /// The flow history of a host, ordered by seq (deduplicated with `FINAL`).
    pub async fn flow_events(&self, host_id: &str) -> Result<Vec<FlowEvent>, StoreError> {
        self.stored_events::<Flows>(host_id).await
    }

    async fn stored_events<K: Tracked>(
        &self,
        host_id: &str,
    ) -> Result<Vec<K::StoredEvent>, StoreError> {
        let query = self.client.query(K::EVENTS_OF_HOST).bind(host_id);
        let rows: Vec<K::Event> = self.fetch(K::EVENTS, query).await?;
        rows.into_iter().map(K::stored_event).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChangeKind, HostRecord};
    use portolan_core::Delta;

    /// The gRPC handlers spawn these futures: they must be `Send` (checked at compile
    /// time, never run).
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(store: &Store, delta: &Delta, stats: &ScanStats, record: &HostRecord) {
        fn send<T: Send>(_: T) {}
        let now = SystemTime::now();
        send(store.write_change("h", 1, ChangeKind::Delta, now, delta, stats));
        send(store.write_heartbeat("h", 1, now, stats));
        send(store.load_current("h"));
        send(store.last_seq("h"));
        send(store.recover("h"));
        send(store.upsert_host(record));
        send(store.migrate());
        send(Store::connect(&ClickHouseConfig {
            url: String::new(),
            database: String::new(),
            user: None,
            password: None,
            tls: crate::ClickHouseTls::default(),
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
