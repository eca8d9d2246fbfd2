//! Rule evaluation: every `rules.interval`, each compiled rule runs as one query on
//! ClickHouse, and the findings' lifecycle is reconciled and written back.
//!
//! One evaluating replica is enough, and it is chosen by configuration:
//! `rules.evaluate = true` on exactly one collector (the Helm chart runs it as its own
//! single-replica Deployment). Evaluation is idempotent, so two evaluators by mistake
//! only write the same states twice.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portolan_rules::lifecycle::{Round, reconcile};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics;
use crate::notify::{Evaluation, Event, Notifier};
use portolan_store::fleet::HostFilter;
use portolan_store::{Store, StoreError};

/// A rule ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// The rule's id.
    pub id: String,
    /// What the rule is for, for people (notifications carry it).
    pub description: String,
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
                        description: rule.description.clone(),
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

/// Runs every rule once on the server with `LIMIT 0`, so that a rule whose query the
/// server refuses (a function it lacks, a column it does not have) is found at start-up.
/// Every refused rule is reported at once, with the server's message.
pub async fn check_rules(store: &Store, rules: &[CompiledRule]) -> Result<(), String> {
    let mut problems = Vec::new();
    for rule in rules {
        let probe = format!("SELECT * FROM (\n{}\n) LIMIT 0", rule.sql);
        if let Err(e) = store.run_rule(&probe).await {
            problems.push(format!("rule `{}`: {e}", rule.id));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// What a dry run over history found (`portolan rules test`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRun {
    /// The instants evaluated (Unix seconds, oldest first).
    pub instants: Vec<u64>,
    /// The findings that would have fired, per fingerprint.
    pub fired: Vec<portolan_rules::dry_run::Fired>,
    /// Rules whose query failed, with the server's message; their findings are missing.
    pub failed: Vec<(String, String)>,
}

/// Evaluates `rules` at each of `instants` over the state rebuilt from history
/// ([`portolan_store::history`]), writing nothing. A rule whose query fails is reported in
/// [`DryRun::failed`] and not run at later instants.
pub async fn dry_run(store: &Store, rules: &[portolan_rules::Rule], instants: &[u64]) -> DryRun {
    use portolan_store::history::{flows_as_of, hosts_as_of, sockets_as_of};
    let mut rounds: Vec<(u64, Vec<portolan_rules::lifecycle::Match>)> =
        instants.iter().map(|t| (*t, Vec::new())).collect();
    let mut failed = Vec::new();
    for rule in rules {
        for (at, matches) in &mut rounds {
            let sources = portolan_rules::Sources::as_of(
                *at,
                sockets_as_of(*at),
                flows_as_of(*at),
                hosts_as_of(*at),
            );
            match store
                .run_rule(&portolan_rules::compile_with(rule, &sources))
                .await
            {
                Ok(found) => matches.extend(found),
                Err(e) => {
                    failed.push((rule.id.clone(), e.to_string()));
                    break;
                }
            }
        }
    }
    DryRun {
        instants: instants.to_vec(),
        fired: portolan_rules::dry_run::summarise(&rounds),
        failed,
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
    notifier: Option<Arc<Notifier>>,
}

impl Evaluator {
    /// An evaluator of `rules` on `store`.
    pub fn new(store: Arc<Store>, rules: Vec<CompiledRule>) -> Evaluator {
        Evaluator {
            store,
            rules,
            notifier: None,
        }
    }

    /// The same evaluator, handing each round's outcome to `notifier` (without waiting
    /// for any receiver).
    pub fn with_notifier(self, notifier: Notifier) -> Evaluator {
        Evaluator {
            notifier: Some(Arc::new(notifier)),
            ..self
        }
    }

    /// The notifier, if any (for its figures).
    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.as_deref()
    }

    /// Runs every rule once and writes the findings that changed.
    #[tracing::instrument(name = "evaluate", skip_all, fields(
        rules = self.rules.len(),
        failed = tracing::field::Empty,
        matches = tracing::field::Empty,
        findings = tracing::field::Empty,
        opened = tracing::field::Empty,
        resolved = tracing::field::Empty,
    ))]
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
        let evaluation = Evaluation::from_round(round.now, &stored, &updates);
        for c in &evaluation.changes {
            match c.event {
                Event::Opened => report.opened += 1,
                Event::Reopened => report.reopened += 1,
                Event::Resolved => report.resolved += 1,
            }
        }
        let version = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.store.write_findings(&updates, version).await?;
        // What is stored now: every stored finding, replaced by its update when it has one.
        let mut current: HashMap<&str, &portolan_rules::lifecycle::Finding> = stored
            .iter()
            .map(|f| (f.latest.fingerprint.as_str(), f))
            .collect();
        current.extend(updates.iter().map(|f| (f.latest.fingerprint.as_str(), f)));
        let stored_now = current.len();
        metrics::global().set_findings(current.into_values());
        // Only what was written is notified: a failed write is evaluated again next round.
        if let Some(notifier) = &self.notifier {
            notifier.notify(self.described(evaluation).await);
        }
        report.took = started.elapsed();
        let span = tracing::Span::current();
        span.record("failed", report.rules_failed);
        span.record("matches", report.matches);
        span.record("findings", stored_now);
        span.record("opened", report.opened + report.reopened);
        span.record("resolved", report.resolved);
        Ok(report)
    }

    /// `evaluation` with host names and rule descriptions; without host names if they
    /// cannot be read (notifications go out all the same).
    async fn described(&self, mut evaluation: Evaluation) -> Evaluation {
        let host_ids: BTreeSet<String> = evaluation
            .notices_mut()
            .map(|n| n.finding.latest.host_id.clone())
            .filter(|h| !h.is_empty())
            .collect();
        let mut hostnames = HashMap::new();
        if !host_ids.is_empty() {
            let filter = HostFilter {
                host_ids: host_ids.into_iter().collect(),
                ..HostFilter::default()
            };
            match self.store.hosts(&filter).await {
                Ok(hosts) => hostnames.extend(hosts.into_iter().map(|h| (h.host_id, h.hostname))),
                Err(e) => {
                    warn!(error = %e, "cannot read host names for notifications; sending them without")
                }
            }
        }
        let descriptions: HashMap<String, String> = self
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.description.clone()))
            .collect();
        crate::notify::fill_in(&mut evaluation, &hostnames, &descriptions);
        evaluation
    }

    /// Evaluates every `interval` until `stop` turns true.
    pub async fn run(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        if let Some(notifier) = &self.notifier {
            // Weak: the notifier's tasks stop with the evaluator, not with the metrics.
            let notifier = Arc::downgrade(notifier);
            metrics::global().set_notifier_stats(Box::new(move || {
                notifier.upgrade().map(|n| n.stats()).unwrap_or_default()
            }));
        }
        info!(rules = self.rules.len(), interval = ?interval, "rule evaluation started (this replica evaluates: `rules.evaluate = true`)");
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let started = Instant::now();
            let result = self.evaluate_once().await;
            let m = metrics::global();
            m.evaluation_duration
                .observe(&[], started.elapsed().as_secs_f64());
            match &result {
                Ok(r) => {
                    m.evaluations.inc(&[("outcome", "ok")]);
                    // A failing rule is the rule's problem, not ClickHouse's: counted apart.
                    m.rules_failed.add(&[], r.rules_failed as f64);
                }
                Err(_) => {
                    m.evaluations.inc(&[("outcome", "failed")]);
                    m.clickhouse_errors.inc(&[]);
                }
            }
            match result {
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
