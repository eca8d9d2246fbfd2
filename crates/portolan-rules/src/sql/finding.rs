//! The parts of a finding row every kind writes alike: fingerprints, subjects and
//! evidence about where a socket is, endpoints and lists.

use super::literal::sql_string;

/// Where a socket is, for a subject: nothing in the host's own namespace (netns 0),
/// ` in pod namespace/name` in a pod whose name is known, ` in netns <inode>` otherwise.
pub(crate) fn place(netns: &str, pod_namespace: &str, pod_name: &str) -> String {
    format!(
        "if({netns} = 0, '', if({pod_name} != '', concat(' in pod ', {pod_namespace}, '/', {pod_name}), concat(' in netns ', toString({netns}))))"
    )
}

/// Evidence about where a socket is: nothing in the host's own namespace, else
/// ` netns=<inode> pod=<namespace/name>` (`pod=` empty outside a known pod).
pub(crate) fn place_evidence(netns: &str, pod_namespace: &str, pod_name: &str) -> String {
    format!(
        "if({netns} = 0, '', concat(' netns=', toString({netns}), ' pod=', if({pod_name} != '', concat({pod_namespace}, '/', {pod_name}), '')))"
    )
}

/// [`fingerprint`] of a finding about a socket in network namespace `netns`: in the
/// host's own namespace exactly `identity`'s (findings from before namespaces keep their
/// fingerprints); elsewhere `identity` and the pod (`namespace/name`, stable across a
/// pod's restarts), or the namespace's inode outside a known pod.
pub(crate) fn fingerprint_in(
    rule_id: &str,
    identity: &[&str],
    netns: &str,
    pod_namespace: &str,
    pod_name: &str,
) -> String {
    let place = format!(
        "if({pod_name} != '', concat({pod_namespace}, '/', {pod_name}), toString({netns}))"
    );
    let mut placed = identity.to_vec();
    placed.push(&place);
    format!(
        "if({netns} = 0, {}, {})",
        fingerprint(rule_id, identity),
        fingerprint(rule_id, &placed)
    )
}

/// 16 upper-case hex digits of `cityHash64` over the rule id and `identity`.
pub(crate) fn fingerprint(rule_id: &str, identity: &[&str]) -> String {
    let h = format!(
        "hex(cityHash64({}, {}))",
        sql_string(rule_id),
        identity.join(", ")
    );
    format!("substring(concat('0000000000000000', {h}), length({h}) + 1, 16)")
}

/// `address:port`, with brackets around IPv6 addresses.
pub(crate) fn endpoint(family: &str, address: &str, port: &str) -> String {
    format!(
        "concat(if({family} = 6, concat('[', {address}, ']'), {address}), ':', toString({port}))"
    )
}

pub(crate) fn join_strings(array: &str) -> String {
    format!("arrayStringConcat(arraySort({array}), ',')")
}

pub(crate) fn join_numbers(array: &str) -> String {
    format!("arrayStringConcat(arrayMap(x -> toString(x), arraySort({array})), ',')")
}
