//! `port_owner_change`: within `window`, the program owning a listener (its executable,
//! or its process name when the executable is unknown) went away and another program now
//! holds the same protocol, address and port. A restart of the same program is not a
//! change. Parameters: `window` (default `24h`).

use crate::kind::Params;
use crate::model::{Kind, Rule};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::cond::{current_listeners, host_filter, socket_cond};
use crate::sql::finding::{endpoint, fingerprint};

/// The kind's name in rule files.
pub(crate) const NAME: &str = "port_owner_change";

/// The kind's parameters.
pub(crate) const PARAMS: [&str; 1] = ["window"];

/// Reads the parameters of a `port_owner_change` rule.
pub(crate) fn parse(cx: &mut Cx<'_>, p: &Params<'_>) -> Option<Kind> {
    Some(Kind::PortOwnerChange {
        window_secs: match p.get("window") {
            Some(n) => cx.duration(n, "`window`")?,
            None => 86_400,
        },
    })
}

/// The findings of a `port_owner_change` rule.
pub(crate) fn sql(rule: &Rule, window_secs: u64, src: &Sources) -> String {
    let identity = "host_id, protocol, family, local_address, local_port";
    let fp = fingerprint(
        &rule.id,
        &[
            "host_id",
            "protocol",
            "local_address",
            "toString(local_port)",
            "arrayStringConcat(arraySort(current_owners), ',')",
        ],
    );
    let ep = endpoint("family", "local_address", "local_port");
    let current = current_listeners(rule, "", src);
    let events = &src.socket_events;
    let now = &src.now;
    let cond = socket_cond(&rule.sockets);
    let hosts = host_filter(&rule.hosts, src);
    format!(
        r"SELECT host_id,
    {fp} AS fingerprint,
    concat(protocol, ' ', {ep}) AS subject,
    concat('owner=', arrayStringConcat(arraySort(current_owners), ','),
        ' previous=', arrayStringConcat(arraySort(arrayFilter(o -> NOT has(current_owners, o), gone_owners)), ','),
        ' changed_at=', toString(changed_at), ' window={window_secs}s') AS evidence
FROM
(
SELECT {identity}, groupUniqArray(owner) AS current_owners
FROM
(
SELECT {identity}, if(executable != '', executable, process) AS owner
{current}
)
WHERE owner != ''
GROUP BY {identity}
) AS joined_left
ALL INNER JOIN
(
SELECT {identity}, groupUniqArrayIf(owner, last_event = 'removed') AS gone_owners,
    maxIf(last_at, last_event = 'removed') AS changed_at
FROM
(
SELECT {identity}, owner, argMax(event, seq) AS last_event, max(at) AS last_at
FROM
(
SELECT {identity}, seq, at, event, if(executable != '', executable, process) AS owner
FROM {events}
WHERE listener = 1 AND at >= {now} - {window_secs} AND {cond}{hosts}
)
WHERE owner != ''
GROUP BY {identity}, owner
)
GROUP BY {identity}
) AS joined_right USING ({identity})
WHERE arrayExists(o -> NOT has(current_owners, o), gone_owners)"
    )
}
