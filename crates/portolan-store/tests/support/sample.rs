//! A sample fleet for the store tests: host `h` at scan `step`, with its Hello facts and
//! scan statistics.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portolan_core::{
    Attribution, Direction, FlowKey, HostState, InterfaceAddress, Inventory, Process, Protocol,
    ScanStats, Scope, Socket, SocketKey, SocketState,
};
use portolan_store::HostRecord;

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn at(step: usize) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 10 * step as u64)
}

pub fn host_id(h: usize) -> String {
    format!("host-{h:04}")
}

/// Host `h` at scan `step`: each step one listener goes and another comes, every third
/// step the processes get a new command line (their sockets change), flows count up and
/// one goes at step 3, and the host gains an interface at step 2.
pub fn inventory(h: usize, step: usize) -> Inventory {
    let mut inventory = Inventory {
        host: HostState {
            interfaces: vec![InterfaceAddress {
                interface: "eth0".into(),
                address: ip(&format!("10.{}.{}.1", h / 250, h % 250)),
                prefix_len: 24,
                netns: 0,
            }],
            ..HostState::default()
        },
        ..Inventory::default()
    };
    if step >= 2 {
        inventory.host.interfaces.push(InterfaceAddress {
            interface: "docker0".into(),
            address: ip("172.17.0.1"),
            prefix_len: 16,
            netns: 0,
        });
    }
    for j in 0..6 {
        let port = 1000 + ((step + j) % 12) as u16;
        let pid = u32::from(port) + 100;
        let socket = Socket {
            key: SocketKey {
                protocol: Protocol::Tcp,
                local_address: ip("0.0.0.0"),
                local_port: port,
                remote_address: ip("0.0.0.0"),
                remote_port: 0,
                inode: 100_000 * h as u64 + u64::from(port),
                netns: 0,
            },
            state: SocketState::Listen,
            uid: 0,
            pids: vec![pid],
            attribution: Attribution::Owned,
            scope: portolan_core::classify(ip("0.0.0.0")),
            exposure: Scope::Wildcard,
            path: String::new(),
        };
        inventory.sockets.insert(socket.key, socket);
        inventory.processes.insert(
            pid,
            Process {
                pid,
                name: format!("svc{port}"),
                executable: format!("/usr/bin/svc{port}"),
                command_line: format!("/usr/bin/svc{port} --generation {}", step / 3),
                user: "svc".into(),
                systemd_unit: format!("svc{port}.service"),
                ..Process::default()
            },
        );
    }
    for (i, port) in [5432_u16, 6379].into_iter().enumerate() {
        if port == 6379 && step >= 3 {
            continue;
        }
        let pid = 1001; // svc901 is never a listener: the flows' own process
        let key = FlowKey {
            protocol: Protocol::Tcp,
            direction: Direction::Outbound,
            local_address: ip("10.0.0.1"),
            remote_address: ip(&format!("10.9.0.{}", i + 1)),
            service_port: port,
            state: SocketState::Established,
            pid,
            netns: 0,
        };
        inventory.flows.insert(key, 1 + step as u32);
        inventory.processes.insert(
            pid,
            Process {
                pid,
                name: "client".into(),
                executable: "/usr/bin/client".into(),
                command_line: "/usr/bin/client".into(),
                ..Process::default()
            },
        );
    }
    inventory.retain_referenced_processes();
    inventory
}

pub fn stats(step: usize) -> ScanStats {
    ScanStats {
        sockets: 8,
        listeners: 6,
        connections: 2,
        scan_duration_micros: 100 + step as u64,
        ..ScanStats::default()
    }
}

pub fn record(h: usize, inventory: &Inventory) -> HostRecord {
    HostRecord {
        host_id: host_id(h),
        hostname: format!("node{h}"),
        labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        agent_version: "0.1.0".into(),
        kernel: "6.1.0".into(),
        os: "Debian GNU/Linux 12".into(),
        scan_interval_ms: 10_000,
        collector: "test".into(),
        host: inventory.host.clone(),
    }
}
