//! Enrollment: agents that join with a bootstrap token, renew over their own identity,
//! and hosts an admin approves, denies or retires.
//!
//! | module | what it is for |
//! |---|---|
//! | [`service`] | `EnrollmentService`: Enroll, Renew, tokens and host keys |
//! | [`gate`] | which certificates may speak for their host now (every call, every stream) |
//! | [`signer`] | the enrollment signer, reloaded when its files change |
//! | [`tokens`] | bootstrap tokens: made, parsed, checked (stored hashed) |
//!
//! The decisions themselves are pure: `portolan_core::enrollment`.

pub mod gate;
pub mod service;
pub mod signer;
pub mod tokens;

pub use gate::{Gate, KeyBook};
pub use service::Enrollment;
pub use signer::{SignerFiles, SignerHandle};
