//! Conditions on hosts and sockets, shared by every kind.

use super::Sources;
use super::literal::{glob_regex, sql_string};
use crate::model::{Glob, HostSelector, PortRange, Rule, SocketPredicate};

fn is_plain(glob: &Glob) -> bool {
    !glob.0.contains(['*', '?'])
}

/// `expr` matches one of `globs` (`1` when there are none).
pub(crate) fn glob_cond(expr: &str, globs: &[Glob]) -> String {
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
pub(crate) fn array_glob_cond(column: &str, globs: &[Glob]) -> String {
    format!("arrayExists(x -> {}, {column})", glob_cond("x", globs))
}

/// `expr` is one of `values`.
pub(crate) fn in_list<'a>(expr: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<String> = values.into_iter().map(sql_string).collect();
    format!("{expr} IN ({})", list.join(", "))
}

/// A condition on the columns of `hosts`; `None` when the selector takes every host.
pub(crate) fn host_cond(sel: &HostSelector) -> Option<String> {
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
        parts.push(in_list("host_id", sel.host_id.iter().map(String::as_str)));
    }
    Some(parts.join(" AND "))
}

/// ` AND host_id IN (…)` for a table with a `host_id` column, or nothing.
pub(crate) fn host_filter(sel: &HostSelector, src: &Sources) -> String {
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
pub(crate) fn port_cond(column: &str, ports: &[PortRange]) -> String {
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
pub(crate) fn flow_cond(p: &SocketPredicate) -> String {
    let mut parts = Vec::new();
    if !p.protocol.is_empty() {
        parts.push(in_list("protocol", p.protocol.iter().map(|v| v.as_str())));
    }
    if !p.ports.is_empty() {
        parts.push(port_cond("service_port", &p.ports));
    }
    if !p.state.is_empty() {
        parts.push(in_list("state", p.state.iter().map(|v| v.as_str())));
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

/// A condition on the columns of `sockets_current` / `socket_events`.
pub(crate) fn socket_cond(p: &SocketPredicate) -> String {
    let mut parts = Vec::new();
    if !p.protocol.is_empty() {
        parts.push(in_list("protocol", p.protocol.iter().map(|v| v.as_str())));
    }
    if !p.ports.is_empty() {
        parts.push(port_cond("local_port", &p.ports));
    }
    if !p.state.is_empty() {
        parts.push(in_list("state", p.state.iter().map(|v| v.as_str())));
    }
    if !p.exposure.is_empty() {
        parts.push(format!(
            "({} OR {})",
            in_list("scope", p.exposure.iter().map(|v| v.as_str())),
            in_list("exposure", p.exposure.iter().map(|v| v.as_str()))
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
pub(crate) fn split_pod_globs(globs: &[Glob]) -> (Vec<Glob>, Vec<Glob>) {
    globs.iter().cloned().partition(|g| !g.0.contains('/'))
}

/// The `netns` column is one of `inodes`.
pub(crate) fn netns_cond(inodes: &[u64]) -> String {
    let list: Vec<String> = inodes.iter().map(u64::to_string).collect();
    format!("netns IN ({})", list.join(", "))
}

/// `FROM` the current listeners that the rule's `sockets` and `hosts` select, `extra`
/// (` AND …`) further narrowing them.
pub(crate) fn current_listeners(rule: &Rule, extra: &str, src: &Sources) -> String {
    format!(
        "FROM {}\nWHERE present = 1 AND listener = 1 AND {}{extra}{}",
        src.sockets,
        socket_cond(&rule.sockets),
        host_filter(&rule.hosts, src)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portolan_core::Scope;

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
            exposure: vec![Scope::Public, Scope::Wildcard],
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
}
