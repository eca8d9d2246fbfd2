//! Why a store operation failed.

use std::sync::Arc;

use crate::tls::{self, ClickHouseTls};

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
    /// The TLS handshake with an `https://` server failed: its certificate is not trusted,
    /// it wants a client certificate, or it does not speak TLS.
    #[error("cannot open a TLS connection to ClickHouse at {url}: {problem}")]
    Tls {
        /// The configured URL.
        url: String,
        /// What failed and what to configure.
        problem: String,
        /// The client's error.
        error: clickhouse::error::Error,
    },
    /// A file of `[clickhouse.tls]` cannot be used.
    #[error("`{key}` at {}: {reason}", path.display())]
    TlsFile {
        /// The configuration key (`clickhouse.tls.ca`, `.cert`, `.key`).
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// The TLS client cannot be set up (no system CAs, half a client certificate).
    #[error("cannot set up TLS to ClickHouse: {0}")]
    TlsSetup(String),
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

/// Where the store's requests go: what turns a client error into a [`StoreError`] that
/// names the server and says what to do.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The configured URL.
    pub(crate) url: String,
    /// How TLS is set up for it (for the advice of a failed handshake).
    pub(crate) tls: ClickHouseTls,
}

impl Endpoint {
    /// `error`, met while doing `op` on `table`: a TLS failure, an unreachable server, or
    /// a statement the server refused or failed.
    pub(crate) fn error(
        &self,
        op: &'static str,
        table: &str,
        error: clickhouse::error::Error,
    ) -> StoreError {
        if let Some(problem) = tls::diagnose(&error, &self.tls) {
            StoreError::Tls {
                url: self.url.clone(),
                problem,
                error,
            }
        } else if is_connect_error(&error) {
            StoreError::Unreachable {
                url: self.url.clone(),
                error,
            }
        } else {
            StoreError::Query {
                op,
                table: table.to_string(),
                error,
            }
        }
    }
}

/// The server could not be reached (as opposed to a statement it refused).
pub(crate) fn is_connect_error(error: &clickhouse::error::Error) -> bool {
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
