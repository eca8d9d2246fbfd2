//! Rendering a [`Scan`] for people (`table`) and programs (`json`).
//!
//! Both list the same sockets in the same order: listeners first, then by local port,
//! protocol and addresses. Every socket's exposure is resolved against the scanned
//! interfaces of the socket's own network namespace with [`portolan_core::SocketKey::scopes`]
//! (a Unix socket is host-local), as the stream path does: with `--all-namespaces` a
//! wildcard bind inside a pod is scoped by the pod's interfaces, not the node's.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;

use portolan_core::inventory::ScannedSocket;
use portolan_core::socket::Endpoint;
use portolan_core::{Attribution, HostState, Process, Protocol, ScanStats, Scope, SocketState};
use serde::Serialize;

use crate::scan::{Scan, is_listener};

/// Which sockets to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// Only listeners (TCP LISTEN, bound unconnected UDP).
    pub listening_only: bool,
}

/// The JSON document `portolan-agent scan --output json` prints. Field names are stable:
/// scripts depend on them.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    /// Interface addresses and the ephemeral port range.
    pub host: &'a HostState,
    /// Sockets in display order.
    pub sockets: Vec<SocketEntry<'a>>,
    /// Counts over every scanned socket (not only the ones shown).
    pub stats: &'a ScanStats,
    /// Whether processes were attributed; when false every `processes` list is empty.
    pub processes_attributed: bool,
    /// Problems that made the scan less complete.
    pub warnings: &'a [String],
}

/// One socket of the JSON document.
#[derive(Debug, Serialize)]
pub struct SocketEntry<'a> {
    /// `tcp`, `udp`, `raw`, `unix` or `sctp`.
    pub protocol: Protocol,
    /// Kernel state; bound unconnected UDP sockets are `LISTEN`, connected ones
    /// `ESTABLISHED`.
    pub state: SocketState,
    /// Local (bind) address.
    pub local_address: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address; unspecified when not connected.
    pub remote_address: IpAddr,
    /// Remote port; 0 when not connected.
    pub remote_port: u16,
    /// Socket inode; 0 for sockets without one (TIME_WAIT).
    pub inode: u64,
    /// Network namespace (inode); 0: the agent's own. Others appear with
    /// `--all-namespaces`.
    pub netns: u64,
    /// Owner uid as the kernel reports it.
    pub uid: u32,
    /// Scope of the local address.
    pub scope: Scope,
    /// A Unix socket's path (`@name` when abstract); absent for other protocols.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub path: &'a str,
    /// Widest scope the socket is reachable on.
    pub exposure: Scope,
    /// TCP LISTEN or bound, unconnected UDP.
    pub listener: bool,
    /// Why `processes` is what it is.
    pub attribution: Attribution,
    /// Owning processes, by pid.
    pub processes: Vec<ProcessEntry<'a>>,
}

/// One owning process of a socket in the JSON document.
#[derive(Debug, Serialize)]
pub struct ProcessEntry<'a> {
    /// Process id.
    pub pid: u32,
    /// Short name (`comm`).
    pub name: &'a str,
    /// Executable path; empty when unreadable.
    pub executable: &'a str,
    /// Command line, at most 4096 bytes.
    pub command_line: &'a str,
    /// User name, or the uid when the passwd file does not know it; empty when unreadable.
    pub user: &'a str,
    /// systemd unit; empty when none.
    pub systemd_unit: &'a str,
    /// Container id; empty when none.
    pub container_id: &'a str,
}

/// The sockets `view` selects, in display order.
pub fn selected(scan: &Scan, view: View) -> Vec<&ScannedSocket> {
    let mut sockets: Vec<&ScannedSocket> = scan
        .sockets
        .iter()
        .filter(|s| !view.listening_only || is_listener(s))
        .collect();
    sockets.sort_by(|a, b| display_order(a, b));
    sockets
}

fn display_order(a: &ScannedSocket, b: &ScannedSocket) -> Ordering {
    is_listener(b)
        .cmp(&is_listener(a))
        .then(a.key.local_port.cmp(&b.key.local_port))
        .then(a.key.protocol.cmp(&b.key.protocol))
        .then(a.key.local_address.cmp(&b.key.local_address))
        .then(a.key.remote_address.cmp(&b.key.remote_address))
        .then(a.key.remote_port.cmp(&b.key.remote_port))
        .then(a.key.inode.cmp(&b.key.inode))
}

/// The JSON document for `scan`.
pub fn document(scan: &Scan, view: View) -> Document<'_> {
    let sockets = selected(scan, view)
        .into_iter()
        .map(|s| SocketEntry {
            protocol: s.key.protocol,
            state: s.state,
            local_address: s.key.local_address,
            local_port: s.key.local_port,
            remote_address: s.key.remote_address,
            remote_port: s.key.remote_port,
            inode: s.key.inode,
            netns: s.key.netns,
            uid: s.uid,
            scope: s.key.scopes(&scan.host.interfaces).0,
            exposure: s.key.scopes(&scan.host.interfaces).1,
            path: &s.path,
            listener: is_listener(s),
            attribution: s.attribution,
            processes: s
                .pids
                .iter()
                .filter_map(|pid| scan.process(*pid))
                .map(|p| ProcessEntry {
                    pid: p.pid,
                    name: &p.name,
                    executable: &p.executable,
                    command_line: &p.command_line,
                    user: &p.user,
                    systemd_unit: &p.systemd_unit,
                    container_id: &p.container_id,
                })
                .collect(),
        })
        .collect();
    Document {
        host: &scan.host,
        sockets,
        stats: &scan.stats,
        processes_attributed: scan.processes_attributed,
        warnings: &scan.warnings,
    }
}

/// Writes the JSON document, pretty-printed, and a final newline.
pub fn write_json(out: &mut dyn Write, scan: &Scan, view: View) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &document(scan, view))?;
    out.write_all(b"\n")
}

const HEADER: [&str; 8] = [
    "PROTO", "STATE", "LOCAL", "PEER", "EXPOSURE", "PROCESS", "USER", "UNIT",
];

/// Writes one row per socket like `ss -tunap`, with exposure, user and unit or container,
/// then a footer with counts and what could not be attributed.
pub fn write_table(out: &mut dyn Write, scan: &Scan, view: View) -> io::Result<()> {
    let sockets = selected(scan, view);
    let rows: Vec<[String; 8]> = sockets.iter().map(|s| table_row(scan, s)).collect();
    let mut widths = HEADER.map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = String::new();
    write_row(out, &mut line, &widths, HEADER.iter().copied())?;
    for row in &rows {
        write_row(out, &mut line, &widths, row.iter().map(String::as_str))?;
    }
    for footer in footer(scan, view, rows.len()) {
        writeln!(out, "{footer}")?;
    }
    Ok(())
}

fn write_row<'a>(
    out: &mut dyn Write,
    line: &mut String,
    widths: &[usize; 8],
    cells: impl Iterator<Item = &'a str>,
) -> io::Result<()> {
    line.clear();
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        line.push_str(cell);
        if i + 1 < widths.len() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    let trimmed = line.trim_end();
    writeln!(out, "{trimmed}")
}

fn table_row(scan: &Scan, s: &ScannedSocket) -> [String; 8] {
    let key = &s.key;
    let state = match (key.protocol, s.state) {
        (Protocol::Udp, _) if is_listener(s) => "UNCONN",
        (_, state) => state.as_str(),
    };
    let peer = if key.remote_port == 0 && key.remote_address.is_unspecified() {
        "*".to_string()
    } else {
        Endpoint(key.remote_address, key.remote_port).to_string()
    };
    let (scope, exposed) = key.scopes(&scan.host.interfaces);
    let exposure = if scope == exposed {
        scope.to_string()
    } else {
        format!("{scope} ({exposed})")
    };
    let processes: Vec<&Process> = s.pids.iter().filter_map(|pid| scan.process(*pid)).collect();
    let process = match (processes.first(), s.attribution) {
        (Some(p), _) => {
            let mut cell = format!("{}/{}", p.pid, p.name);
            if processes.len() > 1 {
                let _ = write!(cell, " +{}", processes.len() - 1);
            }
            cell
        }
        (None, _) if !scan.processes_attributed => "-".to_string(),
        (None, Attribution::Kernel) => "(kernel)".to_string(),
        (None, Attribution::NoPermission) => "(no permission)".to_string(),
        (None, Attribution::ProcessGone) => "(exited)".to_string(),
        (None, _) => "(unknown)".to_string(),
    };
    let user = match processes.first() {
        Some(p) if !p.user.is_empty() => p.user.clone(),
        // the kernel's uid of a TIME_WAIT or not yet accepted socket says nothing
        _ if s.attribution == Attribution::Kernel => "-".to_string(),
        _ => s.uid.to_string(),
    };
    let unit = match processes.first() {
        Some(p) if !p.container_id.is_empty() => {
            format!(
                "container {}",
                p.container_id.get(..12).unwrap_or(&p.container_id)
            )
        }
        Some(p) if !p.systemd_unit.is_empty() => p.systemd_unit.clone(),
        _ => "-".to_string(),
    };
    [
        key.protocol.to_string(),
        state.to_string(),
        if key.protocol == Protocol::Unix {
            s.path.clone()
        } else {
            Endpoint(key.local_address, key.local_port).to_string()
        },
        peer,
        exposure,
        process,
        user,
        unit,
    ]
}

/// Footer lines: counts, then attribution problems, then the scan's duration.
pub fn footer(scan: &Scan, view: View, shown: usize) -> Vec<String> {
    let st = &scan.stats;
    let mut lines = Vec::new();
    let other = st.sockets.saturating_sub(st.listeners + st.connections);
    let mut counts = format!(
        "{}: {} listening, {} connected",
        plural(st.sockets, "socket"),
        st.listeners,
        st.connections
    );
    if other > 0 {
        let _ = write!(counts, ", {other} other");
    }
    if st.kernel_owned > 0 {
        let _ = write!(
            counts,
            "; {} held by the kernel (TIME_WAIT, not yet accepted, orphaned)",
            st.kernel_owned
        );
    }
    if view.listening_only {
        let _ = write!(counts, "; {shown} listeners shown");
    }
    lines.push(counts);

    if !scan.processes_attributed {
        lines.push("process attribution off (--no-processes)".to_string());
    } else {
        let unowned =
            st.unattributed_no_permission + st.unattributed_process_gone + st.unattributed_unknown;
        if unowned > 0 {
            let mut reasons = Vec::new();
            if st.unattributed_no_permission > 0 {
                reasons.push(format!(
                    "{} need CAP_DAC_READ_SEARCH/CAP_SYS_PTRACE to attribute (run as root or grant the capabilities)",
                    st.unattributed_no_permission
                ));
            }
            if st.unattributed_process_gone > 0 {
                reasons.push(format!(
                    "{} belonged to processes that exited during the scan",
                    st.unattributed_process_gone
                ));
            }
            if st.unattributed_unknown > 0 {
                reasons.push(format!(
                    "{} held by no process visible here (one in another pid namespace, or a socket in flight over a unix socket)",
                    st.unattributed_unknown
                ));
            }
            lines.push(format!(
                "{} without owner: {}",
                plural(unowned, "socket"),
                reasons.join(", ")
            ));
        }
    }
    lines.push(format!(
        "scanned in {:.1} ms",
        st.scan_duration_micros as f64 / 1000.0
    ));
    lines
}

fn plural(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portolan_core::{InterfaceAddress, SocketKey};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn socket(
        protocol: Protocol,
        state: SocketState,
        local: (&str, u16),
        remote: (&str, u16),
        pids: Vec<u32>,
        attribution: Attribution,
    ) -> ScannedSocket {
        ScannedSocket {
            key: SocketKey {
                protocol,
                local_address: ip(local.0),
                local_port: local.1,
                remote_address: ip(remote.0),
                remote_port: remote.1,
                inode: 7,
                netns: 0,
            },
            state,
            uid: 1000,
            pids,
            attribution,
            path: String::new(),
        }
    }

    fn sample() -> Scan {
        let sockets = vec![
            socket(
                Protocol::Tcp,
                SocketState::Established,
                ("10.0.0.5", 22),
                ("10.0.0.9", 51000),
                vec![42],
                Attribution::Owned,
            ),
            socket(
                Protocol::Tcp,
                SocketState::Listen,
                ("0.0.0.0", 22),
                ("0.0.0.0", 0),
                vec![42],
                Attribution::Owned,
            ),
            socket(
                Protocol::Tcp,
                SocketState::Listen,
                ("::1", 5432),
                ("::", 0),
                vec![],
                Attribution::NoPermission,
            ),
            socket(
                Protocol::Udp,
                SocketState::Listen,
                ("127.0.0.53", 53),
                ("0.0.0.0", 0),
                vec![],
                Attribution::NoPermission,
            ),
        ];
        Scan {
            host: HostState {
                interfaces: vec![InterfaceAddress {
                    interface: "eth0".into(),
                    address: ip("10.0.0.5"),
                    prefix_len: 24,
                    netns: 0,
                }],
                ephemeral_ports: Some((32768, 60999)),
            },
            sockets,
            processes: vec![Process {
                pid: 42,
                name: "sshd".into(),
                user: "root".into(),
                systemd_unit: "ssh.service".into(),
                ..Process::default()
            }],
            stats: ScanStats {
                sockets: 4,
                listeners: 3,
                connections: 1,
                unattributed_no_permission: 2,
                state_counts: BTreeMap::new(),
                ..ScanStats::default()
            },
            processes_attributed: true,
            warnings: vec![],
        }
    }

    #[test]
    fn table_lists_listeners_first_by_port_with_exposure_and_reasons() {
        let mut out = Vec::new();
        write_table(&mut out, &sample(), View::default()).expect("write to a vec");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PROTO  STATE"), "{text}");
        assert!(
            lines[1].contains("0.0.0.0:22") && lines[1].contains("wildcard (private)"),
            "{text}"
        );
        assert!(
            lines[1].contains("42/sshd") && lines[1].contains("ssh.service"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("udp") && lines[2].contains("UNCONN"),
            "{text}"
        );
        assert!(
            lines[3].contains("[::1]:5432") && lines[3].contains("(no permission)"),
            "{text}"
        );
        assert!(
            lines[4].contains("ESTABLISHED") && lines[4].contains("10.0.0.9:51000"),
            "{text}"
        );
        assert!(
            text.contains("2 sockets without owner: 2 need CAP_DAC_READ_SEARCH/CAP_SYS_PTRACE"),
            "{text}"
        );
    }

    #[test]
    fn listening_view_and_json_shape() {
        let scan = sample();
        let view = View {
            listening_only: true,
        };
        let mut out = Vec::new();
        write_json(&mut out, &scan, view).expect("write to a vec");
        let doc: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        let sockets = doc["sockets"].as_array().expect("sockets array");
        assert_eq!(sockets.len(), 3);
        let first = &sockets[0];
        assert_eq!(first["protocol"], "tcp");
        assert_eq!(first["state"], "LISTEN");
        assert_eq!(first["local_address"], "0.0.0.0");
        assert_eq!(first["local_port"], 22);
        assert_eq!(first["scope"], "wildcard");
        assert_eq!(first["exposure"], "private");
        assert_eq!(first["listener"], true);
        assert_eq!(first["attribution"], "owned");
        assert_eq!(first["processes"][0]["pid"], 42);
        assert_eq!(first["processes"][0]["systemd_unit"], "ssh.service");
        assert_eq!(doc["host"]["ephemeral_ports"][0], 32768);
        assert_eq!(doc["host"]["interfaces"][0]["interface"], "eth0");
        assert_eq!(doc["stats"]["unattributed_no_permission"], 2);
    }

    #[test]
    fn other_namespaces_wildcard_binds_are_scoped_by_their_own_interfaces() {
        // The node has a public address; a pod (netns 4026532999) has only a private
        // one, another (4026533000) only loopback: the same `0.0.0.0:80` is public on
        // the node and private or loopback in the pods, as the stream path stores it.
        let mut scan = sample();
        scan.host.interfaces.push(InterfaceAddress {
            interface: "eth1".into(),
            address: ip("203.0.113.7"),
            prefix_len: 32,
            netns: 0,
        });
        let pods = [
            (4_026_532_999u64, Some("10.244.1.7")),
            (4_026_533_000, None),
        ];
        for (netns, address) in pods {
            scan.host.interfaces.push(InterfaceAddress {
                interface: "lo".into(),
                address: ip("127.0.0.1"),
                prefix_len: 8,
                netns,
            });
            if let Some(a) = address {
                scan.host.interfaces.push(InterfaceAddress {
                    interface: "eth0".into(),
                    address: ip(a),
                    prefix_len: 24,
                    netns,
                });
            }
        }
        for netns in [0, 4_026_532_999, 4_026_533_000] {
            let mut s = socket(
                Protocol::Tcp,
                SocketState::Listen,
                ("0.0.0.0", 80),
                ("0.0.0.0", 0),
                vec![],
                Attribution::NoPermission,
            );
            s.key.netns = netns;
            s.key.inode = 100 + netns;
            scan.sockets.push(s);
        }
        let inventory = portolan_core::Inventory::from_scan(
            scan.host.clone(),
            scan.sockets.clone(),
            Vec::new(),
        );
        let mut out = Vec::new();
        write_json(&mut out, &scan, View::default()).expect("write to a vec");
        let doc: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        let port_80: Vec<(u64, String)> = doc["sockets"]
            .as_array()
            .expect("sockets array")
            .iter()
            .filter(|s| s["local_port"] == 80)
            .map(|s| {
                (
                    s["netns"].as_u64().expect("a netns"),
                    s["exposure"].as_str().expect("an exposure").to_string(),
                )
            })
            .collect();
        let mut port_80 = port_80;
        port_80.sort();
        assert_eq!(
            port_80,
            vec![
                (0, "public".to_string()),
                (4_026_532_999, "private".to_string()),
                (4_026_533_000, "loopback".to_string()),
            ]
        );
        // The same answer as what the agent streams.
        for (netns, exposure) in &port_80 {
            let stored = inventory
                .sockets
                .values()
                .find(|s| s.key.netns == *netns && s.key.local_port == 80)
                .expect("in the inventory");
            assert_eq!(&stored.exposure.to_string(), exposure);
        }
        let mut out = Vec::new();
        write_table(&mut out, &scan, View::default()).expect("write to a vec");
        let text = String::from_utf8(out).expect("utf-8");
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("0.0.0.0:80")).collect();
        assert_eq!(rows.len(), 3, "{text}");
        for want in [
            "wildcard (public)",
            "wildcard (private)",
            "wildcard (loopback)",
        ] {
            assert!(rows.iter().any(|r| r.contains(want)), "{want}: {text}");
        }
    }
}
