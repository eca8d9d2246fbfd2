//! Test support for Portolan, for tests and benchmarks only.
//!
//! - [`netns`]: a [`Lab`] of hosts, each a network namespace wired to a bridge in the root
//!   namespace, torn down on drop.
//! - [`fixture`]: [`SocketFixture`] drives the `portolan-socket-fixture` binary, which holds
//!   real listeners and connections in a namespace as a test tells it.
//! - [`ss`]: [`ss_sockets`], the oracle of what the kernel holds, parsed from `ss`.
//! - [`eventually!`] and [`eventually_async!`]: wait for a condition with a deadline,
//!   never with a bare sleep.
//! - [`receiver`]: [`Receiver`], a real HTTP server on 127.0.0.1 that records every
//!   request and answers with scripted statuses and delays (Alertmanager, webhooks).
//! - [`otlp`]: [`OtlpReceiver`], a real OTLP/gRPC trace receiver that records every span
//!   with its service, ids and parent, to follow a trace across processes.
//! - [`clickhouse`]: queries over ClickHouse's HTTP interface, and how benchmarks print
//!   figures.
//! - [`free_port`] and [`TempState`]: small helpers.
//!
//! Everything that touches namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and
//! sends traffic only to loopback and to the lab's own addresses (`10.77.N.0/24`,
//! `fd77:N::/64`), which exist only on the lab's bridge and in its namespaces.
#![forbid(unsafe_code)]

pub mod clickhouse;
pub mod error;
pub mod eventually;
pub mod fixture;
pub mod netns;
pub mod otlp;
pub mod receiver;
pub mod ss;
mod util;

pub use error::{Error, Result};
pub use fixture::{FixtureId, SocketFixture, fixture_binary};
pub use netns::{ChildGuard, Lab, NetnsHost, StaleCleanup, check_privileges};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use receiver::{Receiver, Recorded, Reply};
pub use ss::{SsSocket, parse_ss_line, parse_ss_output, ss_sockets};
pub use util::{TempState, free_port};

/// The transport protocol, as `portolan-core` names it.
pub use portolan_core::{Protocol, SocketState};
