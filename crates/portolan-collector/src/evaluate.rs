//! Rule evaluation: every `rules.interval`, each compiled rule runs as one query on
//! ClickHouse, and the findings' lifecycle is reconciled and written back.
//!
//! One evaluating replica is enough, and it is chosen by configuration:
//! `rules.evaluate = true` on exactly one collector (the Helm chart runs it as its own
//! single-replica Deployment). Evaluation is idempotent, so two evaluators by mistake
//! only write the same states twice.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portolan_rules::lifecycle::{Round, Status, reconcile};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// A rule ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// The rule's id.
    pub id: String,
    /// Its query.
    pub sql: String,
}

/// Reads, validates and compiles rule files. Every problem of every file is reported at
/// once; a rule id used in two files is a problem too.
pub fn load_rules(files: &[PathBuf]) -> Result<Vec<CompiledRule>, String> {
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    let mut ids = BTreeSet::new();
    for path in files {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("cannot read rule file {name}: {e}"));
                continue;
            }
        };
        match portolan_rules::parse(&name, &text) {
            Ok(set) => {
                for rule in &set.rules {
                    if !ids.insert(rule.id.clone()) {
                        problems.push(format!(
                            "{name}: rule id `{}` is also used in another rule file",
                            rule.id
                        ));
                    }
                    rules.push(CompiledRule {
                        id: rule.id.clone(),
                        sql: portolan_rules::compile(rule),
                    });
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems.join("\n"))
    }
}

/// What one evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rules that ran.
    pub rules_ok: usize,
    /// Rules whose query failed (their findings are left as they were).
    pub rules_failed: usize,
    /// Rows the rules returned.
    pub matches: usize,
    /// Findings that opened for the first time.
    pub opened: usize,
    /// Findings that opened again after being resolved.
    pub reopened: usize,
    /// Findings that were resolved.
    pub resolved: usize,
    /// How long it took.
    pub took: Duration,
}

/// Evaluates rules against the store.
#[derive(Debug)]
pub struct Evaluator {
    store: Arc<Store>,
    rules: Vec<CompiledRule>,
}

impl Evaluator {
    /// An evaluator of `rules` on `store`.
    pub fn new(store: Arc<Store>, rules: Vec<CompiledRule>) -> Evaluator {
        Evaluator { store, rules }
    }

    /// Runs every rule once and writes the findings that changed.
    pub async fn evaluate_once(&self) -> Result<Report, StoreError> {
        let started = Instant::now();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut report = Report::default();
        let mut round = Round {
            now: now.as_secs(),
            ..Round::default()
        };
        let mut matches = Vec::new();
        for rule in &self.rules {
            round.configured.insert(rule.id.clone());
            match self.store.run_rule(&rule.sql).await {
                Ok(found) => {
                    round.evaluated.insert(rule.id.clone());
                    report.rules_ok += 1;
                    matches.extend(found);
                }
                Err(e) => {
                    report.rules_failed += 1;
                    warn!(rule = %rule.id, error = %e, "rule evaluation failed; its findings stay as they were");
                }
            }
        }
        report.matches = matches.len();
        let stored = self.store.findings().await?;
        let updates = reconcile(&stored, &matches, &round);
        for u in &updates {
            let before = stored
                .iter()
                .find(|f| f.latest.fingerprint == u.latest.fingerprint);
            match (before.map(|f| f.status), u.status) {
                (None, Status::Open) => report.opened += 1,
                (Some(Status::Resolved), Status::Open) => report.reopened += 1,
                (Some(Status::Open), Status::Resolved) => report.resolved += 1,
                _ => {}
            }
        }
        let version = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.store.write_findings(&updates, version).await?;
        report.took = started.elapsed();
        Ok(report)
    }

    /// Evaluates every `interval` until `stop` turns true.
    pub async fn run(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        info!(rules = self.rules.len(), interval = ?interval, "rule evaluation started (this replica evaluates: `rules.evaluate = true`)");
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match self.evaluate_once().await {
                Ok(r) => info!(
                    rules = r.rules_ok, failed = r.rules_failed, matches = r.matches, opened = r.opened,
                    reopened = r.reopened, resolved = r.resolved, took = ?r.took, "rules evaluated"
                ),
                Err(e) => {
                    warn!(error = %e, "rule evaluation failed; retrying at the next interval")
                }
            }
        }
    }
}
