//! The query service: operators' questions, answered from ClickHouse.
//!
//! Only operator certificates (reader or admin) may ask; agent certificates are refused,
//! so a compromised host cannot read the fleet's inventory. Changes (acknowledging
//! findings) need the admin role, and record who made them from the certificate. Who may
//! call what is declared once, for every RPC, in [`crate::authz`]: no handler checks a
//! role itself.
//!
//! - `service`: the gRPC handlers, each handing its request to the module that answers;
//! - `inventory`: hosts, sockets, flows, their history and past snapshots;
//! - `findings`: findings and their acknowledgements;
//! - `watch`: the watch streams, which poll ClickHouse so that they see what any
//!   replica stored;
//! - `test_rules`: rules tried on the stored inventory;
//! - `fields` checks request fields; lists are paged by keyset (`page`, `cursor`);
//! - `convert` and `peers` shape stored rows as the protocol sends them;
//! - every error becomes a gRPC status in one place (`error`).

mod convert;
mod cursor;
mod error;
mod fields;
mod findings;
mod inventory;
mod page;
mod peers;
mod service;
mod test_rules;
mod watch;

use std::sync::Arc;

use portolan_tls::peer_info;
use tokio::sync::Semaphore;
use tonic::{Request, Status};

pub use self::error::QueryError;
use crate::revocation::{LiveSession, Revocations};
use portolan_store::Store;

/// Rows per answer when a request sets no page size (nor `limit`).
pub const DEFAULT_LIMIT: u32 = 10_000;
/// The most rows one answer may hold.
pub const MAX_LIMIT: u32 = 100_000;
/// A host is stale when it has not reported for this many scan intervals.
pub const STALE_AFTER_INTERVALS: u32 = 3;
/// Watch streams one collector serves at once, unless configured otherwise
/// ([`Query::with_max_watches`]).
pub const DEFAULT_MAX_WATCHES: usize = 64;
/// The longest acknowledgement reason, in characters.
pub const MAX_REASON_CHARS: usize = 1000;
/// The longest fingerprint, host id or key accepted in a request, in bytes.
const MAX_ID_BYTES: usize = 1024;

/// The `QueryService` implementation.
#[derive(Debug, Clone)]
pub struct Query {
    store: Arc<Store>,
    watches: Arc<Semaphore>,
    max_watches: usize,
    revocations: Revocations,
}

impl Query {
    /// A service answering from `store`, serving at most [`DEFAULT_MAX_WATCHES`] watch
    /// streams at once.
    pub fn new(store: Arc<Store>) -> Query {
        Query {
            store,
            watches: Arc::new(Semaphore::new(DEFAULT_MAX_WATCHES)),
            max_watches: DEFAULT_MAX_WATCHES,
            revocations: Revocations::none(),
        }
    }

    /// The same service, ending the watch streams of certificates `revocations` revokes.
    pub fn with_revocations(self, revocations: Revocations) -> Query {
        Query {
            revocations,
            ..self
        }
    }

    /// Registers a watch stream of the caller, ended when its certificate is revoked.
    fn live<T>(&self, request: &Request<T>) -> Result<LiveSession, Status> {
        let peer = peer_info(request).ok_or(QueryError::NoCertificate)?;
        self.revocations.open(peer, "watch")
    }

    /// The same service serving at most `max` watch streams at once (at least one).
    pub fn with_max_watches(self, max: usize) -> Query {
        let max = max.max(1);
        Query {
            watches: Arc::new(Semaphore::new(max)),
            max_watches: max,
            ..self
        }
    }
}
