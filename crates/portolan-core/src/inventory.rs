//! A host's full socket inventory at one instant.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::flow::{Flow, FlowKey, fold_connections};
use crate::host::HostState;
use crate::process::Process;
use crate::socket::{Attribution, Socket, SocketKey, SocketState};

/// A socket as a scan lists it, before scopes are resolved and connections folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedSocket {
    /// Identity.
    pub key: SocketKey,
    /// State.
    pub state: SocketState,
    /// Owner uid.
    pub uid: u32,
    /// Owning processes.
    pub pids: Vec<u32>,
    /// Why the owners are what they are.
    pub attribution: Attribution,
    /// A Unix socket's path (see [`Socket::path`]); empty otherwise.
    pub path: String,
}

/// The inventory: listeners and other unconnected sockets individually, connected
/// sockets folded into flows, and the processes that own them.
///
/// Invariant (kept by every constructor and by [`crate::apply`]): `processes` holds
/// exactly the processes referenced by a socket or a flow.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Inventory {
    /// Host facts.
    pub host: HostState,
    /// Unconnected sockets (listeners among them) by identity.
    pub sockets: BTreeMap<SocketKey, Socket>,
    /// Connection counts by flow.
    pub flows: BTreeMap<FlowKey, u32>,
    /// Owning processes by pid.
    pub processes: BTreeMap<u32, Process>,
}

impl Inventory {
    /// Builds an inventory from a scan: resolves every socket's scope and exposure against
    /// the interfaces of the socket's own network namespace and folds connected sockets into flows. `processes` may hold
    /// more than the sockets reference; the rest is dropped.
    pub fn from_scan(
        host: HostState,
        scanned: impl IntoIterator<Item = ScannedSocket>,
        processes: impl IntoIterator<Item = Process>,
    ) -> Inventory {
        let mut unconnected = BTreeMap::new();
        let mut connected = Vec::new();
        for s in scanned {
            let mut pids = s.pids;
            pids.sort_unstable();
            pids.dedup();
            let (scope, exposure) = s.key.scopes(&host.interfaces);
            let socket = Socket {
                key: s.key,
                state: s.state,
                uid: s.uid,
                pids,
                attribution: s.attribution,
                scope,
                exposure,
                path: s.path,
            };
            if socket.key.remote_port == 0 {
                unconnected.insert(socket.key, socket);
            } else {
                connected.push(socket);
            }
        }
        let listeners = unconnected.values().filter(|s| s.is_listener());
        let flows = fold_connections(&connected, listeners);
        let mut inventory = Inventory {
            host,
            sockets: unconnected,
            flows,
            processes: BTreeMap::new(),
        };
        let referenced = inventory.referenced_pids();
        inventory.processes = processes
            .into_iter()
            .filter(|p| referenced.contains(&p.pid))
            .map(|p| (p.pid, p))
            .collect();
        inventory
    }

    /// Pids referenced by a socket or a flow.
    pub fn referenced_pids(&self) -> BTreeSet<u32> {
        self.sockets
            .values()
            .flat_map(|s| s.pids.iter().copied())
            .chain(self.flows.keys().map(|k| k.pid))
            .filter(|pid| *pid != 0)
            .collect()
    }

    /// Drops processes no socket or flow references.
    pub fn retain_referenced_processes(&mut self) {
        let referenced = self.referenced_pids();
        self.processes.retain(|pid, _| referenced.contains(pid));
    }

    /// Flows as a list.
    pub fn flow_list(&self) -> Vec<Flow> {
        self.flows
            .iter()
            .map(|(key, n)| Flow {
                key: *key,
                connections: *n,
            })
            .collect()
    }

    /// Listeners (see [`Socket::is_listener`]).
    pub fn listeners(&self) -> impl Iterator<Item = &Socket> {
        self.sockets.values().filter(|s| s.is_listener())
    }
}
