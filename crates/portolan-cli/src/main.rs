//! `portolan`: the Portolan command-line tool.

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod pki;
mod query;
mod rules;
mod usage;

/// Portolan: a chart of every listening port and connection across a fleet.
#[derive(Debug, Parser)]
#[command(name = "portolan", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: query::Connection,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a development certificate authority (CA and certificates for mutual TLS).
    Pki(pki::PkiArgs),
    /// Start a local ClickHouse, a collector and an agent for this host, and show this host's listeners as stored.
    Demo(demo::DemoArgs),
    /// List the fleet's hosts with their labels, counts and when they last reported.
    Hosts(query::HostsArgs),
    /// Show one host's facts.
    Host(query::HostArgsOne),
    /// List current sockets across the fleet (filters: host, label, port, protocol, exposure, process).
    Sockets(query::SocketsArgs),
    /// Which hosts and processes listen on a port.
    WhoListens(query::WhoListensArgs),
    /// List current flows (connections folded by endpoint), joined to the fleet host at the other end.
    Flows(query::FlowsArgs),
    /// List the findings of the exposure rules (open ones by default).
    Findings(query::FindingsArgs),
    /// Work with rule files: `portolan rules check FILE`.
    Rules(rules::RulesArgs),
}

/// Exit code when the collector is unreachable (`EX_UNAVAILABLE`).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when the certificate may not do this (`EX_NOPERM`).
const EXIT_NOPERM: u8 = 77;

/// The exit code for a failed query.
fn query_exit_code(e: &anyhow::Error) -> Option<ExitCode> {
    let call = e
        .chain()
        .find_map(|c| c.downcast_ref::<query::CallError>())?;
    Some(match call.code {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => ExitCode::from(EXIT_NOPERM),
        tonic::Code::InvalidArgument => ExitCode::from(EXIT_USAGE),
        _ => ExitCode::FAILURE,
    })
}

/// Exit code for bad usage or configuration (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` print on stdout and succeed; everything else is a
            // usage error.
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let connection = &cli.connection;
    let result = match cli.command {
        Command::Pki(args) => pki::run(args, &mut out).map(|()| true),
        Command::Demo(args) => demo::run(args, &mut out).map(|()| true),
        Command::Hosts(args) => query::run(connection, query::Verb::Hosts(args), &mut out),
        Command::Host(args) => query::run(connection, query::Verb::Host(args), &mut out),
        Command::Sockets(args) => query::run(connection, query::Verb::Sockets(args), &mut out),
        Command::Flows(args) => query::run(connection, query::Verb::Flows(args), &mut out),
        Command::Findings(args) => query::run(connection, query::Verb::Findings(args), &mut out),
        Command::Rules(args) => rules::run(args, &mut out).map(|()| true),
        Command::WhoListens(args) => {
            query::run(connection, query::Verb::WhoListens(args), &mut out)
        }
    }
    .and_then(|found| out.flush().map(|()| found).map_err(anyhow::Error::from));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Nothing found where scripts care (`who-listens`), like grep.
        Ok(false) => ExitCode::FAILURE,
        Err(e) if usage::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if usage::is_usage(&e) {
                ExitCode::from(EXIT_USAGE)
            } else {
                query_exit_code(&e).unwrap_or(ExitCode::FAILURE)
            }
        }
    }
}
