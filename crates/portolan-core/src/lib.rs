//! Portolan's domain: sockets, processes, exposure scopes, inventories, deltas and flows.
//!
//! Everything here is pure: no I/O, no async, no clock. The agent builds an
//! [`Inventory`] from a scan, [`diff`] turns two inventories into a [`Delta`], and
//! [`apply`] turns the older inventory and the delta back into the newer one (the law the
//! property tests check). [`wire`] converts to and from the `portolan.v1` protocol,
//! validating everything that comes from the network. [`limit`] cuts a value at its byte
//! limit, visibly; [`backoff`] is how every retry loop waits.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod delta;
pub mod enrollment;
pub mod flow;
pub mod fuzz;
pub mod host;
pub mod inventory;
pub mod limit;
pub mod names;
pub mod process;
pub mod scope;
pub mod socket;
pub mod wire;

pub use delta::{Delta, apply, apply_after_check, apply_in_place, check_applies, diff};
pub use flow::{Direction, Flow, FlowKey, fold_connections};
pub use host::{HostState, InterfaceAddress, ScanStats};
pub use inventory::Inventory;
pub use names::{Named, UnknownName};
pub use process::Process;
pub use scope::{AddressBlock, Scope, classify, exposure, exposure_in};
pub use socket::{
    Attribution, HOST_NETNS, Protocol, Socket, SocketKey, SocketState, UNIX_ADDRESS, is_listener,
};
