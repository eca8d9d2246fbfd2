//! Every statement the store runs, as text, and a catalog of them with sample values.
//!
//! `?` is a bind placeholder of the `clickhouse` crate (escaped client-side, so that the
//! queries run on servers without query parameters, such as 18.16); `?fields` is the
//! column list of the row type read.
//!
//! [`catalog`] renders every statement with sample values, so that the schema and the
//! queries can be checked against another server (see `tools/chdb/check.py`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clickhouse::Row;
use clickhouse::sql::Identifier;
use portolan_core::{
    Attribution, Direction, Flow, FlowKey, HostState, InterfaceAddress, Process, Protocol, Scope,
    Socket, SocketKey, SocketState,
};
use serde::Serialize;

use super::acks::{ACK_BY_FINGERPRINT, ALL_ACKS, FindingAckRow};
use super::findings::{ALL_FINDINGS, FINDING_BY_FINGERPRINT, FindingRow};
use super::fleet::{
    FlowCursor, FlowFilter, NAMESPACE_PODS, SocketCursor, SocketFilter, bind_flow_list,
    bind_socket_list, flow_list_sql, socket_list_sql,
};
use super::history::{
    EventCursor, EventQuery, EventSource, LAST_CHANGE_AT, bind_events, events_sql, flows_as_of,
    host_as_of_sql, hosts_as_of, sockets_as_of,
};
use super::rows::{
    FlowCols, FlowCurrentRow, FlowEventRow, HostFactsCols, HostRow, MigrationRow, ReportRow,
    SocketCols, SocketCurrentRow, SocketEventRow,
};
use super::schema::{self, Flavor, table};

/// The server version.
pub const VERSION: &str = "SELECT version()";
/// Creates the database (bound as an identifier).
pub const CREATE_DATABASE: &str = "CREATE DATABASE IF NOT EXISTS ?";
/// Applied migrations.
pub const APPLIED_MIGRATIONS: &str =
    "SELECT DISTINCT version FROM schema_migrations ORDER BY version";
/// The last committed seq of a host.
pub const LAST_SEQ: &str =
    "SELECT max(seq) FROM host_reports WHERE host_id = ? AND kind IN ('snapshot', 'delta')";
/// The latest `hosts` row of a host.
pub const LATEST_HOST: &str =
    "SELECT ?fields FROM hosts FINAL WHERE host_id = ? ORDER BY updated_ns DESC LIMIT 1";
/// The current sockets of a host.
pub const CURRENT_SOCKETS: &str = "SELECT ?fields FROM sockets_current FINAL WHERE host_id = ? AND present = 1 ORDER BY socket_key";
/// The current flows of a host.
pub const CURRENT_FLOWS: &str =
    "SELECT ?fields FROM flows_current FINAL WHERE host_id = ? AND present = 1 ORDER BY flow_key";
/// The latest rows of some sockets (present or not).
pub const SOCKETS_BY_KEY: &str =
    "SELECT ?fields FROM sockets_current FINAL WHERE host_id = ? AND has(?, socket_key)";
/// The latest rows of some flows (present or not).
pub const FLOWS_BY_KEY: &str =
    "SELECT ?fields FROM flows_current FINAL WHERE host_id = ? AND has(?, flow_key)";
/// Socket history of a host.
pub const SOCKET_EVENTS: &str =
    "SELECT ?fields FROM socket_events FINAL WHERE host_id = ? ORDER BY seq, event, socket_key";
/// Flow history of a host.
pub const FLOW_EVENTS: &str =
    "SELECT ?fields FROM flow_events FINAL WHERE host_id = ? ORDER BY seq, event, flow_key";
/// Reports of a host.
pub const REPORTS: &str =
    "SELECT ?fields FROM host_reports FINAL WHERE host_id = ? ORDER BY seq, at, kind";
/// Rows of a table above a host's last committed seq (table bound as an identifier).
pub const COUNT_UNCOMMITTED: &str = "SELECT count() FROM ? WHERE host_id = ? AND seq > ?";
/// Sockets touched by uncommitted rows.
pub const UNCOMMITTED_SOCKET_KEYS: &str =
    "SELECT DISTINCT socket_key FROM sockets_current WHERE host_id = ? AND seq > ?";
/// Flows touched by uncommitted rows.
pub const UNCOMMITTED_FLOW_KEYS: &str =
    "SELECT DISTINCT flow_key FROM flows_current WHERE host_id = ? AND seq > ?";
/// Deletes uncommitted rows (table bound as an identifier).
pub const ROLLBACK: &str = "ALTER TABLE ? DELETE WHERE host_id = ? AND seq > ?";
/// Committed history of some sockets, oldest first.
pub const LAST_SOCKET_EVENTS: &str = "SELECT ?fields FROM socket_events FINAL WHERE host_id = ? AND seq <= ? AND has(?, socket_key) ORDER BY seq";
/// Committed history of some flows, oldest first.
pub const LAST_FLOW_EVENTS: &str = "SELECT ?fields FROM flow_events FINAL WHERE host_id = ? AND seq <= ? AND has(?, flow_key) ORDER BY seq";
/// The latest committed report that carried host facts.
pub const LAST_HOST_FACTS: &str = "SELECT ?fields FROM host_reports FINAL WHERE host_id = ? AND seq <= ? AND has_host = 1 AND kind IN ('snapshot', 'delta') ORDER BY seq DESC LIMIT 1";

/// Tables with a `seq` column that uncommitted writes can leave rows in.
pub(crate) const SEQ_TABLES: [&str; 5] = [
    table::SOCKET_EVENTS,
    table::FLOW_EVENTS,
    table::SOCKETS_CURRENT,
    table::FLOWS_CURRENT,
    table::HOSTS,
];

/// `max_query_size` for queries that carry lists of keys (the default, 256 KiB, holds
/// about 4,000 socket keys).
pub(crate) const MAX_QUERY_SIZE: &str = "16777216";

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

/// `INSERT INTO table (columns) VALUES (…)` with the row's values as literals; the store
/// sends the same columns as RowBinary.
fn insert<T: Row + Serialize>(table: &str, row: &T) -> String {
    let mut values = Literals(Vec::new());
    row.serialize(&mut values)
        .expect("row types serialize as structs of literals");
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        T::COLUMN_NAMES.join(", "),
        values.0.join(", ")
    )
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

/// A serde serializer that turns a struct into one SQL literal per field, escaped by the
/// `clickhouse` crate's own `bind`.
struct Literals(Vec<String>);

#[derive(Debug)]
struct LiteralError(String);

impl std::fmt::Display for LiteralError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LiteralError {}

impl serde::ser::Error for LiteralError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        LiteralError(msg.to_string())
    }
}

impl serde::ser::SerializeStruct for &mut Literals {
    type Ok = ();
    type Error = LiteralError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), LiteralError> {
        let literal = clickhouse::Client::default()
            .query("?")
            .bind(value)
            .sql_display()
            .to_string();
        self.0.push(literal);
        Ok(())
    }

    fn end(self) -> Result<(), LiteralError> {
        Ok(())
    }
}

macro_rules! unsupported {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(
            fn $method(self $(, _: $arg)*) -> Result<(), LiteralError> {
                Err(LiteralError("only structs become literal lists".into()))
            }
        )*
    };
}

impl<'a> serde::Serializer for &'a mut Literals {
    type Ok = ();
    type Error = LiteralError;
    type SerializeSeq = serde::ser::Impossible<(), LiteralError>;
    type SerializeTuple = serde::ser::Impossible<(), LiteralError>;
    type SerializeTupleStruct = serde::ser::Impossible<(), LiteralError>;
    type SerializeTupleVariant = serde::ser::Impossible<(), LiteralError>;
    type SerializeMap = serde::ser::Impossible<(), LiteralError>;
    type SerializeStruct = &'a mut Literals;
    type SerializeStructVariant = serde::ser::Impossible<(), LiteralError>;

    unsupported! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_f32(f32), serialize_f64(f64), serialize_char(char),
        serialize_str(&str), serialize_bytes(&[u8]), serialize_none(), serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, LiteralError> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
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

    #[test]
    fn inserts_list_columns_and_literals() {
        let sql = insert(
            table::SCHEMA_MIGRATIONS,
            &MigrationRow {
                version: 1,
                name: "it's".into(),
                applied_at: 5,
                collector: String::new(),
            },
        );
        assert_eq!(
            sql,
            r"INSERT INTO schema_migrations (version, name, applied_at, collector) VALUES (1, 'it\'s', 5, '')"
        );
    }
}
