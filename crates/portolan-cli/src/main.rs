//! `portolan`: the Portolan command-line tool.

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod pki;
mod usage;

/// Portolan: a chart of every listening port and connection across a fleet.
#[derive(Debug, Parser)]
#[command(name = "portolan", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a development certificate authority (CA and certificates for mutual TLS).
    Pki(pki::PkiArgs),
    /// Start a local ClickHouse, a collector and an agent for this host, and show this host's listeners as stored.
    Demo(demo::DemoArgs),
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
    let result = match cli.command {
        Command::Pki(args) => pki::run(args, &mut out),
        Command::Demo(args) => demo::run(args, &mut out),
    }
    .and_then(|()| out.flush().map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if usage::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if usage::is_usage(&e) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
