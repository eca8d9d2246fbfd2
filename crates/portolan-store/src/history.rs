//! The past: a host's events over a time range, and the fleet's state at an instant,
//! rebuilt from history.
//!
//! # State at an instant
//!
//! [`sockets_as_of`], [`flows_as_of`] and [`hosts_as_of`] return a parenthesised
//! subquery with exactly the columns of `sockets_current`, `flows_current` and `hosts`,
//! so that a query written against the current state runs against the past by replacing
//! the table: `FROM sockets_current FINAL WHERE present = 1 AND …` becomes
//! `FROM (…) WHERE present = 1 AND …`. The rule engine uses them to evaluate rules over
//! the past; the query API to answer "what was open then".
//!
//! A socket (flow) was present at `T` when its latest event scanned at or before `T` is
//! not a removal; its content is that event's. Times are scan times at second precision:
//! a change scanned during the second `T` counts as before `T`. History is kept for
//! [`super::schema::HISTORY_RETENTION_DAYS`] on servers with TTL; before the oldest kept
//! event a host looks empty. Like the current tables, the subqueries can show the rows
//! of a write that has not finished (or is being rolled back, see
//! [`Store::recover`]) for a moment; [`Store::events`] reads committed changes only.
//!
//! The SQL runs on ClickHouse 18.16 and on current releases (checked by
//! `tools/chdb/check.py` through the statement catalog): `LIMIT 1 BY`, tuple comparisons,
//! `ALL LEFT JOIN … USING`, no window functions, no aliases that shadow a column they use.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use clickhouse::Row;
use serde::Deserialize;

use super::rows::{FlowEventRow, HostRow, SocketEventRow, from_datetime};
use super::schema::{self, table};
use super::tracked::{Flows, Sockets, Tracked};
use super::{
    FlowEvent, FlowEventKind, SocketEvent, SocketEventKind, Store, StoreError, StoredFlow,
    StoredHost, StoredSocket, stored_host,
};

/// `DateTime` holds seconds up to 2106: later instants are clamped.
fn clamp(at_unix_secs: u64) -> u64 {
    at_unix_secs.min(u64::from(u32::MAX))
}

/// The latest row per key of `K`'s events scanned at or before `at`, removals dropped, in
/// the columns of the current-state table: `host_id, <key>, seq, present, updated_at,
/// <cols>`. `inner_condition` is appended to the innermost `WHERE` (it may hold `?`
/// placeholders, which then come first in the statement).
fn current_as_of<K: Tracked>(at_unix_secs: u64, inner_condition: &str) -> String {
    let (events, key) = (K::EVENTS, K::KEY);
    let at = clamp(at_unix_secs);
    let cols = K::columns().join(", ");
    format!(
        "(SELECT host_id, {key}, seq, toUInt8(1) AS present, at AS updated_at, {cols} \
         FROM (SELECT host_id, seq, at, event, {key}, {cols} FROM {events} \
         WHERE at <= toDateTime({at}){inner_condition} \
         ORDER BY host_id, {key}, seq DESC LIMIT 1 BY host_id, {key}) \
         WHERE event != 'removed')"
    )
}

/// The sockets present at `at_unix_secs` (Unix seconds), rebuilt from `socket_events`:
/// a parenthesised subquery with exactly the columns of `sockets_current` (`present` is
/// always 1, `updated_at` is the time of the socket's latest event at or before the
/// instant), usable wherever `sockets_current FINAL` is.
pub fn sockets_as_of(at_unix_secs: u64) -> String {
    current_as_of::<Sockets>(at_unix_secs, "")
}

/// [`sockets_as_of`] for the hosts bound to one `?` placeholder (an array of host ids).
pub(crate) fn sockets_as_of_hosts(at_unix_secs: u64) -> String {
    current_as_of::<Sockets>(at_unix_secs, " AND has(?, host_id)")
}

/// The flows present at `at_unix_secs` (Unix seconds), rebuilt from `flow_events`: a
/// parenthesised subquery with exactly the columns of `flows_current` (`present` is
/// always 1), usable wherever `flows_current FINAL` is.
pub fn flows_as_of(at_unix_secs: u64) -> String {
    current_as_of::<Flows>(at_unix_secs, "")
}

/// [`flows_as_of`] for the hosts bound to one `?` placeholder (an array of host ids).
pub(crate) fn flows_as_of_hosts(at_unix_secs: u64) -> String {
    current_as_of::<Flows>(at_unix_secs, " AND has(?, host_id)")
}

/// The hosts as they were at `at_unix_secs` (Unix seconds): a parenthesised subquery
/// with exactly the columns of `hosts` (one row per host, no `FINAL` needed), usable
/// wherever `hosts FINAL` is.
///
/// Only hosts that had stored a snapshot or delta by then are in it. Their host facts
/// (interfaces, ephemeral port range; `seq`, `updated_at` and `updated_ns` with them)
/// are those of the latest change at or before the instant that recorded them in
/// `host_reports`; a host with no such change has today's facts. The Hello facts
/// (hostname, labels, versions, collector) have no history: they are today's.
pub fn hosts_as_of(at_unix_secs: u64) -> String {
    let at = clamp(at_unix_secs);
    let hello = schema::host_hello_columns().join(", ");
    let facts = schema::host_fact_columns();
    let late = schema::host_late_fact_columns();
    let picked = |c: &str| format!(", if(f_known = 1, f_{c}, h_{c}) AS {c}");
    let mut out = format!("(SELECT host_id, {}", hello.replacen("host_id, ", "", 1));
    for c in facts.iter().filter(|c| !late.contains(c)) {
        out.push_str(&picked(c));
    }
    out.push_str(
        ", if(f_known = 1, f_seq, h_seq) AS seq, \
         if(f_known = 1, f_at, h_updated_at) AS updated_at, \
         if(f_known = 1, toUInt64(f_at) * 1000000000, h_updated_ns) AS updated_ns",
    );
    for c in &late {
        out.push_str(&picked(c));
    }
    let _ = write!(out, " FROM (SELECT {hello}");
    for c in &facts {
        let _ = write!(out, ", {c} AS h_{c}");
    }
    let _ = write!(
        out,
        ", seq AS h_seq, updated_at AS h_updated_at, updated_ns AS h_updated_ns \
         FROM hosts FINAL WHERE host_id IN (SELECT host_id FROM host_reports \
         WHERE kind IN ('snapshot', 'delta') AND at <= toDateTime({at}))) \
         AS hosts_now ALL LEFT JOIN (SELECT host_id, toUInt8(1) AS f_known"
    );
    for c in &facts {
        let _ = write!(out, ", {c} AS f_{c}");
    }
    let _ = write!(
        out,
        ", seq AS f_seq, at AS f_at FROM host_reports \
         WHERE has_host != 0 AND kind IN ('snapshot', 'delta') AND at <= toDateTime({at}) \
         ORDER BY host_id, seq DESC LIMIT 1 BY host_id) AS facts_then USING host_id)"
    );
    out
}

/// The last committed change of a host scanned at or before an instant.
pub(crate) const LAST_CHANGE_AT: &str = "SELECT toUInt64(max(seq)) AS last_seq, toUInt32(argMax(at, seq)) AS last_at \
     FROM host_reports WHERE host_id = ? AND kind IN ('snapshot', 'delta') AND at <= toDateTime(?)";

/// One host's facts at an instant (`?fields` of `hosts`).
pub(crate) fn host_as_of_sql(at_unix_secs: u64) -> String {
    format!(
        "SELECT ?fields FROM {} WHERE host_id = ?",
        hosts_as_of(at_unix_secs)
    )
}

/// Which table an event comes from; sockets sort before flows within a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventSource {
    /// `socket_events`.
    Socket,
    /// `flow_events`.
    Flow,
}

/// Where an event sits in a host's history: events are ordered by this key (seq, then
/// sockets before flows, then event kind and key as text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventCursor {
    /// The change.
    pub seq: u64,
    /// Socket or flow.
    pub source: EventSource,
    /// `added`, `removed`, … as stored.
    pub event: String,
    /// The socket or flow key.
    pub key: String,
}

/// Which events of one host a question is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// The host.
    pub host_id: String,
    /// Scan time, inclusive, Unix seconds; `None`: from the start.
    pub from: Option<u64>,
    /// Scan time, exclusive, Unix seconds; `None`: no end.
    pub to: Option<u64>,
    /// Local port of a socket, service port of a flow; `None`: any.
    pub port: Option<u16>,
    /// One socket or flow key; `None`: any.
    pub key: Option<String>,
    /// Flow events too.
    pub include_flows: bool,
    /// Newest first (else oldest first).
    pub newest_first: bool,
    /// Only events strictly after this one in the requested order (paging).
    pub after: Option<EventCursor>,
    /// Only changes with a seq above this one (0: all).
    pub after_seq: u64,
    /// Only changes up to this seq, inclusive: the host's last committed seq, so that
    /// rows of an unfinished write are never shown. `None`: read it first.
    pub upto_seq: Option<u64>,
    /// Most events.
    pub limit: u32,
}

/// One event of a host's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEvent {
    /// A socket event.
    Socket(SocketEvent),
    /// A flow event.
    Flow(FlowEvent),
}

impl HistoryEvent {
    /// The change that stored it.
    pub fn seq(&self) -> u64 {
        match self {
            HistoryEvent::Socket(e) => e.seq,
            HistoryEvent::Flow(e) => e.seq,
        }
    }

    /// Its scan time.
    pub fn at(&self) -> SystemTime {
        match self {
            HistoryEvent::Socket(e) => e.at,
            HistoryEvent::Flow(e) => e.at,
        }
    }

    /// The stored key of its socket or flow.
    pub fn key(&self) -> String {
        match self {
            HistoryEvent::Socket(e) => e.socket.key.to_string(),
            HistoryEvent::Flow(e) => e.flow.key.to_string(),
        }
    }

    /// Its place in the history.
    pub fn cursor(&self) -> EventCursor {
        match self {
            HistoryEvent::Socket(e) => EventCursor {
                seq: e.seq,
                source: EventSource::Socket,
                event: e.event.as_str().to_string(),
                key: self.key(),
            },
            HistoryEvent::Flow(e) => EventCursor {
                seq: e.seq,
                source: EventSource::Flow,
                event: e.event.as_str().to_string(),
                key: self.key(),
            },
        }
    }
}

/// The statement reading events of one table for `query`, with its placeholders in
/// bind order: host id, `upto_seq`, then the optional bounds ([`bind_events`] binds
/// them).
pub(crate) fn events_sql(query: &EventQuery, source: EventSource) -> String {
    let (events, key, port) = match source {
        EventSource::Socket => (table::SOCKET_EVENTS, "socket_key", "local_port"),
        EventSource::Flow => (table::FLOW_EVENTS, "flow_key", "service_port"),
    };
    let mut sql = format!("SELECT ?fields FROM {events} FINAL WHERE host_id = ? AND seq <= ?");
    if query.after_seq > 0 {
        sql.push_str(" AND seq > ?");
    }
    if query.from.is_some() {
        sql.push_str(" AND at >= toDateTime(?)");
    }
    if query.to.is_some() {
        sql.push_str(" AND at < toDateTime(?)");
    }
    if query.port.is_some() {
        let _ = write!(sql, " AND {port} = ?");
    }
    if query.key.is_some() {
        let _ = write!(sql, " AND {key} = ?");
    }
    if let Some(after) = &query.after {
        // Strictly after the cursor in the requested order; the source is constant per
        // table, so it decides between the seq alone and the whole tuple.
        let later = if query.newest_first { "<" } else { ">" };
        let condition = match source.cmp(&after.source) {
            std::cmp::Ordering::Equal => format!(" AND (seq, event, {key}) {later} (?, ?, ?)"),
            // This table's events of the cursor's change come after it.
            std::cmp::Ordering::Greater if !query.newest_first => " AND seq >= ?".to_string(),
            std::cmp::Ordering::Less if query.newest_first => " AND seq <= ?".to_string(),
            _ => format!(" AND seq {later} ?"),
        };
        sql.push_str(&condition);
    }
    let dir = if query.newest_first { " DESC" } else { "" };
    let _ = write!(sql, " ORDER BY seq{dir}, event{dir}, {key}{dir} LIMIT ?");
    sql
}

/// Binds the placeholders of [`events_sql`].
pub(crate) fn bind_events(
    mut q: clickhouse::query::Query,
    query: &EventQuery,
    source: EventSource,
    upto_seq: u64,
) -> clickhouse::query::Query {
    q = q.bind(&query.host_id).bind(upto_seq);
    if query.after_seq > 0 {
        q = q.bind(query.after_seq);
    }
    if let Some(from) = query.from {
        q = q.bind(clamp(from));
    }
    if let Some(to) = query.to {
        q = q.bind(clamp(to));
    }
    if let Some(port) = query.port {
        q = q.bind(port);
    }
    if let Some(key) = &query.key {
        q = q.bind(key);
    }
    if let Some(after) = &query.after {
        if source == after.source {
            q = q.bind(after.seq).bind(&after.event).bind(&after.key);
        } else {
            q = q.bind(after.seq);
        }
    }
    q.bind(u64::from(query.limit.max(1)) + 1)
}

/// A stored socket event row, decoded.
pub(crate) fn socket_event(r: SocketEventRow) -> Result<SocketEvent, StoreError> {
    let (socket, processes) = r.cols().decode(table::SOCKET_EVENTS)?;
    let event = [
        SocketEventKind::Added,
        SocketEventKind::Removed,
        SocketEventKind::Changed,
    ]
    .into_iter()
    .find(|e| e.as_str() == r.event)
    .ok_or_else(|| StoreError::Corrupt {
        table: table::SOCKET_EVENTS,
        column: "event",
        value: r.event.clone(),
    })?;
    Ok(SocketEvent {
        seq: r.seq,
        at: from_datetime(r.at),
        event,
        socket,
        processes,
    })
}

/// A stored flow event row, decoded.
pub(crate) fn flow_event(r: FlowEventRow) -> Result<FlowEvent, StoreError> {
    let (flow, process) = r.cols().decode(table::FLOW_EVENTS)?;
    let event = [FlowEventKind::Upserted, FlowEventKind::Removed]
        .into_iter()
        .find(|e| e.as_str() == r.event)
        .ok_or_else(|| StoreError::Corrupt {
            table: table::FLOW_EVENTS,
            column: "event",
            value: r.event.clone(),
        })?;
    Ok(FlowEvent {
        seq: r.seq,
        at: from_datetime(r.at),
        event,
        flow,
        process,
    })
}

#[derive(Debug, Row, Deserialize)]
struct LastChange {
    last_seq: u64,
    last_at: u32,
}

/// A host's inventory at an instant, rebuilt from history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAsOf {
    /// The host with its facts at the instant (Hello facts are today's); `None` when it
    /// had not reported by then.
    pub host: Option<StoredHost>,
    /// The last committed change scanned at or before the instant; 0: none.
    pub seq: u64,
    /// Its scan time; `None` with seq 0.
    pub seq_at: Option<SystemTime>,
    /// The sockets present then, ordered by local port and key.
    pub sockets: Vec<StoredSocket>,
    /// The flows present then, ordered by service port and key.
    pub flows: Vec<StoredFlow>,
    /// More than `limit` sockets or flows: the lists are cut.
    pub truncated: bool,
}

impl Store {
    /// The events of `K` for `query`, up to seq `upto`, in the table's order.
    async fn events_of<K: Tracked>(
        &self,
        query: &EventQuery,
        upto: u64,
    ) -> Result<Vec<K::StoredEvent>, StoreError> {
        let sql = events_sql(query, K::SOURCE);
        let bound = bind_events(self.client.query(&sql), query, K::SOURCE, upto);
        let rows: Vec<K::Event> = self.fetch(K::EVENTS, bound).await?;
        rows.into_iter().map(K::stored_event).collect()
    }

    /// The events of one host for `query`, in the requested order, and whether more
    /// matched than `query.limit`.
    pub async fn events(
        &self,
        query: &EventQuery,
    ) -> Result<(Vec<HistoryEvent>, bool), StoreError> {
        let upto = match query.upto_seq {
            Some(seq) => seq,
            None => self.last_seq(&query.host_id).await?,
        };
        if upto == 0 || upto <= query.after_seq {
            return Ok((Vec::new(), false));
        }
        let limit = query.limit.max(1) as usize;
        let sockets = self.events_of::<Sockets>(query, upto).await?;
        let mut out: Vec<HistoryEvent> = sockets.into_iter().map(HistoryEvent::Socket).collect();
        if query.include_flows {
            let flows = self.events_of::<Flows>(query, upto).await?;
            out.extend(flows.into_iter().map(HistoryEvent::Flow));
        }
        // Both tables answered in order; merge them by the cursor key.
        let mut keyed: Vec<(EventCursor, HistoryEvent)> =
            out.into_iter().map(|e| (e.cursor(), e)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        if query.newest_first {
            keyed.reverse();
        }
        let (keyed, more) = super::fleet::page(keyed, limit);
        Ok((keyed.into_iter().map(|(_, e)| e).collect(), more))
    }

    /// The last committed change of a host scanned at or before `at_unix_secs`: its seq
    /// and scan time, or `None` when there is none.
    pub async fn last_change_at(
        &self,
        host_id: &str,
        at_unix_secs: u64,
    ) -> Result<Option<(u64, SystemTime)>, StoreError> {
        let rows: Vec<LastChange> = self
            .fetch(
                table::HOST_REPORTS,
                self.client
                    .query(LAST_CHANGE_AT)
                    .bind(host_id)
                    .bind(clamp(at_unix_secs)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .find(|r| r.last_seq > 0)
            .map(|r| (r.last_seq, from_datetime(r.last_at))))
    }

    /// One host as it was at `at_unix_secs`: host facts, sockets and flows (at most
    /// `limit` of each), rebuilt from history.
    pub async fn host_as_of(
        &self,
        host_id: &str,
        at_unix_secs: u64,
        limit: u32,
    ) -> Result<HostAsOf, StoreError> {
        let Some((seq, seq_at)) = self.last_change_at(host_id, at_unix_secs).await? else {
            return Ok(HostAsOf {
                host: None,
                seq: 0,
                seq_at: None,
                sockets: Vec::new(),
                flows: Vec::new(),
                truncated: false,
            });
        };
        let host = self
            .fetch::<HostRow>(
                table::HOSTS,
                self.client
                    .query(&host_as_of_sql(at_unix_secs))
                    .bind(host_id),
            )
            .await?
            .into_iter()
            .next()
            .map(stored_host)
            .transpose()?;
        let hosts = super::fleet::HostFilter {
            host_ids: vec![host_id.to_string()],
            labels: BTreeMap::new(),
        };
        let (sockets, more_sockets) = self
            .list_sockets(&super::fleet::SocketFilter {
                hosts: hosts.clone(),
                at: Some(at_unix_secs),
                limit,
                ..super::fleet::SocketFilter::default()
            })
            .await?;
        let (flows, more_flows) = self
            .list_flows(&super::fleet::FlowFilter {
                hosts,
                at: Some(at_unix_secs),
                limit,
                ..super::fleet::FlowFilter::default()
            })
            .await?;
        Ok(HostAsOf {
            host,
            seq,
            seq_at: Some(seq_at),
            sockets: sockets.into_iter().map(|s| s.socket).collect(),
            flows: flows.into_iter().map(|f| f.flow).collect(),
            truncated: more_sockets || more_flows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{FlowCurrentRow, SocketCurrentRow};

    /// The column list of the outermost SELECT of an as-of subquery.
    fn outer_columns(sql: &str) -> Vec<String> {
        let body = sql
            .strip_prefix("(SELECT ")
            .and_then(|s| s.split(" FROM (").next())
            .expect("an as-of subquery");
        let mut out = Vec::new();
        let mut depth = 0;
        let mut current = String::new();
        for c in body.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        out.push(current);
        out.into_iter()
            .map(|c| {
                let c = c.trim();
                c.rsplit_once(" AS ")
                    .map_or(c, |(_, alias)| alias)
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn as_of_subqueries_have_the_columns_of_the_current_tables() {
        let t = 1_760_000_000;
        for (sql, t_name, row_names) in [
            (
                sockets_as_of(t),
                table::SOCKETS_CURRENT,
                SocketCurrentRow::COLUMN_NAMES,
            ),
            (
                flows_as_of(t),
                table::FLOWS_CURRENT,
                FlowCurrentRow::COLUMN_NAMES,
            ),
            (hosts_as_of(t), table::HOSTS, HostRow::COLUMN_NAMES),
        ] {
            let columns = outer_columns(&sql);
            let table_columns = schema::table_columns(t_name).expect("known table");
            assert_eq!(columns, table_columns, "{t_name}: {sql}");
            assert_eq!(columns, row_names, "{t_name}");
            assert!(sql.starts_with('(') && sql.ends_with(')'), "{sql}");
            assert!(sql.contains("toDateTime(1760000000)"), "{sql}");
            assert!(!sql.contains('?'), "{sql}");
        }
    }

    #[test]
    fn instants_past_2106_are_clamped() {
        assert!(sockets_as_of(u64::MAX).contains(&format!("toDateTime({})", u32::MAX)));
    }

    #[test]
    fn event_cursors_order_sockets_before_flows_within_a_change() {
        let c = |seq, source, event: &str, key: &str| EventCursor {
            seq,
            source,
            event: event.into(),
            key: key.into(),
        };
        let mut v = [
            c(2, EventSource::Socket, "added", "b"),
            c(1, EventSource::Flow, "removed", "a"),
            c(1, EventSource::Socket, "removed", "z"),
            c(1, EventSource::Socket, "added", "z"),
        ];
        v.sort();
        assert_eq!(
            v.iter()
                .map(|c| (c.seq, c.source, c.event.as_str()))
                .collect::<Vec<_>>(),
            [
                (1, EventSource::Socket, "added"),
                (1, EventSource::Socket, "removed"),
                (1, EventSource::Flow, "removed"),
                (2, EventSource::Socket, "added"),
            ]
        );
    }

    #[test]
    fn paging_conditions_follow_the_order_and_the_source() {
        let after = EventCursor {
            seq: 7,
            source: EventSource::Socket,
            event: "added".into(),
            key: "k".into(),
        };
        let q = |newest_first| EventQuery {
            host_id: "h".into(),
            newest_first,
            after: Some(after.clone()),
            include_flows: true,
            limit: 10,
            ..EventQuery::default()
        };
        let asc = q(false);
        assert!(
            events_sql(&asc, EventSource::Socket).contains("(seq, event, socket_key) > (?, ?, ?)")
        );
        assert!(events_sql(&asc, EventSource::Flow).contains("AND seq >= ?"));
        let desc = q(true);
        assert!(
            events_sql(&desc, EventSource::Socket).contains("(seq, event, socket_key) < (?, ?, ?)")
        );
        assert!(events_sql(&desc, EventSource::Flow).contains("AND seq < ?"));
        assert!(
            events_sql(&desc, EventSource::Flow)
                .contains("ORDER BY seq DESC, event DESC, flow_key DESC")
        );
    }
}
