//! From a [`Rule`] to one ClickHouse query returning findings.
//!
//! Every user string reaches the SQL through [`sql_string`], every glob through
//! [`glob_regex`] and then [`sql_string`]; numbers are formatted from validated values.
//! The text never holds a `?`, which the `clickhouse` crate would take for a bind
//! placeholder.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{
    BaselineScope, Cidr, DriftParams, EphemeralPer, FlowPolicyParams, Glob, HostSelector, Kind,
    NewListenerParams, PortRange, Rule, ScanBy, SharedBy, SocketPredicate,
};

/// The tables a compiled rule reads, as SQL table expressions, and the instant it
/// evaluates at.
///
/// [`Sources::current`] reads the collector's tables as they are now. To evaluate a rule
/// at a past instant (a dry run over history), the caller passes subqueries that rebuild
/// the state of that instant with the same column names, and history tables cut at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Current sockets: the columns of `sockets_current`, one row per socket.
    pub sockets: String,
    /// Current flows: the columns of `flows_current`, one row per flow.
    pub flows: String,
    /// Hosts: the columns of `hosts`, one row per host.
    pub hosts: String,
    /// Socket history: the columns of `socket_events`.
    pub socket_events: String,
    /// Flow history: the columns of `flow_events`.
    pub flow_events: String,
    /// Stored changes: the columns of `host_reports`.
    pub host_reports: String,
    /// The instant of evaluation, a `DateTime` expression.
    pub now: String,
}

impl Sources {
    /// The collector's tables as they are now.
    pub fn current() -> Sources {
        Sources {
            sockets: "sockets_current FINAL".into(),
            flows: "flows_current FINAL".into(),
            hosts: "hosts FINAL".into(),
            socket_events: "socket_events".into(),
            flow_events: "flow_events".into(),
            host_reports: "host_reports".into(),
            now: "now()".into(),
        }
    }

    /// The state at `at` (seconds since the Unix epoch): `sockets`, `flows` and `hosts`
    /// must be table expressions that rebuild the state of that instant with the columns
    /// of `sockets_current`, `flows_current` and `hosts`; history is cut at `at`.
    pub fn as_of(at: u64, sockets: String, flows: String, hosts: String) -> Sources {
        let cut = |table: &str| format!("(SELECT * FROM {table} WHERE at <= toDateTime({at}))");
        Sources {
            sockets,
            flows,
            hosts,
            socket_events: cut("socket_events"),
            flow_events: cut("flow_events"),
            host_reports: cut("host_reports"),
            now: format!("toDateTime({at})"),
        }
    }
}

/// The columns of every finding row, in order; all are `String` (see the crate
/// documentation for their meaning).
pub const FINDING_COLUMNS: [&str; 6] = [
    "rule_id",
    "host_id",
    "fingerprint",
    "severity",
    "subject",
    "evidence",
];

/// A ClickHouse string literal holding exactly `s`, quotes included.
///
/// Backslashes and quotes are escaped; control characters and `?` are written as `\xHH`
/// escapes, so the literal is one line and holds no `?`.
pub fn sql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '?' => out.push_str("\\x3F"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The RE2 regular expression (anchored at both ends) that matches what `glob` matches.
pub fn glob_regex(glob: &Glob) -> String {
    let mut re = String::from("^");
    for c in glob.0.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c if c.is_ascii_punctuation() => {
                re.push('\\');
                re.push(c);
            }
            c if c.is_control() => {
                let _ = write!(re, "\\x{{{:X}}}", c as u32);
            }
            c => re.push(c),
        }
    }
    re.push('$');
    re
}

fn is_plain(glob: &Glob) -> bool {
    !glob.0.contains(['*', '?'])
}

/// `expr` matches one of `globs` (`1` when there are none).
fn glob_cond(expr: &str, globs: &[Glob]) -> String {
    if globs.is_empty() {
        return "1".into();
    }
    let parts: Vec<String> = globs
        .iter()
        .map(|g| {
            if is_plain(g) {
                format!("{expr} = {}", sql_string(&g.0))
            } else {
                format!("match({expr}, {})", sql_string(&glob_regex(g)))
            }
        })
        .collect();
    format!("({})", parts.join(" OR "))
}

/// An element of the array `column` matches one of `globs`.
fn array_glob_cond(column: &str, globs: &[Glob]) -> String {
    format!("arrayExists(x -> {}, {column})", glob_cond("x", globs))
}

fn in_list(expr: &str, values: &[String]) -> String {
    let list: Vec<String> = values.iter().map(|v| sql_string(v)).collect();
    format!("{expr} IN ({})", list.join(", "))
}

/// A condition on the columns of `hosts`; `None` when the selector takes every host.
fn host_cond(sel: &HostSelector) -> Option<String> {
    if sel.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for (key, value) in &sel.labels {
        let k = sql_string(key);
        let value_expr = format!("label_values[indexOf(label_keys, {k})]");
        parts.push(format!(
            "has(label_keys, {k}) AND {}",
            glob_cond(&value_expr, std::slice::from_ref(value))
        ));
    }
    if !sel.hostname.is_empty() {
        parts.push(glob_cond("hostname", &sel.hostname));
    }
    if !sel.host_id.is_empty() {
        parts.push(in_list("host_id", &sel.host_id));
    }
    Some(parts.join(" AND "))
}

/// ` AND host_id IN (…)` for a table with a `host_id` column, or nothing.
fn host_filter(sel: &HostSelector, src: &Sources) -> String {
    host_cond(sel)
        .map(|c| {
            format!(
                " AND host_id IN (SELECT host_id FROM {} WHERE {c})",
                src.hosts
            )
        })
        .unwrap_or_default()
}

/// `column` is in one of `ports`.
fn port_cond(column: &str, ports: &[PortRange]) -> String {
    let ranges: Vec<String> = ports
        .iter()
        .map(|r| {
            if r.first == r.last {
                format!("{column} = {}", r.first)
            } else {
                format!("({column} >= {} AND {column} <= {})", r.first, r.last)
            }
        })
        .collect();
    format!("({})", ranges.join(" OR "))
}

/// A condition on the columns of `flows_current` / `flow_events`: the predicate's ports
/// are the flow's service port, its process globs apply to the flow's process. Exposure
/// does not apply to flows (the parser refuses it).
fn flow_cond(p: &SocketPredicate) -> String {
    let mut parts = Vec::new();
    if !p.protocol.is_empty() {
        parts.push(in_list("protocol", &p.protocol));
    }
    if !p.ports.is_empty() {
        parts.push(port_cond("service_port", &p.ports));
    }
    if !p.state.is_empty() {
        parts.push(in_list("state", &p.state));
    }
    for (column, globs) in [
        ("process", &p.process),
        ("executable", &p.executable),
        ("user", &p.user),
        ("systemd_unit", &p.unit),
        ("container_id", &p.container),
        ("pod_namespace", &p.pod_namespace),
    ] {
        if !globs.is_empty() {
            parts.push(glob_cond(column, globs));
        }
    }
    if !p.pod.is_empty() {
        let (names, qualified) = split_pod_globs(&p.pod);
        let mut any = Vec::new();
        if !names.is_empty() {
            any.push(glob_cond("pod_name", &names));
        }
        if !qualified.is_empty() {
            any.push(glob_cond(
                "concat(pod_namespace, '/', pod_name)",
                &qualified,
            ));
        }
        parts.push(format!("({})", any.join(" OR ")));
    }
    if !p.netns.is_empty() {
        parts.push(netns_cond(&p.netns));
    }
    if parts.is_empty() {
        "1".into()
    } else {
        parts.join(" AND ")
    }
}

/// An address column with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) written as IPv4.
fn unmapped(expr: &str) -> String {
    format!("replaceRegexpOne({expr}, '^::ffff:([0-9.]+)$', '\\\\1')")
}

/// `addr` (unmapped) is a loopback address.
fn is_loopback(addr: &str) -> String {
    format!("(startsWith({addr}, '127.') OR {addr} = '::1')")
}

/// `addr` (unmapped) is a link-local address.
fn is_link_local(addr: &str) -> String {
    format!("(startsWith({addr}, '169.254.') OR startsWith(lower({addr}), 'fe80:'))")
}

/// `addr` (unmapped) is in one of `networks` (`0` when there are none).
fn in_networks(addr: &str, networks: &[Cidr]) -> String {
    if networks.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = networks
        .iter()
        .map(|n| match (n.first(), n.last()) {
            (IpAddr::V4(first), IpAddr::V4(last)) => format!(
                "(match({addr}, '^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$') AND IPv4StringToNum({addr}) >= {} AND IPv4StringToNum({addr}) <= {})",
                u32::from(first),
                u32::from(last)
            ),
            (first, last) => format!(
                "(position({addr}, ':') > 0 AND hex(IPv6StringToNum({addr})) >= '{:032X}' AND hex(IPv6StringToNum({addr})) <= '{:032X}')",
                ipv6_number(first),
                ipv6_number(last)
            ),
        })
        .collect();
    format!("({})", parts.join(" OR "))
}

fn ipv6_number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V6(a) => u128::from(a),
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
    }
}

/// A condition on the columns of `sockets_current` / `socket_events`.
fn socket_cond(p: &SocketPredicate) -> String {
    let mut parts = Vec::new();
    if !p.protocol.is_empty() {
        parts.push(in_list("protocol", &p.protocol));
    }
    if !p.ports.is_empty() {
        parts.push(port_cond("local_port", &p.ports));
    }
    if !p.state.is_empty() {
        parts.push(in_list("state", &p.state));
    }
    if !p.exposure.is_empty() {
        parts.push(format!(
            "({} OR {})",
            in_list("scope", &p.exposure),
            in_list("exposure", &p.exposure)
        ));
    }
    for (column, globs) in [
        ("process_names", &p.process),
        ("process_executables", &p.executable),
        ("process_users", &p.user),
        ("process_units", &p.unit),
        ("process_containers", &p.container),
        ("process_pod_namespaces", &p.pod_namespace),
    ] {
        if !globs.is_empty() {
            parts.push(array_glob_cond(column, globs));
        }
    }
    if !p.pod.is_empty() {
        let (names, qualified) = split_pod_globs(&p.pod);
        let mut any = Vec::new();
        if !names.is_empty() {
            any.push(array_glob_cond("process_pod_names", &names));
        }
        if !qualified.is_empty() {
            any.push(format!(
                "arrayExists((n, ns) -> {}, process_pod_names, process_pod_namespaces)",
                glob_cond("concat(ns, '/', n)", &qualified)
            ));
        }
        parts.push(format!("({})", any.join(" OR ")));
    }
    if !p.netns.is_empty() {
        parts.push(netns_cond(&p.netns));
    }
    if parts.is_empty() {
        "1".into()
    } else {
        parts.join(" AND ")
    }
}

/// Pod globs on the name alone, and those on `namespace/name` (holding a `/`).
fn split_pod_globs(globs: &[Glob]) -> (Vec<Glob>, Vec<Glob>) {
    globs.iter().cloned().partition(|g| !g.0.contains('/'))
}

/// The `netns` column is one of `inodes`.
fn netns_cond(inodes: &[u64]) -> String {
    let list: Vec<String> = inodes.iter().map(u64::to_string).collect();
    format!("netns IN ({})", list.join(", "))
}

/// Where a socket is, for a subject: nothing in the host's own namespace (netns 0),
/// ` in pod namespace/name` in a pod whose name is known, ` in netns <inode>` otherwise.
fn place(netns: &str, pod_namespace: &str, pod_name: &str) -> String {
    format!(
        "if({netns} = 0, '', if({pod_name} != '', concat(' in pod ', {pod_namespace}, '/', {pod_name}), concat(' in netns ', toString({netns}))))"
    )
}

/// Evidence about where a socket is: nothing in the host's own namespace, else
/// ` netns=<inode> pod=<namespace/name>` (`pod=` empty outside a known pod).
fn place_evidence(netns: &str, pod_namespace: &str, pod_name: &str) -> String {
    format!(
        "if({netns} = 0, '', concat(' netns=', toString({netns}), ' pod=', if({pod_name} != '', concat({pod_namespace}, '/', {pod_name}), '')))"
    )
}

/// [`fingerprint`] of a finding about a socket in network namespace `netns`: in the
/// host's own namespace exactly `identity`'s (findings from before namespaces keep their
/// fingerprints); elsewhere `identity` and the pod (`namespace/name`, stable across a
/// pod's restarts), or the namespace's inode outside a known pod.
fn fingerprint_in(
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
fn fingerprint(rule_id: &str, identity: &[&str]) -> String {
    let h = format!(
        "hex(cityHash64({}, {}))",
        sql_string(rule_id),
        identity.join(", ")
    );
    format!("substring(concat('0000000000000000', {h}), length({h}) + 1, 16)")
}

/// `address:port`, with brackets around IPv6 addresses.
fn endpoint(family: &str, address: &str, port: &str) -> String {
    format!(
        "concat(if({family} = 6, concat('[', {address}, ']'), {address}), ':', toString({port}))"
    )
}

fn join_strings(array: &str) -> String {
    format!("arrayStringConcat(arraySort({array}), ',')")
}

fn join_numbers(array: &str) -> String {
    format!("arrayStringConcat(arrayMap(x -> toString(x), arraySort({array})), ',')")
}

/// Compiles a rule to one query returning rows of [`FINDING_COLUMNS`], ordered by
/// `host_id` then `subject`. The query reads the tables of the collector's schema in the
/// current database and runs on ClickHouse 18.16 and on current servers.
pub fn compile(rule: &Rule) -> String {
    compile_with(rule, &Sources::current())
}

/// Compiles a rule like [`compile`], reading `src` instead of the current tables.
pub fn compile_with(rule: &Rule, src: &Sources) -> String {
    let inner = match &rule.kind {
        Kind::Listener => listener(rule, src),
        Kind::SharedPort { distinct, min } => shared_port(rule, *distinct, *min, src),
        Kind::EphemeralExhaustion { share, per } => ephemeral(rule, *share, *per, src),
        Kind::PeerDrift(params) => peer_drift(rule, params, src),
        Kind::NewListener(params) => new_listener(rule, params, src),
        Kind::Scan {
            by,
            min,
            window_secs,
        } => scan(rule, *by, *min, *window_secs, src),
        Kind::FlowPolicy(params) => flow_policy(rule, params, src),
        Kind::PortOwnerChange { window_secs } => port_owner_change(rule, *window_secs, src),
    };
    format!(
        "SELECT {id} AS rule_id, host_id, fingerprint, {severity} AS severity, subject, evidence\nFROM\n(\n{inner}\n)\nORDER BY host_id, subject",
        id = sql_string(&rule.id),
        severity = sql_string(rule.severity.as_str()),
    )
}

fn current_listeners(rule: &Rule, extra: &str, src: &Sources) -> String {
    format!(
        "FROM {}\nWHERE present = 1 AND listener = 1 AND {}{extra}{}",
        src.sockets,
        socket_cond(&rule.sockets),
        host_filter(&rule.hosts, src)
    )
}

fn listener(rule: &Rule, src: &Sources) -> String {
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' ', {ep}, {place}) AS subject,\n    concat('exposure=', any(exposure), ' scope=', any(scope), ' processes=', {names}, ' users=', {users}, ' units=', {units}, ' pids=', {pids}, ' sockets=', toString(count()), {evidence}) AS evidence\n{from}\nGROUP BY host_id, protocol, family, local_address, local_port, netns",
        fp = fingerprint_in(
            &rule.id,
            &[
                "host_id",
                "protocol",
                "local_address",
                "toString(local_port)"
            ],
            "netns",
            "any(pod_namespace)",
            "any(pod_name)"
        ),
        place = place("netns", "any(pod_namespace)", "any(pod_name)"),
        evidence = place_evidence("netns", "any(pod_namespace)", "any(pod_name)"),
        ep = endpoint("family", "local_address", "local_port"),
        names = join_strings("groupUniqArrayArray(process_names)"),
        users = join_strings("groupUniqArrayArray(process_users)"),
        units = join_strings("groupUniqArrayArray(process_units)"),
        pids = join_numbers("groupUniqArrayArray(pids)"),
        from = current_listeners(rule, "", src),
    )
}

fn shared_port(rule: &Rule, by: SharedBy, min: u32, src: &Sources) -> String {
    let counted = match by {
        SharedBy::Programs => "programs",
        SharedBy::Processes => "all_pids",
        SharedBy::Sockets => "inodes",
    };
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' port ', toString(local_port), {place}) AS subject,\n    concat('programs=', arrayStringConcat(programs, ','), ' processes=', arrayStringConcat(names, ','), ' pids=', arrayStringConcat(arrayMap(x -> toString(x), all_pids), ','), ' sockets=', toString(length(inodes)), ' addresses=', arrayStringConcat(addresses, ','), {evidence}) AS evidence\nFROM\n(\nSELECT host_id, protocol, local_port, netns,\n    arraySort(arrayFilter(x -> x != '', groupUniqArrayArray(process_executables))) AS programs,\n    arraySort(groupUniqArrayArray(process_names)) AS names,\n    arraySort(groupUniqArrayArray(pids)) AS all_pids,\n    groupUniqArray(inode) AS inodes,\n    arraySort(groupUniqArray(local_address)) AS addresses,\n    any(pod_namespace) AS pod_namespace_seen,\n    any(pod_name) AS pod_name_seen\n{from}\nGROUP BY host_id, protocol, local_port, netns\n)\nWHERE length({counted}) >= {min}",
        fp = fingerprint_in(
            &rule.id,
            &["host_id", "protocol", "toString(local_port)"],
            "netns",
            "pod_namespace_seen",
            "pod_name_seen"
        ),
        place = place("netns", "pod_namespace_seen", "pod_name_seen"),
        evidence = place_evidence("netns", "pod_namespace_seen", "pod_name_seen"),
        from = current_listeners(rule, "", src),
    )
}

fn ephemeral(rule: &Rule, share: f64, per: EphemeralPer, src: &Sources) -> String {
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
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    {subject} AS subject,\n    concat('used=', toString(used), ' range=', toString(ephemeral_min), '-', toString(ephemeral_max), ' share=', toString(round(used / range_size, 3)), ' threshold={share}', {evidence}) AS evidence\nFROM\n(\nSELECT {group}, sum(connections) AS used, any(pod_namespace) AS pod_namespace_seen, any(pod_name) AS pod_name_seen\nFROM {flows_t}\nWHERE present = 1 AND direction = 'outbound'{hosts}\nGROUP BY {group}\n) AS joined_left\nALL INNER JOIN\n(\nSELECT host_id, ephemeral_min, ephemeral_max, toInt64(ephemeral_max) - toInt64(ephemeral_min) + 1 AS range_size\nFROM {hosts_t}\nWHERE ephemeral_known = 1 AND ephemeral_max >= ephemeral_min\n) AS joined_right USING host_id\nWHERE used >= {share} * range_size",
        hosts = host_filter(&rule.hosts, src),
        hosts_t = src.hosts,
        flows_t = src.flows,
        evidence = place_evidence(ns.0, ns.1, ns.2),
    )
}

fn peer_drift(rule: &Rule, p: &DriftParams, src: &Sources) -> String {
    let label = sql_string(&p.label);
    let members = format!(
        "SELECT host_id, label_values[indexOf(label_keys, {label})] AS peer_group\nFROM {}\nWHERE has(label_keys, {label}){}",
        src.hosts,
        host_cond(&rule.hosts)
            .map(|c| format!(" AND {c}"))
            .unwrap_or_default()
    );
    let listeners = format!(
        "SELECT DISTINCT host_id, protocol, local_port\nFROM {}\nWHERE present = 1 AND listener = 1 AND {}",
        src.sockets,
        socket_cond(&rule.sockets)
    );
    // Every listening (host, protocol, port) with the host's group; how many hosts of
    // the group hold each; how big each group is. No host lists are carried through the
    // joins: a group of thousands of hosts stays cheap.
    let held = format!(
        "SELECT host_id, peer_group, protocol, local_port\nFROM\n(\n{listeners}\n) AS joined_left\nALL INNER JOIN\n(\n{members}\n) AS joined_right USING host_id"
    );
    let stats = format!(
        "SELECT peer_group, protocol, local_port, count() AS holders_n\nFROM\n(\n{held}\n)\nGROUP BY peer_group, protocol, local_port"
    );
    let sizes = format!(
        "SELECT peer_group, count() AS peers_n\nFROM\n(\n{members}\n)\nGROUP BY peer_group\nHAVING peers_n >= {min}",
        min = p.min_peers
    );
    let rare = format!(
        "SELECT host_id, peer_group, protocol, local_port, toUInt8(1) AS holding, holders_n, peers_n\nFROM\n(\nSELECT host_id, peer_group, protocol, local_port, holders_n\nFROM\n(\n{held}\n) AS joined_left\nALL INNER JOIN\n(\n{stats}\n) AS joined_right USING (peer_group, protocol, local_port)\n) AS joined_left\nALL INNER JOIN\n(\n{sizes}\n) AS joined_right USING peer_group\nWHERE toInt64(holders_n) - 1 < {share} * (toInt64(peers_n) - 1)",
        share = p.rare_share,
    );
    let common = format!(
        "SELECT peer_group, protocol, local_port, holders_n, peers_n\nFROM\n(\n{stats}\n) AS joined_left\nALL INNER JOIN\n(\n{sizes}\n) AS joined_right USING peer_group\nWHERE toInt64(holders_n) >= {share} * (toInt64(peers_n) - 1)",
        share = p.common_share,
    );
    let missing = format!(
        "SELECT host_id, peer_group, protocol, local_port, toUInt8(0) AS holding, holders_n, peers_n\nFROM\n(\nSELECT host_id, peer_group, protocol, local_port, holders_n, peers_n\nFROM\n(\n{members}\n) AS joined_left\nALL INNER JOIN\n(\n{common}\n) AS joined_right USING peer_group\n) AS joined_left\nALL LEFT JOIN\n(\nSELECT host_id, protocol, local_port, toUInt8(1) AS held\nFROM\n(\n{listeners}\n)\n) AS joined_right USING (host_id, protocol, local_port)\nWHERE held = 0"
    );
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(if(holding, 'rare ', 'missing '), protocol, ' port ', toString(local_port)) AS subject,\n    concat('label=', {label}, ' group=', peer_group, ' holders=', toString(holders_n), ' peers=', toString(peers_n)) AS evidence\nFROM\n(\n{rare}\nUNION ALL\n{missing}\n)",
        fp = fingerprint(
            &rule.id,
            &[
                "host_id",
                "if(holding, 'rare', 'missing')",
                "protocol",
                "toString(local_port)"
            ]
        ),
    )
}

fn new_listener(rule: &Rule, p: &NewListenerParams, src: &Sources) -> String {
    let allow: String = p
        .allow
        .iter()
        .map(|a| format!(" AND NOT ({})", socket_cond(a)))
        .collect();
    let since = format!("{} - {}", src.now, p.window_secs);
    let (identity, baseline_guard) = match p.scope {
        BaselineScope::Host => (
            "host_id, protocol, local_address, local_port, executable, systemd_unit",
            format!(
                "host_id IN (SELECT host_id FROM {} GROUP BY host_id HAVING min(at) < {since})",
                src.host_reports
            ),
        ),
        BaselineScope::Fleet => (
            "protocol, scope, local_port, executable, systemd_unit",
            format!("(SELECT min(at) FROM {}) < {since}", src.host_reports),
        ),
    };
    let event_hosts = match p.scope {
        BaselineScope::Host => host_filter(&rule.hosts, src),
        BaselineScope::Fleet => String::new(),
    };
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' ', {ep}, {place}) AS subject,\n    concat('first_seen=', toString(first_seen), ' process=', process_name, ' executable=', executable, ' unit=', systemd_unit, ' exposure=', exposure_seen, {evidence}) AS evidence\nFROM\n(\nSELECT host_id, protocol, family, local_address, local_port, scope, executable, systemd_unit, netns, any(process) AS process_name, any(exposure) AS exposure_seen, any(pod_namespace) AS pod_namespace_seen, any(pod_name) AS pod_name_seen\n{from}\nGROUP BY host_id, protocol, family, local_address, local_port, scope, executable, systemd_unit, netns\n) AS joined_left\nALL INNER JOIN\n(\nSELECT {identity}, min(at) AS first_seen\nFROM {events}\nWHERE listener = 1{event_hosts}\nGROUP BY {identity}\n) AS joined_right USING ({identity})\nWHERE first_seen >= {since} AND {baseline_guard}",
        fp = fingerprint_in(
            &rule.id,
            &[
                "host_id",
                "protocol",
                "local_address",
                "toString(local_port)",
                "executable",
                "systemd_unit"
            ],
            "netns",
            "pod_namespace_seen",
            "pod_name_seen"
        ),
        ep = endpoint("family", "local_address", "local_port"),
        place = place("netns", "pod_namespace_seen", "pod_name_seen"),
        evidence = place_evidence("netns", "pod_namespace_seen", "pod_name_seen"),
        from = current_listeners(rule, &allow, src),
        events = src.socket_events,
    )
}

fn scan(rule: &Rule, by: ScanBy, min: u32, window_secs: u64, src: &Sources) -> String {
    let source = format!(
        "SELECT host_id, {remote} AS remote, service_port, at\nFROM {events}\nWHERE direction = 'inbound' AND at >= {now} - {window_secs}{hosts}",
        remote = unmapped("remote_address"),
        events = src.flow_events,
        now = src.now,
        hosts = host_filter(&rule.hosts, src)
    );
    match by {
        ScanBy::Ports => format!(
            "SELECT host_id,\n    {fp} AS fingerprint,\n    remote AS subject,\n    concat('ports=', arrayStringConcat(arrayMap(x -> toString(x), ports), ','), ' distinct=', toString(length(ports)), ' first_at=', toString(first_at), ' last_at=', toString(last_at), ' window={window_secs}s') AS evidence\nFROM\n(\nSELECT host_id, remote, arraySort(groupUniqArray(service_port)) AS ports, min(at) AS first_at, max(at) AS last_at\nFROM\n(\n{source}\n)\nGROUP BY host_id, remote\n)\nWHERE length(ports) >= {min}",
            fp = fingerprint(&rule.id, &["host_id", "remote"]),
        ),
        ScanBy::Hosts => format!(
            "SELECT '' AS host_id,\n    {fp} AS fingerprint,\n    remote AS subject,\n    concat('hosts=', arrayStringConcat(touched_hosts, ','), ' distinct=', toString(length(touched_hosts)), ' ports=', arrayStringConcat(arrayMap(x -> toString(x), ports), ','), ' first_at=', toString(first_at), ' last_at=', toString(last_at), ' window={window_secs}s') AS evidence\nFROM\n(\nSELECT remote, arraySort(groupUniqArray(host_id)) AS touched_hosts, arraySort(groupUniqArray(service_port)) AS ports, min(at) AS first_at, max(at) AS last_at\nFROM\n(\n{source}\n)\nGROUP BY remote\n)\nWHERE length(touched_hosts) >= {min}",
            fp = fingerprint(&rule.id, &["remote"]),
        ),
    }
}

fn flow_policy(rule: &Rule, p: &FlowPolicyParams, src: &Sources) -> String {
    let client_cond = match &p.clients {
        None => "0".to_string(),
        Some(sel) => host_cond(sel).unwrap_or_else(|| "1".into()),
    };
    let deny_local = u8::from(!p.allow_local);
    let deny_outside = u8::from(!p.allow_outside);
    let allowed = {
        let mut parts = Vec::new();
        if p.clients.is_some() {
            parts.push("clients".to_string());
        }
        parts.extend(p.networks.iter().map(Cidr::to_string));
        if p.allow_outside {
            parts.push("outside".into());
        }
        if p.allow_local {
            parts.push("local".into());
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(",")
        }
    };
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' port ', toString(service_port), ' from ', client) AS subject,\n    concat('client_host=', client_host_id, ' addresses=', arrayStringConcat(arraySort(remotes), ','), ' connections=', toString(connections), ' server_processes=', arrayStringConcat(arraySort(server_processes), ','), ' allowed={allowed}') AS evidence\nFROM\n(\nSELECT host_id, protocol, service_port, client_host_id, client_key, any(client_desc) AS client, groupUniqArray(remote) AS remotes, sum(connections) AS connections, groupUniqArray(process) AS server_processes\nFROM\n(\nSELECT host_id, protocol, service_port, remote, connections, process, client_host_id, if(client_host_id != '', client_host_id, remote) AS client_key, multiIf(is_local, concat(remote, ' (this host)'), client_host_id != '', client_hostname, concat(remote, ' (outside the fleet)')) AS client_desc, is_local, client_allowed\nFROM\n(\nSELECT host_id, protocol, service_port, {remote} AS remote, {local} AS is_local, connections, process\nFROM {flows}\nWHERE present = 1 AND direction = 'inbound' AND {cond}{hosts}\n) AS joined_left\nALL LEFT JOIN\n(\nSELECT remote, min(holder) AS client_host_id, any(holder_name) AS client_hostname, min(allowed) AS client_allowed\nFROM\n(\nSELECT {iface_addr} AS remote, host_id AS holder, hostname AS holder_name, toUInt8({client_cond}) AS allowed\nFROM {hosts_t}\nARRAY JOIN interfaces AS iface\n)\nWHERE NOT {loopback} AND NOT {link_local}\nGROUP BY remote\n) AS joined_right USING remote\nWHERE if(is_local, {deny_local}, if(client_host_id != '', client_allowed = 0, {deny_outside})) AND NOT {networks}\n)\nGROUP BY host_id, protocol, service_port, client_host_id, client_key\n)",
        fp = fingerprint(
            &rule.id,
            &[
                "host_id",
                "protocol",
                "toString(service_port)",
                "client_key"
            ]
        ),
        remote = unmapped("remote_address"),
        local = is_loopback(&unmapped("remote_address")),
        flows = src.flows,
        cond = flow_cond(&rule.sockets),
        hosts = host_filter(&rule.hosts, src),
        iface_addr = unmapped("splitByChar('/', iface)[1]"),
        hosts_t = src.hosts,
        loopback = is_loopback("remote"),
        link_local = is_link_local("remote"),
        networks = in_networks("remote", &p.networks),
    )
}

fn port_owner_change(rule: &Rule, window_secs: u64, src: &Sources) -> String {
    let identity = "host_id, protocol, family, local_address, local_port";
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' ', {ep}) AS subject,\n    concat('owner=', arrayStringConcat(arraySort(current_owners), ','), ' previous=', arrayStringConcat(arraySort(arrayFilter(o -> NOT has(current_owners, o), gone_owners)), ','), ' changed_at=', toString(changed_at), ' window={window_secs}s') AS evidence\nFROM\n(\nSELECT {identity}, groupUniqArray(owner) AS current_owners\nFROM\n(\nSELECT {identity}, if(executable != '', executable, process) AS owner\n{current}\n)\nWHERE owner != ''\nGROUP BY {identity}\n) AS joined_left\nALL INNER JOIN\n(\nSELECT {identity}, groupUniqArrayIf(owner, last_event = 'removed') AS gone_owners, maxIf(last_at, last_event = 'removed') AS changed_at\nFROM\n(\nSELECT {identity}, owner, argMax(event, seq) AS last_event, max(at) AS last_at\nFROM\n(\nSELECT {identity}, seq, at, event, if(executable != '', executable, process) AS owner\nFROM {events}\nWHERE listener = 1 AND at >= {now} - {window_secs} AND {cond}{hosts}\n)\nWHERE owner != ''\nGROUP BY {identity}, owner\n)\nGROUP BY {identity}\n) AS joined_right USING ({identity})\nWHERE arrayExists(o -> NOT has(current_owners, o), gone_owners)",
        fp = fingerprint(
            &rule.id,
            &[
                "host_id",
                "protocol",
                "local_address",
                "toString(local_port)",
                "arrayStringConcat(arraySort(current_owners), ',')"
            ]
        ),
        ep = endpoint("family", "local_address", "local_port"),
        current = current_listeners(rule, "", src),
        events = src.socket_events,
        now = src.now,
        cond = socket_cond(&rule.sockets),
        hosts = host_filter(&rule.hosts, src),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortRange, Severity};
    use proptest::prelude::*;

    /// Reads a ClickHouse string literal at the start of `s`: its value and the rest.
    fn read_literal(s: &str) -> Option<(String, &str)> {
        let mut chars = s.strip_prefix('\'')?.char_indices();
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' => return Some((out, &s[i + 2..])),
                '\\' => match chars.next()?.1 {
                    'x' => {
                        let hi = chars.next()?.1.to_digit(16)?;
                        let lo = chars.next()?.1.to_digit(16)?;
                        out.push(char::from_u32(hi * 16 + lo)?);
                    }
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        None
    }

    /// Parentheses outside literals balance, and every literal is closed.
    fn well_formed(sql: &str) -> bool {
        let mut depth = 0i32;
        let mut rest = sql;
        while let Some(c) = rest.chars().next() {
            if c == '\'' {
                match read_literal(rest) {
                    Some((_, r)) => rest = r,
                    None => return false,
                }
                continue;
            }
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            if depth < 0 {
                return false;
            }
            rest = &rest[c.len_utf8()..];
        }
        depth == 0
    }

    fn rule(kind: Kind, hosts: HostSelector, sockets: SocketPredicate) -> Rule {
        Rule {
            id: "r".into(),
            severity: Severity::High,
            description: String::new(),
            hosts,
            sockets,
            kind,
            line: 1,
        }
    }

    #[test]
    fn literals_escape_quotes_backslashes_and_controls() {
        assert_eq!(sql_string("it's"), r"'it\'s'");
        assert_eq!(sql_string(r"a\b"), r"'a\\b'");
        assert_eq!(sql_string("a\nb?"), r"'a\x0Ab\x3F'");
    }

    #[test]
    fn globs_become_anchored_regexes() {
        assert_eq!(glob_regex(&Glob("db-*".into())), r"^db\-.*$");
        assert_eq!(glob_regex(&Glob("a?c.d".into())), r"^a.c\.d$");
        assert_eq!(
            glob_cond("hostname", &[Glob("db1".into())]),
            "(hostname = 'db1')"
        );
    }

    #[test]
    fn ports_and_exposure_compile_to_conditions() {
        let p = SocketPredicate {
            ports: vec![
                PortRange {
                    first: 5432,
                    last: 5432,
                },
                PortRange {
                    first: 9200,
                    last: 9300,
                },
            ],
            exposure: vec!["public".into(), "wildcard".into()],
            ..SocketPredicate::default()
        };
        assert_eq!(
            socket_cond(&p),
            "(local_port = 5432 OR (local_port >= 9200 AND local_port <= 9300)) AND (scope IN ('public', 'wildcard') OR exposure IN ('public', 'wildcard'))"
        );
    }

    #[test]
    fn pod_container_and_netns_selectors_compile_to_their_columns() {
        let p = SocketPredicate {
            pod: vec![Glob("web-*".into()), Glob("shop/api-?".into())],
            pod_namespace: vec![Glob("shop".into())],
            container: vec![Glob("abc*".into())],
            netns: vec![0, 4_026_532_999],
            ..SocketPredicate::default()
        };
        assert_eq!(
            socket_cond(&p),
            r"arrayExists(x -> (match(x, '^abc.*$')), process_containers) AND arrayExists(x -> (x = 'shop'), process_pod_namespaces) AND (arrayExists(x -> (match(x, '^web\\-.*$')), process_pod_names) OR arrayExists((n, ns) -> (match(concat(ns, '/', n), '^shop\\/api\\-.$')), process_pod_names, process_pod_namespaces)) AND netns IN (0, 4026532999)"
        );
        assert_eq!(
            flow_cond(&p),
            r"(match(container_id, '^abc.*$')) AND (pod_namespace = 'shop') AND ((match(pod_name, '^web\\-.*$')) OR (match(concat(pod_namespace, '/', pod_name), '^shop\\/api\\-.$'))) AND netns IN (0, 4026532999)"
        );
    }

    #[test]
    fn findings_in_other_namespaces_say_where_and_keep_host_fingerprints() {
        let listener = compile(&rule(
            Kind::Listener,
            HostSelector::default(),
            SocketPredicate::default(),
        ));
        assert!(
            listener
                .contains("GROUP BY host_id, protocol, family, local_address, local_port, netns"),
            "{listener}"
        );
        assert!(
            listener.contains("concat(' in pod ', any(pod_namespace), '/', any(pod_name))"),
            "{listener}"
        );
        // In the host's namespace, the fingerprint is the one from before namespaces.
        let old = fingerprint(
            "r",
            &[
                "host_id",
                "protocol",
                "local_address",
                "toString(local_port)",
            ],
        );
        assert!(
            listener.contains(&format!("if(netns = 0, {old}, ")),
            "{listener}"
        );
        for kind in [
            Kind::SharedPort {
                distinct: SharedBy::Programs,
                min: 2,
            },
            Kind::EphemeralExhaustion {
                share: 0.8,
                per: EphemeralPer::Host,
            },
            Kind::NewListener(NewListenerParams {
                window_secs: 60,
                scope: BaselineScope::Host,
                allow: Vec::new(),
            }),
        ] {
            let sql = compile(&rule(
                kind,
                HostSelector::default(),
                SocketPredicate::default(),
            ));
            assert!(
                sql.contains("GROUP BY host_id") && sql.contains(", netns\n"),
                "{sql}"
            );
            assert!(sql.contains("' in pod '"), "{sql}");
        }
    }

    #[test]
    fn networks_compile_to_numeric_ranges() {
        let nets = [
            Cidr::parse("10.1.0.0/16").expect("v4"),
            Cidr::parse("2001:db8::/32").expect("v6"),
        ];
        let sql = in_networks("a", &nets);
        assert!(
            sql.contains("IPv4StringToNum(a) >= 167837696 AND IPv4StringToNum(a) <= 167903231"),
            "{sql}"
        );
        assert!(sql.contains("'20010DB8000000000000000000000000'"), "{sql}");
        assert!(sql.contains("'20010DB8FFFFFFFFFFFFFFFFFFFFFFFF'"), "{sql}");
    }

    proptest! {
        #[test]
        fn literal_holds_exactly_its_string(s in any::<String>()) {
            let lit = sql_string(&s);
            prop_assert!(!lit.contains('?'));
            prop_assert!(!lit.contains('\n'));
            let (value, rest) = read_literal(&lit).expect("a closed literal");
            prop_assert_eq!(value, s);
            prop_assert_eq!(rest, "");
        }

        #[test]
        fn compiled_sql_never_breaks_out_of_a_literal(
            label in any::<String>(),
            value in any::<String>(),
            hostname in any::<String>(),
            host_id in any::<String>(),
            process in any::<String>(),
            pod in any::<String>(),
            netns in proptest::collection::vec(any::<u64>(), 0..3),
            kind in 0usize..8,
        ) {
            let hosts = HostSelector {
                labels: vec![(label.clone(), Glob(value))],
                hostname: vec![Glob(hostname.clone()), Glob(format!("{hostname}*"))],
                host_id: vec![host_id],
            };
            let sockets = SocketPredicate {
                process: vec![Glob(process.clone())],
                executable: vec![Glob(format!("*{process}?"))],
                pod: vec![Glob(pod.clone()), Glob(format!("{pod}/{process}*"))],
                pod_namespace: vec![Glob(format!("{pod}?"))],
                container: vec![Glob(format!("*{pod}"))],
                netns,
                ..SocketPredicate::default()
            };
            let kind = match kind {
                0 => Kind::Listener,
                1 => Kind::SharedPort { distinct: SharedBy::Programs, min: 2 },
                2 => Kind::EphemeralExhaustion { share: 0.5, per: EphemeralPer::Destination },
                3 => Kind::PeerDrift(DriftParams { label, rare_share: 0.5, common_share: 1.0, min_peers: 3 }),
                4 => Kind::NewListener(NewListenerParams { window_secs: 60, scope: BaselineScope::Host, allow: vec![sockets.clone()] }),
                5 => Kind::Scan { by: ScanBy::Hosts, min: 3, window_secs: 60 },
                6 => Kind::FlowPolicy(FlowPolicyParams {
                    clients: Some(HostSelector { labels: vec![(label, Glob(process.clone()))], ..HostSelector::default() }),
                    networks: vec![Cidr::parse("10.0.0.0/8").expect("a network"), Cidr::parse("2001:db8::/32").expect("a network")],
                    allow_outside: false,
                    allow_local: true,
                }),
                _ => Kind::PortOwnerChange { window_secs: 3600 },
            };
            let sql = compile(&rule(kind, hosts, sockets));
            prop_assert!(!sql.contains('?'), "{}", sql);
            prop_assert!(well_formed(&sql), "{}", sql);
        }
    }
}
