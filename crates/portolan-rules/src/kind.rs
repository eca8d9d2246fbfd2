//! The rule kinds, one module each: a kind's parameters, how a rule file gives them, and
//! the query it compiles to. What the kinds share (YAML reading, literals, host and
//! socket conditions, fingerprints) is in [`crate::parse`] and [`crate::sql`].
//!
//! | kind | module |
//! |---|---|
//! | `listener` | [`listener`] |
//! | `shared_port` | [`shared_port`] |
//! | `ephemeral_exhaustion` | [`ephemeral_exhaustion`] |
//! | `peer_drift` | [`peer_drift`] |
//! | `new_listener` | [`new_listener`] |
//! | `scan` | [`scan`] |
//! | `flow_policy` | [`flow_policy`] |
//! | `port_owner_change` | [`port_owner_change`] |

pub(crate) mod ephemeral_exhaustion;
pub(crate) mod flow_policy;
pub(crate) mod listener;
pub(crate) mod new_listener;
pub(crate) mod peer_drift;
pub(crate) mod port_owner_change;
pub(crate) mod scan;
pub(crate) mod shared_port;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

pub use ephemeral_exhaustion::EphemeralPer;
pub use flow_policy::FlowPolicyParams;
pub use new_listener::{BaselineScope, NewListenerParams};
pub use peer_drift::DriftParams;
pub use scan::ScanBy;
pub use shared_port::SharedBy;

use crate::model::{Kind, Rule, SocketPredicate};
use crate::parse::{COMMON_KEYS, Cx};
use crate::sql::Sources;

/// Every kind's name, in the order of [`Kind`]'s variants.
pub(crate) const NAMES: [&str; 8] = [
    listener::NAME,
    shared_port::NAME,
    ephemeral_exhaustion::NAME,
    peer_drift::NAME,
    new_listener::NAME,
    scan::NAME,
    flow_policy::NAME,
    port_owner_change::NAME,
];

/// A rule's mapping as its kind's module reads it.
pub(crate) struct Params<'a> {
    /// The rule's mapping.
    pub map: &'a MarkedMappingNode,
    /// The rule's `sockets`, already read.
    pub sockets: &'a SocketPredicate,
    /// Where a missing parameter is reported: the rule's `kind`.
    pub here: Span,
}

impl Params<'_> {
    /// The parameter `key`, when given.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.map.get_node(key)
    }
}

/// A kind module's `parse`: its parameters from a rule's mapping.
type ReadKind = fn(&mut Cx<'_>, &Params<'_>) -> Option<Kind>;

/// Reads the parameters of a rule of kind `name` (one of [`NAMES`]) from `map`; `None`
/// after reporting a problem.
pub(crate) fn parse(
    cx: &mut Cx<'_>,
    name: &str,
    map: &MarkedMappingNode,
    sockets: &SocketPredicate,
) -> Option<Kind> {
    let (keys, read): (&[&str], ReadKind) = match name {
        shared_port::NAME => (&shared_port::PARAMS, shared_port::parse),
        ephemeral_exhaustion::NAME => (&ephemeral_exhaustion::PARAMS, ephemeral_exhaustion::parse),
        peer_drift::NAME => (&peer_drift::PARAMS, peer_drift::parse),
        new_listener::NAME => (&new_listener::PARAMS, new_listener::parse),
        scan::NAME => (&scan::PARAMS, scan::parse),
        flow_policy::NAME => (&flow_policy::PARAMS, flow_policy::parse),
        port_owner_change::NAME => (&port_owner_change::PARAMS, port_owner_change::parse),
        // `listener`; `name` is one of `NAMES`.
        _ => (&listener::PARAMS, listener::parse),
    };
    let allowed: Vec<&str> = COMMON_KEYS.iter().chain(keys).copied().collect();
    cx.known_keys(map, &format!("a `{name}` rule"), &allowed);
    let params = Params {
        map,
        sockets,
        here: map.get_node("kind").map_or(*map.span(), |n| *n.span()),
    };
    read(cx, &params)
}

/// Reports a `sockets` selector on a kind that counts connections, not listeners.
pub(crate) fn refuse_sockets(cx: &mut Cx<'_>, p: &Params<'_>, name: &str) {
    if !p.sockets.is_empty()
        && let Some(n) = p.get("sockets")
    {
        cx.problem(
            n.span(),
            format!(
                "`sockets` does not apply to `{name}` rules (they count connections, not listeners)"
            ),
        );
    }
}

/// The query of `rule`'s kind: rows of `host_id`, `fingerprint`, `subject` and
/// `evidence`, which [`crate::compile_with`] completes into findings.
pub(crate) fn sql(rule: &Rule, src: &Sources) -> String {
    match &rule.kind {
        Kind::Listener => listener::sql(rule, src),
        Kind::SharedPort { distinct, min } => shared_port::sql(rule, *distinct, *min, src),
        Kind::EphemeralExhaustion { share, per } => {
            ephemeral_exhaustion::sql(rule, *share, *per, src)
        }
        Kind::PeerDrift(params) => peer_drift::sql(rule, params, src),
        Kind::NewListener(params) => new_listener::sql(rule, params, src),
        Kind::Scan {
            by,
            min,
            window_secs,
        } => scan::sql(rule, *by, *min, *window_secs, src),
        Kind::FlowPolicy(params) => flow_policy::sql(rule, params, src),
        Kind::PortOwnerChange { window_secs } => port_owner_change::sql(rule, *window_secs, src),
    }
}
