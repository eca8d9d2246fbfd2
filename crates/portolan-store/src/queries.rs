//! Every statement the store runs, as text, and a catalog of them with sample values.
//!
//! `?` is a bind placeholder of the `clickhouse` crate (escaped client-side, so that the
//! queries run on servers without query parameters, such as 18.16); `?fields` is the
//! column list of the row type read.
//!
//! [`catalog`] renders every statement with sample values, so that the schema and the
//! queries can be checked against another server (see `tools/chdb/check.py`).
//!
//! | module | what it is for |
//! |---|---|
//! | this one | the statements of the store's own reads, recovery and rollback |
//! | `catalog` | [`catalog`]: every statement, the other modules' too, with sample values |
//! | `literals` | the catalog's `INSERT … VALUES`: a typed row as SQL literals |

mod catalog;
mod literals;

pub use self::catalog::{CatalogEntry, catalog};

use super::schema::table;

/// The server version.
pub const VERSION: &str = "SELECT version()";
/// Creates the database (bound as an identifier).
pub const CREATE_DATABASE: &str = "CREATE DATABASE IF NOT EXISTS ?";
/// Applied migrations.
pub const APPLIED_MIGRATIONS: &str =
    "SELECT DISTINCT version FROM schema_migrations ORDER BY version";
/// The last committed seq of a host.
pub const LAST_SEQ: &str =
    "SELECT max(seq) FROM host_reports WHERE host_id = ? AND kind IN ('snapshot', 'delta')";
/// The latest `hosts` row of a host.
pub const LATEST_HOST: &str =
    "SELECT ?fields FROM hosts FINAL WHERE host_id = ? ORDER BY updated_ns DESC LIMIT 1";
/// The current sockets of a host.
pub const CURRENT_SOCKETS: &str = "SELECT ?fields FROM sockets_current FINAL WHERE host_id = ? AND present = 1 ORDER BY socket_key";
/// The current flows of a host.
pub const CURRENT_FLOWS: &str =
    "SELECT ?fields FROM flows_current FINAL WHERE host_id = ? AND present = 1 ORDER BY flow_key";
/// The latest rows of some sockets (present or not).
pub const SOCKETS_BY_KEY: &str =
    "SELECT ?fields FROM sockets_current FINAL WHERE host_id = ? AND has(?, socket_key)";
/// The latest rows of some flows (present or not).
pub const FLOWS_BY_KEY: &str =
    "SELECT ?fields FROM flows_current FINAL WHERE host_id = ? AND has(?, flow_key)";
/// Socket history of a host.
pub const SOCKET_EVENTS: &str =
    "SELECT ?fields FROM socket_events FINAL WHERE host_id = ? ORDER BY seq, event, socket_key";
/// Flow history of a host.
pub const FLOW_EVENTS: &str =
    "SELECT ?fields FROM flow_events FINAL WHERE host_id = ? ORDER BY seq, event, flow_key";
/// Reports of a host.
pub const REPORTS: &str =
    "SELECT ?fields FROM host_reports FINAL WHERE host_id = ? ORDER BY seq, at, kind";
/// Rows of a table above a host's last committed seq (table bound as an identifier).
pub const COUNT_UNCOMMITTED: &str = "SELECT count() FROM ? WHERE host_id = ? AND seq > ?";
/// Sockets touched by uncommitted rows.
pub const UNCOMMITTED_SOCKET_KEYS: &str =
    "SELECT DISTINCT socket_key FROM sockets_current WHERE host_id = ? AND seq > ?";
/// Flows touched by uncommitted rows.
pub const UNCOMMITTED_FLOW_KEYS: &str =
    "SELECT DISTINCT flow_key FROM flows_current WHERE host_id = ? AND seq > ?";
/// Deletes uncommitted rows (table bound as an identifier).
pub const ROLLBACK: &str = "ALTER TABLE ? DELETE WHERE host_id = ? AND seq > ?";
/// Committed history of some sockets, oldest first.
pub const LAST_SOCKET_EVENTS: &str = "SELECT ?fields FROM socket_events FINAL WHERE host_id = ? AND seq <= ? AND has(?, socket_key) ORDER BY seq";
/// Committed history of some flows, oldest first.
pub const LAST_FLOW_EVENTS: &str = "SELECT ?fields FROM flow_events FINAL WHERE host_id = ? AND seq <= ? AND has(?, flow_key) ORDER BY seq";
/// The latest committed report that carried host facts.
pub const LAST_HOST_FACTS: &str = "SELECT ?fields FROM host_reports FINAL WHERE host_id = ? AND seq <= ? AND has_host = 1 AND kind IN ('snapshot', 'delta') ORDER BY seq DESC LIMIT 1";

/// Tables with a `seq` column that uncommitted writes can leave rows in.
pub(crate) const SEQ_TABLES: [&str; 5] = [
    table::SOCKET_EVENTS,
    table::FLOW_EVENTS,
    table::SOCKETS_CURRENT,
    table::FLOWS_CURRENT,
    table::HOSTS,
];

/// `max_query_size` for queries that carry lists of keys (the default, 256 KiB, holds
/// about 4,000 socket keys).
pub(crate) const MAX_QUERY_SIZE: &str = "16777216";
