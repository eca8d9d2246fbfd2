//! The `portolan` command-line tool.
//!
//! Everything lives in the `portolan` binary (`src/main.rs` and its modules); this library
//! target is kept so that tests and other verbs can share code later.

#![forbid(unsafe_code)]
