//! The query verbs: `hosts`, `host`, `sockets`, `who-listens`.
//!
//! Each asks the collector's query API over mutual TLS with an operator certificate and
//! prints a table for people or stable JSON for scripts.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_client::QueryServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::usage::usage;

/// How to reach the collector: flags or `PORTOLAN_*` environment variables.
#[derive(Debug, Args)]
pub struct Connection {
    /// Collector query endpoint.
    #[arg(
        long,
        env = "PORTOLAN_COLLECTOR",
        default_value = "https://localhost:7443",
        global = true
    )]
    collector: String,
    /// CA certificates the collector's certificate must chain to.
    #[arg(long, env = "PORTOLAN_CA", default_value = "ca.pem", global = true)]
    ca: PathBuf,
    /// Operator certificate (`portolan pki issue-operator`).
    #[arg(
        long,
        env = "PORTOLAN_CERT",
        default_value = "operator.pem",
        global = true
    )]
    cert: PathBuf,
    /// Key of the operator certificate.
    #[arg(
        long,
        env = "PORTOLAN_KEY",
        default_value = "operator.key",
        global = true
    )]
    key: PathBuf,
    /// Name to verify in the collector's certificate; default: the endpoint's host.
    #[arg(long, env = "PORTOLAN_SERVER_NAME", global = true)]
    server_name: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document, stable for scripts.
    Json,
}

/// Host selection shared by the verbs.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Only this host (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Only hosts with this label, `key=value` (repeatable).
    #[arg(long = "label", short = 'l', value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not a label: use key=value, e.g. env=prod"))
}

impl HostArgs {
    fn selector(&self) -> pb::HostSelector {
        pb::HostSelector {
            host_ids: self.hosts.clone(),
            labels: self.labels.iter().cloned().collect(),
        }
    }
}

/// `portolan hosts`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  portolan hosts\n  portolan hosts -l env=prod -o json")]
pub struct HostsArgs {
    #[command(flatten)]
    hosts: HostArgs,
}

/// `portolan host ID`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  portolan host db-1")]
pub struct HostArgsOne {
    /// The host's id.
    host_id: String,
}

/// `portolan sockets`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan sockets --listening --exposure public --exposure wildcard\n  portolan sockets -l env=prod --port 5432\n  portolan sockets --host db-1 --port 8000-8999 --process 'java*' -o json"
)]
pub struct SocketsArgs {
    #[command(flatten)]
    hosts: HostArgs,
    /// Local port or range (`5432`, `8000-8999`).
    #[arg(long, value_parser = parse_ports)]
    port: Option<(u16, u16)>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Only listeners.
    #[arg(long)]
    listening: bool,
    /// Only these exposures (repeatable).
    #[arg(long, value_enum)]
    exposure: Vec<ScopeArg>,
    /// Owning process name glob (`postgres*`).
    #[arg(long)]
    process: Option<String>,
    /// Most rows.
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
}

/// `portolan who-listens PORT`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan who-listens 5432\n  portolan who-listens 53 --protocol udp -l env=prod\n\nExit status: 0 when something listens on the port, 1 when nothing does."
)]
pub struct WhoListensArgs {
    /// The port.
    port: u16,
    /// Only this protocol.
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    #[command(flatten)]
    hosts: HostArgs,
}

/// `portolan flows`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan flows --port 5432 --direction in\n  portolan flows -l role=db --outside -o json\n\nEach flow is joined to the fleet host at its other end when the peer address belongs to one."
)]
pub struct FlowsArgs {
    #[command(flatten)]
    hosts: HostArgs,
    /// Service port (the server's port).
    #[arg(long)]
    port: Option<u16>,
    /// Only flows this host accepted (`in`) or opened (`out`).
    #[arg(long, value_enum)]
    direction: Option<DirectionArg>,
    /// Only flows whose peer is a host of the fleet.
    #[arg(long, conflicts_with = "outside")]
    inside: bool,
    /// Only flows whose peer is outside the fleet.
    #[arg(long)]
    outside: bool,
    /// Most rows.
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
}

/// `portolan findings`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan findings\n  portolan findings --severity high -l env=prod\n  portolan findings --status all --rule database-exposed -o json\n\nExit status: 0 when findings are listed, 1 when none match."
)]
pub struct FindingsArgs {
    #[command(flatten)]
    hosts: HostArgs,
    /// Which findings.
    #[arg(long, value_enum, default_value_t = StatusArg::Open)]
    status: StatusArg,
    /// Only this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Lowest severity: info, low, medium, high, critical.
    #[arg(long)]
    severity: Option<String>,
    /// Most rows.
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
}

/// Finding statuses on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// The rule matches now.
    Open,
    /// No longer matching.
    Resolved,
    /// Both.
    All,
}

/// Flow directions on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// Accepted by the host.
    In,
    /// Opened by the host.
    Out,
}

/// Protocols on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl ProtocolArg {
    fn wire(self) -> i32 {
        match self {
            ProtocolArg::Tcp => pb::Protocol::Tcp as i32,
            ProtocolArg::Udp => pb::Protocol::Udp as i32,
        }
    }
}

/// Exposure scopes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ScopeArg {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// RFC 1918, fc00::/7, 100.64.0.0/10.
    Private,
    /// Anything else.
    Public,
    /// 0.0.0.0 or ::.
    Wildcard,
}

impl ScopeArg {
    fn wire(self) -> i32 {
        (match self {
            ScopeArg::Loopback => pb::Scope::Loopback,
            ScopeArg::LinkLocal => pb::Scope::LinkLocal,
            ScopeArg::Private => pb::Scope::Private,
            ScopeArg::Public => pb::Scope::Public,
            ScopeArg::Wildcard => pb::Scope::Wildcard,
        }) as i32
    }
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not a port or range: use 5432 or 8000-8999");
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (
                lo.parse::<u16>().map_err(|_| bad())?,
                hi.parse::<u16>().map_err(|_| bad())?,
            );
            if lo > hi { Err(bad()) } else { Ok((lo, hi)) }
        }
        None => s.parse::<u16>().map(|p| (p, p)).map_err(|_| bad()),
    }
}

/// A query verb.
#[derive(Debug)]
pub enum Verb {
    /// `hosts`.
    Hosts(HostsArgs),
    /// `host`.
    Host(HostArgsOne),
    /// `sockets`.
    Sockets(SocketsArgs),
    /// `who-listens`.
    WhoListens(WhoListensArgs),
    /// `flows`.
    Flows(FlowsArgs),
    /// `findings`.
    Findings(FindingsArgs),
}

/// What a verb found, for the exit code: `Ok(false)` is "nothing found" where that
/// matters to scripts (`who-listens`).
pub fn run(connection: &Connection, verb: Verb, out: &mut dyn Write) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut client = connect(connection).await?;
        match verb {
            Verb::Hosts(args) => {
                let r = call(client.list_hosts(pb::ListHostsRequest { hosts: Some(args.hosts.selector()) }).await, connection)?;
                print_hosts(out, connection.output, &r.hosts)?;
                Ok(true)
            }
            Verb::Host(args) => {
                let r = call(client.get_host(pb::GetHostRequest { host_id: args.host_id }).await, connection)?;
                print_host(out, connection.output, &r)?;
                Ok(true)
            }
            Verb::Sockets(args) => {
                let (port_min, port_max) = args.port.map_or((0, 0), |(lo, hi)| (u32::from(lo), u32::from(hi)));
                let request = pb::ListSocketsRequest {
                    hosts: Some(args.hosts.selector()),
                    protocol: args.protocol.map_or(0, ProtocolArg::wire),
                    port_min,
                    port_max,
                    listening: args.listening,
                    exposures: args.exposure.iter().map(|s| s.wire()).collect(),
                    process: args.process.unwrap_or_default(),
                    limit: args.limit,
                };
                let r = call(client.list_sockets(request).await, connection)?;
                print_sockets(out, connection.output, &r.sockets)?;
                if r.truncated {
                    eprintln!("(more sockets matched than --limit {}; narrow the question or raise --limit)", args.limit);
                }
                Ok(true)
            }
            Verb::WhoListens(args) => {
                let request = pb::WhoListensRequest {
                    port: u32::from(args.port),
                    protocol: args.protocol.map_or(0, ProtocolArg::wire),
                    hosts: Some(args.hosts.selector()),
                };
                let r = call(client.who_listens(request).await, connection)?;
                print_sockets(out, connection.output, &r.listeners)?;
                Ok(!r.listeners.is_empty())
            }
            Verb::Findings(args) => {
                let request = pb::ListFindingsRequest {
                    hosts: Some(args.hosts.selector()),
                    status: match args.status {
                        StatusArg::Open => pb::FindingStatus::Open,
                        StatusArg::Resolved => pb::FindingStatus::Resolved,
                        StatusArg::All => pb::FindingStatus::Unspecified,
                    } as i32,
                    rule_id: args.rule.unwrap_or_default(),
                    min_severity: args.severity.unwrap_or_default(),
                    limit: args.limit,
                };
                let r = call(client.list_findings(request).await, connection)?;
                print_findings(out, connection.output, &r.findings)?;
                if r.truncated {
                    eprintln!("(more findings matched than --limit {}; narrow the question or raise --limit)", args.limit);
                }
                Ok(!r.findings.is_empty())
            }
            Verb::Flows(args) => {
                let request = pb::ListFlowsRequest {
                    hosts: Some(args.hosts.selector()),
                    port: args.port.map_or(0, u32::from),
                    direction: match args.direction {
                        None => pb::FlowDirection::Unspecified,
                        Some(DirectionArg::In) => pb::FlowDirection::Inbound,
                        Some(DirectionArg::Out) => pb::FlowDirection::Outbound,
                    } as i32,
                    peer: if args.inside {
                        pb::Peer::Inside
                    } else if args.outside {
                        pb::Peer::Outside
                    } else {
                        pb::Peer::Unspecified
                    } as i32,
                    limit: args.limit,
                };
                let r = call(client.list_flows(request).await, connection)?;
                print_flows(out, connection.output, &r.flows)?;
                if r.truncated {
                    eprintln!("(more flows matched than --limit {}; narrow the question or raise --limit)", args.limit);
                }
                Ok(true)
            }
        }
    })
}

/// A refusal or failure of the collector, with the gRPC code kept for the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The gRPC code.
    pub code: tonic::Code,
    message: String,
}

fn call<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    connection: &Connection,
) -> Result<T> {
    result.map(tonic::Response::into_inner).map_err(|status| {
        let hint = match status.code() {
            tonic::Code::Unavailable => {
                " (is the collector running and reachable? check --collector)"
            }
            _ => "",
        };
        anyhow::Error::new(CallError {
            code: status.code(),
            message: format!(
                "collector {} answered {:?}: {}{hint}",
                connection.collector,
                status.code(),
                status.message()
            ),
        })
    })
}

async fn connect(c: &Connection) -> Result<QueryServiceClient<Channel>> {
    let files = portolan_tls::TlsFiles {
        ca: c.ca.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
    };
    let tls = portolan_tls::client_config(&files).map_err(|e| {
        usage(format!(
            "{e} (set --ca/--cert/--key or PORTOLAN_CA/PORTOLAN_CERT/PORTOLAN_KEY)"
        ))
    })?;
    let options = portolan_tls::ConnectOptions {
        server_name: c.server_name.clone(),
        connect_timeout: Duration::from_secs(10),
    };
    let channel = portolan_tls::connect(&c.collector, tls, options)
        .await
        .map_err(|e| {
            anyhow::Error::new(CallError {
                code: tonic::Code::Unavailable,
                message: format!("{e} (is the collector running? check --collector)"),
            })
        })?;
    Ok(QueryServiceClient::new(channel))
}

fn when(unix: i64) -> String {
    if unix <= 0 {
        return "never".into();
    }
    let then = UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs());
    match SystemTime::now().duration_since(then) {
        Ok(age) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        ),
        Err(_) => "just now".into(),
    }
}

fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct HostJson<'a> {
    host_id: &'a str,
    hostname: &'a str,
    labels: std::collections::BTreeMap<&'a str, &'a str>,
    agent_version: &'a str,
    kernel: &'a str,
    os: &'a str,
    collector: &'a str,
    scan_interval_ms: u64,
    last_seen_unix: i64,
    last_seq: u64,
    stale: bool,
    listeners: u32,
    flows: u32,
}

fn host_json(h: &pb::HostSummary) -> HostJson<'_> {
    HostJson {
        host_id: &h.host_id,
        hostname: &h.hostname,
        labels: h
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        agent_version: &h.agent_version,
        kernel: &h.kernel,
        os: &h.os,
        collector: &h.collector,
        scan_interval_ms: h.scan_interval_ms,
        last_seen_unix: h.last_seen_unix,
        last_seq: h.last_seq,
        stale: h.stale,
        listeners: h.listeners,
        flows: h.flows,
    }
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

fn print_hosts(out: &mut dyn Write, output: Output, hosts: &[pb::HostSummary]) -> Result<()> {
    if output == Output::Json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({ "hosts": hosts.iter().map(host_json).collect::<Vec<_>>() }),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.host_id.clone(),
                h.hostname.clone(),
                labels_text(&h.labels),
                h.listeners.to_string(),
                h.flows.to_string(),
                format!(
                    "{}{}",
                    when(h.last_seen_unix),
                    if h.stale { " (stale)" } else { "" }
                ),
                h.agent_version.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "HOST",
            "HOSTNAME",
            "LABELS",
            "LISTENERS",
            "FLOWS",
            "LAST SEEN",
            "AGENT",
        ],
        &rows,
    )
}

fn print_host(out: &mut dyn Write, output: Output, r: &pb::GetHostResponse) -> Result<()> {
    let Some(h) = &r.host else { return Ok(()) };
    let state = r.state.clone().unwrap_or_default();
    let interfaces: Vec<String> = state
        .interfaces
        .iter()
        .filter_map(|i| {
            address(&i.address).map(|a| format!("{} {a}/{}", i.interface, i.prefix_len))
        })
        .collect();
    if output == Output::Json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({
                "host": host_json(h),
                "interfaces": interfaces,
                "ephemeral_ports": [state.ephemeral_port_min, state.ephemeral_port_max],
            }),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "host:        {}", h.host_id)?;
    writeln!(out, "hostname:    {}", h.hostname)?;
    writeln!(out, "labels:      {}", labels_text(&h.labels))?;
    writeln!(out, "os:          {} (kernel {})", h.os, h.kernel)?;
    writeln!(
        out,
        "agent:       {} via collector {}",
        h.agent_version, h.collector
    )?;
    writeln!(
        out,
        "last seen:   {}{} (seq {})",
        when(h.last_seen_unix),
        if h.stale { ", stale" } else { "" },
        h.last_seq
    )?;
    writeln!(out, "listeners:   {}; flows: {}", h.listeners, h.flows)?;
    writeln!(
        out,
        "ephemeral:   {}-{}",
        state.ephemeral_port_min, state.ephemeral_port_max
    )?;
    writeln!(out, "interfaces:  {}", interfaces.join(", "))?;
    Ok(())
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(b))
    } else {
        <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
    }
}

fn endpoint(addr: &[u8], port: u32) -> String {
    match address(addr) {
        Some(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => format!("?:{port}"),
    }
}

fn name<T: TryFrom<i32> + std::fmt::Debug>(value: i32) -> String {
    T::try_from(value)
        .map(|v| format!("{v:?}").to_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

#[derive(Serialize)]
struct SocketJson {
    host_id: String,
    hostname: String,
    protocol: String,
    state: String,
    local_address: String,
    local_port: u32,
    remote_address: String,
    remote_port: u32,
    scope: String,
    exposure: String,
    attribution: String,
    pids: Vec<u32>,
    processes: Vec<ProcessJson>,
}

#[derive(Serialize)]
struct ProcessJson {
    pid: u32,
    name: String,
    executable: String,
    user: String,
    systemd_unit: String,
    container_id: String,
}

fn process_json(p: &pb::Process) -> ProcessJson {
    ProcessJson {
        pid: p.pid,
        name: p.name.clone(),
        executable: p.executable.clone(),
        user: p.user.clone(),
        systemd_unit: p.systemd_unit.clone(),
        container_id: p.container_id.clone(),
    }
}

fn socket_json(s: &pb::HostSocket) -> SocketJson {
    let socket = s.socket.clone().unwrap_or_default();
    let ip = |b: &[u8]| address(b).map(|a| a.to_string()).unwrap_or_default();
    SocketJson {
        host_id: s.host_id.clone(),
        hostname: s.hostname.clone(),
        protocol: name::<pb::Protocol>(socket.protocol),
        state: name::<pb::SocketState>(socket.state),
        local_address: ip(&socket.local_address),
        local_port: socket.local_port,
        remote_address: ip(&socket.remote_address),
        remote_port: socket.remote_port,
        scope: name::<pb::Scope>(socket.scope),
        exposure: name::<pb::Scope>(socket.exposure),
        attribution: name::<pb::Attribution>(socket.attribution),
        pids: socket.pids.clone(),
        processes: s.processes.iter().map(process_json).collect(),
    }
}

fn print_sockets(out: &mut dyn Write, output: Output, sockets: &[pb::HostSocket]) -> Result<()> {
    let docs: Vec<SocketJson> = sockets.iter().map(socket_json).collect();
    if output == Output::Json {
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ "sockets": docs }))?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sockets
        .iter()
        .zip(&docs)
        .map(|(s, d)| {
            let socket = s.socket.clone().unwrap_or_default();
            let owner = d
                .processes
                .first()
                .map(|p| format!("{}/{}", p.pid, p.name))
                .unwrap_or_else(|| format!("({})", d.attribution));
            vec![
                if s.hostname.is_empty() {
                    s.host_id.clone()
                } else {
                    s.hostname.clone()
                },
                d.protocol.clone(),
                d.state.to_uppercase(),
                endpoint(&socket.local_address, socket.local_port),
                if socket.remote_port == 0 {
                    "*".into()
                } else {
                    endpoint(&socket.remote_address, socket.remote_port)
                },
                d.exposure.clone(),
                owner,
                d.processes
                    .first()
                    .map(|p| p.user.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "HOST", "PROTO", "STATE", "LOCAL", "PEER", "EXPOSURE", "PROCESS", "USER",
        ],
        &rows,
    )
}

#[derive(Serialize)]
struct FlowJson {
    host_id: String,
    hostname: String,
    protocol: String,
    direction: String,
    local_address: String,
    remote_address: String,
    service_port: u32,
    state: String,
    connections: u32,
    pid: u32,
    process: Option<ProcessJson>,
    peer: String,
    peer_host_id: String,
    peer_hostname: String,
}

fn flow_json(f: &pb::HostFlow) -> FlowJson {
    let flow = f.flow.clone().unwrap_or_default();
    let ip = |b: &[u8]| address(b).map(|a| a.to_string()).unwrap_or_default();
    FlowJson {
        host_id: f.host_id.clone(),
        hostname: f.hostname.clone(),
        protocol: name::<pb::Protocol>(flow.protocol),
        direction: name::<pb::FlowDirection>(flow.direction),
        local_address: ip(&flow.local_address),
        remote_address: ip(&flow.remote_address),
        service_port: flow.service_port,
        state: name::<pb::SocketState>(flow.state),
        connections: flow.connections,
        pid: flow.pid,
        process: f.process.as_ref().map(process_json),
        peer: name::<pb::Peer>(f.peer),
        peer_host_id: f.peer_host_id.clone(),
        peer_hostname: f.peer_hostname.clone(),
    }
}

fn print_flows(out: &mut dyn Write, output: Output, flows: &[pb::HostFlow]) -> Result<()> {
    let docs: Vec<FlowJson> = flows.iter().map(flow_json).collect();
    if output == Output::Json {
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ "flows": docs }))?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            vec![
                if d.hostname.is_empty() {
                    d.host_id.clone()
                } else {
                    d.hostname.clone()
                },
                d.direction.clone(),
                d.protocol.clone(),
                d.local_address.clone(),
                d.remote_address.clone(),
                d.service_port.to_string(),
                d.state.to_uppercase(),
                d.connections.to_string(),
                d.process.as_ref().map_or_else(
                    || "(kernel)".to_string(),
                    |p| format!("{}/{}", p.pid, p.name),
                ),
                if d.peer_host_id.is_empty() {
                    format!("({})", d.peer)
                } else {
                    d.peer_host_id.clone()
                },
            ]
        })
        .collect();
    table(
        out,
        &[
            "HOST",
            "DIR",
            "PROTO",
            "LOCAL",
            "PEER",
            "PORT",
            "STATE",
            "CONNS",
            "PROCESS",
            "PEER HOST",
        ],
        &rows,
    )
}

#[derive(Serialize)]
struct FindingJson<'a> {
    fingerprint: &'a str,
    rule_id: &'a str,
    host_id: &'a str,
    hostname: &'a str,
    severity: &'a str,
    subject: &'a str,
    evidence: &'a str,
    status: String,
    first_seen_unix: i64,
    last_seen_unix: i64,
    resolved_at_unix: i64,
    reopened: u32,
}

fn print_findings(out: &mut dyn Write, output: Output, findings: &[pb::Finding]) -> Result<()> {
    let docs: Vec<FindingJson<'_>> = findings
        .iter()
        .map(|f| FindingJson {
            fingerprint: &f.fingerprint,
            rule_id: &f.rule_id,
            host_id: &f.host_id,
            hostname: &f.hostname,
            severity: &f.severity,
            subject: &f.subject,
            evidence: &f.evidence,
            status: name::<pb::FindingStatus>(f.status),
            first_seen_unix: f.first_seen_unix,
            last_seen_unix: f.last_seen_unix,
            resolved_at_unix: f.resolved_at_unix,
            reopened: f.reopened,
        })
        .collect();
    if output == Output::Json {
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ "findings": docs }))?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            vec![
                d.severity.to_uppercase(),
                d.rule_id.to_string(),
                if d.hostname.is_empty() {
                    d.host_id.to_string()
                } else {
                    d.hostname.to_string()
                },
                d.subject.to_string(),
                d.status.clone(),
                when(d.first_seen_unix),
                d.evidence.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "SEVERITY", "RULE", "HOST", "SUBJECT", "STATUS", "SINCE", "EVIDENCE",
        ],
        &rows,
    )
}
