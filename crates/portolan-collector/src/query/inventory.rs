//! The fleet's inventory: hosts, sockets, flows, their history and past snapshots.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use portolan_core::Direction;
use portolan_proto::v1 as pb;
use portolan_store::StoredHost;
use portolan_store::fleet::{
    FleetFlow, FleetSocket, FlowCursor, FlowFilter, HostFilter, SocketFilter,
};
use portolan_store::history::EventQuery;

use super::convert::{history_event, host_socket, summary};
use super::cursor::{
    event_cursor, event_key_parts, flow_cursor, flow_key_parts, malformed, next_token,
    socket_cursor, socket_key_parts, text_part, token,
};
use super::fields::{
    bounded, host_filter, instant, invalid, now_unix, page_size, port, protocol, required, scope,
    unix,
};
use super::page::{Part, query_hash};
use super::peers::{AddressBook, host_flow};
use super::{MAX_ID_BYTES, MAX_LIMIT, Query, QueryError};

impl Query {
    pub(super) async fn hostnames(&self) -> Result<HashMap<String, String>, QueryError> {
        let hosts = self.store.hosts(&HostFilter::default()).await?;
        Ok(hosts.into_iter().map(|h| (h.host_id, h.hostname)).collect())
    }

    /// A known host, or NOT_FOUND.
    pub(super) async fn known_host(&self, host_id: &str) -> Result<StoredHost, QueryError> {
        self.store.host(host_id).await?.ok_or_else(|| {
            QueryError::NotFound(format!(
                "no host `{host_id}` (`portolan hosts` lists the known ones)"
            ))
        })
    }

    pub(super) async fn list_hosts_inner(
        &self,
        r: pb::ListHostsRequest,
    ) -> Result<pb::ListHostsResponse, QueryError> {
        let filter = host_filter(r.hosts);
        let include_retired = r.include_retired;
        let hash = query_hash(&format!("hosts:{filter:?}:{include_retired}"));
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
            .filter(|h| include_retired || h.retired_at.is_none())
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

    pub(super) async fn get_host_inner(
        &self,
        host_id: String,
    ) -> Result<pb::GetHostResponse, QueryError> {
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

    pub(super) async fn list_sockets_inner(
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

    pub(super) async fn who_listens_inner(
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

    pub(super) async fn list_flows_inner(
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

    pub(super) async fn list_events_inner(
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

    pub(super) async fn get_snapshot_inner(
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
