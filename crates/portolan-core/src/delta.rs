//! Deltas between two inventories of one host.
//!
//! The law: for any inventories `a` and `b`, `apply(&a, &diff(&a, &b)) == Ok(b)`.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::flow::Flow;
use crate::host::HostState;
use crate::inventory::Inventory;
use crate::process::Process;
use crate::socket::{Socket, SocketKey};

/// What changed from one inventory to the next.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Delta {
    /// New host facts; `None` when unchanged.
    pub host: Option<HostState>,
    /// Sockets that appeared.
    pub added: Vec<Socket>,
    /// Sockets that disappeared, with their last content.
    pub removed: Vec<Socket>,
    /// Sockets whose content changed, or whose owning process changed; new content.
    pub changed: Vec<Socket>,
    /// Flows that appeared or whose count or owning process changed; new content.
    pub flows_upserted: Vec<Flow>,
    /// Flows that disappeared, with their last count.
    pub flows_removed: Vec<Flow>,
    /// The new content of every process referenced by `added`, `changed` and
    /// `flows_upserted` (when known).
    pub processes: Vec<Process>,
}

impl Delta {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.host.is_none()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.flows_upserted.is_empty()
            && self.flows_removed.is_empty()
    }
}

/// Why a delta does not apply to an inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// An added socket already exists.
    #[error("socket `{0}` is added but already present (the delta is not based on this inventory)")]
    AlreadyPresent(String),
    /// A removed or changed socket does not exist.
    #[error(
        "socket `{0}` is removed or changed but not present (the delta is not based on this inventory)"
    )]
    NotPresent(String),
    /// A removed flow does not exist.
    #[error("flow `{0}` is removed but not present (the delta is not based on this inventory)")]
    FlowNotPresent(String),
}

/// Computes what changed from `a` to `b`.
pub fn diff(a: &Inventory, b: &Inventory) -> Delta {
    let process_changed = |pid: &u32| a.processes.get(pid) != b.processes.get(pid);
    let mut delta = Delta {
        host: (a.host != b.host).then(|| b.host.clone()),
        ..Delta::default()
    };
    for (key, socket) in &b.sockets {
        match a.sockets.get(key) {
            None => delta.added.push(socket.clone()),
            Some(old) if old != socket || socket.pids.iter().any(process_changed) => {
                delta.changed.push(socket.clone());
            }
            Some(_) => {}
        }
    }
    delta.removed = a
        .sockets
        .iter()
        .filter(|(k, _)| !b.sockets.contains_key(*k))
        .map(|(_, s)| s.clone())
        .collect();
    for (key, count) in &b.flows {
        let changed =
            a.flows.get(key) != Some(count) || (key.pid != 0 && process_changed(&key.pid));
        if changed {
            delta.flows_upserted.push(Flow {
                key: *key,
                connections: *count,
            });
        }
    }
    delta.flows_removed = a
        .flows
        .iter()
        .filter(|(k, _)| !b.flows.contains_key(*k))
        .map(|(key, count)| Flow {
            key: *key,
            connections: *count,
        })
        .collect();
    let referenced: BTreeSet<u32> = delta_pids(&delta).collect();
    delta.processes = referenced
        .iter()
        .filter_map(|pid| b.processes.get(pid).cloned())
        .collect();
    delta
}

fn delta_pids(delta: &Delta) -> impl Iterator<Item = u32> + '_ {
    delta
        .added
        .iter()
        .chain(&delta.changed)
        .flat_map(|s| s.pids.iter().copied())
        .chain(delta.flows_upserted.iter().map(|f| f.key.pid))
        .filter(|pid| *pid != 0)
}

/// Applies `delta` to `base`, strictly: a delta that does not fit (adds a socket that
/// exists, removes or changes one that does not) is refused rather than half-applied.
pub fn apply(base: &Inventory, delta: &Delta) -> Result<Inventory, ApplyError> {
    let mut next = base.clone();
    apply_in_place(&mut next, delta)?;
    Ok(next)
}

/// [`apply`] without a copy: `base` becomes the inventory after `delta`. When the delta
/// does not apply, `base` is left as it was.
pub fn apply_in_place(base: &mut Inventory, delta: &Delta) -> Result<(), ApplyError> {
    check_applies(base, delta)?;
    apply_after_check(base, delta);
    Ok(())
}

/// [`apply_in_place`] for a `delta` that [`check_applies`] already accepted for `base`
/// (unchanged since): a caller that must look at `base` between the check and the apply
/// (the collector stores the change from the inventory before it) checks once, not twice.
pub fn apply_after_check(base: &mut Inventory, delta: &Delta) {
    if let Some(host) = &delta.host {
        base.host = host.clone();
    }
    for socket in &delta.removed {
        base.sockets.remove(&socket.key);
    }
    for socket in &delta.changed {
        if let Some(slot) = base.sockets.get_mut(&socket.key) {
            *slot = socket.clone();
        }
    }
    for socket in &delta.added {
        base.sockets.insert(socket.key, socket.clone());
    }
    for flow in &delta.flows_removed {
        base.flows.remove(&flow.key);
    }
    for flow in &delta.flows_upserted {
        base.flows.insert(flow.key, flow.connections);
    }
    // Every reference to a process whose content changed is in the delta, so the delta's
    // processes replace whatever the base knew of those pids.
    for pid in delta_pids(delta) {
        base.processes.remove(&pid);
    }
    for process in &delta.processes {
        base.processes.insert(process.pid, process.clone());
    }
    base.retain_referenced_processes();
}

/// Whether `delta` applies to `base`: what it removes or changes is there, what it adds
/// is not (a socket both removed and added is replaced).
pub fn check_applies(base: &Inventory, delta: &Delta) -> Result<(), ApplyError> {
    let mut removed = BTreeSet::new();
    for socket in &delta.removed {
        if !base.sockets.contains_key(&socket.key) || !removed.insert(&socket.key) {
            return Err(ApplyError::NotPresent(socket.key.to_string()));
        }
    }
    for socket in &delta.changed {
        if !base.sockets.contains_key(&socket.key) || removed.contains(&socket.key) {
            return Err(ApplyError::NotPresent(socket.key.to_string()));
        }
    }
    let mut added = BTreeSet::new();
    for socket in &delta.added {
        let present = base.sockets.contains_key(&socket.key) && !removed.contains(&socket.key);
        if present || !added.insert(&socket.key) {
            return Err(ApplyError::AlreadyPresent(socket.key.to_string()));
        }
    }
    let mut flows_removed = BTreeSet::new();
    for flow in &delta.flows_removed {
        if !base.flows.contains_key(&flow.key) || !flows_removed.insert(&flow.key) {
            return Err(ApplyError::FlowNotPresent(flow.key.to_string()));
        }
    }
    Ok(())
}

/// Keys of the sockets a delta touches, for logging and tests.
pub fn touched_keys(delta: &Delta) -> impl Iterator<Item = &SocketKey> {
    delta
        .added
        .iter()
        .chain(&delta.removed)
        .chain(&delta.changed)
        .map(|s| &s.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Direction, FlowKey};
    use crate::host::InterfaceAddress;
    use crate::scope::Scope;
    use crate::socket::{Attribution, Protocol, SocketState};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};

    // Small domains so that generated inventories overlap and every branch is taken.
    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Just(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            Just("::".parse().expect("addr")),
        ]
    }

    fn process(pid: u32) -> impl Strategy<Value = Process> {
        (prop_oneof![Just("nginx"), Just("postgres")], 0u32..2).prop_map(move |(name, uid)| {
            Process {
                pid,
                name: name.into(),
                uid,
                ..Process::default()
            }
        })
    }

    fn socket() -> impl Strategy<Value = Socket> {
        (
            prop_oneof![
                Just(Protocol::Tcp),
                Just(Protocol::Udp),
                Just(Protocol::Raw),
                Just(Protocol::Unix),
                Just(Protocol::Sctp)
            ],
            addr(),
            prop_oneof![Just(22u16), Just(80), Just(5432)],
            0u64..3,
            prop_oneof![Just(SocketState::Listen), Just(SocketState::Close)],
            proptest::collection::vec(1u32..4, 0..3),
            prop_oneof![Just(Attribution::Owned), Just(Attribution::NoPermission)],
            prop_oneof![Just(0u64), Just(4_026_532_001u64)],
            prop_oneof![Just(""), Just("/run/app.sock"), Just("@abstract")],
        )
            .prop_map(
                |(
                    protocol,
                    local_address,
                    local_port,
                    inode,
                    state,
                    mut pids,
                    attribution,
                    netns,
                    path,
                )| {
                    pids.sort_unstable();
                    pids.dedup();
                    Socket {
                        key: SocketKey {
                            protocol,
                            local_address,
                            local_port,
                            remote_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                            remote_port: 0,
                            inode,
                            netns,
                        },
                        state,
                        uid: 0,
                        pids,
                        attribution,
                        scope: Scope::Wildcard,
                        exposure: Scope::Private,
                        path: path.into(),
                    }
                },
            )
    }

    fn flow_key() -> impl Strategy<Value = FlowKey> {
        (
            addr(),
            prop_oneof![Just(Direction::Inbound), Just(Direction::Outbound)],
            0u32..4,
            prop_oneof![Just(80u16), Just(443)],
            prop_oneof![Just(0u64), Just(4_026_532_001u64)],
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Sctp)],
        )
            .prop_map(
                |(remote_address, direction, pid, service_port, netns, protocol)| FlowKey {
                    protocol,
                    direction,
                    local_address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    remote_address,
                    service_port,
                    state: SocketState::Established,
                    pid,
                    netns,
                },
            )
    }

    fn inventory() -> impl Strategy<Value = Inventory> {
        (
            proptest::collection::vec(socket(), 0..8),
            proptest::collection::btree_map(flow_key(), 1u32..4, 0..6),
            (process(1), process(2), process(3)),
            proptest::option::of(proptest::bool::ANY),
            proptest::bool::ANY,
        )
            .prop_map(|(sockets, flows, (p1, p2, p3), ports, with_iface)| {
                let host = HostState {
                    interfaces: if with_iface {
                        vec![InterfaceAddress {
                            interface: "eth0".into(),
                            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                            prefix_len: 24,
                            netns: 0,
                        }]
                    } else {
                        vec![]
                    },
                    ephemeral_ports: ports
                        .map(|wide| if wide { (1024, 65535) } else { (32768, 60999) }),
                };
                let mut inv = Inventory {
                    host,
                    sockets: sockets.into_iter().map(|s| (s.key, s)).collect(),
                    flows,
                    processes: [p1, p2, p3].into_iter().map(|p| (p.pid, p)).collect(),
                };
                inv.retain_referenced_processes();
                inv
            })
    }

    /// The reference semantics of [`apply`]: each removal, change, addition and flow
    /// in turn on a copy, the first that does not fit refusing the delta.
    fn step_by_step(base: &Inventory, delta: &Delta) -> Result<Inventory, ApplyError> {
        let mut next = base.clone();
        if let Some(host) = &delta.host {
            next.host = host.clone();
        }
        for socket in &delta.removed {
            if next.sockets.remove(&socket.key).is_none() {
                return Err(ApplyError::NotPresent(socket.key.to_string()));
            }
        }
        for socket in &delta.changed {
            match next.sockets.get_mut(&socket.key) {
                Some(slot) => *slot = socket.clone(),
                None => return Err(ApplyError::NotPresent(socket.key.to_string())),
            }
        }
        for socket in &delta.added {
            if next.sockets.insert(socket.key, socket.clone()).is_some() {
                return Err(ApplyError::AlreadyPresent(socket.key.to_string()));
            }
        }
        for flow in &delta.flows_removed {
            if next.flows.remove(&flow.key).is_none() {
                return Err(ApplyError::FlowNotPresent(flow.key.to_string()));
            }
        }
        for flow in &delta.flows_upserted {
            next.flows.insert(flow.key, flow.connections);
        }
        for pid in delta_pids(delta) {
            next.processes.remove(&pid);
        }
        for process in &delta.processes {
            next.processes.insert(process.pid, process.clone());
        }
        next.retain_referenced_processes();
        Ok(next)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn apply_diff_yields_target(a in inventory(), b in inventory()) {
            let delta = diff(&a, &b);
            prop_assert_eq!(apply(&a, &delta), Ok(b));
        }

        #[test]
        fn diff_of_equal_inventories_is_empty(a in inventory()) {
            let delta = diff(&a, &a);
            prop_assert!(delta.is_empty());
            prop_assert!(delta.processes.is_empty());
        }

        #[test]
        fn delta_is_minimal(a in inventory(), b in inventory()) {
            let delta = diff(&a, &b);
            for s in &delta.added { prop_assert!(!a.sockets.contains_key(&s.key)); }
            for s in &delta.removed { prop_assert!(!b.sockets.contains_key(&s.key)); }
            for f in &delta.flows_removed { prop_assert!(!b.flows.contains_key(&f.key)); }
        }

        /// Any delta, valid or not, against any base: `apply_in_place` agrees with
        /// applying it step by step, and leaves the base untouched when it refuses.
        #[test]
        fn apply_in_place_agrees_with_step_by_step(a in inventory(), b in inventory(), c in inventory()) {
            // Deltas between unrelated inventories: many do not apply to `a`.
            for delta in [diff(&a, &b), diff(&b, &c), diff(&c, &a)] {
                let mut in_place = a.clone();
                match (apply_in_place(&mut in_place, &delta), step_by_step(&a, &delta)) {
                    (Ok(()), Ok(expected)) => prop_assert_eq!(in_place, expected),
                    (Err(_), Err(_)) => prop_assert_eq!(&in_place, &a),
                    (got, expected) => prop_assert!(false, "in place {:?}, step by step {:?}", got, expected.map(|_| ())),
                }
            }
        }

        #[test]
        fn applying_a_delta_twice_is_refused_when_it_adds_or_removes(a in inventory(), b in inventory()) {
            let delta = diff(&a, &b);
            let once = apply(&a, &delta).expect("applies once");
            if !delta.added.is_empty() || !delta.removed.is_empty() {
                prop_assert!(apply(&once, &delta).is_err());
            }
        }
    }
}
