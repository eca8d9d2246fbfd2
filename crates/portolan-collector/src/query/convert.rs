//! Stored hosts, sockets and history events as the protocol sends them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use portolan_proto::v1 as pb;
use portolan_store::fleet::{FleetSocket, HostSummary};
use portolan_store::history::HistoryEvent;
use portolan_store::{FlowEventKind, SocketEventKind};

use super::STALE_AFTER_INTERVALS;
use super::fields::unix;

pub(super) fn summary(h: &HostSummary, now: SystemTime) -> pb::HostSummary {
    let interval = Duration::from_millis(h.host.scan_interval_ms.max(1000));
    let stale = match h.last_seen {
        None => true,
        Some(seen) => now
            .duration_since(seen)
            .is_ok_and(|age| age > interval * STALE_AFTER_INTERVALS),
    };
    pb::HostSummary {
        host_id: h.host.host_id.clone(),
        hostname: h.host.hostname.clone(),
        labels: h.host.labels.clone().into_iter().collect(),
        agent_version: h.host.agent_version.clone(),
        kernel: h.host.kernel.clone(),
        os: h.host.os.clone(),
        collector: h.host.collector.clone(),
        scan_interval_ms: h.host.scan_interval_ms,
        last_seen_unix: h.last_seen.map_or(0, unix),
        last_seq: h.last_seq,
        stale,
        listeners: h.listeners,
        flows: h.flows,
        retired_unix: h.retired_at.map_or(0, unix),
    }
}

pub(super) fn host_socket(s: FleetSocket, hostnames: &HashMap<String, String>) -> pb::HostSocket {
    pb::HostSocket {
        hostname: hostnames.get(&s.host_id).cloned().unwrap_or_default(),
        host_id: s.host_id,
        socket: Some(pb::Socket::from(&s.socket.socket)),
        processes: s.socket.processes.iter().map(pb::Process::from).collect(),
        updated_unix: unix(s.socket.updated_at),
    }
}

pub(super) fn history_event(host_id: &str, e: HistoryEvent) -> pb::HostEvent {
    let key = e.key();
    match e {
        HistoryEvent::Socket(s) => pb::HostEvent {
            host_id: host_id.to_string(),
            seq: s.seq,
            at_unix: unix(s.at),
            kind: match s.event {
                SocketEventKind::Added => pb::EventKind::Added,
                SocketEventKind::Removed => pb::EventKind::Removed,
                SocketEventKind::Changed => pb::EventKind::Changed,
            } as i32,
            key,
            subject: Some(pb::host_event::Subject::Socket(pb::Socket::from(&s.socket))),
            processes: s.processes.iter().map(pb::Process::from).collect(),
        },
        HistoryEvent::Flow(f) => pb::HostEvent {
            host_id: host_id.to_string(),
            seq: f.seq,
            at_unix: unix(f.at),
            kind: match f.event {
                FlowEventKind::Upserted => pb::EventKind::Upserted,
                FlowEventKind::Removed => pb::EventKind::Removed,
            } as i32,
            key,
            subject: Some(pb::host_event::Subject::Flow(pb::Flow::from(&f.flow))),
            processes: f.process.iter().map(pb::Process::from).collect(),
        },
    }
}
