//! The Portolan agent: scans the host's sockets ([`scan`]), renders them for people
//! ([`output`]) and streams them to a collector ([`stream`]) as [`config`] says; it
//! reports its [`metrics`] and [`health`] over HTTP. With a bootstrap token it obtains and
//! renews its certificate by itself ([`enroll`]).
#![forbid(unsafe_code)]

pub mod config;
pub mod enroll;
pub mod footprint;
pub mod health;
pub mod metrics;
pub mod output;
pub mod scan;
pub mod spool;
pub mod stream;
