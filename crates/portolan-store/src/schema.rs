//! The ClickHouse schema, as data.
//!
//! Two flavors of the same tables: [`Flavor::Legacy`] for old servers (Debian's 18.16: no
//! TTL, no LowCardinality without an experimental setting) and [`Flavor::Modern`] for
//! servers from [`MODERN_SINCE`] on, which get `LowCardinality(String)` for
//! low-cardinality columns and TTLs on history. Column names and order are the same in
//! both, so every query works on both.
//!
//! Every statement is idempotent (`CREATE … IF NOT EXISTS`), so two collectors migrating
//! at once both succeed.

use std::fmt::Write as _;

/// The first server version on the modern path. It is also the first version on which the
/// `clickhouse` crate's row validation works: before each insert it runs `DESCRIBE TABLE`
/// with the setting `describe_include_subcolumns`, added in 21.10, and it reads and writes
/// `RowBinaryWithNamesAndTypes`.
pub const MODERN_SINCE: (u32, u32) = (21, 10);

/// How long the event history (`socket_events`, `flow_events`) is kept on the modern path.
pub const HISTORY_RETENTION_DAYS: u32 = 365;

/// How long heartbeat rows of `host_reports` are kept on the modern path. Snapshot and
/// delta rows are kept: the latest of them is a host's commit marker.
pub const HEARTBEAT_RETENTION_DAYS: u32 = 30;

/// Which dialect of the schema a server gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Servers before [`MODERN_SINCE`]: plain `String`, no TTL.
    Legacy,
    /// Servers from [`MODERN_SINCE`] on: `LowCardinality(String)`, TTL on history.
    Modern,
}

impl Flavor {
    /// The flavor for a server version.
    pub fn for_version(version: (u32, u32, u32)) -> Flavor {
        if (version.0, version.1) >= MODERN_SINCE {
            Flavor::Modern
        } else {
            Flavor::Legacy
        }
    }
}

/// Table names.
pub mod table {
    /// Applied migrations.
    pub const SCHEMA_MIGRATIONS: &str = "schema_migrations";
    /// Host facts, latest row per host.
    pub const HOSTS: &str = "hosts";
    /// One row per stored snapshot, delta and heartbeat; the commit markers.
    pub const HOST_REPORTS: &str = "host_reports";
    /// Socket history.
    pub const SOCKET_EVENTS: &str = "socket_events";
    /// Current sockets per host.
    pub const SOCKETS_CURRENT: &str = "sockets_current";
    /// Flow history.
    pub const FLOW_EVENTS: &str = "flow_events";
    /// Current flows per host.
    pub const FLOWS_CURRENT: &str = "flows_current";
    /// Findings of the exposure rules, latest row per fingerprint.
    pub const FINDINGS: &str = "findings";
    /// Acknowledgements of findings, latest row per fingerprint.
    pub const FINDING_ACKS: &str = "finding_acks";
    /// Gaps in hosts' history from agents' full spools.
    pub const SPOOL_GAPS: &str = "spool_gaps";
    /// Enrollment's bootstrap tokens (secrets hashed), latest row per id.
    pub const ENROLL_TOKENS: &str = "enroll_tokens";
    /// Enrollment's host keys: bound, pending, denied, superseded, retired.
    pub const HOST_KEYS: &str = "host_keys";
    /// Every table, in the order a fresh database creates them.
    pub const ALL: &[&str] = &[
        SCHEMA_MIGRATIONS,
        HOSTS,
        HOST_REPORTS,
        SOCKET_EVENTS,
        SOCKETS_CURRENT,
        FLOW_EVENTS,
        FLOWS_CURRENT,
        FINDINGS,
        FINDING_ACKS,
        SPOOL_GAPS,
        ENROLL_TOKENS,
        HOST_KEYS,
    ];
}

/// One migration: a version, a name and idempotent statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Increasing from 1.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// Its statements, in order.
    pub statements: Vec<String>,
}

/// A column's type, as the DDL of each [`Flavor`] spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    /// `LowCardinality(String)` on the modern path.
    Lc,
    U8,
    U16,
    U32,
    U64,
    DateTime,
    ArrStr,
    ArrU8,
    ArrU32,
    ArrU64,
}

impl Ty {
    pub(crate) fn sql(self, flavor: Flavor) -> &'static str {
        match (self, flavor) {
            (Ty::Str, _) | (Ty::Lc, Flavor::Legacy) => "String",
            (Ty::Lc, Flavor::Modern) => "LowCardinality(String)",
            (Ty::U8, _) => "UInt8",
            (Ty::U16, _) => "UInt16",
            (Ty::U32, _) => "UInt32",
            (Ty::U64, _) => "UInt64",
            (Ty::DateTime, _) => "DateTime",
            (Ty::ArrStr, _) => "Array(String)",
            (Ty::ArrU8, _) => "Array(UInt8)",
            (Ty::ArrU32, _) => "Array(UInt32)",
            (Ty::ArrU64, _) => "Array(UInt64)",
        }
    }
}

type Columns = &'static [(&'static str, Ty)];

const MIGRATIONS_COLUMNS: Columns = &[
    ("version", Ty::U32),
    ("name", Ty::Str),
    ("applied_at", Ty::DateTime),
    ("collector", Ty::Str),
];

const HOST_FACTS: Columns = &[
    // Parallel arrays: interface name and "address/prefix_len", in the agent's order.
    ("interface_names", Ty::ArrStr),
    ("interfaces", Ty::ArrStr),
    // 0: the ephemeral port range is unknown (min and max are then 0).
    ("ephemeral_known", Ty::U8),
    ("ephemeral_min", Ty::U16),
    ("ephemeral_max", Ty::U16),
];

/// Host facts added by migration 4 (appended to `hosts` and `host_reports`).
const HOST_NETNS_FACTS: Columns = &[
    // Parallel to `interfaces`: the network namespace (inode) of each interface address,
    // 0 for the agent's own. Empty in rows written before migration 4: all 0.
    ("interface_netns", Ty::ArrU64),
];

const HOSTS_COLUMNS: Columns = &[
    ("host_id", Ty::Str),
    ("hostname", Ty::Str),
    ("label_keys", Ty::ArrStr),
    ("label_values", Ty::ArrStr),
    ("agent_version", Ty::Lc),
    ("kernel", Ty::Lc),
    ("os", Ty::Lc),
    ("scan_interval_ms", Ty::U64),
    ("collector", Ty::Lc),
    ("connected_at", Ty::DateTime),
];

const HOSTS_TAIL: Columns = &[
    // The seq of the change whose host facts this row carries.
    ("seq", Ty::U64),
    ("updated_at", Ty::DateTime),
    ("updated_ns", Ty::U64),
];

const REPORT_COLUMNS: Columns = &[
    ("host_id", Ty::Str),
    ("seq", Ty::U64),
    ("kind", Ty::Lc),
    ("at", Ty::DateTime),
    ("received_at", Ty::DateTime),
    ("sockets", Ty::U32),
    ("listeners", Ty::U32),
    ("connections", Ty::U32),
    ("unattributed_no_permission", Ty::U32),
    ("unattributed_process_gone", Ty::U32),
    ("unattributed_unknown", Ty::U32),
    ("kernel_owned", Ty::U32),
    ("scan_duration_micros", Ty::U64),
    ("state_names", Ty::ArrStr),
    ("state_counts", Ty::ArrU32),
    ("added", Ty::U32),
    ("removed", Ty::U32),
    ("changed", Ty::U32),
    ("flows_upserted", Ty::U32),
    ("flows_removed", Ty::U32),
    // 1: this change carried new host facts (below); 2: it carried none, and the facts
    // below are the host's facts as they were (recorded at snapshots). Together, the
    // history of host facts.
    ("has_host", Ty::U8),
];

const SOCKET_COLUMNS: Columns = &[
    ("protocol", Ty::Lc),
    ("family", Ty::U8),
    ("local_address", Ty::Str),
    ("local_port", Ty::U16),
    ("remote_address", Ty::Str),
    ("remote_port", Ty::U16),
    ("state", Ty::Lc),
    ("inode", Ty::U64),
    ("uid", Ty::U32),
    ("listener", Ty::U8),
    ("attribution", Ty::Lc),
    ("scope", Ty::Lc),
    ("exposure", Ty::Lc),
    // Owning pids and, parallel to them, what is known of each process.
    ("pids", Ty::ArrU32),
    ("process_known", Ty::ArrU8),
    ("process_names", Ty::ArrStr),
    ("process_executables", Ty::ArrStr),
    ("process_command_lines", Ty::ArrStr),
    ("process_uids", Ty::ArrU32),
    ("process_users", Ty::ArrStr),
    ("process_units", Ty::ArrStr),
    ("process_containers", Ty::ArrStr),
    ("process_cgroups", Ty::ArrStr),
    // The first pid's process, for convenience.
    ("process", Ty::Lc),
    ("executable", Ty::Str),
    ("systemd_unit", Ty::Lc),
    ("container_id", Ty::Str),
];

/// Socket columns added by migration 4 (appended to `socket_events` and
/// `sockets_current`): the socket's network namespace and the Kubernetes pod of its
/// processes.
const SOCKET_NETNS_COLUMNS: Columns = &[
    // Network namespace inode; 0: the agent's own (the host's).
    ("netns", Ty::U64),
    // Parallel to `pids` (empty in rows written before migration 4).
    ("process_pod_uids", Ty::ArrStr),
    ("process_pod_names", Ty::ArrStr),
    ("process_pod_namespaces", Ty::ArrStr),
    // The first pid's pod, for convenience; empty outside a pod or when unknown.
    ("pod_uid", Ty::Str),
    ("pod_name", Ty::Str),
    ("pod_namespace", Ty::Lc),
];

/// Socket columns added by migration 6 (appended to `socket_events` and
/// `sockets_current`).
const SOCKET_PATH_COLUMNS: Columns = &[
    // A Unix socket's path (`@name` when abstract); empty for other protocols and in
    // rows written before migration 6.
    ("path", Ty::Str),
];

/// Flow columns added by migration 4 (appended to `flow_events` and `flows_current`).
const FLOW_NETNS_COLUMNS: Columns = &[
    ("netns", Ty::U64),
    ("pod_uid", Ty::Str),
    ("pod_name", Ty::Str),
    ("pod_namespace", Ty::Lc),
];

const FLOW_COLUMNS: Columns = &[
    ("protocol", Ty::Lc),
    ("direction", Ty::Lc),
    ("family", Ty::U8),
    ("local_address", Ty::Str),
    ("remote_address", Ty::Str),
    ("service_port", Ty::U16),
    ("state", Ty::Lc),
    ("pid", Ty::U32),
    ("connections", Ty::U32),
    // The owning process (pid 0: the kernel); process_known = 0 when unknown.
    ("process_known", Ty::U8),
    ("process", Ty::Lc),
    ("executable", Ty::Str),
    ("command_line", Ty::Str),
    ("process_uid", Ty::U32),
    ("user", Ty::Str),
    ("systemd_unit", Ty::Lc),
    ("container_id", Ty::Str),
    ("cgroup", Ty::Str),
];

const SOCKET_EVENT_HEAD: Columns = &[
    ("host_id", Ty::Str),
    ("seq", Ty::U64),
    ("at", Ty::DateTime),
    ("event", Ty::Lc),
    ("socket_key", Ty::Str),
];

const SOCKET_CURRENT_HEAD: Columns = &[
    ("host_id", Ty::Str),
    ("socket_key", Ty::Str),
    ("seq", Ty::U64),
    ("present", Ty::U8),
    ("updated_at", Ty::DateTime),
];

const FLOW_EVENT_HEAD: Columns = &[
    ("host_id", Ty::Str),
    ("seq", Ty::U64),
    ("at", Ty::DateTime),
    ("event", Ty::Lc),
    ("flow_key", Ty::Str),
];

const FLOW_CURRENT_HEAD: Columns = &[
    ("host_id", Ty::Str),
    ("flow_key", Ty::Str),
    ("seq", Ty::U64),
    ("present", Ty::U8),
    ("updated_at", Ty::DateTime),
];

const FINDING_COLUMNS: Columns = &[
    ("fingerprint", Ty::Str),
    ("rule_id", Ty::Lc),
    ("host_id", Ty::Str),
    ("severity", Ty::Lc),
    ("subject", Ty::Str),
    ("evidence", Ty::Str),
    // `open` or `resolved`.
    ("status", Ty::Lc),
    ("first_seen", Ty::DateTime),
    ("last_seen", Ty::DateTime),
    // 0 (1970) while open.
    ("resolved_at", Ty::DateTime),
    ("reopened", Ty::U32),
    // Nanoseconds of the evaluation that wrote the row: the latest row wins.
    ("version", Ty::U64),
];

const SPOOL_GAP_COLUMNS: Columns = &[
    ("host_id", Ty::Str),
    // The snapshot that closed the gap.
    ("seq", Ty::U64),
    // Scan times of the first change folded away and of that snapshot.
    ("gap_from", Ty::DateTime),
    ("gap_to", Ty::DateTime),
    ("dropped_changes", Ty::U64),
    ("received_at", Ty::DateTime),
];

const FINDING_ACK_COLUMNS: Columns = &[
    ("fingerprint", Ty::Str),
    // 1: acknowledged; 0: the acknowledgement was cleared.
    ("acked", Ty::U8),
    // The identity URI of the admin certificate that acknowledged or cleared it.
    ("acked_by", Ty::Str),
    ("reason", Ty::Str),
    // 0 (1970): until the finding's status changes.
    ("until", Ty::DateTime),
    ("at", Ty::DateTime),
    // The finding's status and reopen count when acknowledged: an acknowledgement
    // without `until` holds while both are unchanged.
    ("status", Ty::Lc),
    ("episode", Ty::U32),
    // Nanoseconds of the write: the latest row wins.
    ("version", Ty::U64),
];

/// Column names of a column group, in table order.
const ENROLL_TOKEN_COLUMNS: Columns = &[
    ("id", Ty::Str),
    ("secret_sha256", Ty::Str),
    ("host_patterns", Ty::ArrStr),
    ("label_keys", Ty::ArrStr),
    ("label_values", Ty::ArrStr),
    ("created_by", Ty::Str),
    ("description", Ty::Str),
    ("created_at", Ty::DateTime),
    ("expires_at", Ty::DateTime),
    ("max_uses", Ty::U32),
    ("revoked", Ty::U8),
    ("version", Ty::U64),
];

const HOST_KEY_COLUMNS: Columns = &[
    ("host_id", Ty::Str),
    ("key_sha256", Ty::Str),
    ("state", Ty::Lc),
    ("token_id", Ty::Str),
    ("label_keys", Ty::ArrStr),
    ("label_values", Ty::ArrStr),
    ("requested_at", Ty::DateTime),
    ("decided_at", Ty::DateTime),
    ("decided_by", Ty::Str),
    ("version", Ty::U64),
];

fn names(parts: &[Columns]) -> Vec<&'static str> {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|(c, _)| *c)
        .collect()
}

/// The columns `socket_events` and `sockets_current` share (everything after their
/// heads), in table order.
pub fn socket_columns() -> Vec<&'static str> {
    names(&[SOCKET_COLUMNS, SOCKET_NETNS_COLUMNS, SOCKET_PATH_COLUMNS])
}

/// The columns `flow_events` and `flows_current` share, in table order.
pub fn flow_columns() -> Vec<&'static str> {
    names(&[FLOW_COLUMNS, FLOW_NETNS_COLUMNS])
}

/// The host facts columns `hosts` and `host_reports` share, in table order.
pub fn host_fact_columns() -> Vec<&'static str> {
    names(&[HOST_FACTS, HOST_NETNS_FACTS])
}

/// The host facts columns of `hosts` after its `seq`, `updated_at` and `updated_ns`
/// (added by a later migration, so appended), in table order.
pub fn host_late_fact_columns() -> Vec<&'static str> {
    names(&[HOST_NETNS_FACTS])
}

/// The columns of `hosts` before its host facts (the Hello facts), in table order.
pub fn host_hello_columns() -> Vec<&'static str> {
    names(&[HOSTS_COLUMNS])
}

/// Every column of a table, in table order (`None` for an unknown table).
pub fn table_columns(name: &str) -> Option<Vec<&'static str>> {
    table_parts(name).map(names)
}

/// Every column of a table with its type, in table order (`None` for an unknown table):
/// the one definition the DDL is rendered from and the typed rows and the RowBinary
/// writer are checked against (see the `layout` tests).
#[cfg(test)]
pub(crate) fn table_layout(name: &str) -> Option<Vec<(&'static str, Ty)>> {
    table_parts(name).map(|parts| parts.iter().flat_map(|p| p.iter()).copied().collect())
}

/// The column groups of a table, in table order, as they stand after every migration.
fn table_parts(name: &str) -> Option<&'static [Columns]> {
    let parts: &'static [Columns] = match name {
        table::SCHEMA_MIGRATIONS => &[MIGRATIONS_COLUMNS],
        table::HOSTS => &[HOSTS_COLUMNS, HOST_FACTS, HOSTS_TAIL, HOST_NETNS_FACTS],
        table::HOST_REPORTS => &[REPORT_COLUMNS, HOST_FACTS, HOST_NETNS_FACTS],
        table::SOCKET_EVENTS => &[
            SOCKET_EVENT_HEAD,
            SOCKET_COLUMNS,
            SOCKET_NETNS_COLUMNS,
            SOCKET_PATH_COLUMNS,
        ],
        table::SOCKETS_CURRENT => &[
            SOCKET_CURRENT_HEAD,
            SOCKET_COLUMNS,
            SOCKET_NETNS_COLUMNS,
            SOCKET_PATH_COLUMNS,
        ],
        table::FLOW_EVENTS => &[FLOW_EVENT_HEAD, FLOW_COLUMNS, FLOW_NETNS_COLUMNS],
        table::FLOWS_CURRENT => &[FLOW_CURRENT_HEAD, FLOW_COLUMNS, FLOW_NETNS_COLUMNS],
        table::FINDINGS => &[FINDING_COLUMNS],
        table::FINDING_ACKS => &[FINDING_ACK_COLUMNS],
        table::SPOOL_GAPS => &[SPOOL_GAP_COLUMNS],
        table::ENROLL_TOKENS => &[ENROLL_TOKEN_COLUMNS],
        table::HOST_KEYS => &[HOST_KEY_COLUMNS],
        _ => return None,
    };
    Some(parts)
}

fn create(
    flavor: Flavor,
    name: &str,
    parts: &[Columns],
    engine: &str,
    tail: &str,
    modern_tail: &str,
) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {name}\n(\n");
    let columns: Vec<String> = parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|(c, t)| format!("    {c} {}", t.sql(flavor)))
        .collect();
    sql.push_str(&columns.join(",\n"));
    let _ = write!(sql, "\n)\nENGINE = {engine}\n{tail}");
    if flavor == Flavor::Modern && !modern_tail.is_empty() {
        let _ = write!(sql, "\n{modern_tail}");
    }
    sql
}

/// `ALTER TABLE name ADD COLUMN …` for each column of `columns`, appended in order. A
/// second run fails with "already exists", which the migrator counts as done (two
/// collectors migrating at once); one statement is applied whole or not at all.
fn add_columns(flavor: Flavor, name: &str, columns: Columns) -> String {
    let adds: Vec<String> = columns
        .iter()
        .map(|(c, t)| format!("ADD COLUMN {c} {}", t.sql(flavor)))
        .collect();
    format!("ALTER TABLE {name}\n    {}", adds.join(",\n    "))
}

/// The statement that creates `schema_migrations`; run before anything else.
pub fn migrations_table(flavor: Flavor) -> String {
    create(
        flavor,
        table::SCHEMA_MIGRATIONS,
        &[MIGRATIONS_COLUMNS],
        "ReplacingMergeTree()",
        "ORDER BY version",
        "",
    )
}

/// Every migration, in order.
pub fn migrations(flavor: Flavor) -> Vec<Migration> {
    let history_ttl = format!("TTL at + toIntervalDay({HISTORY_RETENTION_DAYS})");
    let heartbeat_ttl = format!(
        "TTL at + toIntervalDay({HEARTBEAT_RETENTION_DAYS}) DELETE WHERE kind = 'heartbeat'"
    );
    vec![
        Migration {
            version: 1,
            name: "initial schema: hosts, host_reports, socket and flow history and current state",
            statements: vec![
                create(
                    flavor,
                    table::HOSTS,
                    &[HOSTS_COLUMNS, HOST_FACTS, HOSTS_TAIL],
                    "ReplacingMergeTree(updated_ns)",
                    "ORDER BY host_id",
                    "",
                ),
                create(
                    flavor,
                    table::HOST_REPORTS,
                    &[REPORT_COLUMNS, HOST_FACTS],
                    "ReplacingMergeTree()",
                    "PARTITION BY toYYYYMM(at)\nORDER BY (host_id, seq, kind, at)",
                    &heartbeat_ttl,
                ),
                create(
                    flavor,
                    table::SOCKET_EVENTS,
                    &[SOCKET_EVENT_HEAD, SOCKET_COLUMNS],
                    "ReplacingMergeTree()",
                    "PARTITION BY toYYYYMM(at)\nORDER BY (host_id, seq, event, socket_key)",
                    &history_ttl,
                ),
                create(
                    flavor,
                    table::SOCKETS_CURRENT,
                    &[SOCKET_CURRENT_HEAD, SOCKET_COLUMNS],
                    "ReplacingMergeTree(seq)",
                    "ORDER BY (host_id, socket_key)",
                    "",
                ),
                create(
                    flavor,
                    table::FLOW_EVENTS,
                    &[FLOW_EVENT_HEAD, FLOW_COLUMNS],
                    "ReplacingMergeTree()",
                    "PARTITION BY toYYYYMM(at)\nORDER BY (host_id, seq, event, flow_key)",
                    &history_ttl,
                ),
                create(
                    flavor,
                    table::FLOWS_CURRENT,
                    &[FLOW_CURRENT_HEAD, FLOW_COLUMNS],
                    "ReplacingMergeTree(seq)",
                    "ORDER BY (host_id, flow_key)",
                    "",
                ),
            ],
        },
        Migration {
            version: 2,
            name: "findings of the exposure rules",
            statements: vec![create(
                flavor,
                table::FINDINGS,
                &[FINDING_COLUMNS],
                "ReplacingMergeTree(version)",
                "ORDER BY fingerprint",
                "",
            )],
        },
        Migration {
            version: 3,
            name: "acknowledgements of findings",
            statements: vec![create(
                flavor,
                table::FINDING_ACKS,
                &[FINDING_ACK_COLUMNS],
                "ReplacingMergeTree(version)",
                "ORDER BY fingerprint",
                "",
            )],
        },
        Migration {
            version: 4,
            name: "network namespaces and Kubernetes pods of sockets, flows and interfaces",
            statements: vec![
                add_columns(flavor, table::HOSTS, HOST_NETNS_FACTS),
                add_columns(flavor, table::HOST_REPORTS, HOST_NETNS_FACTS),
                add_columns(flavor, table::SOCKET_EVENTS, SOCKET_NETNS_COLUMNS),
                add_columns(flavor, table::SOCKETS_CURRENT, SOCKET_NETNS_COLUMNS),
                add_columns(flavor, table::FLOW_EVENTS, FLOW_NETNS_COLUMNS),
                add_columns(flavor, table::FLOWS_CURRENT, FLOW_NETNS_COLUMNS),
            ],
        },
        Migration {
            version: 5,
            name: "gaps in history from agents' full spools",
            statements: vec![create(
                flavor,
                table::SPOOL_GAPS,
                &[SPOOL_GAP_COLUMNS],
                "ReplacingMergeTree(received_at)",
                "ORDER BY (host_id, seq)",
                "",
            )],
        },
        Migration {
            version: 6,
            name: "paths of Unix domain sockets (protocols raw, unix and sctp need no DDL)",
            statements: vec![
                add_columns(flavor, table::SOCKET_EVENTS, SOCKET_PATH_COLUMNS),
                add_columns(flavor, table::SOCKETS_CURRENT, SOCKET_PATH_COLUMNS),
            ],
        },
        Migration {
            version: 7,
            name: "enrollment: bootstrap tokens and host keys",
            statements: vec![
                create(
                    flavor,
                    table::ENROLL_TOKENS,
                    &[ENROLL_TOKEN_COLUMNS],
                    "ReplacingMergeTree(version)",
                    "ORDER BY id",
                    "",
                ),
                create(
                    flavor,
                    table::HOST_KEYS,
                    &[HOST_KEY_COLUMNS],
                    "ReplacingMergeTree(version)",
                    "ORDER BY (host_id, key_sha256)",
                    "",
                ),
            ],
        },
    ]
}

/// Every DDL statement of the schema for `flavor`, in the order a fresh database gets
/// them: `schema_migrations` first, then each migration's statements.
pub fn statements(flavor: Flavor) -> Vec<String> {
    std::iter::once(migrations_table(flavor))
        .chain(migrations(flavor).into_iter().flat_map(|m| m.statements))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavor_follows_the_version() {
        assert_eq!(Flavor::for_version((18, 16, 1)), Flavor::Legacy);
        assert_eq!(Flavor::for_version((21, 9, 9)), Flavor::Legacy);
        assert_eq!(Flavor::for_version((21, 10, 0)), Flavor::Modern);
        assert_eq!(Flavor::for_version((25, 8, 2)), Flavor::Modern);
    }

    #[test]
    fn legacy_has_no_modern_features() {
        for s in statements(Flavor::Legacy) {
            assert!(
                s.starts_with("CREATE TABLE IF NOT EXISTS ") || s.starts_with("ALTER TABLE "),
                "{s}"
            );
            assert!(!s.contains("LowCardinality"), "{s}");
            assert!(!s.contains("TTL"), "{s}");
        }
    }

    #[test]
    fn modern_differs_only_in_types_and_ttl() {
        let legacy = statements(Flavor::Legacy);
        let modern = statements(Flavor::Modern);
        assert_eq!(legacy.len(), modern.len());
        for (l, m) in legacy.iter().zip(&modern) {
            let stripped: Vec<&str> = m.lines().filter(|line| !line.starts_with("TTL ")).collect();
            assert_eq!(
                stripped
                    .join("\n")
                    .replace("LowCardinality(String)", "String"),
                *l
            );
        }
        assert!(modern.iter().any(|s| s.contains("TTL at")));
    }
}
