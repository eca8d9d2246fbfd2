//! `portolan rules check FILE…`: validates and compiles rule files without a collector.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

/// `portolan rules`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  portolan rules check deploy/rules/default.yaml")]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
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
}

/// Runs `portolan rules …`.
pub fn run(args: RulesArgs, out: &mut dyn Write) -> Result<()> {
    match args.command {
        RulesCommand::Check { files, sql } => check(&files, sql, out),
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
