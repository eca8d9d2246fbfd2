//! Flows: rows of `portolan flows`.

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::socket::{state_paint, state_text};
use portolan_core::Process;

use super::{address_text, enum_name, host_name, process_label, process_row};
use crate::output::{Column, Paint, Record};

/// A current flow of a host: connections folded by endpoint (JSON: an element of the
/// array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    /// The host's id.
    pub host_id: String,
    /// The host's hostname.
    pub hostname: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `inbound` (the host accepted the connections) or `outbound` (it opened them).
    pub direction: String,
    /// The host's address.
    pub local_address: String,
    /// The other end's address.
    pub remote_address: String,
    /// The server's port: local for inbound flows, remote for outbound.
    pub service_port: u32,
    /// Kernel state of the folded connections (`established`, `time_wait`, …).
    pub state: String,
    /// How many connections are folded into the flow.
    pub connections: u32,
    /// The owning process id; 0 when the kernel holds the sockets.
    pub pid: u32,
    /// The owning process; `null` when unknown or held by the kernel.
    pub process: Option<Process>,
    /// Where the other end is: `inside` the fleet or `outside`.
    pub peer: String,
    /// The fleet host at the other end; empty when outside.
    pub peer_host_id: String,
    /// Its hostname.
    pub peer_hostname: String,
    /// This end's network namespace (inode); 0: the host's own.
    pub netns: u64,
    /// The network namespace holding the peer address on the peer host; 0: the host's
    /// own, or outside the fleet.
    pub peer_netns: u64,
    /// The Kubernetes pod of the peer's namespace; empty when not in a known pod.
    pub peer_pod_uid: String,
    /// Its Kubernetes namespace; empty when unknown.
    pub peer_pod_namespace: String,
    /// Its name; empty when unknown.
    pub peer_pod_name: String,
    /// Unix seconds of the change that last touched it.
    pub updated_unix: i64,
}

impl From<&pb::HostFlow> for FlowRow {
    fn from(f: &pb::HostFlow) -> Self {
        let flow = f.flow.clone().unwrap_or_default();
        FlowRow {
            host_id: f.host_id.clone(),
            hostname: f.hostname.clone(),
            protocol: enum_name::<pb::Protocol>(flow.protocol),
            direction: enum_name::<pb::FlowDirection>(flow.direction),
            local_address: address_text(&flow.local_address),
            remote_address: address_text(&flow.remote_address),
            service_port: flow.service_port,
            state: enum_name::<pb::SocketState>(flow.state),
            connections: flow.connections,
            pid: flow.pid,
            process: f.process.as_ref().map(process_row),
            peer: enum_name::<pb::Peer>(f.peer),
            peer_host_id: f.peer_host_id.clone(),
            peer_hostname: f.peer_hostname.clone(),
            netns: flow.netns_inode,
            peer_netns: f.peer_netns_inode,
            peer_pod_uid: f.peer_pod_uid.clone(),
            peer_pod_namespace: f.peer_pod_namespace.clone(),
            peer_pod_name: f.peer_pod_name.clone(),
            updated_unix: f.updated_unix,
        }
    }
}

impl FlowRow {
    fn owner(&self) -> String {
        match (&self.process, self.pid) {
            (Some(p), _) => process_label(p),
            (None, 0) => "(kernel)".into(),
            (None, pid) => pid.to_string(),
        }
    }

    /// The peer host for people, with the peer's pod when known: `node-1 pod shop/web-1`.
    fn peer_host(&self) -> String {
        if self.peer_host_id.is_empty() {
            return format!("({})", self.peer);
        }
        let host = host_name(&self.peer_hostname, &self.peer_host_id);
        match self.peer_pod() {
            pod if pod.is_empty() => host.to_string(),
            pod => format!("{host} pod {pod}"),
        }
    }

    /// `namespace/name` of the peer's pod, its UID when the name is unknown, or empty.
    fn peer_pod(&self) -> String {
        pod_text(
            &self.peer_pod_uid,
            &self.peer_pod_namespace,
            &self.peer_pod_name,
        )
    }

    /// `namespace/name` of this end's pod (its process's), as [`FlowRow::peer_pod`].
    fn pod(&self) -> String {
        self.process
            .as_ref()
            .map(|p| pod_text(&p.pod_uid, &p.pod_namespace, &p.pod_name))
            .unwrap_or_default()
    }

    fn of_process(&self, field: fn(&Process) -> &str) -> String {
        self.process
            .as_ref()
            .map(field)
            .unwrap_or_default()
            .to_string()
    }
}

fn pod_text(uid: &str, namespace: &str, name: &str) -> String {
    if name.is_empty() {
        uid.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

impl Record for FlowRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("HOST", "host", |r, _| {
            host_name(&r.hostname, &r.host_id).to_string()
        }),
        Column::<Self>::key("DIR", "direction", |r, ctx| {
            match (ctx.machine(), r.direction.as_str()) {
                (false, "inbound") => "in".into(),
                (false, "outbound") => "out".into(),
                (_, other) => other.to_string(),
            }
        }),
        Column::<Self>::key("PROTO", "protocol", |r, _| r.protocol.clone()),
        Column::<Self>::key("LOCAL", "local_address", |r, _| r.local_address.clone()),
        Column::<Self>::key("PEER", "remote_address", |r, _| r.remote_address.clone()),
        Column::<Self>::key("PORT", "service_port", |r, _| r.service_port.to_string()),
        Column::<Self>::key("STATE", "state", |r, ctx| state_text(&r.state, ctx))
            .paint(|r| state_paint(&r.state)),
        Column::<Self>::key("CONNS", "connections", |r, _| r.connections.to_string()),
        Column::<Self>::free("PROCESS", "process", 12, |r, _| r.owner()),
        Column::<Self>::free("PEER HOST", "peer_host", 12, |r, ctx| {
            if ctx.machine() {
                host_name(&r.peer_hostname, &r.peer_host_id).to_string()
            } else {
                r.peer_host()
            }
        })
        .paint(|r| (r.peer == "outside").then_some(Paint::Yellow)),
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.host_id.clone()).wide(),
        Column::<Self>::key("PEER SIDE", "peer", |r, _| r.peer.clone()).wide(),
        Column::<Self>::key("PEER HOST ID", "peer_host_id", |r, _| {
            r.peer_host_id.clone()
        })
        .wide(),
        Column::<Self>::key("PID", "pid", |r, _| r.pid.to_string()).wide(),
        Column::<Self>::free("USER", "user", 8, |r, _| r.of_process(|p| &p.user)).wide(),
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
        Column::<Self>::key("PEER POD", "peer_pod", |r, _| r.peer_pod()).wide(),
        Column::<Self>::key("PEER NETNS", "peer_netns", |r, _| r.peer_netns.to_string()).wide(),
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
