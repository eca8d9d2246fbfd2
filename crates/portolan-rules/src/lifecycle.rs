//! The lifecycle of findings: `open` while a rule matches, `resolved` when it no longer
//! does (kept, not deleted), open again when it returns.
//!
//! Pure: [`reconcile`] takes what is stored and what an evaluation matched and returns
//! the findings to write.

use std::collections::{BTreeMap, BTreeSet};

/// One row a compiled rule returned (the [finding contract](crate::FINDING_COLUMNS)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The rule.
    pub rule_id: String,
    /// The host; empty for fleet-wide findings.
    pub host_id: String,
    /// Stable identity of the situation.
    pub fingerprint: String,
    /// `info` … `critical`.
    pub severity: String,
    /// What it is about, for people.
    pub subject: String,
    /// `key=value` pairs.
    pub evidence: String,
}

/// Where a finding is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// The rule matches now.
    Open,
    /// The rule matched before and does not now.
    Resolved,
}

impl Status {
    /// `open` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Resolved => "resolved",
        }
    }

    /// Parses `open` / `resolved`.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "open" => Some(Status::Open),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }
}

/// A finding as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The latest match's content (rule, host, fingerprint, severity, subject, evidence).
    pub latest: Match,
    /// Open or resolved.
    pub status: Status,
    /// When it was first seen (Unix seconds); never changes.
    pub first_seen: u64,
    /// When it last matched.
    pub last_seen: u64,
    /// When it was resolved; 0 while open.
    pub resolved_at: u64,
    /// How many times it opened again after being resolved.
    pub reopened: u32,
}

/// What one evaluation round knows.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Rules that ran successfully this round: only their findings may be resolved (a
    /// rule whose query failed says nothing about its findings).
    pub evaluated: BTreeSet<String>,
    /// Rules configured now: findings of rules no longer configured are resolved.
    pub configured: BTreeSet<String>,
    /// Evaluation time, Unix seconds.
    pub now: u64,
}

/// The findings to write after an evaluation: new ones open, matched ones refreshed,
/// resolved ones that match again reopened, open ones that no longer match resolved.
/// Findings that stay resolved are not rewritten.
pub fn reconcile(stored: &[Finding], matches: &[Match], round: &Round) -> Vec<Finding> {
    let stored: BTreeMap<&str, &Finding> = stored
        .iter()
        .map(|f| (f.latest.fingerprint.as_str(), f))
        .collect();
    let mut out = Vec::new();
    let mut matched = BTreeSet::new();
    for m in matches {
        if !matched.insert(m.fingerprint.as_str()) {
            continue;
        }
        let finding = match stored.get(m.fingerprint.as_str()) {
            None => Finding {
                latest: m.clone(),
                status: Status::Open,
                first_seen: round.now,
                last_seen: round.now,
                resolved_at: 0,
                reopened: 0,
            },
            Some(prev) => Finding {
                latest: m.clone(),
                status: Status::Open,
                first_seen: prev.first_seen,
                last_seen: round.now,
                resolved_at: 0,
                reopened: prev.reopened + u32::from(prev.status == Status::Resolved),
            },
        };
        out.push(finding);
    }
    for (fingerprint, prev) in &stored {
        let rule = &prev.latest.rule_id;
        let may_resolve = round.evaluated.contains(rule) || !round.configured.contains(rule);
        if prev.status == Status::Open && !matched.contains(fingerprint) && may_resolve {
            out.push(Finding {
                status: Status::Resolved,
                resolved_at: round.now,
                ..(*prev).clone()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(fp: u8, rule: u8) -> Match {
        Match {
            rule_id: format!("r{rule}"),
            host_id: "h".into(),
            fingerprint: format!("{fp:016X}"),
            severity: "high".into(),
            subject: "tcp 0.0.0.0:5432".into(),
            evidence: String::new(),
        }
    }

    fn apply(stored: &[Finding], updates: &[Finding]) -> Vec<Finding> {
        let mut by: BTreeMap<String, Finding> = stored
            .iter()
            .map(|f| (f.latest.fingerprint.clone(), f.clone()))
            .collect();
        for u in updates {
            by.insert(u.latest.fingerprint.clone(), u.clone());
        }
        by.into_values().collect()
    }

    fn round(now: u64) -> Round {
        let rules: BTreeSet<String> = (0..3).map(|r| format!("r{r}")).collect();
        Round {
            evaluated: rules.clone(),
            configured: rules,
            now,
        }
    }

    #[test]
    fn open_resolve_reopen() {
        let first = reconcile(&[], &[m(1, 0)], &round(100));
        assert_eq!(first[0].status, Status::Open);
        assert_eq!(first[0].first_seen, 100);
        let gone = reconcile(&first, &[], &round(200));
        assert_eq!(gone[0].status, Status::Resolved);
        assert_eq!(gone[0].resolved_at, 200);
        let stored = apply(&first, &gone);
        let back = reconcile(&stored, &[m(1, 0)], &round(300));
        assert_eq!(
            (
                back[0].status,
                back[0].first_seen,
                back[0].reopened,
                back[0].resolved_at
            ),
            (Status::Open, 100, 1, 0)
        );
        // Staying resolved writes nothing.
        assert!(reconcile(&stored, &[], &round(400)).is_empty());
    }

    #[test]
    fn a_failed_rule_resolves_nothing_but_a_removed_rule_does() {
        let stored = reconcile(&[], &[m(1, 0), m(2, 1)], &round(100));
        let mut r = round(200);
        r.evaluated.remove("r0");
        let out = reconcile(&stored, &[], &r);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].latest.rule_id, "r1");
        r.configured.remove("r0");
        assert_eq!(reconcile(&stored, &[], &r).len(), 2);
    }

    proptest! {
        #[test]
        fn laws(rounds in proptest::collection::vec(proptest::collection::vec((0u8..6, 0u8..3), 0..6), 1..8)) {
            let mut stored: Vec<Finding> = Vec::new();
            let mut first_seen: BTreeMap<String, u64> = BTreeMap::new();
            for (i, ms) in rounds.iter().enumerate() {
                let now = 100 * (i as u64 + 1);
                let matches: Vec<Match> = ms.iter().map(|(fp, rule)| m(*fp, *rule)).collect();
                let updates = reconcile(&stored, &matches, &round(now));
                stored = apply(&stored, &updates);
                let matched: BTreeSet<String> = matches.iter().map(|x| x.fingerprint.clone()).collect();
                for f in &stored {
                    // Open exactly when matched now; nothing is ever deleted.
                    prop_assert_eq!(f.status == Status::Open, matched.contains(&f.latest.fingerprint));
                    // first_seen never moves.
                    let first = *first_seen.entry(f.latest.fingerprint.clone()).or_insert(f.first_seen);
                    prop_assert_eq!(first, f.first_seen);
                    prop_assert!(f.last_seen >= f.first_seen);
                }
                prop_assert!(matched.iter().all(|fp| stored.iter().any(|f| &f.latest.fingerprint == fp)));
                // A second reconcile at the same time changes no status.
                for u in reconcile(&stored, &matches, &round(now)) {
                    let before = stored.iter().find(|f| f.latest.fingerprint == u.latest.fingerprint).map(|f| f.status);
                    prop_assert_eq!(before, Some(u.status));
                }
            }
        }
    }
}
