//! Row types of the tables and their conversions to and from the domain.
//!
//! Field names and types match the columns of [`super::schema`] (the `layout` tests
//! check it without a server); every conversion from storage validates what it reads
//! and fails with [`StoreError::Corrupt`] naming the table and column.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portolan_core::{
    Attribution, Direction, Flow, FlowKey, HostState, InterfaceAddress, Process, Protocol, Scope,
    Socket, SocketKey, SocketState,
};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Seconds since the epoch, as ClickHouse `DateTime` holds them (saturating).
pub(crate) fn to_datetime(t: SystemTime) -> u32 {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The inverse of [`to_datetime`].
pub(crate) fn from_datetime(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

/// Nanoseconds since the epoch (saturating).
pub(crate) fn to_nanos(t: SystemTime) -> u64 {
    let nanos = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

fn corrupt(table: &'static str, column: &'static str, value: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        column,
        value: value.to_string(),
    }
}

pub(crate) fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    }
}

fn parse_addr(table: &'static str, column: &'static str, s: &str) -> Result<IpAddr, StoreError> {
    s.parse().map_err(|_| corrupt(table, column, s))
}

/// A stored enum name, read through core's one list of names.
fn parse_named<T: std::str::FromStr>(
    table: &'static str,
    column: &'static str,
    s: &str,
) -> Result<T, StoreError> {
    s.parse().map_err(|_| corrupt(table, column, s))
}

fn parse_protocol(table: &'static str, s: &str) -> Result<Protocol, StoreError> {
    parse_named(table, "protocol", s)
}

fn parse_state(table: &'static str, s: &str) -> Result<SocketState, StoreError> {
    parse_named(table, "state", s)
}

fn parse_attribution(table: &'static str, s: &str) -> Result<Attribution, StoreError> {
    parse_named(table, "attribution", s)
}

fn parse_scope(table: &'static str, column: &'static str, s: &str) -> Result<Scope, StoreError> {
    parse_named(table, column, s)
}

fn parse_direction(table: &'static str, s: &str) -> Result<Direction, StoreError> {
    parse_named(table, "direction", s)
}

/// `schema_migrations`.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct MigrationRow {
    pub version: u32,
    pub name: String,
    pub applied_at: u32,
    pub collector: String,
}

/// Host facts columns, shared by `hosts` and `host_reports`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostFactsCols {
    pub interface_names: Vec<String>,
    pub interfaces: Vec<String>,
    pub ephemeral_known: u8,
    pub ephemeral_min: u16,
    pub ephemeral_max: u16,
    pub interface_netns: Vec<u64>,
}

impl HostFactsCols {
    pub fn encode(state: &HostState) -> HostFactsCols {
        let (min, max) = state.ephemeral_ports.unwrap_or((0, 0));
        HostFactsCols {
            interface_names: state
                .interfaces
                .iter()
                .map(|i| i.interface.clone())
                .collect(),
            interfaces: state
                .interfaces
                .iter()
                .map(|i| format!("{}/{}", i.address, i.prefix_len))
                .collect(),
            ephemeral_known: u8::from(state.ephemeral_ports.is_some()),
            ephemeral_min: min,
            ephemeral_max: max,
            interface_netns: state.interfaces.iter().map(|i| i.netns).collect(),
        }
    }

    pub fn decode(&self, table: &'static str) -> Result<HostState, StoreError> {
        if self.interface_names.len() != self.interfaces.len() {
            return Err(corrupt(
                table,
                "interface_names",
                "an array as long as `interfaces`",
            ));
        }
        // Rows written before migration 4 have no namespaces: every interface is the host's.
        if !self.interface_netns.is_empty() && self.interface_netns.len() != self.interfaces.len() {
            return Err(corrupt(
                table,
                "interface_netns",
                "an array as long as `interfaces`",
            ));
        }
        let interfaces = self
            .interface_names
            .iter()
            .zip(&self.interfaces)
            .enumerate()
            .map(|(i, (name, cidr))| {
                let (addr, prefix) = cidr
                    .rsplit_once('/')
                    .ok_or_else(|| corrupt(table, "interfaces", cidr))?;
                Ok(InterfaceAddress {
                    interface: name.clone(),
                    address: parse_addr(table, "interfaces", addr)?,
                    prefix_len: prefix
                        .parse()
                        .map_err(|_| corrupt(table, "interfaces", cidr))?,
                    netns: self.interface_netns.get(i).copied().unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(HostState {
            interfaces,
            ephemeral_ports: (self.ephemeral_known != 0)
                .then_some((self.ephemeral_min, self.ephemeral_max)),
        })
    }
}

/// `hosts`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct HostRow {
    pub host_id: String,
    pub hostname: String,
    pub label_keys: Vec<String>,
    pub label_values: Vec<String>,
    pub agent_version: String,
    pub kernel: String,
    pub os: String,
    pub scan_interval_ms: u64,
    pub collector: String,
    pub connected_at: u32,
    pub interface_names: Vec<String>,
    pub interfaces: Vec<String>,
    pub ephemeral_known: u8,
    pub ephemeral_min: u16,
    pub ephemeral_max: u16,
    pub seq: u64,
    pub updated_at: u32,
    pub updated_ns: u64,
    pub interface_netns: Vec<u64>,
}

impl HostRow {
    /// Whether the row holds the Hello facts of `record` (names, labels, versions, scan
    /// interval); the replica that wrote it and the host facts are not compared.
    pub fn same_hello_facts(&self, record: &crate::HostRecord) -> bool {
        self.hostname == record.hostname
            && self.label_keys.iter().eq(record.labels.keys())
            && self.label_values.iter().eq(record.labels.values())
            && self.agent_version == record.agent_version
            && self.kernel == record.kernel
            && self.os == record.os
            && self.scan_interval_ms == record.scan_interval_ms
    }

    pub fn facts(&self) -> HostFactsCols {
        HostFactsCols {
            interface_names: self.interface_names.clone(),
            interfaces: self.interfaces.clone(),
            ephemeral_known: self.ephemeral_known,
            ephemeral_min: self.ephemeral_min,
            ephemeral_max: self.ephemeral_max,
            interface_netns: self.interface_netns.clone(),
        }
    }

    pub fn set_facts(&mut self, f: HostFactsCols) {
        self.interface_names = f.interface_names;
        self.interfaces = f.interfaces;
        self.ephemeral_known = f.ephemeral_known;
        self.ephemeral_min = f.ephemeral_min;
        self.ephemeral_max = f.ephemeral_max;
        self.interface_netns = f.interface_netns;
    }

    pub fn labels(&self) -> Result<BTreeMap<String, String>, StoreError> {
        if self.label_keys.len() != self.label_values.len() {
            return Err(corrupt(
                "hosts",
                "label_values",
                "an array as long as `label_keys`",
            ));
        }
        Ok(self
            .label_keys
            .iter()
            .cloned()
            .zip(self.label_values.iter().cloned())
            .collect())
    }
}

/// `host_reports`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct ReportRow {
    pub host_id: String,
    pub seq: u64,
    pub kind: String,
    pub at: u32,
    pub received_at: u32,
    pub sockets: u32,
    pub listeners: u32,
    pub connections: u32,
    pub unattributed_no_permission: u32,
    pub unattributed_process_gone: u32,
    pub unattributed_unknown: u32,
    pub kernel_owned: u32,
    pub scan_duration_micros: u64,
    pub state_names: Vec<String>,
    pub state_counts: Vec<u32>,
    pub added: u32,
    pub removed: u32,
    pub changed: u32,
    pub flows_upserted: u32,
    pub flows_removed: u32,
    pub has_host: u8,
    pub interface_names: Vec<String>,
    pub interfaces: Vec<String>,
    pub ephemeral_known: u8,
    pub ephemeral_min: u16,
    pub ephemeral_max: u16,
    pub interface_netns: Vec<u64>,
}

impl ReportRow {
    pub fn facts(&self) -> HostFactsCols {
        HostFactsCols {
            interface_names: self.interface_names.clone(),
            interfaces: self.interfaces.clone(),
            ephemeral_known: self.ephemeral_known,
            ephemeral_min: self.ephemeral_min,
            ephemeral_max: self.ephemeral_max,
            interface_netns: self.interface_netns.clone(),
        }
    }
}

impl SocketCols {
    /// Encodes a socket; `process` says what is known of each pid.
    pub fn encode<'a>(socket: &Socket, process: impl Fn(u32) -> Option<&'a Process>) -> Self {
        let k = &socket.key;
        let mut c = SocketCols {
            protocol: k.protocol.as_str().into(),
            family: family(k.local_address),
            local_address: k.local_address.to_string(),
            local_port: k.local_port,
            remote_address: k.remote_address.to_string(),
            remote_port: k.remote_port,
            state: socket.state.as_str().into(),
            inode: k.inode,
            uid: socket.uid,
            listener: u8::from(socket.is_listener()),
            attribution: socket.attribution.as_str().into(),
            scope: socket.scope.as_str().into(),
            exposure: socket.exposure.as_str().into(),
            pids: socket.pids.clone(),
            netns: k.netns,
            path: socket.path.clone(),
            ..SocketCols::default()
        };
        for pid in &socket.pids {
            let p = process(*pid);
            let empty = Process::default();
            let q = p.unwrap_or(&empty);
            c.process_known.push(u8::from(p.is_some()));
            c.process_names.push(q.name.clone());
            c.process_executables.push(q.executable.clone());
            c.process_command_lines.push(q.command_line.clone());
            c.process_uids.push(q.uid);
            c.process_users.push(q.user.clone());
            c.process_units.push(q.systemd_unit.clone());
            c.process_containers.push(q.container_id.clone());
            c.process_cgroups.push(q.cgroup.clone());
            c.process_pod_uids.push(q.pod_uid.clone());
            c.process_pod_names.push(q.pod_name.clone());
            c.process_pod_namespaces.push(q.pod_namespace.clone());
        }
        if let Some(first) = socket.pids.first().and_then(|pid| process(*pid)) {
            c.process = first.name.clone();
            c.executable = first.executable.clone();
            c.systemd_unit = first.systemd_unit.clone();
            c.container_id = first.container_id.clone();
            c.pod_uid = first.pod_uid.clone();
            c.pod_name = first.pod_name.clone();
            c.pod_namespace = first.pod_namespace.clone();
        }
        c
    }

    /// The socket and the known processes of its pids, in pid order.
    pub fn decode(&self, table: &'static str) -> Result<(Socket, Vec<Process>), StoreError> {
        let key = SocketKey {
            protocol: parse_protocol(table, &self.protocol)?,
            local_address: parse_addr(table, "local_address", &self.local_address)?,
            local_port: self.local_port,
            remote_address: parse_addr(table, "remote_address", &self.remote_address)?,
            remote_port: self.remote_port,
            inode: self.inode,
            netns: self.netns,
        };
        let socket = Socket {
            key,
            state: parse_state(table, &self.state)?,
            uid: self.uid,
            pids: self.pids.clone(),
            attribution: parse_attribution(table, &self.attribution)?,
            scope: parse_scope(table, "scope", &self.scope)?,
            exposure: parse_scope(table, "exposure", &self.exposure)?,
            path: self.path.clone(),
        };
        let n = self.pids.len();
        let lengths = [
            self.process_known.len(),
            self.process_names.len(),
            self.process_executables.len(),
            self.process_command_lines.len(),
            self.process_uids.len(),
            self.process_users.len(),
            self.process_units.len(),
            self.process_containers.len(),
            self.process_cgroups.len(),
        ];
        if lengths.iter().any(|l| *l != n) {
            return Err(corrupt(table, "process_*", "arrays as long as `pids`"));
        }
        // Rows written before migration 4 have no pod arrays: no pods.
        let pods = [
            &self.process_pod_uids,
            &self.process_pod_names,
            &self.process_pod_namespaces,
        ];
        if pods.iter().any(|a| !a.is_empty() && a.len() != n) {
            return Err(corrupt(table, "process_pod_*", "arrays as long as `pids`"));
        }
        let pod = |a: &Vec<String>, i: usize| a.get(i).cloned().unwrap_or_default();
        let processes = (0..n)
            .filter(|i| self.process_known[*i] != 0)
            .map(|i| Process {
                pid: self.pids[i],
                name: self.process_names[i].clone(),
                executable: self.process_executables[i].clone(),
                command_line: self.process_command_lines[i].clone(),
                uid: self.process_uids[i],
                user: self.process_users[i].clone(),
                systemd_unit: self.process_units[i].clone(),
                container_id: self.process_containers[i].clone(),
                cgroup: self.process_cgroups[i].clone(),
                pod_uid: pod(&self.process_pod_uids, i),
                pod_name: pod(&self.process_pod_names, i),
                pod_namespace: pod(&self.process_pod_namespaces, i),
            })
            .collect();
        Ok((socket, processes))
    }
}

impl FlowCols {
    /// Encodes a flow with what is known of its process.
    pub fn encode(flow: &Flow, process: Option<&Process>) -> Self {
        let k = &flow.key;
        let empty = Process::default();
        let p = process.unwrap_or(&empty);
        FlowCols {
            protocol: k.protocol.as_str().into(),
            direction: k.direction.as_str().into(),
            family: family(k.local_address),
            local_address: k.local_address.to_string(),
            remote_address: k.remote_address.to_string(),
            service_port: k.service_port,
            state: k.state.as_str().into(),
            pid: k.pid,
            connections: flow.connections,
            process_known: u8::from(process.is_some()),
            process: p.name.clone(),
            executable: p.executable.clone(),
            command_line: p.command_line.clone(),
            process_uid: p.uid,
            user: p.user.clone(),
            systemd_unit: p.systemd_unit.clone(),
            container_id: p.container_id.clone(),
            cgroup: p.cgroup.clone(),
            netns: k.netns,
            pod_uid: p.pod_uid.clone(),
            pod_name: p.pod_name.clone(),
            pod_namespace: p.pod_namespace.clone(),
        }
    }

    /// The flow and its process when known.
    pub fn decode(&self, table: &'static str) -> Result<(Flow, Option<Process>), StoreError> {
        let key = FlowKey {
            protocol: parse_protocol(table, &self.protocol)?,
            direction: parse_direction(table, &self.direction)?,
            local_address: parse_addr(table, "local_address", &self.local_address)?,
            remote_address: parse_addr(table, "remote_address", &self.remote_address)?,
            service_port: self.service_port,
            state: parse_state(table, &self.state)?,
            pid: self.pid,
            netns: self.netns,
        };
        let process = (self.process_known != 0).then(|| Process {
            pid: self.pid,
            name: self.process.clone(),
            executable: self.executable.clone(),
            command_line: self.command_line.clone(),
            uid: self.process_uid,
            user: self.user.clone(),
            systemd_unit: self.systemd_unit.clone(),
            container_id: self.container_id.clone(),
            cgroup: self.cgroup.clone(),
            pod_uid: self.pod_uid.clone(),
            pod_name: self.pod_name.clone(),
            pod_namespace: self.pod_namespace.clone(),
        });
        Ok((
            Flow {
                key,
                connections: self.connections,
            },
            process,
        ))
    }
}

/// Declares a group of columns two tables share, once: its struct `$cols`, and each
/// table's row struct, its own leading columns then the shared ones, with `cols()` /
/// `with_cols()` to move the shared part in and out.
macro_rules! shared_rows {
    (
        $(#[$cmeta:meta])*
        $cols:ident { $($col:ident : $cty:ty),* $(,)? }
        $($rows:tt)*
    ) => {
        $(#[$cmeta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub(crate) struct $cols {
            $(pub $col: $cty,)*
        }

        shared_rows!(@rows $cols { $($col: $cty),* } $($rows)*);
    };
    (
        @rows $cols:ident { $($col:ident : $cty:ty),* }
        $(#[$meta:meta])*
        $name:ident { $($head:ident : $hty:ty),* $(,)? }
        $($rest:tt)*
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
        pub(crate) struct $name {
            $(pub $head: $hty,)*
            $(pub $col: $cty,)*
        }

        impl $name {
            pub fn with_cols($($head: $hty,)* c: $cols) -> Self {
                $name { $($head,)* $($col: c.$col,)* }
            }

            #[allow(dead_code)]
            pub fn cols(&self) -> $cols {
                $cols { $($col: self.$col.clone(),)* }
            }
        }

        shared_rows!(@rows $cols { $($col: $cty),* } $($rest)*);
    };
    (@rows $cols:ident { $($col:ident : $cty:ty),* }) => {};
}

shared_rows! {
    /// The socket columns shared by `socket_events` and `sockets_current`.
    SocketCols {
        protocol: String,
        family: u8,
        local_address: String,
        local_port: u16,
        remote_address: String,
        remote_port: u16,
        state: String,
        inode: u64,
        uid: u32,
        listener: u8,
        attribution: String,
        scope: String,
        exposure: String,
        pids: Vec<u32>,
        process_known: Vec<u8>,
        process_names: Vec<String>,
        process_executables: Vec<String>,
        process_command_lines: Vec<String>,
        process_uids: Vec<u32>,
        process_users: Vec<String>,
        process_units: Vec<String>,
        process_containers: Vec<String>,
        process_cgroups: Vec<String>,
        process: String,
        executable: String,
        systemd_unit: String,
        container_id: String,
        netns: u64,
        process_pod_uids: Vec<String>,
        process_pod_names: Vec<String>,
        process_pod_namespaces: Vec<String>,
        pod_uid: String,
        pod_name: String,
        pod_namespace: String,
        path: String,
    }
    /// `socket_events`.
    SocketEventRow { host_id: String, seq: u64, at: u32, event: String, socket_key: String }
    /// `sockets_current`.
    SocketCurrentRow { host_id: String, socket_key: String, seq: u64, present: u8, updated_at: u32 }
}

shared_rows! {
    /// The flow columns shared by `flow_events` and `flows_current`.
    FlowCols {
        protocol: String,
        direction: String,
        family: u8,
        local_address: String,
        remote_address: String,
        service_port: u16,
        state: String,
        pid: u32,
        connections: u32,
        process_known: u8,
        process: String,
        executable: String,
        command_line: String,
        process_uid: u32,
        user: String,
        systemd_unit: String,
        container_id: String,
        cgroup: String,
        netns: u64,
        pod_uid: String,
        pod_name: String,
        pod_namespace: String,
    }
    /// `flow_events`.
    FlowEventRow { host_id: String, seq: u64, at: u32, event: String, flow_key: String }
    /// `flows_current`.
    FlowCurrentRow { host_id: String, flow_key: String, seq: u64, present: u8, updated_at: u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn socket() -> Socket {
        Socket {
            key: SocketKey {
                protocol: Protocol::Udp,
                local_address: IpAddr::V6(Ipv6Addr::LOCALHOST),
                local_port: 53,
                remote_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                remote_port: 0,
                inode: 77,
                netns: 4_026_532_001,
            },
            state: SocketState::Close,
            uid: 101,
            pids: vec![3, 9],
            attribution: Attribution::Owned,
            scope: Scope::Loopback,
            exposure: Scope::Loopback,
            path: String::new(),
        }
    }

    #[test]
    fn socket_columns_round_trip_with_an_unknown_process() {
        let known = Process {
            pid: 9,
            name: "dnsmasq".into(),
            cgroup: "/system.slice/dnsmasq.service".into(),
            pod_uid: "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into(),
            pod_name: "dns-0".into(),
            pod_namespace: "kube-system".into(),
            ..Process::default()
        };
        let cols = SocketCols::encode(&socket(), |pid| (pid == 9).then_some(&known));
        assert_eq!(cols.process_known, vec![0, 1]);
        assert_eq!(cols.process, "", "the first pid is unknown");
        let (back, processes) = cols.decode("t").expect("decodes");
        assert_eq!(back, socket());
        assert_eq!(processes, vec![known]);
    }

    #[test]
    fn every_protocol_and_a_unix_path_round_trip() {
        for protocol in Protocol::ALL {
            let mut s = socket();
            s.key.protocol = protocol;
            if protocol == Protocol::Unix {
                s.path = "@/tmp/.X11-unix/X0".into();
            }
            let cols = SocketCols::encode(&s, |_| None);
            assert_eq!(cols.protocol, protocol.as_str());
            assert_eq!(cols.path, s.path);
            assert_eq!(cols.decode("t").expect("decodes").0, s);
        }
        let cols = SocketCols {
            protocol: "icmp".into(),
            ..SocketCols::encode(&socket(), |_| None)
        };
        assert!(cols.decode("t").is_err());
    }

    #[test]
    fn host_facts_round_trip() {
        let state = HostState {
            interfaces: vec![
                InterfaceAddress {
                    interface: "eth0".into(),
                    address: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                    prefix_len: 24,
                    netns: 0,
                },
                InterfaceAddress {
                    interface: "eth0".into(),
                    address: "fe80::1".parse().expect("addr"),
                    prefix_len: 64,
                    netns: 4_026_532_001,
                },
            ],
            ephemeral_ports: Some((0, 0)),
        };
        let cols = HostFactsCols::encode(&state);
        assert_eq!(cols.interfaces, vec!["10.1.2.3/24", "fe80::1/64"]);
        assert_eq!(cols.decode("hosts").expect("decodes"), state);
        let none = HostState::default();
        assert_eq!(
            HostFactsCols::encode(&none)
                .decode("hosts")
                .expect("decodes"),
            none
        );
    }

    #[test]
    fn unknown_enum_values_name_the_column() {
        let mut cols = SocketCols::encode(&socket(), |_| None);
        cols.state = "ESTAB".into();
        let err = cols.decode("sockets_current").expect_err("bad state");
        assert!(err.to_string().contains("sockets_current.state"), "{err}");
    }
}
