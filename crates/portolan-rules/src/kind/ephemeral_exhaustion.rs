//! `ephemeral_exhaustion`: outbound connections (each holds a local port of the ephemeral
//! range) reach `share` of the host's `ip_local_port_range`, in total or toward one
//! destination. Parameters: `share` (0 < share <= 1, default 0.8), `per` (`host` or
//! `destination`, default `host`).

use crate::kind::{Params, refuse_sockets};
use crate::model::{Kind, Rule};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::cond::host_filter;
use crate::sql::finding::{endpoint, fingerprint_in, place, place_evidence};

/// The kind's name in rule files.
pub(crate) const NAME: &str = "ephemeral_exhaustion";

/// The kind's parameters.
pub(crate) const PARAMS: [&str; 2] = ["share", "per"];

/// What `ephemeral_exhaustion` sums over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EphemeralPer {
    /// All outbound connections of a host.
    Host,
    /// Outbound connections toward one (protocol, address, port).
    Destination,
}

impl EphemeralPer {
    /// Every choice, the default first.
    pub const ALL: [EphemeralPer; 2] = [EphemeralPer::Host, EphemeralPer::Destination];

    /// The name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            EphemeralPer::Host => "host",
            EphemeralPer::Destination => "destination",
        }
    }
}

portolan_core::named_enum!(EphemeralPer, "`per` value");

/// Reads the parameters of an `ephemeral_exhaustion` rule.
pub(crate) fn parse(cx: &mut Cx<'_>, p: &Params<'_>) -> Option<Kind> {
    refuse_sockets(cx, p, NAME);
    Some(Kind::EphemeralExhaustion {
        share: match p.get("share") {
            Some(n) => cx.share(n, "`share`")?,
            None => 0.8,
        },
        per: cx.named_param(p.map, "per", EphemeralPer::Host)?,
    })
}

/// The findings of an `ephemeral_exhaustion` rule.
pub(crate) fn sql(rule: &Rule, share: f64, per: EphemeralPer, src: &Sources) -> String {
    // Every network namespace has its own ports: a pod's connections do not use the
    // node's. (The agent reports the range of its own namespace; pods are assumed to
    // have the same, the kernel's default unless changed per pod.)
    let ns = ("netns", "pod_namespace_seen", "pod_name_seen");
    let (group, fp, subject) = match per {
        EphemeralPer::Host => (
            "host_id, netns".to_string(),
            fingerprint_in(&rule.id, &["host_id"], ns.0, ns.1, ns.2),
            format!("concat('ephemeral ports', {})", place(ns.0, ns.1, ns.2)),
        ),
        EphemeralPer::Destination => (
            "host_id, protocol, family, remote_address, service_port, netns".to_string(),
            fingerprint_in(
                &rule.id,
                &[
                    "host_id",
                    "protocol",
                    "remote_address",
                    "toString(service_port)",
                ],
                ns.0,
                ns.1,
                ns.2,
            ),
            format!(
                "concat('ephemeral ports toward ', protocol, ' ', {}, {})",
                endpoint("family", "remote_address", "service_port"),
                place(ns.0, ns.1, ns.2)
            ),
        ),
    };
    let hosts = host_filter(&rule.hosts, src);
    let hosts_t = &src.hosts;
    let flows_t = &src.flows;
    let evidence = place_evidence(ns.0, ns.1, ns.2);
    format!(
        r"SELECT host_id,
    {fp} AS fingerprint,
    {subject} AS subject,
    concat('used=', toString(used),
        ' range=', toString(ephemeral_min), '-', toString(ephemeral_max),
        ' share=', toString(round(used / range_size, 3)), ' threshold={share}', {evidence}) AS evidence
FROM
(
SELECT {group}, sum(connections) AS used, any(pod_namespace) AS pod_namespace_seen, any(pod_name) AS pod_name_seen
FROM {flows_t}
WHERE present = 1 AND direction = 'outbound'{hosts}
GROUP BY {group}
) AS joined_left
ALL INNER JOIN
(
SELECT host_id, ephemeral_min, ephemeral_max, toInt64(ephemeral_max) - toInt64(ephemeral_min) + 1 AS range_size
FROM {hosts_t}
WHERE ephemeral_known = 1 AND ephemeral_max >= ephemeral_min
) AS joined_right USING host_id
WHERE used >= {share} * range_size"
    )
}
