//! `portolan rules test FILE --since 7d`: the collector's dry run of a rule file over
//! its stored history.

use std::io::Write;

use anyhow::Result;
use portolan_cli::config::Settings;
use portolan_cli::output::Context;
use portolan_cli::rows::RulesTestReport;
use portolan_cli::when;
use portolan_proto::v1 as pb;

use super::{connect, refused};
use crate::rules::TestArgs;
use crate::usage::usage;

/// Runs `portolan rules test`.
pub async fn run(
    settings: &Settings,
    ctx: &Context,
    args: TestArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let since = when::parse_duration(&args.since).map_err(|e| usage(format!("--since: {e}")))?;
    let step = match &args.step {
        Some(step) => when::parse_duration(step).map_err(|e| usage(format!("--step: {e}")))?,
        None => std::time::Duration::ZERO,
    };
    let name = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).map_err(|e| {
        usage(format!(
            "cannot read rule file {name}: {e} (check the path)"
        ))
    })?;
    let request = pb::TestRulesRequest {
        rules_yaml: text,
        file_name: name.clone(),
        since_seconds: since.as_secs(),
        step_seconds: step.as_secs(),
    };
    let mut client = connect(settings).await?;
    let answer = match client.test_rules(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => return Err(refusal(&status, settings, &name)),
    };
    let report = RulesTestReport::new(&name, since, &answer);
    report.write(out, &mut std::io::stderr(), ctx)?;
    Ok(report.failures.is_empty())
}

/// The error of a refused dry run. A file with problems comes back as INVALID_ARGUMENT
/// with one `file:line:column: message` per line: those lines are printed as they are
/// (as `portolan rules check` prints them) and the error says how many.
fn refusal(status: &tonic::Status, settings: &Settings, name: &str) -> anyhow::Error {
    let prefix = format!("{name}:");
    let problems: Vec<&str> = status.message().lines().collect();
    if status.code() == tonic::Code::InvalidArgument
        && !problems.is_empty()
        && problems.iter().all(|l| l.starts_with(&prefix))
    {
        for p in &problems {
            eprintln!("{p}");
        }
        return usage(format!(
            "{name} has {} (listed above); fix the file (`portolan rules check {name}` checks it without a collector)",
            portolan_cli::rows::plural(problems.len(), "problem", "problems")
        ));
    }
    refused(status, settings)
}
