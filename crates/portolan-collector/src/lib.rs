//! The Portolan collector: receives agents' inventories over mutual-TLS gRPC and stores
//! them in ClickHouse through `portolan-store`.
//!
//! It holds no fleet state of its own: any replica can serve any agent, and everything
//! is read back from ClickHouse (`portolan_store`). Without a configured ClickHouse URL it runs a
//! managed local ClickHouse (`portolan_store::managed`). The evaluating replica sends
//! findings to Alertmanager and webhooks ([`notify`]).
#![forbid(unsafe_code)]

pub mod authz;
pub mod config;
pub mod enroll;
pub mod error;
pub mod evaluate;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod query;
pub mod rate;
pub mod revocation;
pub mod server;
