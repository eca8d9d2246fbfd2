//! From a [`Rule`] to one ClickHouse query returning findings.
//!
//! Every user string reaches the SQL through [`sql_string`], every glob through
//! [`glob_regex`] and then [`sql_string`]; numbers are formatted from validated values.
//! The text never holds a `?`, which the `clickhouse` crate would take for a bind
//! placeholder.

use std::fmt::Write as _;

use crate::model::{
    BaselineScope, DriftParams, EphemeralPer, Glob, HostSelector, Kind, NewListenerParams, Rule,
    ScanBy, SharedBy, SocketPredicate,
};

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
fn host_filter(sel: &HostSelector) -> String {
    host_cond(sel)
        .map(|c| format!(" AND host_id IN (SELECT host_id FROM hosts FINAL WHERE {c})"))
        .unwrap_or_default()
}

/// A condition on the columns of `sockets_current` / `socket_events`.
fn socket_cond(p: &SocketPredicate) -> String {
    let mut parts = Vec::new();
    if !p.protocol.is_empty() {
        parts.push(in_list("protocol", &p.protocol));
    }
    if !p.ports.is_empty() {
        let ranges: Vec<String> = p
            .ports
            .iter()
            .map(|r| {
                if r.first == r.last {
                    format!("local_port = {}", r.first)
                } else {
                    format!("(local_port >= {} AND local_port <= {})", r.first, r.last)
                }
            })
            .collect();
        parts.push(format!("({})", ranges.join(" OR ")));
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
    ] {
        if !globs.is_empty() {
            parts.push(array_glob_cond(column, globs));
        }
    }
    if parts.is_empty() {
        "1".into()
    } else {
        parts.join(" AND ")
    }
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
    let inner = match &rule.kind {
        Kind::Listener => listener(rule),
        Kind::SharedPort { distinct, min } => shared_port(rule, *distinct, *min),
        Kind::EphemeralExhaustion { share, per } => ephemeral(rule, *share, *per),
        Kind::PeerDrift(params) => peer_drift(rule, params),
        Kind::NewListener(params) => new_listener(rule, params),
        Kind::Scan {
            by,
            min,
            window_secs,
        } => scan(rule, *by, *min, *window_secs),
    };
    format!(
        "SELECT {id} AS rule_id, host_id, fingerprint, {severity} AS severity, subject, evidence\nFROM\n(\n{inner}\n)\nORDER BY host_id, subject",
        id = sql_string(&rule.id),
        severity = sql_string(rule.severity.as_str()),
    )
}

fn current_listeners(rule: &Rule, extra: &str) -> String {
    format!(
        "FROM sockets_current FINAL\nWHERE present = 1 AND listener = 1 AND {}{extra}{}",
        socket_cond(&rule.sockets),
        host_filter(&rule.hosts)
    )
}

fn listener(rule: &Rule) -> String {
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' ', {ep}) AS subject,\n    concat('exposure=', any(exposure), ' scope=', any(scope), ' processes=', {names}, ' users=', {users}, ' units=', {units}, ' pids=', {pids}, ' sockets=', toString(count())) AS evidence\n{from}\nGROUP BY host_id, protocol, family, local_address, local_port",
        fp = fingerprint(
            &rule.id,
            &[
                "host_id",
                "protocol",
                "local_address",
                "toString(local_port)"
            ]
        ),
        ep = endpoint("family", "local_address", "local_port"),
        names = join_strings("groupUniqArrayArray(process_names)"),
        users = join_strings("groupUniqArrayArray(process_users)"),
        units = join_strings("groupUniqArrayArray(process_units)"),
        pids = join_numbers("groupUniqArrayArray(pids)"),
        from = current_listeners(rule, ""),
    )
}

fn shared_port(rule: &Rule, by: SharedBy, min: u32) -> String {
    let counted = match by {
        SharedBy::Programs => "programs",
        SharedBy::Processes => "all_pids",
        SharedBy::Sockets => "inodes",
    };
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' port ', toString(local_port)) AS subject,\n    concat('programs=', arrayStringConcat(programs, ','), ' processes=', arrayStringConcat(names, ','), ' pids=', arrayStringConcat(arrayMap(x -> toString(x), all_pids), ','), ' sockets=', toString(length(inodes)), ' addresses=', arrayStringConcat(addresses, ',')) AS evidence\nFROM\n(\nSELECT host_id, protocol, local_port,\n    arraySort(arrayFilter(x -> x != '', groupUniqArrayArray(process_executables))) AS programs,\n    arraySort(groupUniqArrayArray(process_names)) AS names,\n    arraySort(groupUniqArrayArray(pids)) AS all_pids,\n    groupUniqArray(inode) AS inodes,\n    arraySort(groupUniqArray(local_address)) AS addresses\n{from}\nGROUP BY host_id, protocol, local_port\n)\nWHERE length({counted}) >= {min}",
        fp = fingerprint(&rule.id, &["host_id", "protocol", "toString(local_port)"]),
        from = current_listeners(rule, ""),
    )
}

fn ephemeral(rule: &Rule, share: f64, per: EphemeralPer) -> String {
    let (group, fp, subject) = match per {
        EphemeralPer::Host => (
            "host_id".to_string(),
            fingerprint(&rule.id, &["host_id"]),
            "'ephemeral ports'".to_string(),
        ),
        EphemeralPer::Destination => (
            "host_id, protocol, family, remote_address, service_port".to_string(),
            fingerprint(
                &rule.id,
                &[
                    "host_id",
                    "protocol",
                    "remote_address",
                    "toString(service_port)",
                ],
            ),
            format!(
                "concat('ephemeral ports toward ', protocol, ' ', {})",
                endpoint("family", "remote_address", "service_port")
            ),
        ),
    };
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    {subject} AS subject,\n    concat('used=', toString(used), ' range=', toString(ephemeral_min), '-', toString(ephemeral_max), ' share=', toString(round(used / range_size, 3)), ' threshold={share}') AS evidence\nFROM\n(\nSELECT {group}, sum(connections) AS used\nFROM flows_current FINAL\nWHERE present = 1 AND direction = 'outbound'{hosts}\nGROUP BY {group}\n) AS joined_left\nALL INNER JOIN\n(\nSELECT host_id, ephemeral_min, ephemeral_max, toInt64(ephemeral_max) - toInt64(ephemeral_min) + 1 AS range_size\nFROM hosts FINAL\nWHERE ephemeral_known = 1 AND ephemeral_max >= ephemeral_min\n) AS joined_right USING host_id\nWHERE used >= {share} * range_size",
        hosts = host_filter(&rule.hosts),
    )
}

fn peer_drift(rule: &Rule, p: &DriftParams) -> String {
    let label = sql_string(&p.label);
    let members = format!(
        "SELECT host_id, label_values[indexOf(label_keys, {label})] AS peer_group\nFROM hosts FINAL\nWHERE has(label_keys, {label}){}",
        host_cond(&rule.hosts)
            .map(|c| format!(" AND {c}"))
            .unwrap_or_default()
    );
    let listeners = format!(
        "SELECT DISTINCT host_id, protocol, local_port\nFROM sockets_current FINAL\nWHERE present = 1 AND listener = 1 AND {}",
        socket_cond(&rule.sockets)
    );
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(if(holding, 'rare ', 'missing '), protocol, ' port ', toString(local_port)) AS subject,\n    concat('label=', {label}, ' group=', peer_group, ' holders=', toString(holders_n), ' peers=', toString(peers_n), ' holder_hosts=', arrayStringConcat(arraySort(holders), ',')) AS evidence\nFROM\n(\nSELECT peer_group, protocol, local_port, holders, holders_n, peers_n, arrayJoin(members) AS host_id, has(holders, host_id) AS holding\nFROM\n(\nSELECT peer_group, protocol, local_port, groupUniqArray(host_id) AS holders, length(holders) AS holders_n\nFROM\n(\n{listeners}\n) AS joined_left\nALL INNER JOIN\n(\n{members}\n) AS joined_right USING host_id\nGROUP BY peer_group, protocol, local_port\n) AS joined_left\nALL INNER JOIN\n(\nSELECT peer_group, groupUniqArray(host_id) AS members, length(members) AS peers_n\nFROM\n(\n{members}\n)\nGROUP BY peer_group\n) AS joined_right USING peer_group\n)\nWHERE peers_n >= {min} AND ((holding AND toInt64(holders_n) - 1 < {rare} * (toInt64(peers_n) - 1)) OR (NOT holding AND toInt64(holders_n) >= {common} * (toInt64(peers_n) - 1)))",
        fp = fingerprint(
            &rule.id,
            &[
                "host_id",
                "if(holding, 'rare', 'missing')",
                "protocol",
                "toString(local_port)"
            ]
        ),
        min = p.min_peers,
        rare = p.rare_share,
        common = p.common_share,
    )
}

fn new_listener(rule: &Rule, p: &NewListenerParams) -> String {
    let allow: String = p
        .allow
        .iter()
        .map(|a| format!(" AND NOT ({})", socket_cond(a)))
        .collect();
    let since = format!("now() - {}", p.window_secs);
    let (identity, baseline_guard) = match p.scope {
        BaselineScope::Host => (
            "host_id, protocol, local_address, local_port, executable, systemd_unit",
            format!(
                "host_id IN (SELECT host_id FROM host_reports GROUP BY host_id HAVING min(at) < {since})"
            ),
        ),
        BaselineScope::Fleet => (
            "protocol, scope, local_port, executable, systemd_unit",
            format!("(SELECT min(at) FROM host_reports) < {since}"),
        ),
    };
    let event_hosts = match p.scope {
        BaselineScope::Host => host_filter(&rule.hosts),
        BaselineScope::Fleet => String::new(),
    };
    format!(
        "SELECT host_id,\n    {fp} AS fingerprint,\n    concat(protocol, ' ', {ep}) AS subject,\n    concat('first_seen=', toString(first_seen), ' process=', process_name, ' executable=', executable, ' unit=', systemd_unit, ' exposure=', exposure_seen) AS evidence\nFROM\n(\nSELECT host_id, protocol, family, local_address, local_port, scope, executable, systemd_unit, any(process) AS process_name, any(exposure) AS exposure_seen\n{from}\nGROUP BY host_id, protocol, family, local_address, local_port, scope, executable, systemd_unit\n) AS joined_left\nALL INNER JOIN\n(\nSELECT {identity}, min(at) AS first_seen\nFROM socket_events\nWHERE listener = 1{event_hosts}\nGROUP BY {identity}\n) AS joined_right USING ({identity})\nWHERE first_seen >= {since} AND {baseline_guard}",
        fp = fingerprint(
            &rule.id,
            &[
                "host_id",
                "protocol",
                "local_address",
                "toString(local_port)",
                "executable",
                "systemd_unit"
            ]
        ),
        ep = endpoint("family", "local_address", "local_port"),
        from = current_listeners(rule, &allow),
    )
}

fn scan(rule: &Rule, by: ScanBy, min: u32, window_secs: u64) -> String {
    let source = format!(
        "SELECT host_id, replaceRegexpOne(remote_address, '^::ffff:([0-9.]+)$', '\\\\1') AS remote, service_port, at\nFROM flow_events\nWHERE direction = 'inbound' AND at >= now() - {window_secs}{}",
        host_filter(&rule.hosts)
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
            kind in 0usize..6,
        ) {
            let hosts = HostSelector {
                labels: vec![(label.clone(), Glob(value))],
                hostname: vec![Glob(hostname.clone()), Glob(format!("{hostname}*"))],
                host_id: vec![host_id],
            };
            let sockets = SocketPredicate {
                process: vec![Glob(process.clone())],
                executable: vec![Glob(format!("*{process}?"))],
                ..SocketPredicate::default()
            };
            let kind = match kind {
                0 => Kind::Listener,
                1 => Kind::SharedPort { distinct: SharedBy::Programs, min: 2 },
                2 => Kind::EphemeralExhaustion { share: 0.5, per: EphemeralPer::Destination },
                3 => Kind::PeerDrift(DriftParams { label, rare_share: 0.5, common_share: 1.0, min_peers: 3 }),
                4 => Kind::NewListener(NewListenerParams { window_secs: 60, scope: BaselineScope::Host, allow: vec![sockets.clone()] }),
                _ => Kind::Scan { by: ScanBy::Hosts, min: 3, window_secs: 60 },
            };
            let sql = compile(&rule(kind, hosts, sockets));
            prop_assert!(!sql.contains('?'), "{}", sql);
            prop_assert!(well_formed(&sql), "{}", sql);
        }
    }
}
