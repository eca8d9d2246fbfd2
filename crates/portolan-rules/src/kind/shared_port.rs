//! `shared_port`: several programs, processes or sockets hold one listening port.
//! Parameters: `distinct` (default `programs`), `min` (default 2).

use crate::kind::Params;
use crate::model::{Kind, Rule};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::cond::current_listeners;
use crate::sql::finding::{fingerprint_in, place, place_evidence};

/// The kind's name in rule files.
pub(crate) const NAME: &str = "shared_port";

/// The kind's parameters.
pub(crate) const PARAMS: [&str; 2] = ["distinct", "min"];

/// What `shared_port` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedBy {
    /// Distinct executables (forked workers of one program count once).
    Programs,
    /// Distinct pids.
    Processes,
    /// Distinct sockets (inodes).
    Sockets,
}

impl SharedBy {
    /// Every choice, the default first.
    pub const ALL: [SharedBy; 3] = [SharedBy::Programs, SharedBy::Processes, SharedBy::Sockets];

    /// The name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedBy::Programs => "programs",
            SharedBy::Processes => "processes",
            SharedBy::Sockets => "sockets",
        }
    }
}

portolan_core::named_enum!(SharedBy, "`distinct` value");

/// Reads the parameters of a `shared_port` rule.
pub(crate) fn parse(cx: &mut Cx<'_>, p: &Params<'_>) -> Option<Kind> {
    Some(Kind::SharedPort {
        distinct: cx.named_param(p.map, "distinct", SharedBy::Programs)?,
        min: match p.get("min") {
            Some(n) => cx.number(n, "`min`", 2u32, 1_000_000)?,
            None => 2,
        },
    })
}

/// The findings of a `shared_port` rule counting `by`, from `min` on.
pub(crate) fn sql(rule: &Rule, by: SharedBy, min: u32, src: &Sources) -> String {
    let counted = match by {
        SharedBy::Programs => "programs",
        SharedBy::Processes => "all_pids",
        SharedBy::Sockets => "inodes",
    };
    let (netns, pod_namespace, pod_name) = ("netns", "pod_namespace_seen", "pod_name_seen");
    let fp = fingerprint_in(
        &rule.id,
        &["host_id", "protocol", "toString(local_port)"],
        netns,
        pod_namespace,
        pod_name,
    );
    let place = place(netns, pod_namespace, pod_name);
    let evidence = place_evidence(netns, pod_namespace, pod_name);
    let from = current_listeners(rule, "", src);
    format!(
        r"SELECT host_id,
    {fp} AS fingerprint,
    concat(protocol, ' port ', toString(local_port), {place}) AS subject,
    concat('programs=', arrayStringConcat(programs, ','),
        ' processes=', arrayStringConcat(names, ','),
        ' pids=', arrayStringConcat(arrayMap(x -> toString(x), all_pids), ','),
        ' sockets=', toString(length(inodes)),
        ' addresses=', arrayStringConcat(addresses, ','), {evidence}) AS evidence
FROM
(
SELECT host_id, protocol, local_port, netns,
    arraySort(arrayFilter(x -> x != '', groupUniqArrayArray(process_executables))) AS programs,
    arraySort(groupUniqArrayArray(process_names)) AS names,
    arraySort(groupUniqArrayArray(pids)) AS all_pids,
    groupUniqArray(inode) AS inodes,
    arraySort(groupUniqArray(local_address)) AS addresses,
    any(pod_namespace) AS pod_namespace_seen,
    any(pod_name) AS pod_name_seen
{from}
GROUP BY host_id, protocol, local_port, netns
)
WHERE length({counted}) >= {min}"
    )
}
