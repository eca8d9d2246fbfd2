//! Mutual TLS for every Portolan binary.
//!
//! Every connection between agents, collectors and operators is mutual TLS (rustls with the
//! `ring` provider, TLS 1.3 and 1.2, ALPN `h2`). This crate:
//!
//! - loads the CA, certificate and key files named in a binary's configuration
//!   ([`TlsFiles`]); the CA file may hold several CAs, all trusted (CA rotation);
//! - reads a peer's [`Identity`] from the `spiffe://portolan/…` SAN URI of its
//!   certificate ([`identity_from_der`]);
//! - builds the collector's server configuration, which requires a client certificate
//!   ([`server_config`]), and feeds tonic only successfully authenticated connections
//!   ([`TlsIncoming`]), whose [`PeerInfo`] handlers read with [`peer_info`];
//! - builds the agent's and CLI's client configuration ([`client_config`]) and connects a
//!   tonic [`Channel`](tonic::transport::Channel) ([`connect`]);
//! - reads the X.509 CRLs the trusted CAs publish ([`CrlSet`]) and enforces them in the
//!   handshake and, folded into the [`RevocationList`], for calls and open streams;
//! - reloads the collector's certificate, key, CAs, CRLs and revocation list when their
//!   files change, without a restart ([`ServerTls`], [`RevocationList`]);
//! - reaches servers through the HTTP proxy the environment names (`HTTPS_PROXY`,
//!   `NO_PROXY`; [`proxy`]);
//! - with the `pki` feature, runs a development CA ([`pki::Ca`]) and the enrollment
//!   signer, and makes a host's key and signing request ([`enroll`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub mod client;
pub mod crl;
#[cfg(feature = "pki")]
pub mod enroll;
mod error;
pub mod files;
pub mod identity;
#[cfg(feature = "pki")]
pub mod pki;
pub mod proxy;
pub mod reload;
pub mod revocation;
pub mod server;

pub use client::{
    ConnectOptions, client_config, connect, connect_endpoint, connect_endpoint_lazy, connect_lazy,
    server_only_client_config,
};
pub use crl::{Crl, CrlSet};
pub use error::TlsError;
pub use files::{TlsFiles, Validity};
pub use identity::{
    CertFacts, Identity, IdentityError, OperatorRole, certificate_facts, certificate_serial,
    identity_from_der, key_sha256,
};
pub use reload::{DEFAULT_RELOAD_INTERVAL, RevocationFiles, ServerTls};
pub use revocation::{RevocationList, RevocationParseError, serial_hex};
pub use server::{
    AcceptOptions, ClientAuth, PeerInfo, PeerStream, TlsIncoming, peer_info, server_config,
    server_config_with_crls,
};

/// The ALPN protocol of gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// The TLS versions Portolan speaks: 1.3, and 1.2 for older peers.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider of the whole tree: rustls' `ring` provider.
///
/// Configurations are built with it explicitly, so nothing depends on a process-wide
/// default provider being installed.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
