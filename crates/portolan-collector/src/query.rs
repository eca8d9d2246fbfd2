//! The query service: operators' questions, answered from ClickHouse.
//!
//! Only operator certificates (reader or admin) may ask; agent certificates are refused,
//! so a compromised host cannot read the fleet's inventory. Changes (acknowledging
//! findings) need the admin role, and record who made them from the certificate. Who may
//! call what is declared once, for every RPC, in [`crate::authz`]: no handler checks a
//! role itself.
//!
//! Lists are paged by keyset ([`page`]); the watch streams poll ClickHouse ([`watch`]),
//! so that they see what any replica stored. Every error becomes a gRPC status in one
//! place ([`error`]).

mod error;
mod page;
mod test_rules;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portolan_core::wire::{protocol_from_wire, scope_from_wire};
use portolan_core::{Direction, Protocol, Scope};
use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_server::QueryService;
use portolan_rules::lifecycle::{Finding, Status as FindingState};
use portolan_tls::peer_info;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::info;

pub use self::error::QueryError;
use self::page::{PageToken, Part, TokenError, query_hash};
use crate::revocation::{LiveSession, Revocable, Revocations};
use portolan_store::acks::{AckRecord, StoredAck};
use portolan_store::fleet::{
    FleetFlow, FleetSocket, FlowCursor, FlowFilter, HostFilter, HostSummary, NamespacePod,
    SocketCursor, SocketFilter,
};
use portolan_store::history::{EventCursor, EventQuery, EventSource, HistoryEvent};
use portolan_store::{FlowEventKind, SocketEventKind, Store, StoredHost};

/// Rows per answer when a request sets no page size (nor `limit`).
pub const DEFAULT_LIMIT: u32 = 10_000;
/// The most rows one answer may hold.
pub const MAX_LIMIT: u32 = 100_000;
/// A host is stale when it has not reported for this many scan intervals.
pub const STALE_AFTER_INTERVALS: u32 = 3;
/// Watch streams one collector serves at once, unless configured otherwise
/// ([`Query::with_max_watches`]).
pub const DEFAULT_MAX_WATCHES: usize = 64;
/// The longest acknowledgement reason, in characters.
pub const MAX_REASON_CHARS: usize = 1000;
/// The longest fingerprint, host id or key accepted in a request, in bytes.
const MAX_ID_BYTES: usize = 1024;

/// The `QueryService` implementation.
#[derive(Debug, Clone)]
pub struct Query {
    store: Arc<Store>,
    watches: Arc<Semaphore>,
    max_watches: usize,
    revocations: Revocations,
}

impl Query {
    /// A service answering from `store`, serving at most [`DEFAULT_MAX_WATCHES`] watch
    /// streams at once.
    pub fn new(store: Arc<Store>) -> Query {
        Query {
            store,
            watches: Arc::new(Semaphore::new(DEFAULT_MAX_WATCHES)),
            max_watches: DEFAULT_MAX_WATCHES,
            revocations: Revocations::none(),
        }
    }

    /// The same service, ending the watch streams of certificates `revocations` revokes.
    pub fn with_revocations(self, revocations: Revocations) -> Query {
        Query {
            revocations,
            ..self
        }
    }

    /// Registers a watch stream of the caller, ended when its certificate is revoked.
    fn live<T>(&self, request: &Request<T>) -> Result<LiveSession, Status> {
        let peer = peer_info(request).ok_or(QueryError::NoCertificate)?;
        self.revocations.open(peer, "watch")
    }

    /// The same service serving at most `max` watch streams at once (at least one).
    pub fn with_max_watches(self, max: usize) -> Query {
        let max = max.max(1);
        Query {
            watches: Arc::new(Semaphore::new(max)),
            max_watches: max,
            ..self
        }
    }
}

/// The identity URI of the caller, whom the authorisation layer let through
/// ([`crate::authz`]): recorded with changes, logged with watches.
fn who<T>(request: &Request<T>) -> Result<String, Status> {
    Ok(crate::authz::caller(request)?.identity.uri())
}

fn invalid(message: impl Into<String>) -> QueryError {
    QueryError::Invalid(message.into())
}

fn host_filter(selector: Option<pb::HostSelector>) -> HostFilter {
    let selector = selector.unwrap_or_default();
    HostFilter {
        host_ids: selector.host_ids,
        labels: selector.labels.into_iter().collect(),
    }
}

/// A protocol filter: unspecified means both.
fn protocol(value: i32) -> Result<Option<Protocol>, QueryError> {
    if value == pb::Protocol::Unspecified as i32 {
        return Ok(None);
    }
    protocol_from_wire(value)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

fn scope(value: i32) -> Result<Scope, QueryError> {
    scope_from_wire("exposures", value).map_err(|e| invalid(e.to_string()))
}

/// An optional filter string (pod glob, container id prefix): at most a Kubernetes name's
/// length.
fn bounded(field: &str, value: String) -> Result<String, QueryError> {
    if value.len() > portolan_core::wire::MAX_NAME_BYTES {
        return Err(invalid(format!(
            "`{field}` is {} bytes long, over {}",
            value.len(),
            portolan_core::wire::MAX_NAME_BYTES
        )));
    }
    Ok(value)
}

fn port(field: &str, value: u32) -> Result<u16, QueryError> {
    u16::try_from(value).map_err(|_| invalid(format!("`{field}` is {value}, over 65535")))
}

/// A required identifier field: present and of sane length.
fn required(field: &str, value: &str, hint: &str) -> Result<(), QueryError> {
    if value.is_empty() {
        return Err(invalid(format!("`{field}` is required ({hint})")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(format!(
            "`{field}` is {} bytes long, over {MAX_ID_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// An instant field: `0` is `None`; negative values are refused.
fn instant(field: &str, value: i64) -> Result<Option<u64>, QueryError> {
    match u64::try_from(value) {
        Ok(0) => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(invalid(format!(
            "`{field}` is {value}; give Unix seconds (0: none)"
        ))),
    }
}

/// The page size of a request: `page_size`, else `limit`, else the default; at most
/// [`MAX_LIMIT`].
fn page_size(page_size: u32, limit: u32) -> u32 {
    match (page_size, limit) {
        (0, 0) => DEFAULT_LIMIT,
        (0, l) => l.min(MAX_LIMIT),
        (p, _) => p.min(MAX_LIMIT),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Decodes a request's page token into its keyset.
fn token(text: &str, query: u64) -> Result<Option<Vec<Part>>, QueryError> {
    PageToken::decode(text, query)
        .map(|t| t.map(|t| t.key))
        .map_err(|e| invalid(e.to_string()))
}

fn next_token(query: u64, key: Vec<Part>) -> String {
    PageToken { query, key }.encode()
}

fn malformed() -> QueryError {
    invalid(TokenError::Malformed.to_string())
}

fn text_part(p: Option<&Part>) -> Result<String, QueryError> {
    match p {
        Some(Part::Text(s)) => Ok(s.clone()),
        _ => Err(malformed()),
    }
}

fn num_part(p: Option<&Part>) -> Result<u64, QueryError> {
    match p {
        Some(Part::Num(n)) => Ok(*n),
        _ => Err(malformed()),
    }
}

fn port_part(p: Option<&Part>) -> Result<u16, QueryError> {
    u16::try_from(num_part(p)?).map_err(|_| malformed())
}

fn socket_cursor(key: &[Part]) -> Result<SocketCursor, QueryError> {
    if key.len() != 3 {
        return Err(malformed());
    }
    Ok(SocketCursor {
        host_id: text_part(key.first())?,
        local_port: port_part(key.get(1))?,
        socket_key: text_part(key.get(2))?,
    })
}

fn socket_key_parts(c: SocketCursor) -> Vec<Part> {
    vec![
        Part::Text(c.host_id),
        Part::Num(u64::from(c.local_port)),
        Part::Text(c.socket_key),
    ]
}

fn flow_cursor(key: &[Part]) -> Result<FlowCursor, QueryError> {
    if key.len() != 3 {
        return Err(malformed());
    }
    Ok(FlowCursor {
        host_id: text_part(key.first())?,
        service_port: port_part(key.get(1))?,
        flow_key: text_part(key.get(2))?,
    })
}

fn flow_key_parts(c: FlowCursor) -> Vec<Part> {
    vec![
        Part::Text(c.host_id),
        Part::Num(u64::from(c.service_port)),
        Part::Text(c.flow_key),
    ]
}

fn event_cursor(key: &[Part]) -> Result<EventCursor, QueryError> {
    if key.len() != 4 {
        return Err(malformed());
    }
    Ok(EventCursor {
        seq: num_part(key.first())?,
        source: match num_part(key.get(1))? {
            0 => EventSource::Socket,
            1 => EventSource::Flow,
            _ => return Err(malformed()),
        },
        event: text_part(key.get(2))?,
        key: text_part(key.get(3))?,
    })
}

fn event_key_parts(c: EventCursor) -> Vec<Part> {
    vec![
        Part::Num(c.seq),
        Part::Num(match c.source {
            EventSource::Socket => 0,
            EventSource::Flow => 1,
        }),
        Part::Text(c.event),
        Part::Text(c.key),
    ]
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

/// Which fleet host, network namespace and pod owns an address: every interface
/// address of every host (pod IPs are addresses of a pod's namespace on its node) except
/// loopback and link-local ones (those are the same on many hosts and mean "this host",
/// "this namespace").
#[derive(Debug, Default)]
struct AddressBook {
    owners: HashMap<IpAddr, Owner>,
    hostnames: HashMap<String, String>,
    pods: HashMap<(String, u64), NamespacePod>,
}

/// Where an address is: a host and one of its network namespaces (0: its own).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    host_id: String,
    hostname: String,
    netns: u64,
}

/// The other end of a flow, as [`AddressBook::peer`] resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerEnd {
    side: pb::Peer,
    owner: Option<Owner>,
    pod: Option<NamespacePod>,
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl AddressBook {
    fn new(hosts: &[StoredHost], pods: Vec<NamespacePod>) -> AddressBook {
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
    fn peer(&self, host_id: &str, netns: u64, remote: IpAddr) -> PeerEnd {
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

fn host_flow(f: FleetFlow, book: &AddressBook) -> pb::HostFlow {
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

fn severity_rank(s: &str) -> Option<usize> {
    portolan_rules::Severity::ALL
        .iter()
        .position(|v| v.as_str() == s)
}

fn min_severity(value: &str) -> Result<usize, QueryError> {
    if value.is_empty() {
        return Ok(0);
    }
    severity_rank(value).ok_or_else(|| {
        invalid(format!(
            "`min_severity` is `{value}`; use info, low, medium, high or critical"
        ))
    })
}

/// The acknowledgement of `finding` in force at `now`, as sent.
fn ack_in_force(finding: &Finding, ack: Option<&StoredAck>, now: u64) -> Option<pb::FindingAck> {
    let ack = ack.filter(|a| a.in_force(finding, now))?;
    Some(pb::FindingAck {
        acked_by: ack.acked_by.clone(),
        reason: ack.reason.clone(),
        until_unix: ack.until.map_or(0, signed),
        at_unix: signed(ack.at),
    })
}

fn finding_pb(
    f: &Finding,
    ack: Option<&StoredAck>,
    now: u64,
    hostnames: &HashMap<String, String>,
) -> pb::Finding {
    pb::Finding {
        hostname: hostnames
            .get(f.latest.host_id.as_str())
            .cloned()
            .unwrap_or_default(),
        fingerprint: f.latest.fingerprint.clone(),
        rule_id: f.latest.rule_id.clone(),
        host_id: f.latest.host_id.clone(),
        severity: f.latest.severity.clone(),
        subject: f.latest.subject.clone(),
        evidence: f.latest.evidence.clone(),
        status: match f.status {
            FindingState::Open => pb::FindingStatus::Open,
            FindingState::Resolved => pb::FindingStatus::Resolved,
        } as i32,
        first_seen_unix: signed(f.first_seen),
        last_seen_unix: signed(f.last_seen),
        resolved_at_unix: signed(f.resolved_at),
        reopened: f.reopened,
        ack: ack_in_force(f, ack, now),
    }
}

/// Which findings a list or watch is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FindingFilter {
    hosts: HostFilter,
    status: Option<FindingState>,
    rule_id: String,
    min_rank: usize,
    /// `Some(true)`: only acknowledged; `Some(false)`: only not.
    acked: Option<bool>,
}

/// The findings' world at one instant: findings, acknowledgements, host names and the
/// hosts a selector picks.
struct FindingView {
    findings: Vec<Finding>,
    acks: HashMap<String, StoredAck>,
    hostnames: HashMap<String, String>,
    /// `None`: the selector selects every finding.
    selected: Option<HashSet<String>>,
    now: u64,
}

impl FindingView {
    async fn read(store: &Store, hosts: &HostFilter) -> Result<FindingView, QueryError> {
        let all = store.hosts(&HostFilter::default()).await?;
        let selected = (!hosts.host_ids.is_empty() || !hosts.labels.is_empty()).then(|| {
            all.iter()
                .filter(|h| hosts.matches(&h.host_id, &h.labels))
                .map(|h| h.host_id.clone())
                .collect()
        });
        Ok(FindingView {
            findings: store.findings().await?,
            acks: store.finding_acks().await?,
            hostnames: all.into_iter().map(|h| (h.host_id, h.hostname)).collect(),
            selected,
            now: now_unix(),
        })
    }

    fn ack(&self, f: &Finding) -> Option<&StoredAck> {
        self.acks.get(&f.latest.fingerprint)
    }

    fn matches(&self, f: &Finding, filter: &FindingFilter) -> bool {
        filter.status.is_none_or(|s| f.status == s)
            && (filter.rule_id.is_empty() || f.latest.rule_id == filter.rule_id)
            && severity_rank(&f.latest.severity).unwrap_or(0) >= filter.min_rank
            && self
                .selected
                .as_ref()
                .is_none_or(|s| s.contains(&f.latest.host_id))
            && filter
                .acked
                .is_none_or(|want| self.ack(f).is_some_and(|a| a.in_force(f, self.now)) == want)
    }

    fn to_pb(&self, f: &Finding) -> pb::Finding {
        finding_pb(f, self.ack(f), self.now, &self.hostnames)
    }
}

/// The order of ListFindings: most severe first, then host, subject, fingerprint.
fn finding_order(f: &pb::Finding) -> (std::cmp::Reverse<usize>, String, String, String) {
    (
        std::cmp::Reverse(severity_rank(&f.severity).unwrap_or(0)),
        f.host_id.clone(),
        f.subject.clone(),
        f.fingerprint.clone(),
    )
}

fn history_event(host_id: &str, e: HistoryEvent) -> pb::HostEvent {
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

impl Query {
    async fn hostnames(&self) -> Result<HashMap<String, String>, QueryError> {
        let hosts = self.store.hosts(&HostFilter::default()).await?;
        Ok(hosts.into_iter().map(|h| (h.host_id, h.hostname)).collect())
    }

    /// A known host, or NOT_FOUND.
    async fn known_host(&self, host_id: &str) -> Result<StoredHost, QueryError> {
        self.store.host(host_id).await?.ok_or_else(|| {
            QueryError::NotFound(format!(
                "no host `{host_id}` (`portolan hosts` lists the known ones)"
            ))
        })
    }

    /// A known finding, or NOT_FOUND.
    async fn known_finding(&self, fingerprint: &str) -> Result<Finding, QueryError> {
        self.store.finding(fingerprint).await?.ok_or_else(|| {
            QueryError::NotFound(format!(
                "no finding with fingerprint `{fingerprint}` (`portolan findings` lists them)"
            ))
        })
    }

    async fn list_hosts_inner(
        &self,
        r: pb::ListHostsRequest,
    ) -> Result<pb::ListHostsResponse, QueryError> {
        let filter = host_filter(r.hosts);
        let hash = query_hash(&format!("hosts:{filter:?}"));
        let after = match token(&r.page_token, hash)? {
            Some(key) if key.len() == 1 => Some(text_part(key.first())?),
            Some(_) => return Err(malformed()),
            None => None,
        };
        let size = page_size(r.page_size, 0) as usize;
        let hosts = self.store.list_hosts(&filter).await?;
        let now = SystemTime::now();
        // Ordered by host id.
        let mut page: Vec<pb::HostSummary> = hosts
            .iter()
            .filter(|h| after.as_ref().is_none_or(|a| h.host.host_id > *a))
            .take(size + 1)
            .map(|h| summary(h, now))
            .collect();
        let next_page_token = if page.len() > size {
            page.truncate(size);
            page.last()
                .map(|h| next_token(hash, vec![Part::Text(h.host_id.clone())]))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListHostsResponse {
            hosts: page,
            next_page_token,
        })
    }

    async fn get_host_inner(&self, host_id: String) -> Result<pb::GetHostResponse, QueryError> {
        let filter = HostFilter {
            host_ids: vec![host_id.clone()],
            labels: BTreeMap::new(),
        };
        let hosts = self.store.list_hosts(&filter).await?;
        let Some(host) = hosts.first() else {
            return Err(QueryError::NotFound(format!(
                "no host `{host_id}` (`portolan hosts` lists the known ones)"
            )));
        };
        Ok(pb::GetHostResponse {
            host: Some(summary(host, SystemTime::now())),
            state: Some(pb::HostState::from(&host.host.state)),
        })
    }

    async fn list_sockets_inner(
        &self,
        r: pb::ListSocketsRequest,
    ) -> Result<pb::ListSocketsResponse, QueryError> {
        let ports = match (r.port_min, r.port_max) {
            (0, 0) => None,
            (lo, 0) => Some((port("port_min", lo)?, port("port_min", lo)?)),
            (lo, hi) if lo <= hi => Some((port("port_min", lo)?, port("port_max", hi)?)),
            (lo, hi) => {
                return Err(invalid(format!("`port_min` {lo} is over `port_max` {hi}")));
            }
        };
        let mut filter = SocketFilter {
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
            pod: bounded("pod", r.pod)?,
            container: bounded("container", r.container)?,
            netns: r.netns_inode,
            at: instant("at_unix", r.at_unix)?,
            after: None,
            limit: 0,
        };
        let hash = query_hash(&format!("sockets:{filter:?}"));
        if let Some(key) = token(&r.page_token, hash)? {
            filter.after = Some(socket_cursor(&key)?);
        }
        filter.limit = page_size(r.page_size, r.limit);
        let (sockets, truncated) = self.store.list_sockets(&filter).await?;
        let next_page_token = match sockets.last() {
            Some(last) if truncated => next_token(hash, socket_key_parts(last.cursor())),
            _ => String::new(),
        };
        let hostnames = self.hostnames().await?;
        Ok(pb::ListSocketsResponse {
            sockets: sockets
                .into_iter()
                .map(|s| host_socket(s, &hostnames))
                .collect(),
            truncated,
            next_page_token,
        })
    }

    async fn who_listens_inner(
        &self,
        r: pb::WhoListensRequest,
    ) -> Result<pb::WhoListensResponse, QueryError> {
        if r.port == 0 {
            return Err(invalid("`port` is required (1-65535)"));
        }
        let p = port("port", r.port)?;
        let filter = SocketFilter {
            hosts: host_filter(r.hosts),
            protocol: protocol(r.protocol)?,
            ports: Some((p, p)),
            listening: true,
            pod: bounded("pod", r.pod)?,
            container: bounded("container", r.container)?,
            netns: r.netns_inode,
            limit: MAX_LIMIT,
            ..SocketFilter::default()
        };
        let (sockets, _) = self.store.list_sockets(&filter).await?;
        let hostnames = self.hostnames().await?;
        Ok(pb::WhoListensResponse {
            listeners: sockets
                .into_iter()
                .map(|s| host_socket(s, &hostnames))
                .collect(),
        })
    }

    fn finding_filter(
        hosts: Option<pb::HostSelector>,
        status: i32,
        rule_id: String,
        severity: &str,
        acked: i32,
    ) -> Result<FindingFilter, QueryError> {
        let status = match pb::FindingStatus::try_from(status) {
            Ok(pb::FindingStatus::Unspecified) => None,
            Ok(pb::FindingStatus::Open) => Some(FindingState::Open),
            Ok(pb::FindingStatus::Resolved) => Some(FindingState::Resolved),
            Err(_) => {
                return Err(invalid(format!(
                    "`status` {status} is not a finding status"
                )));
            }
        };
        let acked = match pb::AckFilter::try_from(acked) {
            Ok(pb::AckFilter::Unspecified) => None,
            Ok(pb::AckFilter::Acked) => Some(true),
            Ok(pb::AckFilter::Unacked) => Some(false),
            Err(_) => return Err(invalid(format!("`acked` {acked} is not an ack filter"))),
        };
        Ok(FindingFilter {
            hosts: host_filter(hosts),
            status,
            rule_id,
            min_rank: min_severity(severity)?,
            acked,
        })
    }

    async fn list_findings_inner(
        &self,
        r: pb::ListFindingsRequest,
    ) -> Result<pb::ListFindingsResponse, QueryError> {
        let filter = Self::finding_filter(r.hosts, r.status, r.rule_id, &r.min_severity, r.acked)?;
        let hash = query_hash(&format!("findings:{filter:?}"));
        let after = match token(&r.page_token, hash)? {
            Some(key) if key.len() == 4 => Some((
                std::cmp::Reverse(
                    usize::try_from(num_part(key.first())?).map_err(|_| malformed())?,
                ),
                text_part(key.get(1))?,
                text_part(key.get(2))?,
                text_part(key.get(3))?,
            )),
            Some(_) => return Err(malformed()),
            None => None,
        };
        let size = page_size(r.page_size, r.limit) as usize;
        let view = FindingView::read(&self.store, &filter.hosts).await?;
        let mut findings: Vec<pb::Finding> = view
            .findings
            .iter()
            .filter(|f| view.matches(f, &filter))
            .map(|f| view.to_pb(f))
            .filter(|f| after.as_ref().is_none_or(|a| finding_order(f) > *a))
            .collect();
        findings.sort_by_key(finding_order);
        let (findings, truncated) = portolan_store::fleet::page(findings, size);
        let next_page_token = match findings.last() {
            Some(last) if truncated => {
                let (rank, host, subject, fingerprint) = finding_order(last);
                next_token(
                    hash,
                    vec![
                        Part::Num(rank.0 as u64),
                        Part::Text(host),
                        Part::Text(subject),
                        Part::Text(fingerprint),
                    ],
                )
            }
            _ => String::new(),
        };
        Ok(pb::ListFindingsResponse {
            findings,
            truncated,
            next_page_token,
        })
    }

    async fn list_flows_inner(
        &self,
        r: pb::ListFlowsRequest,
    ) -> Result<pb::ListFlowsResponse, QueryError> {
        let direction = match pb::FlowDirection::try_from(r.direction) {
            Ok(pb::FlowDirection::Unspecified) => None,
            Ok(pb::FlowDirection::Inbound) => Some(Direction::Inbound),
            Ok(pb::FlowDirection::Outbound) => Some(Direction::Outbound),
            Err(_) => {
                return Err(invalid(format!(
                    "`direction` {} is not a direction",
                    r.direction
                )));
            }
        };
        let wanted_peer = pb::Peer::try_from(r.peer)
            .map_err(|_| invalid(format!("`peer` {} is not a peer", r.peer)))?;
        let mut filter = FlowFilter {
            hosts: host_filter(r.hosts),
            port: if r.port == 0 {
                None
            } else {
                Some(port("port", r.port)?)
            },
            direction,
            at: instant("at_unix", r.at_unix)?,
            after: None,
            limit: 0,
        };
        let hash = query_hash(&format!("flows:{filter:?}:{wanted_peer:?}"));
        if let Some(key) = token(&r.page_token, hash)? {
            filter.after = Some(flow_cursor(&key)?);
        }
        let size = page_size(r.page_size, r.limit) as usize;
        let hosts = self.store.hosts(&HostFilter::default()).await?;
        let book = AddressBook::new(&hosts, self.store.namespace_pods().await?);
        // Filtering by peer happens after the join: read in chunks until the page and
        // one more row are found, or the rows run out.
        filter.limit = if wanted_peer == pb::Peer::Unspecified {
            size as u32
        } else {
            (size as u32).saturating_add(1).clamp(1000, MAX_LIMIT)
        };
        let mut page: Vec<(FlowCursor, pb::HostFlow)> = Vec::new();
        let mut more_rows = false;
        loop {
            let (flows, more) = self.store.list_flows(&filter).await?;
            let last = flows.last().map(FleetFlow::cursor);
            for f in flows {
                let cursor = f.cursor();
                let hf = host_flow(f, &book);
                if wanted_peer == pb::Peer::Unspecified || hf.peer == wanted_peer as i32 {
                    page.push((cursor, hf));
                }
            }
            if wanted_peer == pb::Peer::Unspecified {
                more_rows = more;
                break;
            }
            if page.len() > size || !more {
                break;
            }
            filter.after = last;
        }
        let truncated = more_rows || page.len() > size;
        page.truncate(size);
        let next_page_token = match page.last() {
            Some((cursor, _)) if truncated => next_token(hash, flow_key_parts(cursor.clone())),
            _ => String::new(),
        };
        Ok(pb::ListFlowsResponse {
            flows: page.into_iter().map(|(_, f)| f).collect(),
            truncated,
            next_page_token,
        })
    }

    /// The admin acknowledging or clearing, and the finding.
    async fn ack_inner(
        &self,
        acked_by: String,
        fingerprint: String,
        ack: Option<(String, Option<u64>)>,
    ) -> Result<pb::Finding, QueryError> {
        required(
            "fingerprint",
            &fingerprint,
            "`portolan findings` shows the fingerprints",
        )?;
        let finding = self.known_finding(&fingerprint).await?;
        let acked = ack.is_some();
        let (reason, until) = ack.unwrap_or_default();
        let stored = self
            .store
            .write_finding_ack(&AckRecord {
                finding: finding.clone(),
                acked,
                acked_by: acked_by.clone(),
                reason,
                until,
            })
            .await
            .map_err(QueryError::Write)?;
        info!(
            fingerprint = %fingerprint,
            rule_id = %finding.latest.rule_id,
            host_id = %finding.latest.host_id,
            by = %acked_by,
            until = ?until,
            "{}",
            if acked { "finding acknowledged" } else { "finding acknowledgement cleared" }
        );
        let hostnames = self.hostnames().await?;
        Ok(finding_pb(&finding, Some(&stored), now_unix(), &hostnames))
    }

    async fn ack_finding_inner(
        &self,
        acked_by: String,
        r: pb::AckFindingRequest,
    ) -> Result<pb::AckFindingResponse, QueryError> {
        let reason = r.reason.trim().to_string();
        if reason.is_empty() {
            return Err(invalid(
                "`reason` is required: say why the finding needs no action",
            ));
        }
        let chars = reason.chars().count();
        if chars > MAX_REASON_CHARS {
            return Err(invalid(format!(
                "`reason` is {chars} characters long, over {MAX_REASON_CHARS}; shorten it"
            )));
        }
        let until = instant("until_unix", r.until_unix)?;
        if let Some(until) = until {
            if until <= now_unix() {
                return Err(invalid(format!(
                    "`until_unix` {until} is not in the future; give a later time, or 0 to acknowledge until the finding's status changes"
                )));
            }
            if until > u64::from(u32::MAX) {
                return Err(invalid(format!(
                    "`until_unix` {until} is after 2106, the last instant the store holds"
                )));
            }
        }
        let finding = self
            .ack_inner(acked_by, r.fingerprint, Some((reason, until)))
            .await?;
        Ok(pb::AckFindingResponse {
            finding: Some(finding),
        })
    }

    async fn list_events_inner(
        &self,
        r: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, QueryError> {
        required("host_id", &r.host_id, "`portolan hosts` lists the hosts")?;
        let from = instant("from_unix", r.from_unix)?;
        let to = instant("to_unix", r.to_unix)?;
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            return Err(invalid(format!(
                "`to_unix` {to} is not after `from_unix` {from}; the range is [from, to)"
            )));
        }
        let newest_first = match pb::EventOrder::try_from(r.order) {
            Ok(pb::EventOrder::Unspecified | pb::EventOrder::NewestFirst) => true,
            Ok(pb::EventOrder::OldestFirst) => false,
            Err(_) => return Err(invalid(format!("`order` {} is not an order", r.order))),
        };
        if r.key.len() > MAX_ID_BYTES {
            return Err(invalid(format!(
                "`key` is {} bytes long, over {MAX_ID_BYTES}",
                r.key.len()
            )));
        }
        let mut query = EventQuery {
            host_id: r.host_id,
            from,
            to,
            port: if r.port == 0 {
                None
            } else {
                Some(port("port", r.port)?)
            },
            key: (!r.key.is_empty()).then_some(r.key),
            include_flows: r.include_flows,
            newest_first,
            ..EventQuery::default()
        };
        let hash = query_hash(&format!("events:{query:?}"));
        if let Some(key) = token(&r.page_token, hash)? {
            query.after = Some(event_cursor(&key)?);
        }
        query.limit = page_size(r.page_size, 0);
        self.known_host(&query.host_id).await?;
        let (events, more) = self.store.events(&query).await?;
        let next_page_token = match events.last() {
            Some(last) if more => next_token(hash, event_key_parts(last.cursor())),
            _ => String::new(),
        };
        Ok(pb::ListEventsResponse {
            events: events
                .into_iter()
                .map(|e| history_event(&query.host_id, e))
                .collect(),
            next_page_token,
        })
    }

    async fn get_snapshot_inner(
        &self,
        r: pb::GetSnapshotRequest,
    ) -> Result<pb::GetSnapshotResponse, QueryError> {
        required("host_id", &r.host_id, "`portolan hosts` lists the hosts")?;
        let at = instant("at_unix", r.at_unix)?.unwrap_or_else(now_unix);
        let summary_now = self.get_host_inner(r.host_id.clone()).await?;
        let past = self.store.host_as_of(&r.host_id, at, MAX_LIMIT).await?;
        let hosts = self.store.hosts(&HostFilter::default()).await?;
        let book = AddressBook::new(&hosts, self.store.namespace_pods().await?);
        let hostnames: HashMap<String, String> = hosts
            .iter()
            .map(|h| (h.host_id.clone(), h.hostname.clone()))
            .collect();
        Ok(pb::GetSnapshotResponse {
            host: summary_now.host,
            state: Some(pb::HostState::from(
                &past.host.map(|h| h.state).unwrap_or_default(),
            )),
            seq: past.seq,
            seq_at_unix: past.seq_at.map_or(0, unix),
            sockets: past
                .sockets
                .into_iter()
                .map(|socket| {
                    host_socket(
                        FleetSocket {
                            host_id: r.host_id.clone(),
                            socket,
                        },
                        &hostnames,
                    )
                })
                .collect(),
            flows: past
                .flows
                .into_iter()
                .map(|flow| {
                    host_flow(
                        FleetFlow {
                            host_id: r.host_id.clone(),
                            flow,
                        },
                        &book,
                    )
                })
                .collect(),
            truncated: past.truncated,
        })
    }
}

#[tonic::async_trait]
impl QueryService for Query {
    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        Ok(Response::new(
            self.list_hosts_inner(request.into_inner()).await?,
        ))
    }

    async fn get_host(
        &self,
        request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::GetHostResponse>, Status> {
        Ok(Response::new(
            self.get_host_inner(request.into_inner().host_id).await?,
        ))
    }

    async fn list_sockets(
        &self,
        request: Request<pb::ListSocketsRequest>,
    ) -> Result<Response<pb::ListSocketsResponse>, Status> {
        Ok(Response::new(
            self.list_sockets_inner(request.into_inner()).await?,
        ))
    }

    async fn who_listens(
        &self,
        request: Request<pb::WhoListensRequest>,
    ) -> Result<Response<pb::WhoListensResponse>, Status> {
        Ok(Response::new(
            self.who_listens_inner(request.into_inner()).await?,
        ))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        Ok(Response::new(
            self.list_findings_inner(request.into_inner()).await?,
        ))
    }

    async fn list_flows(
        &self,
        request: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        Ok(Response::new(
            self.list_flows_inner(request.into_inner()).await?,
        ))
    }

    async fn ack_finding(
        &self,
        request: Request<pb::AckFindingRequest>,
    ) -> Result<Response<pb::AckFindingResponse>, Status> {
        let who = who(&request)?;
        Ok(Response::new(
            self.ack_finding_inner(who, request.into_inner()).await?,
        ))
    }

    async fn unack_finding(
        &self,
        request: Request<pb::UnackFindingRequest>,
    ) -> Result<Response<pb::UnackFindingResponse>, Status> {
        let who = who(&request)?;
        let finding = self
            .ack_inner(who, request.into_inner().fingerprint, None)
            .await?;
        Ok(Response::new(pb::UnackFindingResponse {
            finding: Some(finding),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        Ok(Response::new(
            self.list_events_inner(request.into_inner()).await?,
        ))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        Ok(Response::new(
            self.get_snapshot_inner(request.into_inner()).await?,
        ))
    }

    type WatchFindingsStream = Revocable<ReceiverStream<Result<pb::WatchFindingsResponse, Status>>>;

    async fn watch_findings(
        &self,
        request: Request<pb::WatchFindingsRequest>,
    ) -> Result<Response<Self::WatchFindingsStream>, Status> {
        let who = who(&request)?;
        let live = self.live(&request)?;
        let stream = self.watch_findings_inner(who, request.into_inner()).await?;
        Ok(Response::new(live.guard(stream)))
    }

    async fn test_rules(
        &self,
        request: Request<pb::TestRulesRequest>,
    ) -> Result<Response<pb::TestRulesResponse>, Status> {
        Ok(Response::new(
            test_rules::test_rules(&self.store, request.into_inner()).await?,
        ))
    }

    type WatchHostStream = Revocable<ReceiverStream<Result<pb::WatchHostResponse, Status>>>;

    async fn watch_host(
        &self,
        request: Request<pb::WatchHostRequest>,
    ) -> Result<Response<Self::WatchHostStream>, Status> {
        let who = who(&request)?;
        let live = self.live(&request)?;
        let stream = self.watch_host_inner(who, request.into_inner()).await?;
        Ok(Response::new(live.guard(stream)))
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0, 0), DEFAULT_LIMIT);
        assert_eq!(page_size(0, 5), 5);
        assert_eq!(page_size(2, 5), 2);
        assert_eq!(page_size(u32::MAX, 0), MAX_LIMIT);
        assert_eq!(page_size(0, u32::MAX), MAX_LIMIT);
    }

    #[test]
    fn instants_refuse_negative_values() {
        assert_eq!(instant("at_unix", 0).ok(), Some(None));
        assert_eq!(instant("at_unix", 5).ok(), Some(Some(5)));
        let e = instant("at_unix", -1).expect_err("negative");
        assert!(e.to_string().starts_with("`at_unix` is -1"), "{e}");
    }

    #[test]
    fn cursors_round_trip_through_token_parts() {
        let c = SocketCursor {
            host_id: "h".into(),
            local_port: 22,
            socket_key: "tcp 0.0.0.0:22 0.0.0.0:0 #1".into(),
        };
        assert_eq!(socket_cursor(&socket_key_parts(c.clone())).ok(), Some(c));
        let e = EventCursor {
            seq: 9,
            source: EventSource::Flow,
            event: "removed".into(),
            key: "k".into(),
        };
        assert_eq!(event_cursor(&event_key_parts(e.clone())).ok(), Some(e));
        assert!(socket_cursor(&[Part::Num(1)]).is_err());
        assert!(
            flow_cursor(&[
                Part::Text("h".into()),
                Part::Num(70_000),
                Part::Text("k".into())
            ])
            .is_err(),
            "a port over 65535"
        );
    }
}
