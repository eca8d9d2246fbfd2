//! The other end of a flow: which fleet host, network namespace and pod owns an address.

use std::collections::HashMap;
use std::net::IpAddr;

use portolan_core::Scope;
use portolan_proto::v1 as pb;
use portolan_store::StoredHost;
use portolan_store::fleet::{FleetFlow, NamespacePod};

use super::fields::unix;

/// Which fleet host, network namespace and pod owns an address: every interface
/// address of every host (pod IPs are addresses of a pod's namespace on its node) except
/// loopback and link-local ones (those are the same on many hosts and mean "this host",
/// "this namespace").
#[derive(Debug, Default)]
pub(super) struct AddressBook {
    owners: HashMap<IpAddr, Owner>,
    hostnames: HashMap<String, String>,
    pods: HashMap<(String, u64), NamespacePod>,
}

/// Where an address is: a host and one of its network namespaces (0: its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    host_id: String,
    hostname: String,
    netns: u64,
}

/// The other end of a flow, as [`AddressBook::peer`] resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PeerEnd {
    side: pb::Peer,
    owner: Option<Owner>,
    pod: Option<NamespacePod>,
}

pub(super) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl AddressBook {
    pub(super) fn new(hosts: &[StoredHost], pods: Vec<NamespacePod>) -> AddressBook {
        let mut book = AddressBook::default();
        for h in hosts {
            book.hostnames.insert(h.host_id.clone(), h.hostname.clone());
            for i in &h.state.interfaces {
                let scope = portolan_core::classify(i.address);
                if scope == Scope::Loopback || scope == Scope::LinkLocal {
                    continue;
                }
                let owner = Owner {
                    host_id: h.host_id.clone(),
                    hostname: h.hostname.clone(),
                    netns: i.netns,
                };
                // An address on a host's own interfaces is the host's, even when a
                // namespace of another host holds it too (a node's address seen in a
                // host-network pod's namespace of the same node is its own).
                match book.owners.entry(canonical(i.address)) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        if e.get().netns != 0 && owner.netns == 0 {
                            e.insert(owner);
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(owner);
                    }
                }
            }
        }
        book.pods = pods
            .into_iter()
            .map(|p| ((p.host_id.clone(), p.netns), p))
            .collect();
        book
    }

    /// The peer of a flow of `host_id` held in its network namespace `netns`: inside
    /// (with the owning host, namespace and pod) or outside. A loopback peer is the
    /// flow's own namespace.
    pub(super) fn peer(&self, host_id: &str, netns: u64, remote: IpAddr) -> PeerEnd {
        let remote = canonical(remote);
        let owner = if matches!(portolan_core::classify(remote), Scope::Loopback) {
            Some(Owner {
                host_id: host_id.to_string(),
                hostname: self.hostnames.get(host_id).cloned().unwrap_or_default(),
                netns,
            })
        } else {
            self.owners.get(&remote).cloned()
        };
        match owner {
            Some(owner) => PeerEnd {
                side: pb::Peer::Inside,
                pod: self
                    .pods
                    .get(&(owner.host_id.clone(), owner.netns))
                    .cloned(),
                owner: Some(owner),
            },
            None => PeerEnd {
                side: pb::Peer::Outside,
                owner: None,
                pod: None,
            },
        }
    }
}

pub(super) fn host_flow(f: FleetFlow, book: &AddressBook) -> pb::HostFlow {
    let key = &f.flow.flow.key;
    let peer = book.peer(&f.host_id, key.netns, key.remote_address);
    let owner = peer.owner.unwrap_or(Owner {
        host_id: String::new(),
        hostname: String::new(),
        netns: 0,
    });
    let pod = peer.pod.unwrap_or(NamespacePod {
        host_id: String::new(),
        netns: 0,
        pod_uid: String::new(),
        pod_namespace: String::new(),
        pod_name: String::new(),
    });
    pb::HostFlow {
        hostname: book.hostnames.get(&f.host_id).cloned().unwrap_or_default(),
        flow: Some(pb::Flow::from(&f.flow.flow)),
        process: f.flow.process.as_ref().map(pb::Process::from),
        peer: peer.side as i32,
        peer_host_id: owner.host_id,
        peer_hostname: owner.hostname,
        peer_netns_inode: owner.netns,
        peer_pod_uid: pod.pod_uid,
        peer_pod_namespace: pod.pod_namespace,
        peer_pod_name: pod.pod_name,
        updated_unix: unix(f.flow.updated_at),
        host_id: f.host_id,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    use super::*;

    fn node(id: &str, interfaces: &[(&str, u64)]) -> StoredHost {
        StoredHost {
            host_id: id.into(),
            hostname: format!("{id}.example"),
            labels: BTreeMap::new(),
            agent_version: String::new(),
            kernel: String::new(),
            os: String::new(),
            scan_interval_ms: 0,
            collector: String::new(),
            connected_at: UNIX_EPOCH,
            state: portolan_core::HostState {
                interfaces: interfaces
                    .iter()
                    .map(|(a, netns)| portolan_core::InterfaceAddress {
                        interface: "eth0".into(),
                        address: a.parse().expect("test address"),
                        prefix_len: 24,
                        netns: *netns,
                    })
                    .collect(),
                ephemeral_ports: None,
            },
            seq: 1,
        }
    }

    fn pod(host_id: &str, netns: u64, namespace: &str, name: &str) -> NamespacePod {
        NamespacePod {
            host_id: host_id.into(),
            netns,
            pod_uid: format!("uid-{name}"),
            pod_namespace: namespace.into(),
            pod_name: name.into(),
        }
    }

    #[test]
    fn pod_ips_resolve_to_their_pod_and_node() {
        let hosts = [
            node(
                "n1",
                &[
                    ("10.0.0.1", 0),
                    ("127.0.0.1", 0),
                    ("10.244.1.5", 11),
                    ("127.0.0.1", 11),
                ],
            ),
            node(
                "n2",
                &[("10.0.0.2", 0), ("10.244.2.9", 22), ("10.244.2.10", 23)],
            ),
            // A host-network namespace of n3 also shows n1's address: n1 keeps it.
            node("n3", &[("10.0.0.3", 0), ("10.0.0.1", 33)]),
        ];
        let book = AddressBook::new(
            &hosts,
            vec![
                pod("n1", 11, "shop", "web-1"),
                pod("n2", 22, "shop", "db-0"),
            ],
        );
        let at = |host: &str, netns: u64, remote: &str| {
            let p = book.peer(host, netns, remote.parse().expect("test address"));
            (
                p.side,
                p.owner.map(|o| (o.host_id, o.netns)),
                p.pod.map(|p| format!("{}/{}", p.pod_namespace, p.pod_name)),
            )
        };
        let inside = pb::Peer::Inside;
        // Another node's pod, by its pod IP (also IPv4-mapped).
        assert_eq!(
            at("n1", 11, "10.244.2.9"),
            (inside, Some(("n2".into(), 22)), Some("shop/db-0".into()))
        );
        assert_eq!(
            at("n1", 11, "::ffff:10.244.2.9"),
            (inside, Some(("n2".into(), 22)), Some("shop/db-0".into()))
        );
        // The same node's pod.
        assert_eq!(
            at("n1", 0, "10.244.1.5"),
            (inside, Some(("n1".into(), 11)), Some("shop/web-1".into()))
        );
        // A namespace without a known pod: the node and the namespace.
        assert_eq!(
            at("n1", 0, "10.244.2.10"),
            (inside, Some(("n2".into(), 23)), None)
        );
        // A node's own address: the node, no pod.
        assert_eq!(
            at("n2", 22, "10.0.0.1"),
            (inside, Some(("n1".into(), 0)), None)
        );
        // Loopback: the flow's own namespace, and its pod.
        assert_eq!(
            at("n1", 11, "127.0.0.1"),
            (inside, Some(("n1".into(), 11)), Some("shop/web-1".into()))
        );
        assert_eq!(
            at("n1", 0, "127.0.0.1"),
            (inside, Some(("n1".into(), 0)), None)
        );
        assert_eq!(at("n1", 0, "203.0.113.9"), (pb::Peer::Outside, None, None));
    }
}
