//! `scan`: one remote address opened inbound connections to at least `min` distinct
//! ports of one host (`by: ports`) or to `min` hosts of the fleet (`by: hosts`) within
//! `window`. Parameters: `by` (required), `min` (required), `window` (default `10m`).

use crate::kind::{Params, refuse_sockets};
use crate::model::{Kind, Rule};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::address::unmapped;
use crate::sql::cond::host_filter;
use crate::sql::finding::fingerprint;

/// The kind's name in rule files.
pub(crate) const NAME: &str = "scan";

/// The kind's parameters.
pub(crate) const PARAMS: [&str; 3] = ["by", "min", "window"];

/// What `scan` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanBy {
    /// Distinct ports of one host.
    Ports,
    /// Distinct hosts.
    Hosts,
}

impl ScanBy {
    /// Every choice.
    pub const ALL: [ScanBy; 2] = [ScanBy::Ports, ScanBy::Hosts];

    /// The name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanBy::Ports => "ports",
            ScanBy::Hosts => "hosts",
        }
    }
}

portolan_core::named_enum!(ScanBy, "`by` value");

/// Reads the parameters of a `scan` rule.
pub(crate) fn parse(cx: &mut Cx<'_>, p: &Params<'_>) -> Option<Kind> {
    refuse_sockets(cx, p, NAME);
    let by = match p.get("by") {
        Some(n) => {
            let s = cx.scalar(n, "`by`")?;
            cx.named::<ScanBy>(s, "`by`")?
        }
        None => {
            cx.problem(
                &p.here,
                "a `scan` rule needs `by` (`ports`: distinct ports of one host, or `hosts`: distinct hosts)".into(),
            );
            return None;
        }
    };
    let min = match p.get("min") {
        Some(n) => cx.number(n, "`min`", 2u32, 1_000_000)?,
        None => {
            cx.problem(
                &p.here,
                "a `scan` rule needs `min` (how many distinct ports or hosts make a scan)".into(),
            );
            return None;
        }
    };
    Some(Kind::Scan {
        by,
        min,
        window_secs: match p.get("window") {
            Some(n) => cx.duration(n, "`window`")?,
            None => 600,
        },
    })
}

/// The findings of a `scan` rule.
pub(crate) fn sql(rule: &Rule, by: ScanBy, min: u32, window_secs: u64, src: &Sources) -> String {
    let remote = unmapped("remote_address");
    let events = &src.flow_events;
    let now = &src.now;
    let hosts = host_filter(&rule.hosts, src);
    let source = format!(
        r"SELECT host_id, {remote} AS remote, service_port, at
FROM {events}
WHERE direction = 'inbound' AND at >= {now} - {window_secs}{hosts}"
    );
    match by {
        ScanBy::Ports => {
            let fp = fingerprint(&rule.id, &["host_id", "remote"]);
            format!(
                r"SELECT host_id,
    {fp} AS fingerprint,
    remote AS subject,
    concat('ports=', arrayStringConcat(arrayMap(x -> toString(x), ports), ','),
        ' distinct=', toString(length(ports)),
        ' first_at=', toString(first_at), ' last_at=', toString(last_at),
        ' window={window_secs}s') AS evidence
FROM
(
SELECT host_id, remote, arraySort(groupUniqArray(service_port)) AS ports, min(at) AS first_at, max(at) AS last_at
FROM
(
{source}
)
GROUP BY host_id, remote
)
WHERE length(ports) >= {min}"
            )
        }
        ScanBy::Hosts => {
            let fp = fingerprint(&rule.id, &["remote"]);
            format!(
                r"SELECT '' AS host_id,
    {fp} AS fingerprint,
    remote AS subject,
    concat('hosts=', arrayStringConcat(touched_hosts, ','),
        ' distinct=', toString(length(touched_hosts)),
        ' ports=', arrayStringConcat(arrayMap(x -> toString(x), ports), ','),
        ' first_at=', toString(first_at), ' last_at=', toString(last_at),
        ' window={window_secs}s') AS evidence
FROM
(
SELECT remote, arraySort(groupUniqArray(host_id)) AS touched_hosts, arraySort(groupUniqArray(service_port)) AS ports, min(at) AS first_at, max(at) AS last_at
FROM
(
{source}
)
GROUP BY remote
)
WHERE length(touched_hosts) >= {min}"
            )
        }
    }
}
