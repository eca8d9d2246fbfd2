//! `peer_drift`: a host listens on a (protocol, port) that most hosts sharing its value of
//! `label` do not, or lacks one that all (or `common_share` of) its peers have.
//! Parameters: `label` (required), `rare_share` (default 0.5), `common_share` (default
//! 1.0), `min_peers` (group size including the host, default 3).

use crate::kind::Params;
use crate::model::{Kind, Rule};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::cond::{host_cond, socket_cond};
use crate::sql::finding::fingerprint;
use crate::sql::literal::sql_string;

/// The kind's name in rule files.
pub(crate) const NAME: &str = "peer_drift";

/// The kind's parameters.
pub(crate) const PARAMS: [&str; 4] = ["label", "rare_share", "common_share", "min_peers"];

/// Parameters of `peer_drift`.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftParams {
    /// The label whose value makes peers.
    pub label: String,
    /// A listener is rare when fewer than this share of the other peers have it.
    pub rare_share: f64,
    /// A listener is missing when at least this share of the other peers have it.
    pub common_share: f64,
    /// Groups smaller than this (the host included) are not judged.
    pub min_peers: u32,
}

/// Reads the parameters of a `peer_drift` rule.
pub(crate) fn parse(cx: &mut Cx<'_>, p: &Params<'_>) -> Option<Kind> {
    let label = match p.get("label") {
        Some(n) => cx.string(n, "`label`")?,
        None => {
            cx.problem(
                &p.here,
                "a `peer_drift` rule needs a `label` (the label whose value makes peers, such as `role`)".into(),
            );
            return None;
        }
    };
    Some(Kind::PeerDrift(DriftParams {
        label,
        rare_share: match p.get("rare_share") {
            Some(n) => cx.share(n, "`rare_share`")?,
            None => 0.5,
        },
        common_share: match p.get("common_share") {
            Some(n) => cx.share(n, "`common_share`")?,
            None => 1.0,
        },
        min_peers: match p.get("min_peers") {
            Some(n) => cx.number(n, "`min_peers`", 2u32, 1_000_000)?,
            None => 3,
        },
    }))
}

/// The findings of a `peer_drift` rule.
pub(crate) fn sql(rule: &Rule, p: &DriftParams, src: &Sources) -> String {
    let label = sql_string(&p.label);
    let hosts_t = &src.hosts;
    let sockets_t = &src.sockets;
    let selected = host_cond(&rule.hosts)
        .map(|c| format!(" AND {c}"))
        .unwrap_or_default();
    let members = format!(
        r"SELECT host_id, label_values[indexOf(label_keys, {label})] AS peer_group
FROM {hosts_t}
WHERE has(label_keys, {label}){selected}"
    );
    let cond = socket_cond(&rule.sockets);
    let listeners = format!(
        r"SELECT DISTINCT host_id, protocol, local_port
FROM {sockets_t}
WHERE present = 1 AND listener = 1 AND {cond}"
    );
    // Every listening (host, protocol, port) with the host's group; how many hosts of
    // the group hold each; how big each group is. No host lists are carried through the
    // joins: a group of thousands of hosts stays cheap.
    let held = format!(
        r"SELECT host_id, peer_group, protocol, local_port
FROM
(
{listeners}
) AS joined_left
ALL INNER JOIN
(
{members}
) AS joined_right USING host_id"
    );
    let stats = format!(
        r"SELECT peer_group, protocol, local_port, count() AS holders_n
FROM
(
{held}
)
GROUP BY peer_group, protocol, local_port"
    );
    let min = p.min_peers;
    let sizes = format!(
        r"SELECT peer_group, count() AS peers_n
FROM
(
{members}
)
GROUP BY peer_group
HAVING peers_n >= {min}"
    );
    let rare_share = p.rare_share;
    let rare = format!(
        r"SELECT host_id, peer_group, protocol, local_port, toUInt8(1) AS holding, holders_n, peers_n
FROM
(
SELECT host_id, peer_group, protocol, local_port, holders_n
FROM
(
{held}
) AS joined_left
ALL INNER JOIN
(
{stats}
) AS joined_right USING (peer_group, protocol, local_port)
) AS joined_left
ALL INNER JOIN
(
{sizes}
) AS joined_right USING peer_group
WHERE toInt64(holders_n) - 1 < {rare_share} * (toInt64(peers_n) - 1)"
    );
    let common_share = p.common_share;
    let common = format!(
        r"SELECT peer_group, protocol, local_port, holders_n, peers_n
FROM
(
{stats}
) AS joined_left
ALL INNER JOIN
(
{sizes}
) AS joined_right USING peer_group
WHERE toInt64(holders_n) >= {common_share} * (toInt64(peers_n) - 1)"
    );
    let missing = format!(
        r"SELECT host_id, peer_group, protocol, local_port, toUInt8(0) AS holding, holders_n, peers_n
FROM
(
SELECT host_id, peer_group, protocol, local_port, holders_n, peers_n
FROM
(
{members}
) AS joined_left
ALL INNER JOIN
(
{common}
) AS joined_right USING peer_group
) AS joined_left
ALL LEFT JOIN
(
SELECT host_id, protocol, local_port, toUInt8(1) AS held
FROM
(
{listeners}
)
) AS joined_right USING (host_id, protocol, local_port)
WHERE held = 0"
    );
    let fp = fingerprint(
        &rule.id,
        &[
            "host_id",
            "if(holding, 'rare', 'missing')",
            "protocol",
            "toString(local_port)",
        ],
    );
    format!(
        r"SELECT host_id,
    {fp} AS fingerprint,
    concat(if(holding, 'rare ', 'missing '), protocol, ' port ', toString(local_port)) AS subject,
    concat('label=', {label}, ' group=', peer_group,
        ' holders=', toString(holders_n), ' peers=', toString(peers_n)) AS evidence
FROM
(
{rare}
UNION ALL
{missing}
)"
    )
}
