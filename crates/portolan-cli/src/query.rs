//! The query verbs: `hosts`, `host`, `sockets`, `who-listens`, `flows`, `findings`, and
//! in submodules `ack`/`unack` ([`ack`]), `history` and `at` ([`history`]), `watch`
//! ([`watch`]) and `rules test` ([`rules_test`]).
//!
//! Each asks the collector's query API over mutual TLS with an operator certificate and
//! hands the answer, as rows (`portolan_cli::rows`), to the output layer
//! (`portolan_cli::output`), which prints them in the format asked for. Arguments are
//! checked before connecting, so that a mistake is a usage error whatever the collector.

// Requests end in `..Default::default()` even where every field is set: the query API
// gains fields, and a new one must stay at "no filter" here.
#![allow(clippy::needless_update)]

pub mod ack;
pub mod enroll;
pub mod history;
pub mod rules_test;
pub mod watch;

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use portolan_cli::config::Settings;
use portolan_cli::output::{self, Context, Record};
use portolan_cli::paging::{self, PagedRequest, PagedResponse, Rows};
use portolan_cli::rows::{FindingRow, FlowRow, HostDetail, HostRow, SocketRow};
use portolan_cli::when;
use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

use crate::usage::usage;

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

/// `--limit`: most rows, at least one.
fn parse_limit(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("`{s}` is not a row count: use a number from 1")),
        Ok(n) => Ok(n),
    }
}

/// `--at TIME`, as Unix seconds counted from `now`; 0 (now) when absent.
fn at_unix(at: Option<&str>, now: i64) -> Result<i64> {
    let Some(text) = at else { return Ok(0) };
    let at = when::parse_instant(text, now).map_err(|e| usage(format!("--at: {e}")))?;
    if at > now {
        return Err(usage(format!(
            "--at {text} is in the future; the collector only knows the past"
        )));
    }
    Ok(at)
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
#[command(
    after_help = "Examples:\n  portolan hosts\n  portolan hosts -l env=prod -o wide\n  portolan hosts -o json | jq -r '.[] | select(.stale) | .host_id'"
)]
pub struct HostsArgs {
    #[command(flatten)]
    hosts: HostArgs,
    /// Also list retired hosts (`portolan retire`), with when they were retired.
    #[arg(long)]
    retired: bool,
    /// Most rows.
    #[arg(long, default_value_t = 10_000, value_parser = parse_limit)]
    limit: u32,
}

/// `portolan host ID`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan host db-1\n  portolan host db-1 -o json | jq .interfaces"
)]
pub struct HostArgsOne {
    /// The host's id.
    host_id: String,
}

/// `portolan sockets`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan sockets --listening --exposure public --exposure wildcard\n  portolan sockets -l env=prod --port 5432\n  portolan sockets --host db-1 --port 8000-8999 --process 'java*' -o wide\n  portolan sockets --listening -o csv > listeners.csv\n  portolan sockets --listening --at 2026-11-17T03:00:00Z -l role=db\n  portolan sockets --listening --pod 'web-*'\n\nTIME (--at) is RFC 3339 (2026-11-17T03:00:00Z), a Unix timestamp, or how long ago (2h, 3d)."
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
    #[command(flatten)]
    place: PlaceArgs,
    /// The sockets open at that past instant, rebuilt from history, instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Most rows.
    #[arg(long, default_value_t = 10_000, value_parser = parse_limit)]
    limit: u32,
}

/// `portolan who-listens PORT`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan who-listens 5432\n  portolan who-listens 53 --protocol udp -l env=prod\n  portolan who-listens 443 -o json | jq -r '.[].hostname'\n\nExit status: 0 when something listens on the port, 1 when nothing does."
)]
pub struct WhoListensArgs {
    /// The port.
    port: u16,
    /// Only this protocol.
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    #[command(flatten)]
    hosts: HostArgs,
    #[command(flatten)]
    place: PlaceArgs,
}

/// Where on a host a socket lives: its pod, container and network namespace.
#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// Kubernetes pod name glob (`web-*`), or `namespace/name` glob (`shop/web-*`).
    #[arg(long)]
    pod: Option<String>,
    /// Container id or a prefix of it (docker, containerd, CRI-O).
    #[arg(long)]
    container: Option<String>,
    /// Network namespace inode (`ls -L -i /proc/<pid>/ns/net`); 0: the host's own.
    #[arg(long)]
    netns: Option<u64>,
}

/// `portolan flows`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan flows --port 5432 --direction in\n  portolan flows -l role=db --outside -o wide\n  portolan flows --port 5432 -o csv\n  portolan flows --host db-1 --at 3h\n\nEach flow is joined to the fleet host at its other end when the peer address belongs to one\n(the fleet's addresses of now, also with --at).\nTIME (--at) is RFC 3339 (2026-11-17T03:00:00Z), a Unix timestamp, or how long ago (2h, 3d)."
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
    /// The flows present at that past instant, rebuilt from history, instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Most rows.
    #[arg(long, default_value_t = 10_000, value_parser = parse_limit)]
    limit: u32,
}

/// `portolan findings`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan findings\n  portolan findings --severity high -l env=prod --unacked\n  portolan findings --status all --rule database-exposed -o json\n  portolan findings -o wide --color never | less\n\nACKED BY and UNTIL show an acknowledgement in force (`portolan ack`); UNTIL `resolved` means\nuntil the finding's status changes. -o wide adds the reason.\n\nExit status: 0 when findings are listed, 1 when none match."
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
    /// Only findings with an acknowledgement in force.
    #[arg(long, conflicts_with = "unacked")]
    acked: bool,
    /// Only findings without one.
    #[arg(long)]
    unacked: bool,
    /// Most rows.
    #[arg(long, default_value_t = 10_000, value_parser = parse_limit)]
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
    /// Raw IP sockets (port: the IP protocol number)
    Raw,
    /// Unix domain listening sockets
    Unix,
    /// SCTP endpoints and associations
    Sctp,
}

impl ProtocolArg {
    fn wire(self) -> i32 {
        match self {
            ProtocolArg::Tcp => pb::Protocol::Tcp as i32,
            ProtocolArg::Udp => pb::Protocol::Udp as i32,
            ProtocolArg::Raw => pb::Protocol::Raw as i32,
            ProtocolArg::Unix => pb::Protocol::Unix as i32,
            ProtocolArg::Sctp => pb::Protocol::Sctp as i32,
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
    /// `ack`.
    Ack(ack::AckArgs),
    /// `unack`.
    Unack(ack::UnackArgs),
    /// `history`.
    History(history::HistoryArgs),
    /// `at`.
    At(history::AtArgs),
    /// `watch`.
    Watch(watch::WatchArgs),
    /// `rules test`.
    RulesTest(crate::rules::TestArgs),
    /// `token create|list|revoke`.
    Token(enroll::TokenArgs),
    /// `keys`.
    Keys(enroll::KeysArgs),
    /// `approve`.
    Approve(enroll::DecideArgs),
    /// `deny`.
    Deny(enroll::DecideArgs),
    /// `retire`.
    Retire(enroll::RetireArgs),
}

/// Runs a query verb and prints its answer.
///
/// Requests end in `..Default::default()`: the query API gains fields, and this code
/// leaves the ones it does not know at "no filter". What it found, for the exit code:
/// `Ok(false)` is "nothing found" where that matters to scripts (`who-listens`,
/// `findings`, `at` before the host reported).
pub fn run(settings: &Settings, ctx: &Context, verb: Verb, out: &mut dyn Write) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match verb {
            Verb::Hosts(args) => hosts(settings, ctx, args, out).await,
            Verb::Host(args) => host(settings, ctx, args, out).await,
            Verb::Sockets(args) => sockets(settings, ctx, args, out).await,
            Verb::WhoListens(args) => who_listens(settings, ctx, args, out).await,
            Verb::Flows(args) => flows(settings, ctx, args, out).await,
            Verb::Findings(args) => findings(settings, ctx, args, out).await,
            Verb::Ack(args) => ack::ack(settings, ctx, args, out).await,
            Verb::Unack(args) => ack::unack(settings, ctx, args, out).await,
            Verb::History(args) => history::history(settings, ctx, args, out).await,
            Verb::At(args) => history::at(settings, ctx, args, out).await,
            Verb::Watch(args) => watch::watch(settings, ctx, args, out).await,
            Verb::RulesTest(args) => rules_test::run(settings, ctx, args, out).await,
            Verb::Token(args) => enroll::token(settings, ctx, args, out).await,
            Verb::Keys(args) => enroll::keys(settings, ctx, args, out).await,
            Verb::Approve(args) => enroll::decide(settings, ctx, args, true, out).await,
            Verb::Deny(args) => enroll::decide(settings, ctx, args, false, out).await,
            Verb::Retire(args) => enroll::retire(settings, ctx, args, out).await,
        }
    })
}

/// Every page of a list RPC up to `limit` rows; `rpc` makes one call with its own
/// client (a cheap clone of the connection).
async fn pages<Req, Resp, F, Fut>(
    settings: &Settings,
    request: Req,
    limit: u32,
    mut rpc: F,
) -> Result<Rows<Resp::Item>>
where
    Req: PagedRequest,
    Resp: PagedResponse,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    paging::collect(request, limit, |r| {
        let answer = rpc(r);
        async move { call(answer.await, settings) }
    })
    .await
}

/// Says on stderr that `--limit` cut the list.
fn cut(what: &str, limit: u32) {
    eprintln!("(more {what} matched than --limit {limit}; narrow the question or raise --limit)");
}

async fn hosts(
    settings: &Settings,
    ctx: &Context,
    args: HostsArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let client = connect(settings).await?;
    let request = pb::ListHostsRequest {
        hosts: Some(args.hosts.selector()),
        include_retired: args.retired,
        ..Default::default()
    };
    let found = pages(settings, request, args.limit, |r| {
        let mut c = client.clone();
        async move { c.list_hosts(r).await }
    })
    .await?;
    let rows: Vec<HostRow> = found.rows.iter().map(HostRow::from).collect();
    print_found(out, ctx, &rows, "hosts", 0, found.more, args.limit)?;
    Ok(true)
}

async fn host(
    settings: &Settings,
    ctx: &Context,
    args: HostArgsOne,
    out: &mut dyn Write,
) -> Result<bool> {
    let mut client = connect(settings).await?;
    let request = pb::GetHostRequest {
        host_id: args.host_id.clone(),
        ..Default::default()
    };
    let r = call(client.get_host(request).await, settings)?;
    match HostDetail::from_response(&r) {
        Some(detail) => {
            output::write_one(out, ctx, &detail)?;
            Ok(true)
        }
        None => {
            eprintln!("the collector knows no host `{}`", args.host_id);
            Ok(false)
        }
    }
}

async fn sockets(
    settings: &Settings,
    ctx: &Context,
    args: SocketsArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let at = at_unix(args.at.as_deref(), when::unix(ctx.now))?;
    let (port_min, port_max) = args
        .port
        .map_or((0, 0), |(lo, hi)| (u32::from(lo), u32::from(hi)));
    let request = pb::ListSocketsRequest {
        hosts: Some(args.hosts.selector()),
        protocol: args.protocol.map_or(0, ProtocolArg::wire),
        port_min,
        port_max,
        listening: args.listening,
        exposures: args.exposure.iter().map(|s| s.wire()).collect(),
        process: args.process.unwrap_or_default(),
        pod: args.place.pod.unwrap_or_default(),
        container: args.place.container.unwrap_or_default(),
        netns_inode: args.place.netns,
        at_unix: at,
        ..Default::default()
    };
    let client = connect(settings).await?;
    let found = pages(settings, request, args.limit, |r| {
        let mut c = client.clone();
        async move { c.list_sockets(r).await }
    })
    .await?;
    let rows: Vec<SocketRow> = found.rows.iter().map(SocketRow::from).collect();
    print_found(out, ctx, &rows, "sockets", at, found.more, args.limit)?;
    Ok(true)
}

async fn who_listens(
    settings: &Settings,
    ctx: &Context,
    args: WhoListensArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let mut client = connect(settings).await?;
    let request = pb::WhoListensRequest {
        port: u32::from(args.port),
        protocol: args.protocol.map_or(0, ProtocolArg::wire),
        hosts: Some(args.hosts.selector()),
        pod: args.place.pod.unwrap_or_default(),
        container: args.place.container.unwrap_or_default(),
        netns_inode: args.place.netns,
    };
    let r = call(client.who_listens(request).await, settings)?;
    let rows: Vec<SocketRow> = r.listeners.iter().map(SocketRow::from).collect();
    let nobody = format!("nothing listens on port {}", args.port);
    print_list(out, ctx, &rows, &nobody)?;
    Ok(!rows.is_empty())
}

async fn findings(
    settings: &Settings,
    ctx: &Context,
    args: FindingsArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let request = pb::ListFindingsRequest {
        hosts: Some(args.hosts.selector()),
        status: match args.status {
            StatusArg::Open => pb::FindingStatus::Open,
            StatusArg::Resolved => pb::FindingStatus::Resolved,
            StatusArg::All => pb::FindingStatus::Unspecified,
        } as i32,
        rule_id: args.rule.unwrap_or_default(),
        min_severity: args.severity.unwrap_or_default(),
        acked: if args.acked {
            pb::AckFilter::Acked
        } else if args.unacked {
            pb::AckFilter::Unacked
        } else {
            pb::AckFilter::Unspecified
        } as i32,
        ..Default::default()
    };
    let client = connect(settings).await?;
    let found = pages(settings, request, args.limit, |r| {
        let mut c = client.clone();
        async move { c.list_findings(r).await }
    })
    .await?;
    let rows: Vec<FindingRow> = found.rows.iter().map(FindingRow::from).collect();
    print_found(out, ctx, &rows, "findings", 0, found.more, args.limit)?;
    Ok(!rows.is_empty())
}

async fn flows(
    settings: &Settings,
    ctx: &Context,
    args: FlowsArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let at = at_unix(args.at.as_deref(), when::unix(ctx.now))?;
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
        at_unix: at,
        ..Default::default()
    };
    let client = connect(settings).await?;
    let found = pages(settings, request, args.limit, |r| {
        let mut c = client.clone();
        async move { c.list_flows(r).await }
    })
    .await?;
    let rows: Vec<FlowRow> = found.rows.iter().map(FlowRow::from).collect();
    print_found(out, ctx, &rows, "flows", at, found.more, args.limit)?;
    Ok(true)
}

/// Prints the rows of a list verb (`what`: `sockets`, `flows`, …). When nothing matched,
/// people are told so (naming the instant `at` when it is not now, 0); when more matched
/// than `--limit`, they are told that too.
fn print_found<R: Record>(
    out: &mut dyn Write,
    ctx: &Context,
    rows: &[R],
    what: &str,
    at: i64,
    more: bool,
    limit: u32,
) -> Result<()> {
    let none = if at > 0 {
        format!("no {what} matched at {}", when::rfc3339(at))
    } else {
        format!("no {what} matched")
    };
    print_list(out, ctx, rows, &none)?;
    if more {
        cut(what, limit);
    }
    Ok(())
}

/// Prints rows; for people, no rows is a line on stderr instead of a lone header
/// (programs still get a CSV header or an empty JSON array).
fn print_list<R: Record>(out: &mut dyn Write, ctx: &Context, rows: &[R], none: &str) -> Result<()> {
    if rows.is_empty() && !ctx.machine() {
        eprintln!("{none}");
        return Ok(());
    }
    output::write_list(out, ctx, rows)?;
    Ok(())
}

/// A refusal or failure of the collector, with the gRPC code kept for the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The gRPC code.
    pub code: tonic::Code,
    message: String,
}

impl CallError {
    /// An error with this code and message.
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        CallError {
            code,
            message: message.into(),
        }
    }
}

fn call<T>(result: Result<tonic::Response<T>, tonic::Status>, settings: &Settings) -> Result<T> {
    result
        .map(tonic::Response::into_inner)
        .map_err(|status| refused(&status, settings))
}

/// The error of a status the collector answered, with a hint where one helps.
fn refused(status: &tonic::Status, settings: &Settings) -> anyhow::Error {
    let hint = match status.code() {
        tonic::Code::Unavailable => " (is the collector running and reachable? check --collector)",
        _ => "",
    };
    anyhow::Error::new(CallError::new(
        status.code(),
        format!(
            "collector {} answered {:?}: {}{hint}",
            settings.collector,
            status.code(),
            status.message()
        ),
    ))
}

async fn connect(c: &Settings) -> Result<QueryServiceClient<Channel>> {
    Ok(QueryServiceClient::new(connect_channel(c).await?))
}

/// A mutual-TLS channel to the collector, with the settings' certificate.
async fn connect_channel(c: &Settings) -> Result<Channel> {
    let files = portolan_tls::TlsFiles {
        ca: c.ca.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
    };
    let tls = portolan_tls::client_config(&files).map_err(|e| {
        usage(format!(
            "{e} (set --ca/--cert/--key, PORTOLAN_CA/PORTOLAN_CERT/PORTOLAN_KEY, or `ca`/`cert`/`key` in the config file)"
        ))
    })?;
    let options = portolan_tls::ConnectOptions {
        server_name: Some(c.server_name.clone()).filter(|n| !n.is_empty()),
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
    Ok(channel)
}
