//! The query service: operators' questions, answered from ClickHouse.
//!
//! Only operator certificates (reader or admin) may ask; agent certificates are refused,
//! so a compromised host cannot read the fleet's inventory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::net::IpAddr;

use portolan_core::wire::{protocol_from_wire, scope_from_wire};
use portolan_core::{Direction, Protocol, Scope};
use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_server::QueryService;
use portolan_tls::{Identity, peer_info};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::store::fleet::{
    FleetFlow, FleetSocket, FlowFilter, HostFilter, HostSummary, SocketFilter,
};
use crate::store::{Store, StoreError, StoredHost};

/// Rows returned when a request sets no limit.
pub const DEFAULT_LIMIT: u32 = 10_000;
/// The most rows one answer may hold.
pub const MAX_LIMIT: u32 = 100_000;
/// A host is stale when it has not reported for this many scan intervals.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// The `QueryService` implementation.
#[derive(Debug, Clone)]
pub struct Query {
    store: Arc<Store>,
}

impl Query {
    /// A service answering from `store`.
    pub fn new(store: Arc<Store>) -> Query {
        Query { store }
    }
}

/// Refuses anyone but operators.
fn authorize<T>(request: &Request<T>) -> Result<(), Status> {
    let peer = peer_info(request)
        .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
    match &peer.identity {
        Ok(Identity::Operator { .. }) => Ok(()),
        Ok(other) => {
            warn!(remote = %peer.remote_addr, identity = %other, "refused query: not an operator certificate");
            Err(Status::permission_denied(format!(
                "`{}` is not an operator certificate; queries need one (spiffe://portolan/operator/<reader|admin>/<name>, `portolan pki issue-operator`)",
                other.uri()
            )))
        }
        Err(e) => Err(Status::unauthenticated(format!(
            "client certificate has no valid portolan identity: {e}"
        ))),
    }
}

fn store_error(e: StoreError) -> Status {
    Status::unavailable(format!("cannot read ClickHouse: {e}"))
}

fn host_filter(selector: Option<pb::HostSelector>) -> HostFilter {
    let selector = selector.unwrap_or_default();
    HostFilter {
        host_ids: selector.host_ids,
        labels: selector.labels.into_iter().collect(),
    }
}

/// A protocol filter: unspecified means both.
fn protocol(value: i32) -> Result<Option<Protocol>, Status> {
    if value == pb::Protocol::Unspecified as i32 {
        return Ok(None);
    }
    protocol_from_wire(value)
        .map(Some)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn scope(value: i32) -> Result<Scope, Status> {
    scope_from_wire("exposures", value).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn port(field: &str, value: u32) -> Result<u16, Status> {
    u16::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("`{field}` is {value}, over 65535")))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn summary(h: &HostSummary, now: SystemTime) -> pb::HostSummary {
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
    }
}

fn host_socket(s: FleetSocket, hostnames: &HashMap<String, String>) -> pb::HostSocket {
    pb::HostSocket {
        hostname: hostnames.get(&s.host_id).cloned().unwrap_or_default(),
        host_id: s.host_id,
        socket: Some(pb::Socket::from(&s.socket.socket)),
        processes: s.socket.processes.iter().map(pb::Process::from).collect(),
        updated_unix: unix(s.socket.updated_at),
    }
}

/// Which fleet host owns an address: every interface address of every host except
/// loopback and link-local ones (those are the same on many hosts and mean "this host").
#[derive(Debug, Default)]
struct AddressBook {
    owners: HashMap<IpAddr, (String, String)>,
    hostnames: HashMap<String, String>,
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl AddressBook {
    fn new(hosts: &[StoredHost]) -> AddressBook {
        let mut book = AddressBook::default();
        for h in hosts {
            book.hostnames.insert(h.host_id.clone(), h.hostname.clone());
            for i in &h.state.interfaces {
                let scope = portolan_core::classify(i.address);
                if scope != Scope::Loopback && scope != Scope::LinkLocal {
                    book.owners.insert(
                        canonical(i.address),
                        (h.host_id.clone(), h.hostname.clone()),
                    );
                }
            }
        }
        book
    }

    /// The peer of a flow of `host_id`: inside (with the owning host) or outside.
    fn peer(&self, host_id: &str, remote: IpAddr) -> (pb::Peer, String, String) {
        let remote = canonical(remote);
        if matches!(portolan_core::classify(remote), Scope::Loopback) {
            let hostname = self.hostnames.get(host_id).cloned().unwrap_or_default();
            return (pb::Peer::Inside, host_id.to_string(), hostname);
        }
        match self.owners.get(&remote) {
            Some((id, name)) => (pb::Peer::Inside, id.clone(), name.clone()),
            None => (pb::Peer::Outside, String::new(), String::new()),
        }
    }
}

fn host_flow(f: FleetFlow, book: &AddressBook) -> pb::HostFlow {
    let (peer, peer_host_id, peer_hostname) = book.peer(&f.host_id, f.flow.flow.key.remote_address);
    pb::HostFlow {
        hostname: book.hostnames.get(&f.host_id).cloned().unwrap_or_default(),
        flow: Some(pb::Flow::from(&f.flow.flow)),
        process: f.flow.process.as_ref().map(pb::Process::from),
        peer: peer as i32,
        peer_host_id,
        peer_hostname,
        updated_unix: unix(f.flow.updated_at),
        host_id: f.host_id,
    }
}

fn severity_rank(s: &str) -> Option<usize> {
    portolan_rules::Severity::ALL
        .iter()
        .position(|v| v.as_str() == s)
}

impl Query {
    async fn hostnames(&self) -> Result<HashMap<String, String>, Status> {
        let hosts = self
            .store
            .hosts(&HostFilter::default())
            .await
            .map_err(store_error)?;
        Ok(hosts.into_iter().map(|h| (h.host_id, h.hostname)).collect())
    }

    async fn sockets(&self, filter: SocketFilter) -> Result<(Vec<pb::HostSocket>, bool), Status> {
        let (sockets, truncated) = self
            .store
            .list_sockets(&filter)
            .await
            .map_err(store_error)?;
        let hostnames = self.hostnames().await?;
        Ok((
            sockets
                .into_iter()
                .map(|s| host_socket(s, &hostnames))
                .collect(),
            truncated,
        ))
    }
}

#[tonic::async_trait]
impl QueryService for Query {
    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        authorize(&request)?;
        let filter = host_filter(request.into_inner().hosts);
        let hosts = self.store.list_hosts(&filter).await.map_err(store_error)?;
        let now = SystemTime::now();
        Ok(Response::new(pb::ListHostsResponse {
            hosts: hosts.iter().map(|h| summary(h, now)).collect(),
        }))
    }

    async fn get_host(
        &self,
        request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::GetHostResponse>, Status> {
        authorize(&request)?;
        let host_id = request.into_inner().host_id;
        let filter = HostFilter {
            host_ids: vec![host_id.clone()],
            labels: BTreeMap::new(),
        };
        let hosts = self.store.list_hosts(&filter).await.map_err(store_error)?;
        let Some(host) = hosts.first() else {
            return Err(Status::not_found(format!(
                "no host `{host_id}` (`portolan hosts` lists the known ones)"
            )));
        };
        Ok(Response::new(pb::GetHostResponse {
            host: Some(summary(host, SystemTime::now())),
            state: Some(pb::HostState::from(&host.host.state)),
        }))
    }

    async fn list_sockets(
        &self,
        request: Request<pb::ListSocketsRequest>,
    ) -> Result<Response<pb::ListSocketsResponse>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        let ports = match (r.port_min, r.port_max) {
            (0, 0) => None,
            (lo, 0) => Some((port("port_min", lo)?, port("port_min", lo)?)),
            (lo, hi) if lo <= hi => Some((port("port_min", lo)?, port("port_max", hi)?)),
            (lo, hi) => {
                return Err(Status::invalid_argument(format!(
                    "`port_min` {lo} is over `port_max` {hi}"
                )));
            }
        };
        let filter = SocketFilter {
            hosts: host_filter(r.hosts),
            protocol: protocol(r.protocol)?,
            ports,
            listening: r.listening,
            exposures: r
                .exposures
                .into_iter()
                .map(scope)
                .collect::<Result<_, _>>()?,
            process: r.process,
            limit: if r.limit == 0 {
                DEFAULT_LIMIT
            } else {
                r.limit.min(MAX_LIMIT)
            },
        };
        let (sockets, truncated) = self.sockets(filter).await?;
        Ok(Response::new(pb::ListSocketsResponse {
            sockets,
            truncated,
        }))
    }

    async fn who_listens(
        &self,
        request: Request<pb::WhoListensRequest>,
    ) -> Result<Response<pb::WhoListensResponse>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        if r.port == 0 {
            return Err(Status::invalid_argument("`port` is required (1-65535)"));
        }
        let p = port("port", r.port)?;
        let filter = SocketFilter {
            hosts: host_filter(r.hosts),
            protocol: protocol(r.protocol)?,
            ports: Some((p, p)),
            listening: true,
            exposures: Vec::new(),
            process: String::new(),
            limit: MAX_LIMIT,
        };
        let (listeners, _) = self.sockets(filter).await?;
        Ok(Response::new(pb::WhoListensResponse { listeners }))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        let status = match pb::FindingStatus::try_from(r.status) {
            Ok(pb::FindingStatus::Unspecified) => None,
            Ok(pb::FindingStatus::Open) => Some(portolan_rules::lifecycle::Status::Open),
            Ok(pb::FindingStatus::Resolved) => Some(portolan_rules::lifecycle::Status::Resolved),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "`status` {} is not a finding status",
                    r.status
                )));
            }
        };
        let min_rank = if r.min_severity.is_empty() {
            0
        } else {
            severity_rank(&r.min_severity).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "`min_severity` is `{}`; use info, low, medium, high or critical",
                    r.min_severity
                ))
            })?
        };
        let limit = if r.limit == 0 {
            DEFAULT_LIMIT
        } else {
            r.limit.min(MAX_LIMIT)
        } as usize;
        let hosts = self
            .store
            .hosts(&HostFilter::default())
            .await
            .map_err(store_error)?;
        let selector = host_filter(r.hosts);
        let selected: Option<std::collections::HashSet<String>> =
            (!selector.host_ids.is_empty() || !selector.labels.is_empty()).then(|| {
                hosts
                    .iter()
                    .filter(|h| selector.matches(&h.host_id, &h.labels))
                    .map(|h| h.host_id.clone())
                    .collect()
            });
        let hostnames: HashMap<&str, &str> = hosts
            .iter()
            .map(|h| (h.host_id.as_str(), h.hostname.as_str()))
            .collect();
        let mut findings: Vec<pb::Finding> = self
            .store
            .findings()
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|f| status.is_none_or(|s| f.status == s))
            .filter(|f| r.rule_id.is_empty() || f.latest.rule_id == r.rule_id)
            .filter(|f| severity_rank(&f.latest.severity).unwrap_or(0) >= min_rank)
            .filter(|f| {
                selected
                    .as_ref()
                    .is_none_or(|s| s.contains(&f.latest.host_id))
            })
            .map(|f| pb::Finding {
                hostname: hostnames
                    .get(f.latest.host_id.as_str())
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
                fingerprint: f.latest.fingerprint,
                rule_id: f.latest.rule_id,
                host_id: f.latest.host_id,
                severity: f.latest.severity,
                subject: f.latest.subject,
                evidence: f.latest.evidence,
                status: match f.status {
                    portolan_rules::lifecycle::Status::Open => pb::FindingStatus::Open,
                    portolan_rules::lifecycle::Status::Resolved => pb::FindingStatus::Resolved,
                } as i32,
                first_seen_unix: i64::try_from(f.first_seen).unwrap_or(i64::MAX),
                last_seen_unix: i64::try_from(f.last_seen).unwrap_or(i64::MAX),
                resolved_at_unix: i64::try_from(f.resolved_at).unwrap_or(i64::MAX),
                reopened: f.reopened,
            })
            .collect();
        // Most severe first, then by host and subject.
        findings.sort_by(|a, b| {
            severity_rank(&b.severity)
                .cmp(&severity_rank(&a.severity))
                .then_with(|| a.host_id.cmp(&b.host_id))
                .then_with(|| a.subject.cmp(&b.subject))
        });
        let truncated = findings.len() > limit;
        findings.truncate(limit);
        Ok(Response::new(pb::ListFindingsResponse {
            findings,
            truncated,
        }))
    }

    async fn list_flows(
        &self,
        request: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        let direction = match pb::FlowDirection::try_from(r.direction) {
            Ok(pb::FlowDirection::Unspecified) => None,
            Ok(pb::FlowDirection::Inbound) => Some(Direction::Inbound),
            Ok(pb::FlowDirection::Outbound) => Some(Direction::Outbound),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "`direction` {} is not a direction",
                    r.direction
                )));
            }
        };
        let wanted_peer = pb::Peer::try_from(r.peer)
            .map_err(|_| Status::invalid_argument(format!("`peer` {} is not a peer", r.peer)))?;
        let limit = if r.limit == 0 {
            DEFAULT_LIMIT
        } else {
            r.limit.min(MAX_LIMIT)
        };
        let filter = FlowFilter {
            hosts: host_filter(r.hosts),
            port: if r.port == 0 {
                None
            } else {
                Some(port("port", r.port)?)
            },
            direction,
            // Filtering by peer happens after the join: ask for the most rows allowed.
            limit: if wanted_peer == pb::Peer::Unspecified {
                limit
            } else {
                MAX_LIMIT
            },
        };
        let (flows, truncated) = self.store.list_flows(&filter).await.map_err(store_error)?;
        let hosts = self
            .store
            .hosts(&HostFilter::default())
            .await
            .map_err(store_error)?;
        let book = AddressBook::new(&hosts);
        let mut flows: Vec<pb::HostFlow> = flows
            .into_iter()
            .map(|f| host_flow(f, &book))
            .filter(|f| wanted_peer == pb::Peer::Unspecified || f.peer == wanted_peer as i32)
            .collect();
        let truncated = truncated || flows.len() > limit as usize;
        flows.truncate(limit as usize);
        Ok(Response::new(pb::ListFlowsResponse { flows, truncated }))
    }
}
