//! The Portolan collector: receives agents' inventories over mutual-TLS gRPC and stores
//! them in ClickHouse.
//!
//! It holds no fleet state of its own: any replica can serve any agent, and everything
//! is read back from ClickHouse ([`store`]). Without a configured ClickHouse URL it runs a
//! managed local ClickHouse ([`managed_clickhouse`]). The evaluating replica sends
//! findings to Alertmanager and webhooks ([`notify`]).
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod evaluate;
pub mod ingest;
pub mod managed_clickhouse;
pub mod metrics;
pub mod notify;
pub mod query;
pub mod rate;
pub mod revocation;
pub mod server;
pub mod store;
