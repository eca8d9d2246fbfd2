//! The rows the query verbs print: one struct per kind, made from the API's messages.
//!
//! Each struct's serde shape is its JSON (documented in `docs/json-output.md`: field
//! names are snake_case and stable, enums are lowercase snake_case words); its
//! [`Record`](crate::output::Record) column list is its table, wide and CSV. Adding a verb
//! means adding a module here with its row, a `From<&pb::…>` conversion and its columns.

pub mod enrollment;
pub mod event;
pub mod finding;
pub mod flow;
pub mod host;
pub mod labels;
pub mod process;
pub mod snapshot;
pub mod socket;
pub mod tested;

use std::collections::HashMap;
use std::net::IpAddr;

use portolan_proto::v1 as pb;

pub use event::EventRow;
pub use finding::{AckRow, FindingChangeRow, FindingRow};
pub use flow::FlowRow;
pub use host::{HostDetail, HostRow, InterfaceRow};
pub use labels::{labels_text, parse_labels_text};
pub use process::{label as process_label, process_row};
pub use snapshot::SnapshotDoc;
pub use socket::SocketRow;
pub use tested::{RulesTestReport, TestedFindingRow};

/// `1 rule`, `2 rules`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// An address from the wire (4 or 16 bytes).
pub fn address(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(b))
    } else {
        <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
    }
}

/// An address from the wire as text; empty when it is neither IPv4 nor IPv6.
pub fn address_text(bytes: &[u8]) -> String {
    address(bytes).map(|a| a.to_string()).unwrap_or_default()
}

/// `address:port`, with brackets around an IPv6 address; `?` for an unknown address.
pub fn endpoint(address: &str, port: u32) -> String {
    match address {
        "" => format!("?:{port}"),
        a if a.contains(':') => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

/// `hostname`, or the host id when the host reported no hostname.
pub fn host_name<'a>(hostname: &'a str, host_id: &'a str) -> &'a str {
    if hostname.is_empty() {
        host_id
    } else {
        hostname
    }
}

/// Labels from the wire, sorted (JSON objects keep this order).
pub fn labels(labels: &HashMap<String, String>) -> std::collections::BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// An enum of the wire protocol that has a lowercase name in rows.
pub trait WireEnum: TryFrom<i32> {
    /// The prefix of its proto value names (`SCOPE_`).
    const PREFIX: &'static str;
    /// Its proto value name (`SCOPE_LINK_LOCAL`).
    fn proto_name(&self) -> &'static str;
}

macro_rules! wire_enum {
    ($($ty:ty => $prefix:literal),* $(,)?) => {$(
        impl WireEnum for $ty {
            const PREFIX: &'static str = $prefix;
            fn proto_name(&self) -> &'static str {
                self.as_str_name()
            }
        }
    )*};
}

wire_enum! {
    pb::Protocol => "PROTOCOL_",
    pb::SocketState => "SOCKET_STATE_",
    pb::Scope => "SCOPE_",
    pb::Attribution => "ATTRIBUTION_",
    pb::FlowDirection => "FLOW_DIRECTION_",
    pb::Peer => "PEER_",
    pb::FindingStatus => "FINDING_STATUS_",
    pb::FindingChange => "FINDING_CHANGE_",
    pb::EventKind => "EVENT_KIND_",
}

/// The row name of an enum value: its proto name without the prefix, in lowercase
/// (`SCOPE_LINK_LOCAL` is `link_local`, 0 is `unspecified`); a value this build does not
/// know (a newer collector) is its number.
pub fn enum_name<E: WireEnum>(raw: i32) -> String {
    match E::try_from(raw) {
        Ok(value) => {
            let name = value.proto_name();
            name.strip_prefix(E::PREFIX)
                .unwrap_or(name)
                .to_ascii_lowercase()
        }
        Err(_) => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_snake_case_words() {
        assert_eq!(
            enum_name::<pb::Scope>(pb::Scope::LinkLocal as i32),
            "link_local"
        );
        assert_eq!(enum_name::<pb::Scope>(0), "unspecified");
        assert_eq!(
            enum_name::<pb::SocketState>(pb::SocketState::FinWait1 as i32),
            "fin_wait1"
        );
        assert_eq!(
            enum_name::<pb::Attribution>(pb::Attribution::NoPermission as i32),
            "no_permission"
        );
        assert_eq!(
            enum_name::<pb::FlowDirection>(pb::FlowDirection::Inbound as i32),
            "inbound"
        );
        assert_eq!(enum_name::<pb::Peer>(99), "99");
    }

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(endpoint("10.0.0.1", 5432), "10.0.0.1:5432");
        assert_eq!(endpoint("::", 22), "[::]:22");
        assert_eq!(endpoint("", 22), "?:22");
        assert_eq!(address_text(&[1, 2, 3]), "");
        assert_eq!(address_text(&[127, 0, 0, 1]), "127.0.0.1");
    }
}
