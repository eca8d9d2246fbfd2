//! `listener`: a matching listener exists. One finding per (host, protocol, address,
//! port, network namespace), however many sockets share it. No parameters.

use crate::kind::Params;
use crate::model::{Kind, Rule};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::cond::current_listeners;
use crate::sql::finding::{
    endpoint, fingerprint_in, join_numbers, join_strings, place, place_evidence,
};

/// The kind's name in rule files.
pub(crate) const NAME: &str = "listener";

/// The kind's parameters: none.
pub(crate) const PARAMS: [&str; 0] = [];

/// Reads a `listener` rule: nothing beyond the common keys.
pub(crate) fn parse(_cx: &mut Cx<'_>, _p: &Params<'_>) -> Option<Kind> {
    Some(Kind::Listener)
}

/// The findings of a `listener` rule.
pub(crate) fn sql(rule: &Rule, src: &Sources) -> String {
    let (netns, pod_namespace, pod_name) = ("netns", "any(pod_namespace)", "any(pod_name)");
    let fp = fingerprint_in(
        &rule.id,
        &[
            "host_id",
            "protocol",
            "local_address",
            "toString(local_port)",
        ],
        netns,
        pod_namespace,
        pod_name,
    );
    let place = place(netns, pod_namespace, pod_name);
    let evidence = place_evidence(netns, pod_namespace, pod_name);
    let ep = endpoint("family", "local_address", "local_port");
    let names = join_strings("groupUniqArrayArray(process_names)");
    let users = join_strings("groupUniqArrayArray(process_users)");
    let units = join_strings("groupUniqArrayArray(process_units)");
    let pids = join_numbers("groupUniqArrayArray(pids)");
    let from = current_listeners(rule, "", src);
    format!(
        r"SELECT host_id,
    {fp} AS fingerprint,
    concat(protocol, ' ', {ep}, {place}) AS subject,
    concat('exposure=', any(exposure), ' scope=', any(scope),
        ' processes=', {names}, ' users=', {users}, ' units=', {units}, ' pids=', {pids},
        ' sockets=', toString(count()), {evidence}) AS evidence
{from}
GROUP BY host_id, protocol, family, local_address, local_port, netns"
    )
}

#[cfg(test)]
mod tests {
    use portolan_core::{Protocol, SocketState};

    use crate::parse::tests::problems;

    #[test]
    fn every_protocol_the_agent_collects_can_be_selected() {
        let text = "rules:\n  - {id: a, kind: listener, severity: low, sockets: {protocol: [tcp, udp, raw, unix, sctp], state: LISTEN}}\n";
        let set = crate::parse("rules.yaml", text).expect("valid");
        assert_eq!(set.rules[0].sockets.protocol, Protocol::ALL);
        assert_eq!(set.rules[0].sockets.state, [SocketState::Listen]);
        let sql = crate::compile(&set.rules[0]);
        assert!(
            sql.contains(
                "protocol IN ('tcp', 'udp', 'raw', 'unix', 'sctp') AND state IN ('LISTEN')"
            ),
            "{sql}"
        );
        assert_eq!(
            problems(
                "rules:\n  - {id: a, kind: listener, severity: low, sockets: {protocol: icmp}}\n"
            ),
            ["rules.yaml:2:64: `protocol` must be one of tcp, udp, raw, unix, sctp; got `icmp`"]
        );
    }
}
