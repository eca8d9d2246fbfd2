//! Hosts: a row of `portolan hosts` and the facts of `portolan host ID`.

use std::collections::BTreeMap;
use std::time::Duration;

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::{address_text, labels, labels_text};
use crate::output::{Column, Context, Paint, Record};

/// A host of the fleet (`portolan hosts`; JSON: an element of the array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    /// Stable host id (`/etc/machine-id` unless configured).
    pub host_id: String,
    /// Hostname from the agent.
    pub hostname: String,
    /// Labels from the agent's config, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Agent version.
    pub agent_version: String,
    /// Kernel release.
    pub kernel: String,
    /// Operating system.
    pub os: String,
    /// The collector replica that last served the host.
    pub collector: String,
    /// The agent's scan interval.
    pub scan_interval_ms: u64,
    /// Unix seconds of the last report; 0: never.
    pub last_seen_unix: i64,
    /// The last stored sequence number.
    pub last_seq: u64,
    /// No report for three scan intervals.
    pub stale: bool,
    /// Current listeners.
    pub listeners: u32,
    /// Current flows.
    pub flows: u32,
    /// Unix seconds of its retirement when it is retired (`portolan hosts --retired`); 0:
    /// it is not.
    pub retired_unix: i64,
}

impl From<&pb::HostSummary> for HostRow {
    fn from(h: &pb::HostSummary) -> Self {
        HostRow {
            host_id: h.host_id.clone(),
            hostname: h.hostname.clone(),
            labels: labels(&h.labels),
            agent_version: h.agent_version.clone(),
            kernel: h.kernel.clone(),
            os: h.os.clone(),
            collector: h.collector.clone(),
            scan_interval_ms: h.scan_interval_ms,
            last_seen_unix: h.last_seen_unix,
            last_seq: h.last_seq,
            stale: h.stale,
            listeners: h.listeners,
            flows: h.flows,
            retired_unix: h.retired_unix,
        }
    }
}

impl HostRow {
    fn last_seen(&self, ctx: &Context) -> String {
        let when = ctx.time(self.last_seen_unix);
        if self.stale && !ctx.machine() {
            format!("{when} (stale)")
        } else {
            when
        }
    }

    fn stale_paint(&self) -> Option<Paint> {
        self.stale.then_some(Paint::Yellow)
    }

    fn scan_interval(&self) -> String {
        humantime::format_duration(Duration::from_millis(self.scan_interval_ms)).to_string()
    }
}

impl Record for HostRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("HOST", "host_id", |r, _| r.host_id.clone()),
        Column::<Self>::free("HOSTNAME", "hostname", 12, |r, _| r.hostname.clone()),
        Column::<Self>::free("LABELS", "labels", 12, |r, _| labels_text(&r.labels)),
        Column::<Self>::key("LISTENERS", "listeners", |r, _| r.listeners.to_string()),
        Column::<Self>::key("FLOWS", "flows", |r, _| r.flows.to_string()),
        Column::<Self>::key("LAST SEEN", "last_seen", |r, ctx| r.last_seen(ctx))
            .paint(|r| r.stale_paint()),
        Column::<Self>::free("AGENT", "agent_version", 8, |r, _| r.agent_version.clone()),
        Column::<Self>::free("OS", "os", 8, |r, _| r.os.clone()).wide(),
        Column::<Self>::free("KERNEL", "kernel", 8, |r, _| r.kernel.clone()).wide(),
        Column::<Self>::free("COLLECTOR", "collector", 8, |r, _| r.collector.clone()).wide(),
        Column::<Self>::key("SCAN", "scan_interval", |r, _| r.scan_interval()).wide(),
        Column::<Self>::key("SEQ", "last_seq", |r, _| r.last_seq.to_string()).wide(),
        Column::<Self>::key("STALE", "stale", |r, _| r.stale.to_string()).wide(),
        Column::<Self>::key("RETIRED", "retired", |r, ctx| {
            if r.retired_unix > 0 {
                ctx.instant(r.retired_unix)
            } else {
                String::new()
            }
        })
        .wide(),
    ];
}

/// One address of a host's interface (JSON: an element of `interfaces`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceRow {
    /// Interface name (`eth0`).
    pub interface: String,
    /// The address; empty when the collector sent neither IPv4 nor IPv6.
    pub address: String,
    /// Prefix length of the network.
    pub prefix_len: u32,
}

/// One host's facts (`portolan host ID`; JSON: one object, the fields of [`HostRow`] and
/// these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostDetail {
    /// The host.
    #[serde(flatten)]
    pub host: HostRow,
    /// Its interface addresses.
    pub interfaces: Vec<InterfaceRow>,
    /// `net.ipv4.ip_local_port_range`; 0 and 0 when unknown.
    pub ephemeral_port_min: u32,
    /// See `ephemeral_port_min`.
    pub ephemeral_port_max: u32,
}

impl HostDetail {
    /// The facts in an answer; `None` when it holds no host.
    pub fn from_response(r: &pb::GetHostResponse) -> Option<Self> {
        let host = HostRow::from(r.host.as_ref()?);
        let state = r.state.clone().unwrap_or_default();
        Some(HostDetail {
            host,
            interfaces: state
                .interfaces
                .iter()
                .map(|i| InterfaceRow {
                    interface: i.interface.clone(),
                    address: address_text(&i.address),
                    prefix_len: i.prefix_len,
                })
                .collect(),
            ephemeral_port_min: state.ephemeral_port_min,
            ephemeral_port_max: state.ephemeral_port_max,
        })
    }

    fn interfaces_text(&self) -> String {
        self.interfaces
            .iter()
            .filter(|i| !i.address.is_empty())
            .map(|i| format!("{} {}/{}", i.interface, i.address, i.prefix_len))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn ephemeral(&self) -> String {
        if self.ephemeral_port_max == 0 {
            String::new()
        } else {
            format!("{}-{}", self.ephemeral_port_min, self.ephemeral_port_max)
        }
    }
}

impl Record for HostDetail {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("HOST", "host_id", |r, _| r.host.host_id.clone()),
        Column::<Self>::key("HOSTNAME", "hostname", |r, _| r.host.hostname.clone()),
        Column::<Self>::free("LABELS", "labels", 12, |r, _| labels_text(&r.host.labels)),
        Column::<Self>::key("OS", "os", |r, _| r.host.os.clone()),
        Column::<Self>::key("KERNEL", "kernel", |r, _| r.host.kernel.clone()),
        Column::<Self>::key("AGENT", "agent_version", |r, _| {
            r.host.agent_version.clone()
        }),
        Column::<Self>::key("COLLECTOR", "collector", |r, _| r.host.collector.clone()),
        Column::<Self>::key("LAST SEEN", "last_seen", |r, ctx| r.host.last_seen(ctx))
            .paint(|r| r.host.stale_paint()),
        Column::<Self>::key("SEQ", "last_seq", |r, _| r.host.last_seq.to_string()),
        Column::<Self>::key("SCAN", "scan_interval", |r, _| r.host.scan_interval()),
        Column::<Self>::key("LISTENERS", "listeners", |r, _| {
            r.host.listeners.to_string()
        }),
        Column::<Self>::key("FLOWS", "flows", |r, _| r.host.flows.to_string()),
        Column::<Self>::key("EPHEMERAL", "ephemeral_ports", |r, _| r.ephemeral()),
        Column::<Self>::free("INTERFACES", "interfaces", 20, |r, _| r.interfaces_text()),
        Column::<Self>::key("STALE", "stale", |r, _| r.host.stale.to_string()).wide(),
    ];
}
