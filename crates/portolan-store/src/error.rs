//! Why a store operation failed.

use std::sync::Arc;

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
