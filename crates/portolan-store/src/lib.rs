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
//! - `enroll_tokens` / `host_keys` — enrollment: bootstrap tokens (secrets hashed) and
//!   every host's keys with where each stands, the latest row per token and per key.
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
//!
//! # Contents
//!
//! | module | what it is for |
//! |---|---|
//! | [`ledger`] | [`HostLedger`]: one host's stored state as its stream holds it, and the one write path of the protocol (hello, snapshot, delta, heartbeat) |
//! | [`store`] | [`Store`]: connection, server detection, migration, one host's stored state read back, writes, recovery |
//! | [`server`] | [`ClickHouseConfig`] and [`ServerInfo`]: where the server is and what it is |
//! | [`tls`] | [`ClickHouseTls`]: `https://` servers, their roots and client certificates, and what a failed handshake means |
//! | [`stored`] | what the store takes and gives back: [`HostRecord`], [`StoredSocket`], events, receipts |
//! | [`error`] | [`StoreError`] |
//! | [`schema`] | the DDL of every table, per server flavour, and its migrations |
//! | [`queries`] | every SQL statement the store runs |
//! | `rows`, `rowbinary` | the typed rows of each table and their RowBinary encoding |
//! | `layout` (tests) | the DDL, the typed rows and the RowBinary writer held to [`schema`]'s one layout per table |
//! | `change` | the rows of one change, pure |
//! | `tracked` | sockets and flows alike: the tables, statements and rows of each |
//! | [`batch`] | group commit: the writes of every stream in one batch |
//! | [`fleet`] | hosts, sockets and flows across the fleet, filtered and paged |
//! | [`history`] | events over time and the state at a past instant |
//! | [`findings`], [`acks`] | the rules' findings and their acknowledgements |
//! | [`gaps`] | spool gaps: where an agent's history holds only a net effect |
//! | [`enrollment`] | bootstrap tokens and host keys (bound, pending, retired…) |
//! | [`managed`] | the embedded default: a local `clickhouse-server` the collector runs |
#![forbid(unsafe_code)]

pub mod acks;
pub mod batch;
mod change;
pub mod enrollment;
pub mod error;
pub mod findings;
pub mod fleet;
pub mod gaps;
pub mod history;
#[cfg(test)]
mod layout;
pub mod ledger;
pub mod managed;
pub mod queries;
mod rowbinary;
mod rows;
pub mod schema;
pub mod server;
pub mod store;
pub mod stored;
pub mod tls;
mod tracked;

pub use self::batch::{BatchConfig, PendingWrite, WriteStats};
pub use self::error::StoreError;
pub use self::ledger::{DeltaOutcome, HostLedger};
pub use self::schema::Flavor;
pub use self::server::{ClickHouseConfig, ServerInfo, parse_version};
pub use self::store::{MAX_CONCURRENT_REQUESTS, Store};
pub use self::stored::{
    ChangeKind, FlowEvent, FlowEventKind, HostRecord, HostReport, MigrationReport, Recovery,
    SchemaStatus, SocketEvent, SocketEventKind, StoredFlow, StoredHost, StoredSocket, WriteReceipt,
};
pub use self::tls::ClickHouseTls;

pub(crate) use self::change::{empty_host_row, hello_row, report_row, stamp};
pub(crate) use self::stored::stored_host;
