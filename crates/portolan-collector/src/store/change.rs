//! The rows of one change: pure, from the change and what the stored state held before
//! it ([`Before`]), whether that was read from ClickHouse or held by the host's stream.

use std::collections::BTreeMap;
use std::time::SystemTime;

use portolan_core::{Delta, Flow, Inventory, Process, ScanStats, Socket};

use super::batch::Rows;
use super::rows::{
    FlowCols, FlowCurrentRow, FlowEventRow, HostFactsCols, HostRow, SocketCols, SocketCurrentRow,
    SocketEventRow, to_datetime,
};
use super::{
    ChangeKind, FlowEventKind, SocketEventKind, WriteReceipt, empty_host_row, report_row, stamp,
};

/// The latest `hosts` row of a host as its stream last read or wrote it: what
/// [`super::Store::write_change_from`] needs of the host instead of reading it. Obtained
/// from [`super::Store::load_known`] or [`super::Store::upsert_host`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnownHost {
    pub(super) row: Option<HostRow>,
}

impl KnownHost {
    /// The seq of the change that last set the host facts (0: none, or no row yet).
    pub fn seq(&self) -> u64 {
        self.row.as_ref().map_or(0, |r| r.seq)
    }
}

/// What a change's rows need of the stored state before it.
pub(super) struct Before {
    /// The last-known processes of each removed socket, in `delta.removed` order.
    pub removed_sockets: Vec<BTreeMap<u32, Process>>,
    /// The last-known process of each removed flow, in `delta.flows_removed` order.
    pub removed_flows: Vec<Option<Process>>,
    /// The host's latest `hosts` row.
    pub host: Option<HostRow>,
}

impl Before {
    /// From the host's inventory before `delta` (the stored state, as the stream holds
    /// it): the processes a stored socket or flow row carries are those of its pids.
    pub fn from_inventory(prior: &Inventory, delta: &Delta, host: Option<HostRow>) -> Before {
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
            host,
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

impl Change<'_> {
    /// The change's rows, what they count per table, and the `hosts` row among them.
    pub fn rows(&self, before: Before) -> (Rows, WriteReceipt, Option<HostRow>) {
        let Change {
            host_id,
            seq,
            kind,
            scanned_at,
            delta,
            stats,
        } = *self;
        let at = to_datetime(scanned_at);
        let known: BTreeMap<u32, &Process> = delta.processes.iter().map(|p| (p.pid, p)).collect();
        let mut rows = Rows::default();

        let mut push_socket = |socket: &Socket, event: SocketEventKind, cols: SocketCols| {
            let key = socket.key.to_string();
            rows.socket_events.push(SocketEventRow::with_cols(
                host_id.to_string(),
                seq,
                at,
                event.as_str().to_string(),
                key.clone(),
                cols.clone(),
            ));
            rows.sockets_current.push(SocketCurrentRow::with_cols(
                host_id.to_string(),
                key,
                seq,
                u8::from(event != SocketEventKind::Removed),
                at,
                cols,
            ));
        };
        // Removed sockets carry their last-known processes, which the delta does not have.
        let no_processes = BTreeMap::new();
        for (i, socket) in delta.removed.iter().enumerate() {
            let last = before.removed_sockets.get(i).unwrap_or(&no_processes);
            let cols = SocketCols::encode(socket, |pid| {
                last.get(&pid).or_else(|| known.get(&pid).copied())
            });
            push_socket(socket, SocketEventKind::Removed, cols);
        }
        for socket in &delta.changed {
            let cols = SocketCols::encode(socket, |pid| known.get(&pid).copied());
            push_socket(socket, SocketEventKind::Changed, cols);
        }
        for socket in &delta.added {
            let cols = SocketCols::encode(socket, |pid| known.get(&pid).copied());
            push_socket(socket, SocketEventKind::Added, cols);
        }

        let mut push_flow = |flow: &Flow, event: FlowEventKind, cols: FlowCols| {
            let key = flow.key.to_string();
            rows.flow_events.push(FlowEventRow::with_cols(
                host_id.to_string(),
                seq,
                at,
                event.as_str().to_string(),
                key.clone(),
                cols.clone(),
            ));
            rows.flows_current.push(FlowCurrentRow::with_cols(
                host_id.to_string(),
                key,
                seq,
                u8::from(event != FlowEventKind::Removed),
                at,
                cols,
            ));
        };
        for (i, flow) in delta.flows_removed.iter().enumerate() {
            let last = before.removed_flows.get(i).cloned().flatten();
            let process = last.or_else(|| known.get(&flow.key.pid).map(|p| (*p).clone()));
            push_flow(
                flow,
                FlowEventKind::Removed,
                FlowCols::encode(flow, process.as_ref()),
            );
        }
        for flow in &delta.flows_upserted {
            let process = known.get(&flow.key.pid).copied();
            push_flow(
                flow,
                FlowEventKind::Upserted,
                FlowCols::encode(flow, process),
            );
        }

        let mut host_row = None;
        if let Some(state) = &delta.host {
            let latest = before.host.as_ref();
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
        let mut report = report_row(host_id, seq, kind.as_str(), scanned_at, stats);
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
            None if kind == ChangeKind::Snapshot => before.host.as_ref().map(|r| (2, r.facts())),
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
            socket_events: n(rows.socket_events.len()),
            sockets_current: n(rows.sockets_current.len()),
            flow_events: n(rows.flow_events.len()),
            flows_current: n(rows.flows_current.len()),
            hosts: n(rows.hosts.len()),
            host_reports: n(rows.host_reports.len()),
        };
        (rows, receipt, host_row)
    }
}
