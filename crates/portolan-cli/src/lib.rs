//! The `portolan` command-line tool.
//!
//! The verbs live in the `portolan` binary (`src/main.rs` and its modules). This library
//! holds what the verbs share and what tests drive without a collector: the connection
//! settings ([`config`]), the rows the query verbs print ([`rows`]) and how they are
//! printed ([`output`]), how answers are paged ([`paging`]) and how times are written on
//! the command line ([`when`]).

#![forbid(unsafe_code)]

pub mod config;
pub mod output;
pub mod paging;
pub mod rows;
pub mod when;
