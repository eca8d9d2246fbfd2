//! Portolan's gRPC protocol, package `portolan.v1`.
//!
//! The Rust code is generated from `proto/portolan/v1/*.proto` and checked in under
//! `src/generated/`, so that building Portolan never needs `protoc`. The test
//! `generated_code_is_current` regenerates it (with a vendored `protoc`) and fails when the
//! checked-in code differs; run it with `PORTOLAN_BLESS=1` to rewrite the files.

pub mod codec;

/// Version 1 of the protocol.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    include!("generated/portolan.v1.rs");
}

/// The encoded `FileDescriptorSet` of every `portolan.v1` proto file, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/portolan.v1.bin");
