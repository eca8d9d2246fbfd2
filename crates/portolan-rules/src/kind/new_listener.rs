//! `new_listener`: a listener whose program was first seen within `window`. Parameters:
//! `window` (default `7d`), `scope` (`host` or `fleet`), `allow` (a list of socket
//! predicates that are never new).

use crate::kind::Params;
use crate::model::{Kind, Rule, SocketPredicate};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::cond::{current_listeners, host_filter, socket_cond};
use crate::sql::finding::{endpoint, fingerprint_in, place, place_evidence};

/// The kind's name in rule files.
pub(crate) const NAME: &str = "new_listener";

/// The kind's parameters.
pub(crate) const PARAMS: [&str; 3] = ["window", "scope", "allow"];

/// Parameters of `new_listener`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewListenerParams {
    /// Seconds looked back.
    pub window_secs: u64,
    /// New on the host, or new in the whole fleet.
    pub scope: BaselineScope,
    /// Listeners that are never reported.
    pub allow: Vec<SocketPredicate>,
}

/// Where `new_listener` looks for an earlier sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineScope {
    /// The same host.
    Host,
    /// Any host of the fleet.
    Fleet,
}

impl BaselineScope {
    /// Every choice, the default first.
    pub const ALL: [BaselineScope; 2] = [BaselineScope::Host, BaselineScope::Fleet];

    /// The name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineScope::Host => "host",
            BaselineScope::Fleet => "fleet",
        }
    }
}

portolan_core::named_enum!(BaselineScope, "`scope` value");

/// Reads the parameters of a `new_listener` rule.
pub(crate) fn parse(cx: &mut Cx<'_>, p: &Params<'_>) -> Option<Kind> {
    let window_secs = match p.get("window") {
        Some(n) => cx.duration(n, "`window`")?,
        None => 7 * 86_400,
    };
    let scope = cx.named_param(p.map, "scope", BaselineScope::Host)?;
    let mut allow = Vec::new();
    if let Some(n) = p.get("allow") {
        match n.as_sequence() {
            Some(seq) => {
                for item in seq.iter() {
                    allow.push(cx.sockets(item, "each of `allow`"));
                }
            }
            None => cx.problem(
                n.span(),
                "`allow` must be a list of socket predicates (like `sockets`)".into(),
            ),
        }
    }
    Some(Kind::NewListener(NewListenerParams {
        window_secs,
        scope,
        allow,
    }))
}

/// The findings of a `new_listener` rule.
pub(crate) fn sql(rule: &Rule, p: &NewListenerParams, src: &Sources) -> String {
    let allow: String = p
        .allow
        .iter()
        .map(|a| format!(" AND NOT ({})", socket_cond(a)))
        .collect();
    let since = format!("{} - {}", src.now, p.window_secs);
    let reports = &src.host_reports;
    let (identity, baseline_guard) = match p.scope {
        BaselineScope::Host => (
            "host_id, protocol, local_address, local_port, executable, systemd_unit",
            format!(
                "host_id IN (SELECT host_id FROM {reports} GROUP BY host_id HAVING min(at) < {since})"
            ),
        ),
        BaselineScope::Fleet => (
            "protocol, scope, local_port, executable, systemd_unit",
            format!("(SELECT min(at) FROM {reports}) < {since}"),
        ),
    };
    let event_hosts = match p.scope {
        BaselineScope::Host => host_filter(&rule.hosts, src),
        BaselineScope::Fleet => String::new(),
    };
    let (netns, pod_namespace, pod_name) = ("netns", "pod_namespace_seen", "pod_name_seen");
    let fp = fingerprint_in(
        &rule.id,
        &[
            "host_id",
            "protocol",
            "local_address",
            "toString(local_port)",
            "executable",
            "systemd_unit",
        ],
        netns,
        pod_namespace,
        pod_name,
    );
    let ep = endpoint("family", "local_address", "local_port");
    let place = place(netns, pod_namespace, pod_name);
    let evidence = place_evidence(netns, pod_namespace, pod_name);
    let from = current_listeners(rule, &allow, src);
    let events = &src.socket_events;
    format!(
        r"SELECT host_id,
    {fp} AS fingerprint,
    concat(protocol, ' ', {ep}, {place}) AS subject,
    concat('first_seen=', toString(first_seen), ' process=', process_name,
        ' executable=', executable, ' unit=', systemd_unit,
        ' exposure=', exposure_seen, {evidence}) AS evidence
FROM
(
SELECT host_id, protocol, family, local_address, local_port, scope, executable, systemd_unit, netns,
    any(process) AS process_name, any(exposure) AS exposure_seen,
    any(pod_namespace) AS pod_namespace_seen, any(pod_name) AS pod_name_seen
{from}
GROUP BY host_id, protocol, family, local_address, local_port, scope, executable, systemd_unit, netns
) AS joined_left
ALL INNER JOIN
(
SELECT {identity}, min(at) AS first_seen
FROM {events}
WHERE listener = 1{event_hosts}
GROUP BY {identity}
) AS joined_right USING ({identity})
WHERE first_seen >= {since} AND {baseline_guard}"
    )
}
