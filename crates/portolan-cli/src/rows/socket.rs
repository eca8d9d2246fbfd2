//! Sockets: rows of `portolan sockets` and `portolan who-listens`.

use portolan_proto::v1 as pb;
use serde::Serialize;

use portolan_core::Process;

use super::{address_text, endpoint, enum_name, host_name, process_label, process_row};
use crate::output::{Column, Context, Paint, Record};

/// A current socket of a host (JSON: an element of the array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketRow {
    /// The host's id.
    pub host_id: String,
    /// The host's hostname.
    pub hostname: String,
    /// `tcp`, `udp`, `raw`, `unix` or `sctp`.
    pub protocol: String,
    /// Kernel state: `listen`, `established`, `time_wait`, … (UDP: `listen` when bound and
    /// unconnected, `established` when connected).
    pub state: String,
    /// Local address.
    pub local_address: String,
    /// Local port.
    pub local_port: u32,
    /// Remote address (the unspecified address for listeners).
    pub remote_address: String,
    /// Remote port (0 for listeners).
    pub remote_port: u32,
    /// Scope of the bind address: `loopback`, `link_local`, `private`, `public`,
    /// `wildcard`.
    pub scope: String,
    /// The widest scope it is reachable on (a wildcard bind: the widest interface
    /// address of its family).
    pub exposure: String,
    /// Why `processes` is what it is: `owned`, `kernel`, `no_permission`,
    /// `process_gone`, `unknown`.
    pub attribution: String,
    /// Socket inode.
    pub inode: u64,
    /// Network namespace inode; 0: the host's own (the agent's).
    pub netns: u64,
    /// Owner's user id.
    pub uid: u32,
    /// Owning process ids.
    pub pids: Vec<u32>,
    /// Owning processes, as far as known.
    pub processes: Vec<Process>,
    /// Unix seconds of the change that last touched it.
    pub updated_unix: i64,
    /// A Unix socket's path (`@name` when abstract); empty for other protocols.
    pub path: String,
}

impl From<&pb::HostSocket> for SocketRow {
    fn from(s: &pb::HostSocket) -> Self {
        let socket = s.socket.clone().unwrap_or_default();
        SocketRow {
            host_id: s.host_id.clone(),
            hostname: s.hostname.clone(),
            protocol: enum_name::<pb::Protocol>(socket.protocol),
            state: enum_name::<pb::SocketState>(socket.state),
            local_address: address_text(&socket.local_address),
            local_port: socket.local_port,
            remote_address: address_text(&socket.remote_address),
            remote_port: socket.remote_port,
            scope: enum_name::<pb::Scope>(socket.scope),
            exposure: enum_name::<pb::Scope>(socket.exposure),
            attribution: enum_name::<pb::Attribution>(socket.attribution),
            inode: socket.inode,
            netns: socket.netns_inode,
            uid: socket.uid,
            pids: socket.pids.clone(),
            processes: s.processes.iter().map(process_row).collect(),
            updated_unix: s.updated_unix,
            path: socket.path.clone(),
        }
    }
}

impl SocketRow {
    /// The first owning process.
    fn process(&self) -> Option<&Process> {
        self.processes.first()
    }

    /// `pid/name` of the first owner, `+N` when there are more, or `(attribution)`.
    fn owner(&self) -> String {
        match self.processes.as_slice() {
            [] => format!("({})", self.attribution),
            [only] => process_label(only),
            [first, rest @ ..] => format!("{} +{}", process_label(first), rest.len()),
        }
    }

    fn peer(&self, ctx: &Context) -> String {
        match (self.remote_port, ctx.machine()) {
            (0, true) => String::new(),
            (0, false) => "*".into(),
            _ => endpoint(&self.remote_address, self.remote_port),
        }
    }

    /// `namespace/name` of the first owner's pod, its UID when the name is unknown, or
    /// empty outside a pod.
    fn pod(&self) -> String {
        match self.process() {
            Some(p) if !p.pod_name.is_empty() => format!("{}/{}", p.pod_namespace, p.pod_name),
            Some(p) => p.pod_uid.clone(),
            None => String::new(),
        }
    }

    fn of_process(&self, field: fn(&Process) -> &str) -> String {
        self.process().map(field).unwrap_or_default().to_string()
    }
}

/// The colour of an exposure or bind scope: the wider, the louder.
pub fn scope_paint(scope: &str) -> Option<Paint> {
    match scope {
        "public" => Some(Paint::BoldRed),
        "wildcard" => Some(Paint::Yellow),
        "loopback" => Some(Paint::Dim),
        _ => None,
    }
}

/// A state as a cell: upper case for people (`LISTEN`), as in JSON for programs.
pub fn state_text(state: &str, ctx: &Context) -> String {
    if ctx.machine() {
        state.to_string()
    } else {
        state.to_ascii_uppercase()
    }
}

/// Listeners stand out from connections.
pub fn state_paint(state: &str) -> Option<Paint> {
    (state == "listen").then_some(Paint::Green)
}

impl Record for SocketRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("HOST", "host", |r, _| {
            host_name(&r.hostname, &r.host_id).to_string()
        }),
        Column::<Self>::key("PROTO", "protocol", |r, _| r.protocol.clone()),
        Column::<Self>::key("STATE", "state", |r, ctx| state_text(&r.state, ctx))
            .paint(|r| state_paint(&r.state)),
        Column::<Self>::key("LOCAL", "local", |r, _| {
            if r.protocol == "unix" {
                r.path.clone()
            } else {
                endpoint(&r.local_address, r.local_port)
            }
        }),
        Column::<Self>::key("PEER", "peer", |r, ctx| r.peer(ctx)),
        Column::<Self>::key("EXPOSURE", "exposure", |r, _| r.exposure.clone())
            .paint(|r| scope_paint(&r.exposure)),
        Column::<Self>::free("PROCESS", "process", 12, |r, _| r.owner()),
        Column::<Self>::free("USER", "user", 8, |r, _| r.of_process(|p| &p.user)),
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.host_id.clone()).wide(),
        Column::<Self>::key("BIND", "scope", |r, _| r.scope.clone())
            .paint(|r| scope_paint(&r.scope))
            .wide(),
        Column::<Self>::key("PIDS", "pids", |r, _| {
            r.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .wide(),
        Column::<Self>::key("UID", "uid", |r, _| r.uid.to_string()).wide(),
        Column::<Self>::key("INODE", "inode", |r, _| r.inode.to_string()).wide(),
        Column::<Self>::key("UNIT", "systemd_unit", |r, _| {
            r.of_process(|p| &p.systemd_unit)
        })
        .wide(),
        Column::<Self>::key("CONTAINER", "container_id", |r, _| {
            r.of_process(|p| &p.container_id)
        })
        .wide(),
        Column::<Self>::key("POD", "pod", |r, _| r.pod()).wide(),
        Column::<Self>::key("NETNS", "netns", |r, _| r.netns.to_string()).wide(),
        Column::<Self>::key("UPDATED", "updated", |r, ctx| ctx.time(r.updated_unix)).wide(),
        Column::<Self>::free("EXECUTABLE", "executable", 12, |r, _| {
            r.of_process(|p| &p.executable)
        })
        .wide(),
        Column::<Self>::free("COMMAND", "command_line", 12, |r, _| {
            r.of_process(|p| &p.command_line)
        })
        .wide(),
    ];
}
