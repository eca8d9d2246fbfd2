//! `portolan`: the Portolan command-line tool.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};
use portolan_cli::config::{self, ConnectionFlags};
use portolan_cli::output::terminal::{self, Stdout};
use portolan_cli::output::{ColorChoice, Format};
use portolan_config::exit::{self, EXIT_USAGE, Exit};

mod completions;
mod demo;
mod pki;
mod query;
mod rules;
mod usage;

/// Portolan: a chart of every listening port and connection across a fleet.
#[derive(Debug, Parser)]
#[command(
    name = "portolan",
    version,
    about,
    propagate_version = true,
    after_help = "Examples:
  portolan sockets --listening --exposure public
  portolan who-listens 5432 -o wide
  portolan findings --severity high -o json
  portolan at 2026-11-17T03:00:00Z db-1
  portolan history db-1 --port 5432 --since 7d
  portolan watch findings --severity high
  portolan ack a41f0c9d2e7b5a11 --reason 'firewalled upstream' --for 7d
  portolan rules test my-rules.yaml --since 7d
  portolan completions bash > ~/.local/share/bash-completion/completions/portolan

Configuration:
  The query verbs read the collector address and certificates from flags, else from
  PORTOLAN_COLLECTOR, PORTOLAN_CA, PORTOLAN_CERT, PORTOLAN_KEY, PORTOLAN_SERVER_NAME,
  else from the config file (--config, PORTOLAN_CONFIG, or ~/.config/portolan/config.toml):
    version = 1
    collector = \"https://collector.example.net:7443\"
    ca = \"ca.pem\"        # relative to the file
    cert = \"operator.pem\"
    key = \"operator.key\"

Exit status: 0 success, 1 nothing found or failure, 64 bad usage or config,
69 collector unavailable (or a watch stream broke), 77 certificate not allowed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: ConnectionFlags,
    #[command(flatten)]
    output: OutputFlags,
}

/// How the query verbs print.
#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
struct OutputFlags {
    /// Output format
    #[arg(
        long,
        short,
        value_enum,
        default_value_t,
        value_name = "FORMAT",
        global = true
    )]
    output: Format,
    /// When to colour table and wide output (NO_COLOR set: never, unless `always`)
    #[arg(long, value_enum, default_value_t, value_name = "WHEN", global = true)]
    color: ColorChoice,
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
    /// List the findings of the exposure rules (open ones by default), with their acknowledgements.
    Findings(query::FindingsArgs),
    /// Acknowledge (silence) a finding, with a reason and optionally a deadline (admin certificates only).
    Ack(query::ack::AckArgs),
    /// Clear a finding's acknowledgement (admin certificates only).
    Unack(query::ack::UnackArgs),
    /// A host's history: sockets (and flows) that appeared, changed or went away.
    History(query::history::HistoryArgs),
    /// What was open on a host at a past instant.
    At(query::history::AtArgs),
    /// Print finding changes or a host's events as they happen, until Ctrl-C.
    Watch(query::watch::WatchArgs),
    /// Enrollment tokens: `portolan token create|list|revoke` (admin certificates only).
    Token(query::enroll::TokenArgs),
    /// List hosts' enrolled keys: bound, pending approval, denied, superseded, retired.
    Keys(query::enroll::KeysArgs),
    /// Approve a host's pending key (admin certificates only).
    Approve(query::enroll::DecideArgs),
    /// Deny a host's pending key (admin certificates only).
    Deny(query::enroll::DecideArgs),
    /// Retire a host: refuse its certificates, drop its current state, keep its history (admin certificates only).
    Retire(query::enroll::RetireArgs),
    /// Work with rule files: `portolan rules check FILE`, `portolan rules test FILE --since 7d`.
    Rules(rules::RulesArgs),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions(completions::CompletionsArgs),
}

/// The exit status of a failed query, from the collector's gRPC status.
fn query_exit(e: &anyhow::Error) -> Option<Exit> {
    let call = e
        .chain()
        .find_map(|c| c.downcast_ref::<query::CallError>())?;
    Some(match call.code {
        // Too many watch streams on the collector: unavailable for now, as for EX_UNAVAILABLE.
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::ResourceExhausted => Exit::Unavailable,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Exit::NotAllowed,
        tonic::Code::InvalidArgument => Exit::Usage,
        _ => Exit::Failure,
    })
}

/// The process environment as a map; variables that are not UTF-8 are left out (none
/// that portolan reads can be).
fn environment() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Runs a query verb: settings from flags, environment and config file; output fitted
/// to stdout, buffered (answers can be long) and flushed at the end.
fn run_query(
    connection: &ConnectionFlags,
    output: &OutputFlags,
    verb: query::Verb,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let env = environment();
    let settings = config::load(connection, &env).map_err(usage::usage)?;
    let ctx = terminal::context(
        output.output,
        output.color,
        Stdout::detect(),
        &env,
        SystemTime::now(),
    );
    let mut buffered = io::BufWriter::new(out);
    let found = query::run(&settings, &ctx, verb, &mut buffered)?;
    buffered.flush()?;
    Ok(found)
}

fn main() -> ExitCode {
    let Cli {
        command,
        connection,
        output,
    } = match Cli::try_parse() {
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
    let query = |verb, out: &mut dyn Write| run_query(&connection, &output, verb, out);
    let result = match command {
        Command::Pki(args) => pki::run(args, &mut out).map(|()| true),
        Command::Demo(args) => demo::run(args, &mut out).map(|()| true),
        Command::Rules(rules::RulesArgs {
            command: rules::RulesCommand::Test(args),
        }) => query(query::Verb::RulesTest(args), &mut out),
        Command::Rules(args) => rules::run(args.command, &mut out).map(|()| true),
        Command::Completions(args) => completions::run::<Cli>(args, &mut out).map(|()| true),
        Command::Hosts(args) => query(query::Verb::Hosts(args), &mut out),
        Command::Host(args) => query(query::Verb::Host(args), &mut out),
        Command::Sockets(args) => query(query::Verb::Sockets(args), &mut out),
        Command::WhoListens(args) => query(query::Verb::WhoListens(args), &mut out),
        Command::Flows(args) => query(query::Verb::Flows(args), &mut out),
        Command::Findings(args) => query(query::Verb::Findings(args), &mut out),
        Command::Ack(args) => query(query::Verb::Ack(args), &mut out),
        Command::Unack(args) => query(query::Verb::Unack(args), &mut out),
        Command::History(args) => query(query::Verb::History(args), &mut out),
        Command::At(args) => query(query::Verb::At(args), &mut out),
        Command::Watch(args) => query(query::Verb::Watch(args), &mut out),
        Command::Token(args) => query(query::Verb::Token(args), &mut out),
        Command::Keys(args) => query(query::Verb::Keys(args), &mut out),
        Command::Approve(args) => query(query::Verb::Approve(args), &mut out),
        Command::Deny(args) => query(query::Verb::Deny(args), &mut out),
        Command::Retire(args) => query(query::Verb::Retire(args), &mut out),
    }
    .and_then(|found| out.flush().map(|()| found).map_err(anyhow::Error::from));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Nothing found where scripts care (`who-listens`, `findings`, `at`), like grep;
        // or a `rules test` whose rules did not all run.
        Ok(false) => ExitCode::FAILURE,
        Err(e) if usage::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let exit = if usage::is_usage(&e) {
                Exit::Usage
            } else {
                query_exit(&e).unwrap_or_else(|| exit::classify(e.chain()))
            };
            ExitCode::from(exit.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// clap's own checks of the definitions: unique names (a verb's flag must not take
    /// the name of a global one), valid defaults, conflicts that name real arguments.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// A verb's argument named like a global one (`--key`, the certificate's key) would
    /// be one argument of two types: clap panics when the verb runs. Its checks above do
    /// not see it, since global arguments reach the verbs only when parsing.
    #[test]
    fn no_verb_argument_takes_the_name_of_a_global_one() {
        fn walk(cmd: &clap::Command, globals: &[(String, Option<String>)], bad: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                for arg in sub.get_arguments().filter(|a| !a.is_global_set()) {
                    let (id, long) = (arg.get_id().as_str(), arg.get_long());
                    if globals
                        .iter()
                        .any(|(g, l)| g == id || (long.is_some() && l.as_deref() == long))
                    {
                        bad.push(format!("{} {id}", sub.get_name()));
                    }
                }
                walk(sub, globals, bad);
            }
        }
        let cli = Cli::command();
        let globals: Vec<(String, Option<String>)> = cli
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| (a.get_id().to_string(), a.get_long().map(str::to_string)))
            .collect();
        assert!(globals.iter().any(|(id, _)| id == "key"), "{globals:?}");
        let mut bad = Vec::new();
        walk(&cli, &globals, &mut bad);
        assert!(
            bad.is_empty(),
            "verb arguments named like global ones: {bad:?}"
        );
    }
}
