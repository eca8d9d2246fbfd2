//! `portolan rules check FILE…`: validates and compiles rule files without a collector.
//! `portolan rules test FILE --since 7d`: a dry run over the collector's stored history;
//! its arguments are here, its call with the query verbs (`crate::query::rules_test`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

/// `portolan rules`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan rules check deploy/rules/default.yaml\n  portolan rules test my-rules.yaml --since 7d"
)]
pub struct RulesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RulesCommand,
}

/// `portolan rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate rule files: every problem with its file, line and column; exit 1 when any.
    #[command(
        after_help = "Examples:\n  portolan rules check deploy/rules/default.yaml\n  portolan rules check my-rules.yaml --sql"
    )]
    Check {
        /// Rule files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also print each rule's compiled ClickHouse query.
        #[arg(long)]
        sql: bool,
    },
    /// Dry-run a rule file over the collector's stored history: what would have fired, when, and whether it would be open now.
    Test(TestArgs),
}

/// `portolan rules test FILE --since DURATION [--step DURATION]`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portolan rules test my-rules.yaml --since 7d\n  portolan rules test my-rules.yaml --since 24h --step 10m -o wide\n  portolan rules test deploy/rules/default.yaml --since 7d -o json | jq '.findings[] | select(.open_now)'\n\nThe collector parses the file with its own parser and evaluates every rule at instants from\n--since ago to now, --step apart (default: --since / 168, at least 1m; at most 2,000\ninstants), against the history it stored; nothing is written and nothing is notified. Each\nrow is a finding that would have fired: when it first and last matched, how many times it\nwould have opened (OPENED) and at how many instants it matched; OPEN NOW says whether it\nmatches now. Any reader certificate may run it.\n\nExit status: 0 when it ran, whether or not anything would have fired; 1 when the collector\ncould not run some rule (listed on stderr; their findings are missing); 64 when the file has\nproblems (each printed as file:line:column) or an argument is wrong."
)]
pub struct TestArgs {
    /// The rule file (YAML).
    pub file: PathBuf,
    /// How far back to start (7d, 24h).
    #[arg(long, value_name = "DURATION")]
    pub since: String,
    /// Time between two evaluations (1h, 10m) [default: --since / 168, at least 1m].
    #[arg(long, value_name = "DURATION")]
    pub step: Option<String>,
}

/// Runs `portolan rules check` (`rules test` goes through the query verbs).
pub fn run(command: RulesCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        RulesCommand::Check { files, sql } => check(&files, sql, out),
        RulesCommand::Test(_) => {
            bail!("`portolan rules test` needs the collector: it runs as a query verb")
        }
    }
}

fn check(files: &[PathBuf], show_sql: bool, out: &mut dyn Write) -> Result<()> {
    let mut failed = 0;
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read rule file {name}"))?;
        match portolan_rules::parse(&name, &text) {
            Ok(set) => {
                writeln!(out, "{name}: {} rules ok", set.rules.len())?;
                for rule in &set.rules {
                    let sql = portolan_rules::compile(rule);
                    writeln!(
                        out,
                        "  {} ({}, {})",
                        rule.id,
                        rule.kind.as_str(),
                        rule.severity.as_str()
                    )?;
                    if show_sql {
                        writeln!(out, "{sql}\n")?;
                    }
                }
            }
            Err(e) => {
                failed += 1;
                for problem in e.problems() {
                    writeln!(out, "{problem}")?;
                }
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} rule files have problems (listed above)",
            files.len()
        );
    }
    Ok(())
}
