//! The catalog: every statement the store runs, rendered with sample values.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clickhouse::Row;
use clickhouse::sql::Identifier;
use portolan_core::{
    Attribution, Direction, Flow, FlowKey, HostState, InterfaceAddress, Process, Protocol, Scope,
    Socket, SocketKey, SocketState,
};

use crate::acks::{ACK_BY_FINGERPRINT, ALL_ACKS, FindingAckRow};
use crate::enrollment::USES_OF_TOKEN;
use crate::enrollment::{
    ALL_KEYS, ALL_TOKENS, COUNT_CURRENT, DELETE_CURRENT_FLOWS, DELETE_CURRENT_SOCKETS, HostKeyRow,
    KEYS_OF_HOST, TOKEN_BY_ID, TOKEN_USES, TokenRow,
};
use crate::findings::{ALL_FINDINGS, FINDING_BY_FINGERPRINT, FindingRow};
use crate::fleet::{
    FlowCursor, FlowFilter, NAMESPACE_PODS, SocketCursor, SocketFilter, bind_flow_list,
    bind_socket_list, flow_list_sql, socket_list_sql,
};
use crate::history::{
    EventCursor, EventQuery, EventSource, LAST_CHANGE_AT, bind_events, events_sql, flows_as_of,
    host_as_of_sql, hosts_as_of, sockets_as_of,
};
use crate::rows::{
    FlowCols, FlowCurrentRow, FlowEventRow, HostFactsCols, HostRow, MigrationRow, ReportRow,
    SocketCols, SocketCurrentRow, SocketEventRow,
};
use crate::schema::{self, Flavor, table};

use super::literals::insert;
use super::{
    APPLIED_MIGRATIONS, COUNT_UNCOMMITTED, CREATE_DATABASE, CURRENT_FLOWS, CURRENT_SOCKETS,
    FLOW_EVENTS, FLOWS_BY_KEY, LAST_FLOW_EVENTS, LAST_HOST_FACTS, LAST_SEQ, LAST_SOCKET_EVENTS,
    LATEST_HOST, REPORTS, ROLLBACK, SEQ_TABLES, SOCKET_EVENTS, SOCKETS_BY_KEY,
    UNCOMMITTED_FLOW_KEYS, UNCOMMITTED_SOCKET_KEYS, VERSION,
};

/// One statement of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// What it is (`load_current: current sockets`, `insert: socket_events`…).
    pub name: String,
    /// The SQL, placeholders filled with sample values.
    pub sql: String,
}

fn fill(
    template: &str,
    fields: &[&str],
    bind: impl FnOnce(clickhouse::query::Query) -> clickhouse::query::Query,
) -> String {
    let columns = fields.join(", ");
    let template = template.replace("?fields", &columns);
    let query = bind(clickhouse::Client::default().query(&template));
    query.sql_display().to_string()
}

/// Every statement the store runs for `flavor` — DDL, reads, inserts, rollback — with
/// sample values, in a statement order that runs on an empty database.
pub fn catalog(flavor: Flavor) -> Vec<CatalogEntry> {
    let mut out = Vec::new();
    let mut push = |name: &str, sql: String| {
        out.push(CatalogEntry {
            name: name.to_string(),
            sql,
        })
    };
    push("connect: version", VERSION.to_string());
    push(
        "connect: create database",
        fill(CREATE_DATABASE, &[], |q| {
            q.bind(Identifier("portolan_check"))
        }),
    );
    for (i, statement) in schema::statements(flavor).into_iter().enumerate() {
        push(&format!("migrate: ddl {i}"), statement);
    }
    push("migrate: applied", APPLIED_MIGRATIONS.to_string());

    let h = "host-a";
    let seq = 42u64;
    let (socket, processes) = sample_socket();
    let known: BTreeMap<u32, &Process> = processes.iter().map(|p| (p.pid, p)).collect();
    let scols = SocketCols::encode(&socket, |pid| known.get(&pid).copied());
    let skey = socket.key.to_string();
    let flow = sample_flow();
    let fcols = FlowCols::encode(&flow, processes.first());
    let fkey = flow.key.to_string();
    let facts = HostFactsCols::encode(&sample_host());

    push(
        "migrate: record",
        insert(
            table::SCHEMA_MIGRATIONS,
            &MigrationRow {
                version: 1,
                name: "initial schema".into(),
                applied_at: 1_760_000_000,
                collector: "collector-0".into(),
            },
        ),
    );
    let mut host = HostRow {
        host_id: h.into(),
        hostname: "db-1.example".into(),
        label_keys: vec!["env".into(), "role".into()],
        label_values: vec!["prod".into(), "db".into()],
        agent_version: "0.1.0".into(),
        kernel: "6.1.0-18-amd64".into(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        scan_interval_ms: 10_000,
        collector: "collector-0".into(),
        connected_at: 1_760_000_000,
        interface_names: Vec::new(),
        interfaces: Vec::new(),
        ephemeral_known: 0,
        ephemeral_min: 0,
        ephemeral_max: 0,
        seq,
        updated_at: 1_760_000_001,
        updated_ns: 1_760_000_001_000_000_000,
        interface_netns: Vec::new(),
    };
    host.set_facts(facts.clone());
    push(
        "upsert_host / write_change: insert hosts",
        insert(table::HOSTS, &host),
    );
    push(
        "write_change: insert socket_events",
        insert(
            table::SOCKET_EVENTS,
            &SocketEventRow::with_cols(
                h.into(),
                seq,
                1_760_000_000,
                "added".into(),
                skey.clone(),
                scols.clone(),
            ),
        ),
    );
    push(
        "write_change: insert sockets_current",
        insert(
            table::SOCKETS_CURRENT,
            &SocketCurrentRow::with_cols(h.into(), skey.clone(), seq, 1, 1_760_000_000, scols),
        ),
    );
    push(
        "write_change: insert flow_events",
        insert(
            table::FLOW_EVENTS,
            &FlowEventRow::with_cols(
                h.into(),
                seq,
                1_760_000_000,
                "upserted".into(),
                fkey.clone(),
                fcols.clone(),
            ),
        ),
    );
    push(
        "write_change: insert flows_current",
        insert(
            table::FLOWS_CURRENT,
            &FlowCurrentRow::with_cols(h.into(), fkey.clone(), seq, 1, 1_760_000_000, fcols),
        ),
    );
    let report = ReportRow {
        host_id: h.into(),
        seq,
        kind: "delta".into(),
        at: 1_760_000_000,
        received_at: 1_760_000_001,
        sockets: 120,
        listeners: 9,
        connections: 100,
        unattributed_no_permission: 1,
        unattributed_process_gone: 0,
        unattributed_unknown: 0,
        kernel_owned: 10,
        scan_duration_micros: 12_345,
        state_names: vec!["ESTABLISHED".into(), "LISTEN".into(), "UDP".into()],
        state_counts: vec![100, 7, 2],
        added: 1,
        removed: 0,
        changed: 0,
        flows_upserted: 1,
        flows_removed: 0,
        has_host: 1,
        interface_names: facts.interface_names,
        interfaces: facts.interfaces,
        ephemeral_known: facts.ephemeral_known,
        ephemeral_min: facts.ephemeral_min,
        ephemeral_max: facts.ephemeral_max,
        interface_netns: facts.interface_netns,
    };
    push(
        "write_change / write_heartbeat: insert host_reports",
        insert(table::HOST_REPORTS, &report),
    );

    let keys = vec![skey.clone()];
    let fkeys = vec![fkey.clone()];
    push("last_seq", fill(LAST_SEQ, &[], |q| q.bind(h)));
    push(
        "load_current: latest host",
        fill(LATEST_HOST, HostRow::COLUMN_NAMES, |q| q.bind(h)),
    );
    push(
        "load_current: current sockets",
        fill(CURRENT_SOCKETS, SocketCurrentRow::COLUMN_NAMES, |q| {
            q.bind(h)
        }),
    );
    push(
        "load_current: current flows",
        fill(CURRENT_FLOWS, FlowCurrentRow::COLUMN_NAMES, |q| q.bind(h)),
    );
    push(
        "write_change: last rows of removed sockets",
        fill(SOCKETS_BY_KEY, SocketCurrentRow::COLUMN_NAMES, |q| {
            q.bind(h).bind(&keys)
        }),
    );
    push(
        "write_change: last rows of removed flows",
        fill(FLOWS_BY_KEY, FlowCurrentRow::COLUMN_NAMES, |q| {
            q.bind(h).bind(&fkeys)
        }),
    );
    push(
        "socket_events",
        fill(SOCKET_EVENTS, SocketEventRow::COLUMN_NAMES, |q| q.bind(h)),
    );
    push(
        "flow_events",
        fill(FLOW_EVENTS, FlowEventRow::COLUMN_NAMES, |q| q.bind(h)),
    );
    push(
        "reports",
        fill(REPORTS, ReportRow::COLUMN_NAMES, |q| q.bind(h)),
    );
    for t in SEQ_TABLES {
        push(
            &format!("recover: count uncommitted {t}"),
            fill(COUNT_UNCOMMITTED, &[], |q| {
                q.bind(Identifier(t)).bind(h).bind(seq)
            }),
        );
    }
    push(
        "recover: uncommitted sockets",
        fill(UNCOMMITTED_SOCKET_KEYS, &[], |q| q.bind(h).bind(seq)),
    );
    push(
        "recover: uncommitted flows",
        fill(UNCOMMITTED_FLOW_KEYS, &[], |q| q.bind(h).bind(seq)),
    );
    push(
        "recover: committed socket history",
        fill(LAST_SOCKET_EVENTS, SocketEventRow::COLUMN_NAMES, |q| {
            q.bind(h).bind(seq).bind(&keys)
        }),
    );
    push(
        "recover: committed flow history",
        fill(LAST_FLOW_EVENTS, FlowEventRow::COLUMN_NAMES, |q| {
            q.bind(h).bind(seq).bind(&fkeys)
        }),
    );
    push(
        "recover: committed host facts",
        fill(LAST_HOST_FACTS, ReportRow::COLUMN_NAMES, |q| {
            q.bind(h).bind(seq)
        }),
    );
    history_and_findings(&mut push, h, seq, &skey, &fkey);
    enrollment(&mut push, h);
    for t in SEQ_TABLES {
        push(
            &format!("recover: roll back {t}"),
            fill(ROLLBACK, &[], |q| {
                q.bind(Identifier(t)).bind(h).bind(seq - 1)
            }),
        );
    }
    out
}

/// The statements of the query API and the rule engine's past: listings (current and
/// as of an instant, with every filter and a page cursor), history, findings and their
/// acknowledgements.
fn history_and_findings(
    push: &mut impl FnMut(&str, String),
    h: &str,
    seq: u64,
    skey: &str,
    fkey: &str,
) {
    let t = 1_760_000_000u64;
    let ids = vec![h.to_string(), "host-b".to_string()];
    let sockets = SocketFilter {
        protocol: Some(Protocol::Tcp),
        ports: Some((1, 1024)),
        listening: true,
        exposures: vec![Scope::Public, Scope::Wildcard],
        process: "postgres*".into(),
        after: Some(SocketCursor {
            host_id: h.into(),
            local_port: 22,
            socket_key: skey.into(),
        }),
        limit: 100,
        ..SocketFilter::default()
    };
    let flows = FlowFilter {
        port: Some(5432),
        direction: Some(Direction::Inbound),
        after: Some(FlowCursor {
            host_id: h.into(),
            service_port: 5432,
            flow_key: fkey.into(),
        }),
        limit: 100,
        ..FlowFilter::default()
    };
    for (name, at) in [("current", None), ("as of", Some(t))] {
        for hosts in [None, Some(ids.as_slice())] {
            let which = if hosts.is_some() {
                "some hosts"
            } else {
                "all hosts"
            };
            let f = SocketFilter {
                at,
                ..sockets.clone()
            };
            push(
                &format!("list_sockets: {name}, {which}, every filter, page cursor"),
                fill(
                    &socket_list_sql(&f, hosts.is_some()),
                    SocketCurrentRow::COLUMN_NAMES,
                    |q| bind_socket_list(q, &f, hosts),
                ),
            );
            let f = FlowFilter {
                at,
                ..flows.clone()
            };
            push(
                &format!("list_flows: {name}, {which}, every filter, page cursor"),
                fill(
                    &flow_list_sql(&f, hosts.is_some()),
                    FlowCurrentRow::COLUMN_NAMES,
                    |q| bind_flow_list(q, &f, hosts),
                ),
            );
        }
    }
    push(
        "namespace_pods: pods of network namespaces",
        NAMESPACE_PODS.to_string(),
    );
    let plain = SocketFilter {
        at: Some(t),
        limit: 10,
        ..SocketFilter::default()
    };
    push(
        "list_sockets: as of, no filter",
        fill(
            &socket_list_sql(&plain, false),
            SocketCurrentRow::COLUMN_NAMES,
            |q| bind_socket_list(q, &plain, None),
        ),
    );
    // What the rule engine does with the as-of tables: the current-state rule shapes
    // with the tables replaced.
    push(
        "rules over the past: listeners",
        format!(
            "SELECT host_id, protocol, local_port, count() AS n FROM {} \
             WHERE present = 1 AND listener = 1 AND exposure IN ('public', 'wildcard') \
             AND host_id IN (SELECT host_id FROM {} WHERE has(label_keys, 'env')) \
             GROUP BY host_id, protocol, local_port",
            sockets_as_of(t),
            hosts_as_of(t)
        ),
    );
    push(
        "rules over the past: flows joined to hosts",
        format!(
            "SELECT host_id, used, ephemeral_min, ephemeral_max FROM \
             (SELECT host_id, sum(connections) AS used FROM {} WHERE present = 1 \
             AND direction = 'outbound' GROUP BY host_id) AS joined_left \
             ALL INNER JOIN (SELECT host_id, ephemeral_min, ephemeral_max FROM {} \
             WHERE ephemeral_known = 1) AS joined_right USING host_id",
            flows_as_of(t),
            hosts_as_of(t)
        ),
    );
    push(
        "host_as_of: host facts",
        fill(&host_as_of_sql(t), HostRow::COLUMN_NAMES, |q| q.bind(h)),
    );
    push(
        "host_as_of: last change",
        fill(LAST_CHANGE_AT, &[], |q| q.bind(h).bind(t)),
    );
    for newest_first in [false, true] {
        for source in [EventSource::Socket, EventSource::Flow] {
            for after in [
                EventCursor {
                    seq,
                    source: EventSource::Socket,
                    event: "added".into(),
                    key: skey.into(),
                },
                EventCursor {
                    seq,
                    source: EventSource::Flow,
                    event: "upserted".into(),
                    key: fkey.into(),
                },
            ] {
                let query = EventQuery {
                    host_id: h.into(),
                    from: Some(t - 3600),
                    to: Some(t),
                    port: Some(5432),
                    key: Some(match source {
                        EventSource::Socket => skey.into(),
                        EventSource::Flow => fkey.into(),
                    }),
                    include_flows: true,
                    newest_first,
                    after_seq: 1,
                    after: Some(after.clone()),
                    upto_seq: Some(seq),
                    limit: 50,
                };
                let fields = match source {
                    EventSource::Socket => SocketEventRow::COLUMN_NAMES,
                    EventSource::Flow => FlowEventRow::COLUMN_NAMES,
                };
                push(
                    &format!(
                        "events: {source:?} after a {:?} cursor, newest first {newest_first}",
                        after.source
                    ),
                    fill(&events_sql(&query, source), fields, |q| {
                        bind_events(q, &query, source, seq)
                    }),
                );
            }
        }
    }
    let plain = EventQuery {
        host_id: h.into(),
        limit: 10,
        ..EventQuery::default()
    };
    push(
        "events: no filter",
        fill(
            &events_sql(&plain, EventSource::Socket),
            SocketEventRow::COLUMN_NAMES,
            |q| bind_events(q, &plain, EventSource::Socket, seq),
        ),
    );

    push(
        "write_findings: insert findings",
        insert(
            table::FINDINGS,
            &FindingRow {
                fingerprint: "0123456789ABCDEF".into(),
                rule_id: "db-wildcard".into(),
                host_id: h.into(),
                severity: "high".into(),
                subject: "tcp [::]:5432 postgres".into(),
                evidence: "exposure=public".into(),
                status: "open".into(),
                first_seen: 1_760_000_000,
                last_seen: 1_760_000_100,
                resolved_at: 0,
                reopened: 0,
                version: 1_760_000_100_000_000_000,
            },
        ),
    );
    push("findings", fill(ALL_FINDINGS, &finding_fields(), |q| q));
    push(
        "finding",
        fill(FINDING_BY_FINGERPRINT, &finding_fields(), |q| {
            q.bind("0123456789ABCDEF")
        }),
    );
    push(
        "write_finding_ack: insert finding_acks",
        insert(
            table::FINDING_ACKS,
            &FindingAckRow {
                fingerprint: "0123456789ABCDEF".into(),
                acked: 1,
                acked_by: "spiffe://portolan/operator/admin/alice".into(),
                reason: "the database is firewalled; it's fine".into(),
                until: 1_760_086_400,
                at: 1_760_000_200,
                status: "open".into(),
                episode: 0,
                version: 1_760_000_200_000_000_000,
            },
        ),
    );
    push(
        "finding_acks",
        fill(ALL_ACKS, FindingAckRow::COLUMN_NAMES, |q| q),
    );
    push(
        "finding_ack",
        fill(ACK_BY_FINGERPRINT, FindingAckRow::COLUMN_NAMES, |q| {
            q.bind("0123456789ABCDEF")
        }),
    );
}

/// The statements of enrollment: tokens, host keys, and a retirement's deletions.
fn enrollment(push: &mut impl FnMut(&str, String), h: &str) {
    push(
        "write_enroll_token: insert enroll_tokens",
        insert(
            table::ENROLL_TOKENS,
            &TokenRow {
                id: "t0k3n1d".into(),
                secret_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                    .into(),
                host_patterns: vec!["web-*".into()],
                label_keys: vec!["env".into()],
                label_values: vec!["prod".into()],
                created_by: "spiffe://portolan/operator/admin/alice".into(),
                description: "web tier, autoscaled".into(),
                created_at: 1_760_000_000,
                expires_at: 1_760_086_400,
                max_uses: 10,
                revoked: 0,
                version: 1_760_000_000_000_000_000,
            },
        ),
    );
    push(
        "enroll_tokens",
        fill(ALL_TOKENS, TokenRow::COLUMN_NAMES, |q| q),
    );
    push(
        "enroll_token",
        fill(TOKEN_BY_ID, TokenRow::COLUMN_NAMES, |q| q.bind("t0k3n1d")),
    );
    push(
        "write_host_keys: insert host_keys",
        insert(
            table::HOST_KEYS,
            &HostKeyRow {
                host_id: h.into(),
                key_sha256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                    .into(),
                state: "bound".into(),
                token_id: "t0k3n1d".into(),
                label_keys: vec!["env".into()],
                label_values: vec!["prod".into()],
                requested_at: 1_760_000_100,
                decided_at: 1_760_000_100,
                decided_by: "token".into(),
                version: 1_760_000_100_000_000_000,
            },
        ),
    );
    push("enroll_token_uses", TOKEN_USES.to_string());
    push(
        "enroll_token_uses_of",
        fill(USES_OF_TOKEN, &[], |q| q.bind("t0k3n1d")),
    );
    push(
        "host_keys_of",
        fill(KEYS_OF_HOST, HostKeyRow::COLUMN_NAMES, |q| q.bind(h)),
    );
    push("host_keys", fill(ALL_KEYS, HostKeyRow::COLUMN_NAMES, |q| q));
    push(
        "current_rows",
        fill(COUNT_CURRENT, &[], |q| q.bind(h).bind(h)),
    );
    push(
        "delete_current_state: sockets",
        fill(DELETE_CURRENT_SOCKETS, &[], |q| q.bind(h)),
    );
    push(
        "delete_current_state: flows",
        fill(DELETE_CURRENT_FLOWS, &[], |q| q.bind(h)),
    );
}

fn finding_fields() -> Vec<&'static str> {
    FindingRow::COLUMN_NAMES.to_vec()
}

fn sample_socket() -> (Socket, Vec<Process>) {
    let processes = vec![
        Process {
            pid: 812,
            name: "postgres".into(),
            executable: "/usr/lib/postgresql/15/bin/postgres".into(),
            command_line: "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main -c config_file='/etc/postgresql/15/main/postgresql.conf'".into(),
            uid: 105,
            user: "postgres".into(),
            systemd_unit: "postgresql@15-main.service".into(),
            container_id: String::new(),
            cgroup: "/system.slice/system-postgresql.slice/postgresql@15-main.service".into(),
            ..Process::default()
        },
        Process {
            pid: 813,
            name: "postgres".into(),
            uid: 105,
            user: "postgres".into(),
            ..Process::default()
        },
    ];
    let socket = Socket {
        key: SocketKey {
            protocol: Protocol::Tcp,
            local_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            local_port: 5432,
            remote_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            remote_port: 0,
            inode: 31337,
            netns: 0,
        },
        state: SocketState::Listen,
        uid: 105,
        pids: vec![812, 813],
        attribution: Attribution::Owned,
        scope: Scope::Wildcard,
        exposure: Scope::Public,
        path: String::new(),
    };
    (socket, processes)
}

fn sample_flow() -> Flow {
    Flow {
        key: FlowKey {
            protocol: Protocol::Tcp,
            direction: Direction::Inbound,
            local_address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            remote_address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            service_port: 5432,
            state: SocketState::Established,
            pid: 812,
            netns: 0,
        },
        connections: 17,
    }
}

fn sample_host() -> HostState {
    HostState {
        interfaces: vec![
            InterfaceAddress {
                interface: "eth0".into(),
                address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
                prefix_len: 24,
                netns: 0,
            },
            InterfaceAddress {
                interface: "eth0".into(),
                address: "2001:db8::5"
                    .parse()
                    .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                prefix_len: 64,
                netns: 0,
            },
        ],
        ephemeral_ports: Some((32768, 60999)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_fills_every_placeholder() {
        for flavor in [Flavor::Legacy, Flavor::Modern] {
            for entry in catalog(flavor) {
                let without_literals: String = entry
                    .sql
                    .split('\'')
                    .step_by(2)
                    .collect::<Vec<_>>()
                    .join("");
                assert!(
                    !without_literals.contains('?'),
                    "{}: {}",
                    entry.name,
                    entry.sql
                );
            }
        }
    }
}
