//! `TestRules`: a rule file evaluated over stored history, at a series of past instants,
//! writing nothing (`portolan rules test FILE --since 7d`).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use portolan_proto::v1 as pb;

use super::QueryError;
use crate::evaluate::dry_run;
use portolan_store::Store;
use portolan_store::fleet::HostFilter;

/// The largest rule file accepted.
const MAX_RULES_BYTES: usize = 1024 * 1024;

/// The default step: `since / 168` (hourly over a week), at least a minute.
fn default_step(since: u64) -> u64 {
    since.div_ceil(168).max(60)
}

/// Parses the file, evaluates it at the requested instants and summarises.
pub(super) async fn test_rules(
    store: &Store,
    request: pb::TestRulesRequest,
) -> Result<pb::TestRulesResponse, QueryError> {
    if request.rules_yaml.len() > MAX_RULES_BYTES {
        return Err(QueryError::Invalid(format!(
            "the rule file is {} bytes, more than {MAX_RULES_BYTES}: split it",
            request.rules_yaml.len()
        )));
    }
    let name = if request.file_name.is_empty() {
        "rules.yaml"
    } else {
        request.file_name.as_str()
    };
    let set = portolan_rules::parse(name, &request.rules_yaml)
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    let step = match request.step_seconds {
        0 => default_step(request.since_seconds),
        s => s,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let instants = portolan_rules::dry_run::instants(now, request.since_seconds, step)
        .map_err(QueryError::Invalid)?;
    let run = dry_run(store, &set.rules, &instants).await;
    let hostnames: HashMap<String, String> = store
        .hosts(&HostFilter::default())
        .await?
        .into_iter()
        .map(|h| (h.host_id, h.hostname))
        .collect();
    let unix = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
    Ok(pb::TestRulesResponse {
        instants_unix: run.instants.iter().map(|t| unix(*t)).collect(),
        findings: run
            .fired
            .into_iter()
            .map(|f| pb::TestedFinding {
                hostname: hostnames.get(&f.host_id).cloned().unwrap_or_default(),
                rule_id: f.rule_id,
                host_id: f.host_id,
                fingerprint: f.fingerprint,
                severity: f.severity,
                subject: f.subject,
                evidence: f.evidence,
                first_unix: unix(f.first_at),
                last_unix: unix(f.last_at),
                instants: f.instants,
                episodes: f.episodes,
                open_now: f.open_at_end,
            })
            .collect(),
        failures: run
            .failed
            .into_iter()
            .map(|(rule_id, message)| pb::RuleFailure { rule_id, message })
            .collect(),
        rules: u32::try_from(set.rules.len()).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_step_is_hourly_over_a_week_and_never_under_a_minute() {
        assert_eq!(default_step(7 * 86_400), 3600);
        assert_eq!(default_step(600), 60);
        assert_eq!(default_step(30 * 86_400), 15_429);
    }
}
