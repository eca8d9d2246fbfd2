//! From a [`Rule`] to one ClickHouse query returning findings.
//!
//! Every user string reaches the SQL through [`sql_string`], every glob through
//! [`glob_regex`] and then [`sql_string`]; numbers are formatted from validated values.
//! The text never holds a `?`, which the `clickhouse` crate would take for a bind
//! placeholder.
//!
//! This module is what every kind shares; each kind's own query is in its module under
//! [`crate::kind`]:
//!
//! - [`literal`]: string literals and glob regexes;
//! - [`cond`]: conditions on hosts and sockets (selectors, ports, pods, namespaces);
//! - [`address`]: address classes from core's tables, and networks;
//! - [`finding`]: fingerprints, subjects and evidence written alike by every kind.

pub(crate) mod address;
pub(crate) mod cond;
pub(crate) mod finding;
pub(crate) mod literal;

pub use literal::{glob_regex, sql_string};

use crate::model::Rule;

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

/// Compiles a rule to one query returning rows of [`FINDING_COLUMNS`], ordered by
/// `host_id` then `subject`. The query reads the tables of the collector's schema in the
/// current database and runs on ClickHouse 18.16 and on current servers.
pub fn compile(rule: &Rule) -> String {
    compile_with(rule, &Sources::current())
}

/// Compiles a rule like [`compile`], reading `src` instead of the current tables.
pub fn compile_with(rule: &Rule, src: &Sources) -> String {
    let inner = crate::kind::sql(rule, src);
    let id = sql_string(&rule.id);
    let severity = sql_string(rule.severity.as_str());
    format!(
        r"SELECT {id} AS rule_id, host_id, fingerprint, {severity} AS severity, subject, evidence
FROM
(
{inner}
)
ORDER BY host_id, subject"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{
        BaselineScope, DriftParams, EphemeralPer, FlowPolicyParams, NewListenerParams, ScanBy,
        SharedBy,
    };
    use crate::model::{Cidr, Glob, HostSelector, Kind, Severity, SocketPredicate};
    use finding::fingerprint;
    use literal::read_literal;
    use proptest::prelude::*;

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

    proptest! {
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
