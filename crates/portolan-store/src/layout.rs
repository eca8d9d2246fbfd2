//! Each table's column layout is defined once, in [`super::schema`]; these tests hold the
//! DDL, the typed rows of [`super::rows`] (what reads decode and what `hosts` and
//! `host_reports` inserts serialize) and the RowBinary writer of [`super::rowbinary`]
//! (what the four change tables are inserted from) to it, without a server.
//!
//! - The DDL: replaying every migration's statements (CREATE, then ALTER … ADD COLUMN)
//!   gives each table's layout, names and types, in order.
//! - The typed rows: bytes made from the layout (a distinct value per column, in the
//!   column's type) decode into the table's typed row, to the last byte, with each
//!   field holding its column's value; its `Row::COLUMN_NAMES` are the layout's names.
//! - The writer: the bytes it writes for a change decode into the typed rows the typed
//!   path builds for the same change.

use clickhouse::Row;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::schema::{self, Flavor, Ty, table};

mod reader;

use reader::read_rows;

/// RowBinary bytes of one row in the layout of `table`, with a value per column that no
/// other column has, and those values by column name.
fn sample(table: &str) -> (Vec<u8>, serde_json::Map<String, Value>) {
    let layout = schema::table_layout(table).expect("a table of the schema");
    let mut bytes = Vec::new();
    let mut values = serde_json::Map::new();
    for (i, (name, ty)) in layout.into_iter().enumerate() {
        let n = u64::try_from(i).expect("few columns") + 1;
        let value = sample_value(&mut bytes, ty, n, name);
        values.insert(name.to_string(), value);
    }
    (bytes, values)
}

/// Appends a value of `ty` to `out` (the `n`th column's, named `name`) and returns it.
fn sample_value(out: &mut Vec<u8>, ty: Ty, n: u64, name: &str) -> Value {
    use super::rowbinary::Writer as W;
    // Each width gets values the narrower ones cannot hold, so that a field one width
    // off misreads the bytes.
    match ty {
        Ty::U8 => {
            let v = u8::try_from(n).expect("few columns");
            W::u8(out, v);
            json!(v)
        }
        Ty::U16 => {
            let v = 0x0100 + u16::try_from(n).expect("few columns");
            W::u16(out, v);
            json!(v)
        }
        Ty::U32 | Ty::DateTime => {
            let v = 0x0001_0000 + u32::try_from(n).expect("few columns");
            W::u32(out, v);
            json!(v)
        }
        Ty::U64 => {
            let v = 0x0001_0000_0000 + n;
            W::u64(out, v);
            json!(v)
        }
        Ty::Str | Ty::Lc => {
            let v = format!("{name}-{n}");
            W::str(out, &v);
            json!(v)
        }
        Ty::ArrStr | Ty::ArrU8 | Ty::ArrU32 | Ty::ArrU64 => {
            let element = match ty {
                Ty::ArrStr => Ty::Str,
                Ty::ArrU8 => Ty::U8,
                Ty::ArrU32 => Ty::U32,
                _ => Ty::U64,
            };
            W::len(out, 2);
            let a = sample_value(out, element, n, name);
            let b = sample_value(out, element, n + 100, name);
            json!([a, b])
        }
    }
}

/// Holds the typed row `T` of `table` to the table's layout.
fn check_typed_row<T: Row + DeserializeOwned + Serialize>(table: &str) {
    let layout = schema::table_columns(table).expect("a table of the schema");
    assert_eq!(
        T::COLUMN_NAMES,
        layout.as_slice(),
        "the typed row of `{table}` has the table's columns, in order"
    );
    let (bytes, expected) = sample(table);
    let rows: Vec<T> = read_rows(&bytes).unwrap_or_else(|e| {
        panic!("a `{table}` row in the layout's types decodes into its typed row: {e}")
    });
    assert_eq!(rows.len(), 1, "{table}");
    let Value::Object(fields) = serde_json::to_value(&rows[0]).expect("a row serializes") else {
        panic!("a typed row is a struct");
    };
    assert_eq!(fields, expected, "`{table}`: each field holds its column");
}

#[test]
fn every_typed_row_has_its_tables_layout() {
    use super::acks::FindingAckRow;
    use super::enrollment::{HostKeyRow, TokenRow};
    use super::findings::FindingRow;
    use super::gaps::SpoolGapRow;
    use super::rows::{
        FlowCurrentRow, FlowEventRow, HostRow, MigrationRow, ReportRow, SocketCurrentRow,
        SocketEventRow,
    };
    type Check = fn(&str);
    let checks: [(&str, Check); 12] = [
        (table::SCHEMA_MIGRATIONS, check_typed_row::<MigrationRow>),
        (table::HOSTS, check_typed_row::<HostRow>),
        (table::HOST_REPORTS, check_typed_row::<ReportRow>),
        (table::SOCKET_EVENTS, check_typed_row::<SocketEventRow>),
        (table::SOCKETS_CURRENT, check_typed_row::<SocketCurrentRow>),
        (table::FLOW_EVENTS, check_typed_row::<FlowEventRow>),
        (table::FLOWS_CURRENT, check_typed_row::<FlowCurrentRow>),
        (table::FINDINGS, check_typed_row::<FindingRow>),
        (table::FINDING_ACKS, check_typed_row::<FindingAckRow>),
        (table::SPOOL_GAPS, check_typed_row::<SpoolGapRow>),
        (table::ENROLL_TOKENS, check_typed_row::<TokenRow>),
        (table::HOST_KEYS, check_typed_row::<HostKeyRow>),
    ];
    let checked: Vec<&str> = checks.iter().map(|(t, _)| *t).collect();
    assert_eq!(checked, table::ALL, "every table has a typed row");
    for (name, check) in checks {
        check(name);
    }
}

/// Each table's columns as a fresh database has them after every migration: the
/// columns of its `CREATE TABLE`, then those of each `ALTER TABLE … ADD COLUMN`.
fn replayed_ddl(flavor: Flavor) -> Vec<(String, Vec<(String, String)>)> {
    let mut tables: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let column = |s: &str| {
        let (name, ty) = s.trim().split_once(' ').expect("`name type`");
        (name.to_string(), ty.trim_end_matches(',').to_string())
    };
    for statement in schema::statements(flavor) {
        if let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
            let (name, body) = rest.split_once("\n(\n").expect("a column list");
            let (columns, _) = body.split_once("\n)\n").expect("a column list");
            tables.push((name.to_string(), columns.lines().map(column).collect()));
        } else if let Some(rest) = statement.strip_prefix("ALTER TABLE ") {
            let (name, adds) = rest.split_once('\n').expect("one ADD COLUMN a line");
            let (_, columns) = tables
                .iter_mut()
                .find(|(t, _)| t == name)
                .expect("a table is altered after it is created");
            for add in adds.lines() {
                let add = add.trim().strip_prefix("ADD COLUMN ").expect("ADD COLUMN");
                columns.push(column(add));
            }
        } else {
            panic!("a statement the replay does not know: {statement}");
        }
    }
    tables
}

#[test]
fn the_ddl_creates_each_tables_layout() {
    for flavor in [Flavor::Legacy, Flavor::Modern] {
        let replayed = replayed_ddl(flavor);
        let names: Vec<&str> = replayed.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, table::ALL, "{flavor:?}");
        for (name, columns) in replayed {
            let layout: Vec<(String, String)> = schema::table_layout(&name)
                .expect("a table of the schema")
                .into_iter()
                .map(|(c, ty)| (c.to_string(), ty.sql(flavor).to_string()))
                .collect();
            assert_eq!(columns, layout, "`{name}` on {flavor:?}");
        }
    }
}

/// A change with sockets and flows of every event, processes known and unknown.
fn sample_delta() -> portolan_core::Delta {
    use portolan_core::{
        Attribution, Delta, Direction, Flow, FlowKey, Process, Protocol, Scope, Socket, SocketKey,
        SocketState,
    };
    let socket = |port: u16, pids: Vec<u32>, path: &str| Socket {
        key: SocketKey {
            protocol: if path.is_empty() {
                Protocol::Tcp
            } else {
                Protocol::Unix
            },
            local_address: "10.0.0.7".parse().expect("addr"),
            local_port: port,
            remote_address: "::".parse().expect("addr"),
            remote_port: 0,
            inode: 9_000 + u64::from(port),
            netns: 4_026_532_001,
        },
        state: SocketState::Listen,
        uid: 1_000,
        pids,
        attribution: Attribution::Owned,
        scope: Scope::Public,
        exposure: Scope::Private,
        path: path.into(),
    };
    let flow = |pid: u32, connections: u32| Flow {
        key: FlowKey {
            protocol: Protocol::Tcp,
            direction: Direction::Outbound,
            local_address: "10.0.0.7".parse().expect("addr"),
            remote_address: "fe80::2".parse().expect("addr"),
            service_port: 443,
            state: SocketState::Established,
            pid,
            netns: 0,
        },
        connections,
    };
    let process = |pid: u32, name: &str| Process {
        pid,
        name: name.into(),
        executable: format!("/usr/bin/{name}"),
        command_line: format!("{name} --serve"),
        uid: 1_000 + pid,
        user: "svc".into(),
        systemd_unit: format!("{name}.service"),
        container_id: "c0ffee".into(),
        cgroup: format!("/system.slice/{name}.service"),
        pod_uid: "1d2c3b4a".into(),
        pod_name: format!("{name}-0"),
        pod_namespace: "default".into(),
    };
    Delta {
        host: None,
        added: vec![socket(22, vec![7, 8], ""), socket(0, vec![], "@/run/x")],
        removed: vec![socket(80, vec![9], "")],
        changed: vec![socket(443, vec![8], "")],
        flows_upserted: vec![flow(7, 3)],
        flows_removed: vec![flow(0, 1)],
        processes: vec![process(7, "sshd"), process(9, "nginx")],
    }
}

#[test]
fn the_rowbinary_writer_writes_the_typed_rows() {
    use std::time::{Duration, UNIX_EPOCH};

    use portolan_core::{Inventory, ScanStats};

    use super::change::{Before, Change};
    use super::rows::{
        FlowCols, FlowCurrentRow, FlowEventRow, SocketCols, SocketCurrentRow, SocketEventRow,
    };
    use super::{ChangeKind, FlowEventKind, SocketEventKind};

    let delta = sample_delta();
    let stats = ScanStats::default();
    let scanned_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let (host, seq, at) = ("host-a", 42, 1_700_000_000);
    let change = Change::new(host, seq, ChangeKind::Delta, scanned_at, &delta, &stats);
    let before = Before::from_inventory(&Inventory::default(), &delta, None);
    let (rows, _, _) = change.rows(before);

    // The typed path: the rows built as structs, in the order the writer writes them.
    let process = |pid: u32| delta.processes.iter().find(|p| p.pid == pid);
    let mut socket_events = Vec::new();
    let mut sockets_current = Vec::new();
    for (sockets, event) in [
        (&delta.removed, SocketEventKind::Removed),
        (&delta.changed, SocketEventKind::Changed),
        (&delta.added, SocketEventKind::Added),
    ] {
        for s in sockets {
            let cols = SocketCols::encode(s, process);
            let (key, e) = (s.key.to_string(), event.as_str().to_string());
            let present = u8::from(event != SocketEventKind::Removed);
            let h = host.to_string();
            socket_events.push(SocketEventRow::with_cols(
                h.clone(),
                seq,
                at,
                e,
                key.clone(),
                cols.clone(),
            ));
            sockets_current.push(SocketCurrentRow::with_cols(h, key, seq, present, at, cols));
        }
    }
    let mut flow_events = Vec::new();
    let mut flows_current = Vec::new();
    for (flows, event) in [
        (&delta.flows_removed, FlowEventKind::Removed),
        (&delta.flows_upserted, FlowEventKind::Upserted),
    ] {
        for f in flows {
            let cols = FlowCols::encode(f, process(f.key.pid));
            let (key, e) = (f.key.to_string(), event.as_str().to_string());
            let present = u8::from(event != FlowEventKind::Removed);
            let h = host.to_string();
            flow_events.push(FlowEventRow::with_cols(
                h.clone(),
                seq,
                at,
                e,
                key.clone(),
                cols.clone(),
            ));
            flows_current.push(FlowCurrentRow::with_cols(h, key, seq, present, at, cols));
        }
    }
    // The sample holds what the columns can hold: unknown processes, a Unix path.
    assert!(socket_events.iter().any(|r| r.process_known.contains(&0)));
    assert!(socket_events.iter().any(|r| !r.path.is_empty()));

    let written = |e: &super::rowbinary::Encoded| {
        assert!(e.appended.is_empty(), "one write's rows are in `bytes`");
        e.bytes.clone()
    };
    let decoded: Vec<SocketEventRow> = read_rows(&written(&rows.socket_events)).expect("rows");
    assert_eq!(decoded, socket_events, "socket_events");
    let decoded: Vec<SocketCurrentRow> = read_rows(&written(&rows.sockets_current)).expect("rows");
    assert_eq!(decoded, sockets_current, "sockets_current");
    let decoded: Vec<FlowEventRow> = read_rows(&written(&rows.flow_events)).expect("rows");
    assert_eq!(decoded, flow_events, "flow_events");
    let decoded: Vec<FlowCurrentRow> = read_rows(&written(&rows.flows_current)).expect("rows");
    assert_eq!(decoded, flows_current, "flows_current");
}
