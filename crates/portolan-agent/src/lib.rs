//! The Portolan agent: scans the host's sockets ([`scan`]), renders them for people
//! ([`output`]) and streams them to a collector ([`stream`]) as [`config`] says; it
//! reports its [`metrics`] and [`health`] over HTTP.
#![forbid(unsafe_code)]

pub mod config;
pub mod footprint;
pub mod health;
pub mod metrics;
pub mod output;
pub mod scan;
pub mod spool;
pub mod stream;
