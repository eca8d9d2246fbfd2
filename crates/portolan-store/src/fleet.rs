//! Questions about the whole fleet, for the query API: hosts with their last report,
//! and current (or past, see [`super::history`]) sockets and flows across hosts with
//! filters, paged by keyset: each page starts strictly after the last row of the
//! previous one in the answer's order.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use clickhouse::Row;
use portolan_core::{Direction, Protocol, Scope};
use serde::Deserialize;

use super::history;
use super::rows::{FlowCurrentRow, HostRow, SocketCurrentRow, from_datetime};
use super::schema::table;
use super::{Store, StoreError, StoredFlow, StoredHost, StoredSocket, stored_host};

/// Which hosts a question is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFilter {
    /// Exact host ids; empty: every host.
    pub host_ids: Vec<String>,
    /// Labels every host must carry.
    pub labels: BTreeMap<String, String>,
}

impl HostFilter {
    /// Whether a host with `host_id` and `labels` is selected.
    pub fn matches(&self, host_id: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.host_ids.is_empty() || self.host_ids.iter().any(|h| h == host_id))
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Which current sockets a question is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketFilter {
    /// The hosts.
    pub hosts: HostFilter,
    /// `None`: TCP and UDP.
    pub protocol: Option<Protocol>,
    /// Inclusive local port range; `None`: any port.
    pub ports: Option<(u16, u16)>,
    /// Only listeners.
    pub listening: bool,
    /// Exposures to keep; empty: all.
    pub exposures: Vec<Scope>,
    /// Glob on the first owner's process name (`*`, `?`); empty: any.
    pub process: String,
    /// Glob on the first owner's pod name, or on `namespace/name` when it holds a `/`;
    /// empty: any.
    pub pod: String,
    /// Container id prefix; empty: any.
    pub container: String,
    /// Network namespace inode (0: the host's own); `None`: every namespace.
    pub netns: Option<u64>,
    /// The instant (Unix seconds) whose sockets to list, rebuilt from history; `None`:
    /// the current sockets.
    pub at: Option<u64>,
    /// Only sockets after this one in the answer's order (paging).
    pub after: Option<SocketCursor>,
    /// Most rows.
    pub limit: u32,
}

/// A socket's place in [`Store::list_sockets`]'s order: host, local port, key.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketCursor {
    /// The host.
    pub host_id: String,
    /// The local port.
    pub local_port: u16,
    /// The stored socket key.
    pub socket_key: String,
}

impl FleetSocket {
    /// Its place in [`Store::list_sockets`]'s order.
    pub fn cursor(&self) -> SocketCursor {
        SocketCursor {
            host_id: self.host_id.clone(),
            local_port: self.socket.socket.key.local_port,
            socket_key: self.socket.socket.key.to_string(),
        }
    }
}

/// A host with what is known of its reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    /// Facts from Hello and the last snapshot.
    pub host: StoredHost,
    /// When it last sent anything that was stored.
    pub last_seen: Option<SystemTime>,
    /// The last stored seq.
    pub last_seq: u64,
    /// Current listeners.
    pub listeners: u32,
    /// Current flows.
    pub flows: u32,
    /// When it was retired, if it is retired now (and silent since).
    pub retired_at: Option<SystemTime>,
}

/// A current socket of some host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSocket {
    /// The host.
    pub host_id: String,
    /// The socket and its processes.
    pub socket: StoredSocket,
}

/// Which current flows a question is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// The hosts.
    pub hosts: HostFilter,
    /// Service port; `None`: any.
    pub port: Option<u16>,
    /// `None`: both directions.
    pub direction: Option<Direction>,
    /// The instant (Unix seconds) whose flows to list, rebuilt from history; `None`: the
    /// current flows.
    pub at: Option<u64>,
    /// Only flows after this one in the answer's order (paging).
    pub after: Option<FlowCursor>,
    /// Most rows.
    pub limit: u32,
}

/// A flow's place in [`Store::list_flows`]'s order: host, service port, key.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowCursor {
    /// The host.
    pub host_id: String,
    /// The service port.
    pub service_port: u16,
    /// The stored flow key.
    pub flow_key: String,
}

impl FleetFlow {
    /// Its place in [`Store::list_flows`]'s order.
    pub fn cursor(&self) -> FlowCursor {
        FlowCursor {
            host_id: self.host_id.clone(),
            service_port: self.flow.flow.key.service_port,
            flow_key: self.flow.flow.key.to_string(),
        }
    }
}

/// A current flow of some host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFlow {
    /// The host.
    pub host_id: String,
    /// The flow and its process.
    pub flow: StoredFlow,
}

/// The Kubernetes pod of one network namespace of a host, as its sockets and flows say
/// (the pod of their processes).
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub struct NamespacePod {
    /// The host (node).
    pub host_id: String,
    /// The namespace's inode on that host; never 0 (the host's own).
    pub netns: u64,
    /// The pod's UID.
    pub pod_uid: String,
    /// The pod's Kubernetes namespace; empty when the agent did not learn it.
    pub pod_namespace: String,
    /// The pod's name; empty when the agent did not learn it.
    pub pod_name: String,
}

/// The statement of [`Store::namespace_pods`]: one row per (host, network namespace)
/// whose current sockets or flows belong to a pod. `max` prefers a learned name to an
/// empty one.
pub(crate) const NAMESPACE_PODS: &str = "SELECT host_id, netns, \
     CAST(max(uid_of) AS String) AS pod_uid, \
     CAST(max(namespace_of) AS String) AS pod_namespace, \
     CAST(max(name_of) AS String) AS pod_name \
     FROM (SELECT host_id, netns, pod_uid AS uid_of, pod_namespace AS namespace_of, pod_name AS name_of \
     FROM sockets_current FINAL WHERE present = 1 AND netns != 0 AND pod_uid != '' \
     UNION ALL SELECT host_id, netns, pod_uid AS uid_of, pod_namespace AS namespace_of, pod_name AS name_of \
     FROM flows_current FINAL WHERE present = 1 AND netns != 0 AND pod_uid != '') \
     GROUP BY host_id, netns ORDER BY host_id, netns";

#[derive(Debug, Row, Deserialize)]
struct LastReport {
    host_id: String,
    last_seen: u32,
    last_seq: u64,
}

#[derive(Debug, Row, Deserialize)]
struct Counts {
    host_id: String,
    n: u64,
}

const ALL_HOSTS: &str = "SELECT ?fields FROM hosts FINAL ORDER BY host_id";
const LAST_REPORTS: &str = "SELECT host_id, toUInt32(max(received_at)) AS last_seen, \
     maxIf(seq, kind IN ('snapshot', 'delta')) AS last_seq FROM host_reports GROUP BY host_id";
const LISTENER_COUNTS: &str = "SELECT host_id, toUInt64(countIf(listener = 1)) AS n \
     FROM sockets_current FINAL WHERE present = 1 GROUP BY host_id";
const FLOW_COUNTS: &str = "SELECT host_id, toUInt64(count()) AS n FROM flows_current FINAL WHERE present = 1 GROUP BY host_id";

/// The statement of [`Store::list_sockets`]. Placeholders in bind order: the host ids
/// (twice when `filter.at` is set: inside the history subquery too) when
/// `hosts_bound`, then protocol, port range, exposures, process pattern, the cursor's
/// three values, and the limit + 1.
pub(crate) fn socket_list_sql(filter: &SocketFilter, hosts_bound: bool) -> String {
    let from = match filter.at {
        None => "sockets_current FINAL".to_string(),
        Some(at) if hosts_bound => history::sockets_as_of_hosts(at),
        Some(at) => history::sockets_as_of(at),
    };
    let mut sql = format!("SELECT ?fields FROM {from} WHERE present = 1");
    if hosts_bound {
        sql.push_str(" AND has(?, host_id)");
    }
    if filter.protocol.is_some() {
        sql.push_str(" AND protocol = ?");
    }
    if filter.ports.is_some() {
        sql.push_str(" AND local_port >= ? AND local_port <= ?");
    }
    if filter.listening {
        sql.push_str(" AND listener = 1");
    }
    if !filter.exposures.is_empty() {
        sql.push_str(" AND has(?, exposure)");
    }
    if !filter.process.is_empty() {
        sql.push_str(" AND process LIKE ?");
    }
    if filter.pod.contains('/') {
        sql.push_str(" AND concat(pod_namespace, '/', pod_name) LIKE ?");
    } else if !filter.pod.is_empty() {
        sql.push_str(" AND pod_name LIKE ?");
    }
    if !filter.container.is_empty() {
        sql.push_str(" AND container_id LIKE ?");
    }
    if filter.netns.is_some() {
        sql.push_str(" AND netns = ?");
    }
    if filter.after.is_some() {
        sql.push_str(" AND (host_id, local_port, socket_key) > (?, ?, ?)");
    }
    sql.push_str(" ORDER BY host_id, local_port, socket_key LIMIT ?");
    sql
}

/// Binds the placeholders of [`socket_list_sql`].
pub(crate) fn bind_socket_list(
    mut query: clickhouse::query::Query,
    filter: &SocketFilter,
    host_ids: Option<&[String]>,
) -> clickhouse::query::Query {
    if let (Some(ids), Some(_)) = (host_ids, filter.at) {
        query = query.bind(ids);
    }
    if let Some(ids) = host_ids {
        query = query.bind(ids);
    }
    if let Some(p) = filter.protocol {
        query = query.bind(p.as_str());
    }
    if let Some((lo, hi)) = filter.ports {
        query = query.bind(lo).bind(hi);
    }
    if !filter.exposures.is_empty() {
        let names: Vec<&str> = filter.exposures.iter().map(|s| s.as_str()).collect();
        query = query.bind(names);
    }
    if !filter.process.is_empty() {
        query = query.bind(glob_to_like(&filter.process));
    }
    if !filter.pod.is_empty() {
        query = query.bind(glob_to_like(&filter.pod));
    }
    if !filter.container.is_empty() {
        // A prefix: the id's own characters are hex, LIKE's wildcards escaped anyway.
        query = query.bind(format!(
            "{}%",
            glob_to_like(&filter.container.replace(['*', '?'], ""))
        ));
    }
    if let Some(netns) = filter.netns {
        query = query.bind(netns);
    }
    if let Some(after) = &filter.after {
        query = query
            .bind(&after.host_id)
            .bind(after.local_port)
            .bind(&after.socket_key);
    }
    query.bind(u64::from(filter.limit.max(1)) + 1)
}

/// Binds the placeholders of [`flow_list_sql`].
pub(crate) fn bind_flow_list(
    mut query: clickhouse::query::Query,
    filter: &FlowFilter,
    host_ids: Option<&[String]>,
) -> clickhouse::query::Query {
    if let (Some(ids), Some(_)) = (host_ids, filter.at) {
        query = query.bind(ids);
    }
    if let Some(ids) = host_ids {
        query = query.bind(ids);
    }
    if let Some(port) = filter.port {
        query = query.bind(port);
    }
    if let Some(direction) = filter.direction {
        query = query.bind(direction.as_str());
    }
    if let Some(after) = &filter.after {
        query = query
            .bind(&after.host_id)
            .bind(after.service_port)
            .bind(&after.flow_key);
    }
    query.bind(u64::from(filter.limit.max(1)) + 1)
}

/// The statement of [`Store::list_flows`]. Placeholders in bind order: the host ids
/// (twice when `filter.at` is set) when `hosts_bound`, then port, direction, the
/// cursor's three values, and the limit + 1.
pub(crate) fn flow_list_sql(filter: &FlowFilter, hosts_bound: bool) -> String {
    let from = match filter.at {
        None => "flows_current FINAL".to_string(),
        Some(at) if hosts_bound => history::flows_as_of_hosts(at),
        Some(at) => history::flows_as_of(at),
    };
    let mut sql = format!("SELECT ?fields FROM {from} WHERE present = 1");
    if hosts_bound {
        sql.push_str(" AND has(?, host_id)");
    }
    if filter.port.is_some() {
        sql.push_str(" AND service_port = ?");
    }
    if filter.direction.is_some() {
        sql.push_str(" AND direction = ?");
    }
    if filter.after.is_some() {
        sql.push_str(" AND (host_id, service_port, flow_key) > (?, ?, ?)");
    }
    sql.push_str(" ORDER BY host_id, service_port, flow_key LIMIT ?");
    sql
}

/// A shell-style glob (`*`, `?`) as a LIKE pattern, LIKE's own wildcards escaped.
pub fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

impl Store {
    /// Every host matching `filter`: the `hosts` table alone, for callers that need
    /// names, labels or interfaces and not the reporting figures of [`Store::list_hosts`].
    pub async fn hosts(&self, filter: &HostFilter) -> Result<Vec<StoredHost>, StoreError> {
        let rows: Vec<HostRow> = self
            .fetch(table::HOSTS, self.client.query(ALL_HOSTS))
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let host = stored_host(row)?;
            if filter.matches(&host.host_id, &host.labels) {
                out.push(host);
            }
        }
        Ok(out)
    }

    /// The pod of every network namespace of the fleet that holds a pod's current
    /// sockets or flows: with the hosts' interfaces (and the namespace of each), what
    /// turns a pod IP into a pod.
    pub async fn namespace_pods(&self) -> Result<Vec<NamespacePod>, StoreError> {
        self.fetch(table::SOCKETS_CURRENT, self.client.query(NAMESPACE_PODS))
            .await
    }

    /// Every host matching `filter`, with its last report and current counts.
    pub async fn list_hosts(&self, filter: &HostFilter) -> Result<Vec<HostSummary>, StoreError> {
        let hosts = self.hosts(filter).await?;
        let reports: Vec<LastReport> = self
            .fetch(table::HOST_REPORTS, self.client.query(LAST_REPORTS))
            .await?;
        let reports: HashMap<String, LastReport> = reports
            .into_iter()
            .map(|r| (r.host_id.clone(), r))
            .collect();
        let listeners = self.counts(table::SOCKETS_CURRENT, LISTENER_COUNTS).await?;
        let flows = self.counts(table::FLOWS_CURRENT, FLOW_COUNTS).await?;
        let mut keys: HashMap<String, Vec<portolan_core::enrollment::KeyRecord>> = HashMap::new();
        for key in self.host_keys().await? {
            keys.entry(key.record.host_id.clone())
                .or_default()
                .push(key.record);
        }
        let retirements: HashMap<String, i64> = keys
            .iter()
            .filter_map(|(host, records)| {
                portolan_core::enrollment::retired_at(records).map(|at| (host.clone(), at))
            })
            .collect();
        Ok(hosts
            .into_iter()
            .map(|host| {
                let report = reports.get(&host.host_id);
                let last_seen = report
                    .filter(|r| r.last_seen > 0)
                    .map(|r| i64::from(r.last_seen));
                let retired_at = portolan_core::enrollment::retired_since(
                    retirements.get(&host.host_id).copied(),
                    last_seen,
                );
                HostSummary {
                    retired_at: retired_at
                        .map(|at| from_datetime(u32::try_from(at.max(0)).unwrap_or(u32::MAX))),
                    last_seen: report
                        .filter(|r| r.last_seen > 0)
                        .map(|r| from_datetime(r.last_seen)),
                    last_seq: report.map_or(0, |r| r.last_seq),
                    listeners: listeners.get(&host.host_id).copied().unwrap_or(0),
                    flows: flows.get(&host.host_id).copied().unwrap_or(0),
                    host,
                }
            })
            .collect())
    }

    /// The host ids a filter selects; `None` when it selects every host.
    async fn resolve_hosts(&self, filter: &HostFilter) -> Result<Option<Vec<String>>, StoreError> {
        if filter.labels.is_empty() {
            return Ok((!filter.host_ids.is_empty()).then(|| filter.host_ids.clone()));
        }
        let hosts = self.hosts(filter).await?;
        Ok(Some(hosts.into_iter().map(|h| h.host_id).collect()))
    }

    async fn counts(
        &self,
        table: &'static str,
        sql: &str,
    ) -> Result<HashMap<String, u32>, StoreError> {
        let rows: Vec<Counts> = self.fetch(table, self.client.query(sql)).await?;
        Ok(rows
            .into_iter()
            .map(|c| (c.host_id, u32::try_from(c.n).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Current sockets (or those of `filter.at`) across the hosts of `filter.hosts`,
    /// ordered by host, local port and key, after `filter.after`. Returns the sockets
    /// and whether more than `filter.limit` matched.
    pub async fn list_sockets(
        &self,
        filter: &SocketFilter,
    ) -> Result<(Vec<FleetSocket>, bool), StoreError> {
        let host_ids = self.resolve_hosts(&filter.hosts).await?;
        if host_ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok((Vec::new(), false));
        }
        let sql = socket_list_sql(filter, host_ids.is_some());
        let query = bind_socket_list(self.client.query(&sql), filter, host_ids.as_deref());
        let limit = filter.limit.max(1);
        let rows: Vec<SocketCurrentRow> = self.fetch(table::SOCKETS_CURRENT, query).await?;
        let (rows, truncated) = page(rows, limit as usize);
        let sockets = rows
            .iter()
            .map(|r| {
                Ok(FleetSocket {
                    host_id: r.host_id.clone(),
                    socket: r.stored()?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((sockets, truncated))
    }
}

impl Store {
    /// Current flows (or those of `filter.at`) across the hosts of `filter.hosts`,
    /// ordered by host, service port and key, after `filter.after`. Returns the flows
    /// and whether more than `filter.limit` matched.
    pub async fn list_flows(
        &self,
        filter: &FlowFilter,
    ) -> Result<(Vec<FleetFlow>, bool), StoreError> {
        let host_ids = self.resolve_hosts(&filter.hosts).await?;
        if host_ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok((Vec::new(), false));
        }
        let sql = flow_list_sql(filter, host_ids.is_some());
        let query = bind_flow_list(self.client.query(&sql), filter, host_ids.as_deref());
        let limit = filter.limit.max(1);
        let rows: Vec<FlowCurrentRow> = self.fetch(table::FLOWS_CURRENT, query).await?;
        let (rows, truncated) = page(rows, limit as usize);
        let flows = rows
            .iter()
            .map(|r| {
                Ok(FleetFlow {
                    host_id: r.host_id.clone(),
                    flow: r.stored()?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((flows, truncated))
    }
}

/// The first `limit` of `rows` (fetched with `LIMIT limit + 1`), and whether there were
/// more.
pub fn page<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns_with_like_wildcards_escaped() {
        assert_eq!(glob_to_like("postgres*"), "postgres%");
        assert_eq!(glob_to_like("a?c"), "a_c");
        assert_eq!(glob_to_like("50%_off\\"), "50\\%\\_off\\\\");
    }
}
