//! A host's history: rows of `portolan history` and `portolan watch host`.

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::socket::{scope_paint, state_text};
use portolan_core::Process;

use super::{address_text, endpoint, enum_name, process_label, process_row};
use crate::output::{Column, Context, Paint, Record};

/// One event of a host's history: a socket or a flow that appeared, changed or went
/// away in one stored change (JSON: an element of the array, or one NDJSON line of
/// `watch host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    /// The host's id.
    pub host_id: String,
    /// The stored change (snapshot or delta) the event belongs to; the events of one
    /// change share it.
    pub seq: u64,
    /// Scan time of that change, Unix seconds.
    pub at_unix: i64,
    /// `added`, `removed` or `changed` (sockets); `upserted` or `removed` (flows).
    pub kind: String,
    /// The socket's or flow's stable key, as `portolan history --socket-key` takes it.
    pub key: String,
    /// The socket, for a socket event; `null` for a flow event.
    pub socket: Option<EventSocket>,
    /// The flow, for a flow event; `null` for a socket event.
    pub flow: Option<EventFlow>,
    /// The owning processes known then.
    pub processes: Vec<Process>,
}

/// A socket as an event carries it (JSON: an event's `socket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventSocket {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Kernel state (`listen`, `established`, …).
    pub state: String,
    /// Local address.
    pub local_address: String,
    /// Local port.
    pub local_port: u32,
    /// Remote address (the unspecified address for listeners).
    pub remote_address: String,
    /// Remote port (0 for listeners).
    pub remote_port: u32,
    /// Scope of the bind address.
    pub scope: String,
    /// The widest scope it is reachable on.
    pub exposure: String,
    /// Why `processes` is what it is.
    pub attribution: String,
    /// Socket inode.
    pub inode: u64,
    /// Owner's user id.
    pub uid: u32,
    /// Owning process ids.
    pub pids: Vec<u32>,
}

/// A flow as an event carries it (JSON: an event's `flow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventFlow {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The host's address.
    pub local_address: String,
    /// The other end's address.
    pub remote_address: String,
    /// The server's port.
    pub service_port: u32,
    /// Kernel state of the folded connections.
    pub state: String,
    /// Connections folded into the flow.
    pub connections: u32,
    /// The owning process id; 0 when the kernel holds the sockets.
    pub pid: u32,
}

impl From<&pb::Socket> for EventSocket {
    fn from(s: &pb::Socket) -> Self {
        EventSocket {
            protocol: enum_name::<pb::Protocol>(s.protocol),
            state: enum_name::<pb::SocketState>(s.state),
            local_address: address_text(&s.local_address),
            local_port: s.local_port,
            remote_address: address_text(&s.remote_address),
            remote_port: s.remote_port,
            scope: enum_name::<pb::Scope>(s.scope),
            exposure: enum_name::<pb::Scope>(s.exposure),
            attribution: enum_name::<pb::Attribution>(s.attribution),
            inode: s.inode,
            uid: s.uid,
            pids: s.pids.clone(),
        }
    }
}

impl From<&pb::Flow> for EventFlow {
    fn from(f: &pb::Flow) -> Self {
        EventFlow {
            protocol: enum_name::<pb::Protocol>(f.protocol),
            direction: enum_name::<pb::FlowDirection>(f.direction),
            local_address: address_text(&f.local_address),
            remote_address: address_text(&f.remote_address),
            service_port: f.service_port,
            state: enum_name::<pb::SocketState>(f.state),
            connections: f.connections,
            pid: f.pid,
        }
    }
}

impl From<&pb::HostEvent> for EventRow {
    fn from(e: &pb::HostEvent) -> Self {
        let (socket, flow) = match &e.subject {
            Some(pb::host_event::Subject::Socket(s)) => (Some(EventSocket::from(s)), None),
            Some(pb::host_event::Subject::Flow(f)) => (None, Some(EventFlow::from(f))),
            None => (None, None),
        };
        EventRow {
            host_id: e.host_id.clone(),
            seq: e.seq,
            at_unix: e.at_unix,
            kind: enum_name::<pb::EventKind>(e.kind),
            key: e.key.clone(),
            socket,
            flow,
            processes: e.processes.iter().map(process_row).collect(),
        }
    }
}

impl EventRow {
    /// `socket` or `flow`.
    fn subject(&self) -> &'static str {
        match (&self.socket, &self.flow) {
            (_, Some(_)) => "flow",
            _ => "socket",
        }
    }

    /// What happened, for people: flow events say so.
    fn event(&self, ctx: &Context) -> String {
        match (&self.flow, ctx.machine()) {
            (Some(_), false) => format!("flow {}", self.kind),
            _ => self.kind.clone(),
        }
    }

    fn protocol(&self) -> String {
        match (&self.socket, &self.flow) {
            (Some(s), _) => s.protocol.clone(),
            (_, Some(f)) => f.protocol.clone(),
            _ => String::new(),
        }
    }

    fn state(&self) -> &str {
        match (&self.socket, &self.flow) {
            (Some(s), _) => &s.state,
            (_, Some(f)) => &f.state,
            _ => "",
        }
    }

    /// The local end: a socket's address and port; a flow's address, with the service
    /// port when the host is the server.
    fn local(&self) -> String {
        match (&self.socket, &self.flow) {
            (Some(s), _) => endpoint(&s.local_address, s.local_port),
            (_, Some(f)) if f.direction == "inbound" => endpoint(&f.local_address, f.service_port),
            (_, Some(f)) => f.local_address.clone(),
            _ => String::new(),
        }
    }

    /// The remote end: empty (`*` for people) for a listener; a flow's address, with the
    /// service port when the other end is the server.
    fn peer(&self, ctx: &Context) -> String {
        match (&self.socket, &self.flow) {
            (Some(s), _) if s.remote_port == 0 => {
                if ctx.machine() {
                    String::new()
                } else {
                    "*".into()
                }
            }
            (Some(s), _) => endpoint(&s.remote_address, s.remote_port),
            (_, Some(f)) if f.direction == "outbound" => {
                endpoint(&f.remote_address, f.service_port)
            }
            (_, Some(f)) => f.remote_address.clone(),
            _ => String::new(),
        }
    }

    /// `pid/name` of the first owner, `+N` when there are more; a socket without one
    /// says why (`(kernel)`).
    fn owner(&self) -> String {
        match (self.processes.as_slice(), &self.socket, &self.flow) {
            ([only], _, _) => process_label(only),
            ([first, rest @ ..], _, _) => format!("{} +{}", process_label(first), rest.len()),
            ([], Some(s), _) => format!("({})", s.attribution),
            ([], _, Some(f)) if f.pid == 0 => "(kernel)".into(),
            ([], _, Some(f)) => f.pid.to_string(),
            ([], None, None) => String::new(),
        }
    }

    fn pids(&self) -> String {
        match (&self.socket, &self.flow) {
            (Some(s), _) => s
                .pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            (_, Some(f)) if f.pid > 0 => f.pid.to_string(),
            _ => String::new(),
        }
    }

    fn of_process(&self, field: fn(&Process) -> &str) -> String {
        self.processes
            .first()
            .map(field)
            .unwrap_or_default()
            .to_string()
    }
}

/// The colour of what happened: appearing green, going away red.
fn kind_paint(kind: &str) -> Option<Paint> {
    match kind {
        "added" => Some(Paint::Green),
        "removed" => Some(Paint::Red),
        "changed" => Some(Paint::Yellow),
        _ => None,
    }
}

impl Record for EventRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("TIME", "at", |r, ctx| ctx.instant(r.at_unix)),
        Column::<Self>::key("EVENT", "kind", |r, ctx| r.event(ctx))
            .paint(|r| kind_paint(&r.kind))
            .stream_width("flow upserted".len()),
        Column::<Self>::key("PROTO", "protocol", |r, _| r.protocol()),
        Column::<Self>::key("STATE", "state", |r, ctx| state_text(r.state(), ctx))
            .stream_width("ESTABLISHED".len()),
        Column::<Self>::key("LOCAL", "local", |r, _| r.local())
            .stream_width("10.0.1.5:54321".len() + 3),
        Column::<Self>::key("PEER", "peer", |r, ctx| r.peer(ctx))
            .stream_width("10.0.1.5:54321".len() + 3),
        Column::<Self>::key("EXPOSURE", "exposure", |r, _| {
            r.socket
                .as_ref()
                .map(|s| s.exposure.clone())
                .unwrap_or_default()
        })
        .paint(|r| r.socket.as_ref().and_then(|s| scope_paint(&s.exposure))),
        Column::<Self>::free("PROCESS", "process", 12, |r, _| r.owner()).stream_width(16),
        Column::<Self>::key("SEQ", "seq", |r, _| r.seq.to_string()).wide(),
        Column::<Self>::key("OF", "subject", |r, _| r.subject().to_string()).wide(),
        Column::<Self>::key("DIR", "direction", |r, _| {
            r.flow
                .as_ref()
                .map(|f| f.direction.clone())
                .unwrap_or_default()
        })
        .wide(),
        Column::<Self>::key("CONNS", "connections", |r, _| {
            r.flow
                .as_ref()
                .map(|f| f.connections.to_string())
                .unwrap_or_default()
        })
        .wide(),
        Column::<Self>::key("PIDS", "pids", |r, _| r.pids()).wide(),
        Column::<Self>::free("USER", "user", 8, |r, _| r.of_process(|p| &p.user)).wide(),
        Column::<Self>::key("UNIT", "systemd_unit", |r, _| {
            r.of_process(|p| &p.systemd_unit)
        })
        .wide(),
        Column::<Self>::key("KEY", "key", |r, _| r.key.clone()).wide(),
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.host_id.clone()).wide(),
        Column::<Self>::free("COMMAND", "command_line", 12, |r, _| {
            r.of_process(|p| &p.command_line)
        })
        .wide(),
    ];
}
