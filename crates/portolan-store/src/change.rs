//! The rows of one change: pure, from the change and what the stored state held before
//! it ([`Before`]), whether that was read from ClickHouse or held by the host's stream.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

use portolan_core::{Delta, Flow, Inventory, Process, ScanStats, Socket};

use super::batch::Rows;
use super::rowbinary;
use super::rows::{HostFactsCols, HostRow, ReportRow, to_datetime, to_nanos};
use super::{ChangeKind, FlowEventKind, HostRecord, SocketEventKind, WriteReceipt};

/// The latest `hosts` row of a host as its stream last read or wrote it: what
/// [`crate::HostLedger`] needs of the host instead of reading it. Obtained
/// from `Store::load_known`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct KnownHost {
    pub(super) row: Option<HostRow>,
}

/// What a change's rows need of the stored state before it.
pub(super) struct Before<'h> {
    /// The last-known processes of each removed socket, in `delta.removed` order.
    pub removed_sockets: Vec<BTreeMap<u32, Process>>,
    /// The last-known process of each removed flow, in `delta.flows_removed` order.
    pub removed_flows: Vec<Option<Process>>,
    /// The host's latest `hosts` row: the stream's own, or read from ClickHouse.
    pub host: Option<Cow<'h, HostRow>>,
}

impl<'h> Before<'h> {
    /// From the host's inventory before `delta` (the stored state, as the stream holds
    /// it): the processes a stored socket or flow row carries are those of its pids.
    pub fn from_inventory(
        prior: &Inventory,
        delta: &Delta,
        host: Option<&'h HostRow>,
    ) -> Before<'h> {
        let removed_sockets = delta
            .removed
            .iter()
            .map(|s| {
                prior
                    .sockets
                    .get(&s.key)
                    .map_or_else(BTreeMap::new, |stored| {
                        stored
                            .pids
                            .iter()
                            .filter_map(|pid| prior.processes.get(pid).map(|p| (*pid, p.clone())))
                            .collect()
                    })
            })
            .collect();
        let removed_flows = delta
            .flows_removed
            .iter()
            .map(|f| {
                prior
                    .flows
                    .contains_key(&f.key)
                    .then(|| prior.processes.get(&f.key.pid).cloned())
                    .flatten()
            })
            .collect();
        Before {
            removed_sockets,
            removed_flows,
            host: host.map(Cow::Borrowed),
        }
    }
}

/// One change of a host, as [`super::Store::write_change`] takes it.
pub(super) struct Change<'a> {
    pub host_id: &'a str,
    pub seq: u64,
    pub kind: ChangeKind,
    pub scanned_at: SystemTime,
    pub delta: &'a Delta,
    pub stats: &'a ScanStats,
}

impl<'a> Change<'a> {
    pub fn new(
        host_id: &'a str,
        seq: u64,
        kind: ChangeKind,
        scanned_at: SystemTime,
        delta: &'a Delta,
        stats: &'a ScanStats,
    ) -> Change<'a> {
        Change {
            host_id,
            seq,
            kind,
            scanned_at,
            delta,
            stats,
        }
    }

    /// The change's rows, what they count per table, and the `hosts` row among them.
    pub fn rows(&self, before: Before<'_>) -> (Rows, WriteReceipt, Option<HostRow>) {
        let (host_id, seq, kind, delta, stats) =
            (self.host_id, self.seq, self.kind, self.delta, self.stats);
        let at = to_datetime(self.scanned_at);
        let known: BTreeMap<u32, &Process> = delta.processes.iter().map(|p| (p.pid, p)).collect();
        let mut b = RowsBuilder {
            host_id,
            seq,
            at,
            ..RowsBuilder::default()
        };
        let mut processes: Vec<Option<&Process>> = Vec::new();
        // Removed sockets carry their last-known processes, which the delta does not have.
        let no_processes = BTreeMap::new();
        for (i, socket) in delta.removed.iter().enumerate() {
            let last = before.removed_sockets.get(i).unwrap_or(&no_processes);
            processes.clear();
            processes.extend(
                socket
                    .pids
                    .iter()
                    .map(|pid| last.get(pid).or_else(|| known.get(pid).copied())),
            );
            b.socket(socket, SocketEventKind::Removed, &processes);
        }
        for (sockets, event) in [
            (&delta.changed, SocketEventKind::Changed),
            (&delta.added, SocketEventKind::Added),
        ] {
            for socket in sockets {
                processes.clear();
                processes.extend(socket.pids.iter().map(|pid| known.get(pid).copied()));
                b.socket(socket, event, &processes);
            }
        }
        for (i, flow) in delta.flows_removed.iter().enumerate() {
            let last = before.removed_flows.get(i).and_then(Option::as_ref);
            let process = last.or_else(|| known.get(&flow.key.pid).copied());
            b.flow(flow, FlowEventKind::Removed, process);
        }
        for flow in &delta.flows_upserted {
            b.flow(
                flow,
                FlowEventKind::Upserted,
                known.get(&flow.key.pid).copied(),
            );
        }
        let mut rows = b.rows;

        let mut host_row = None;
        if let Some(state) = &delta.host {
            let latest = before.host.as_deref();
            // A replay of an older change must not overwrite newer host facts.
            if latest.is_none_or(|h| h.seq <= seq) {
                let mut row = latest.cloned().unwrap_or_else(|| empty_host_row(host_id));
                row.set_facts(HostFactsCols::encode(state));
                row.seq = seq;
                stamp(&mut row, latest);
                rows.hosts.push(row.clone());
                host_row = Some(row);
            }
        }

        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut report = report_row(host_id, seq, kind.as_str(), self.scanned_at, stats);
        report.added = count(delta.added.len());
        report.removed = count(delta.removed.len());
        report.changed = count(delta.changed.len());
        report.flows_upserted = count(delta.flows_upserted.len());
        report.flows_removed = count(delta.flows_removed.len());
        // The report carries the host facts: new ones (1), or at a snapshot the
        // unchanged ones (2), so that the history of host facts is complete from each
        // stream's first snapshot on (see `history::hosts_as_of`).
        let facts = match &delta.host {
            Some(state) => Some((1, HostFactsCols::encode(state))),
            None if kind == ChangeKind::Snapshot => before.host.as_deref().map(|r| (2, r.facts())),
            None => None,
        };
        if let Some((has_host, facts)) = facts {
            report.has_host = has_host;
            report.interface_names = facts.interface_names;
            report.interfaces = facts.interfaces;
            report.ephemeral_known = facts.ephemeral_known;
            report.ephemeral_min = facts.ephemeral_min;
            report.ephemeral_max = facts.ephemeral_max;
            report.interface_netns = facts.interface_netns;
        }
        rows.host_reports.push(report);

        let n = |v: usize| v as u64;
        let receipt = WriteReceipt {
            socket_events: n(rows.socket_events.rows),
            sockets_current: n(rows.sockets_current.rows),
            flow_events: n(rows.flow_events.rows),
            flows_current: n(rows.flows_current.rows),
            hosts: n(rows.hosts.len()),
            host_reports: n(rows.host_reports.len()),
        };
        (rows, receipt, host_row)
    }
}

/// Encodes the event and current rows of a change's sockets and flows.
#[derive(Default)]
struct RowsBuilder<'a> {
    host_id: &'a str,
    seq: u64,
    at: u32,
    rows: Rows,
    w: rowbinary::Writer,
    /// The shared columns of the socket or flow at hand, encoded once for both tables.
    cols: Vec<u8>,
    /// Its key, encoded.
    key: Vec<u8>,
}

impl RowsBuilder<'_> {
    /// A socket's `socket_events` and `sockets_current` rows; `processes` are what is
    /// known of each of its pids.
    fn socket(&mut self, socket: &Socket, event: SocketEventKind, processes: &[Option<&Process>]) {
        self.cols.clear();
        self.w.socket_cols(&mut self.cols, socket, processes);
        self.key.clear();
        self.w.display(&mut self.key, socket.key);
        let present = u8::from(event != SocketEventKind::Removed);
        self.head_rows(event.as_str(), present, true);
    }

    /// A flow's `flow_events` and `flows_current` rows.
    fn flow(&mut self, flow: &Flow, event: FlowEventKind, process: Option<&Process>) {
        self.cols.clear();
        self.w.flow_cols(&mut self.cols, flow, process);
        self.key.clear();
        self.w.display(&mut self.key, flow.key);
        let present = u8::from(event != FlowEventKind::Removed);
        self.head_rows(event.as_str(), present, false);
    }

    /// The event row (`host_id, seq, at, event, key, cols…`) and the current row
    /// (`host_id, key, seq, present, updated_at, cols…`) of the socket or flow encoded
    /// in `key` and `cols`.
    fn head_rows(&mut self, event: &str, present: u8, socket: bool) {
        use rowbinary::Writer as W;
        let (events, current) = if socket {
            (&mut self.rows.socket_events, &mut self.rows.sockets_current)
        } else {
            (&mut self.rows.flow_events, &mut self.rows.flows_current)
        };
        W::str(&mut events.bytes, self.host_id);
        W::u64(&mut events.bytes, self.seq);
        W::u32(&mut events.bytes, self.at);
        W::str(&mut events.bytes, event);
        events.bytes.extend_from_slice(&self.key);
        events.bytes.extend_from_slice(&self.cols);
        events.rows += 1;
        W::str(&mut current.bytes, self.host_id);
        current.bytes.extend_from_slice(&self.key);
        W::u64(&mut current.bytes, self.seq);
        W::u8(&mut current.bytes, present);
        W::u32(&mut current.bytes, self.at);
        current.bytes.extend_from_slice(&self.cols);
        current.rows += 1;
    }
}

/// The `hosts` row of a host's Hello facts: `record`'s names, labels and versions, with
/// the stored host facts of `latest` (or `record.host` when the host has none yet).
pub(crate) fn hello_row(record: &HostRecord, latest: Option<&HostRow>) -> HostRow {
    let mut row = HostRow {
        host_id: record.host_id.clone(),
        hostname: record.hostname.clone(),
        label_keys: record.labels.keys().cloned().collect(),
        label_values: record.labels.values().cloned().collect(),
        agent_version: record.agent_version.clone(),
        kernel: record.kernel.clone(),
        os: record.os.clone(),
        scan_interval_ms: record.scan_interval_ms,
        collector: record.collector.clone(),
        connected_at: to_datetime(SystemTime::now()),
        ..empty_host_row(&record.host_id)
    };
    match latest {
        Some(prev) => {
            row.set_facts(prev.facts());
            row.seq = prev.seq;
        }
        None => row.set_facts(HostFactsCols::encode(&record.host)),
    }
    stamp(&mut row, latest);
    row
}

pub(crate) fn empty_host_row(host_id: &str) -> HostRow {
    HostRow {
        host_id: host_id.to_string(),
        hostname: String::new(),
        label_keys: Vec::new(),
        label_values: Vec::new(),
        agent_version: String::new(),
        kernel: String::new(),
        os: String::new(),
        scan_interval_ms: 0,
        collector: String::new(),
        connected_at: 0,
        interface_names: Vec::new(),
        interfaces: Vec::new(),
        ephemeral_known: 0,
        ephemeral_min: 0,
        ephemeral_max: 0,
        seq: 0,
        updated_at: 0,
        updated_ns: 0,
        interface_netns: Vec::new(),
    }
}

/// Sets the row's write time, strictly after the previous row's even when clocks of
/// collector replicas disagree.
pub(crate) fn stamp(row: &mut HostRow, previous: Option<&HostRow>) {
    let now = SystemTime::now();
    row.updated_at = to_datetime(now);
    row.updated_ns = to_nanos(now).max(previous.map_or(0, |p| p.updated_ns.saturating_add(1)));
}

pub(crate) fn report_row(
    host_id: &str,
    seq: u64,
    kind: &str,
    at: SystemTime,
    stats: &ScanStats,
) -> ReportRow {
    ReportRow {
        host_id: host_id.to_string(),
        seq,
        kind: kind.to_string(),
        at: to_datetime(at),
        received_at: to_datetime(SystemTime::now()),
        sockets: stats.sockets,
        listeners: stats.listeners,
        connections: stats.connections,
        unattributed_no_permission: stats.unattributed_no_permission,
        unattributed_process_gone: stats.unattributed_process_gone,
        unattributed_unknown: stats.unattributed_unknown,
        kernel_owned: stats.kernel_owned,
        scan_duration_micros: stats.scan_duration_micros,
        state_names: stats.state_counts.keys().cloned().collect(),
        state_counts: stats.state_counts.values().copied().collect(),
        added: 0,
        removed: 0,
        changed: 0,
        flows_upserted: 0,
        flows_removed: 0,
        has_host: 0,
        interface_names: Vec::new(),
        interfaces: Vec::new(),
        ephemeral_known: 0,
        ephemeral_min: 0,
        ephemeral_max: 0,
        interface_netns: Vec::new(),
    }
}
