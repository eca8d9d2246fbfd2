//! A dry run over history: what rules would have found at a series of past instants,
//! summarised per finding. Nothing is written: this is `portolan rules test`.
//!
//! The caller evaluates each rule at each of [`instants`] (compiled with
//! [`Sources::as_of`](crate::Sources::as_of)) and hands the matches to [`summarise`].

use std::collections::BTreeMap;

use crate::lifecycle::Match;

/// At most this many instants per dry run: a longer `since` needs a longer `step`.
pub const MAX_INSTANTS: u64 = 2000;

/// The instants of a dry run: from `now - since` to `now`, every `step` seconds, `now`
/// included (oldest first).
///
/// # Errors
///
/// A message saying what to change when `step` is 0, `since` is 0, or there would be
/// more than [`MAX_INSTANTS`] instants.
pub fn instants(now: u64, since: u64, step: u64) -> Result<Vec<u64>, String> {
    if since == 0 {
        return Err("`since` must be above 0 (e.g. 7d)".into());
    }
    if step == 0 {
        return Err("`step` must be above 0 (e.g. 1h)".into());
    }
    let count = since / step + 1;
    if count > MAX_INSTANTS {
        return Err(format!(
            "a step of {step}s over {since}s makes {count} evaluations, more than {MAX_INSTANTS}: use a step of at least {}s",
            since.div_ceil(MAX_INSTANTS - 1)
        ));
    }
    let start = now.saturating_sub(since);
    let mut out: Vec<u64> = (0..count).map(|i| start + i * step).collect();
    if out.last() != Some(&now) {
        out.push(now);
    }
    Ok(out)
}

/// One finding of a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The rule.
    pub rule_id: String,
    /// The host; empty for fleet-wide findings.
    pub host_id: String,
    /// Stable identity.
    pub fingerprint: String,
    /// Severity.
    pub severity: String,
    /// Subject, as at the last instant it matched.
    pub subject: String,
    /// Evidence, as at the last instant it matched.
    pub evidence: String,
    /// The first instant it matched (Unix seconds).
    pub first_at: u64,
    /// The last instant it matched (Unix seconds).
    pub last_at: u64,
    /// At how many instants it matched.
    pub instants: u32,
    /// How many times it would have opened: runs of consecutive instants matched.
    pub episodes: u32,
    /// It matched at the last instant (it would be open now).
    pub open_at_end: bool,
}

/// Summarises the matches of each instant (`rounds`, oldest first; an instant with no
/// match must still be given, so that episodes are counted right) per fingerprint,
/// ordered by first instant, then rule, host and subject.
pub fn summarise(rounds: &[(u64, Vec<Match>)]) -> Vec<Fired> {
    let mut by_print: BTreeMap<&str, (Fired, usize)> = BTreeMap::new();
    let last_round = rounds.len().saturating_sub(1);
    for (index, (at, matches)) in rounds.iter().enumerate() {
        for m in matches {
            match by_print.get_mut(m.fingerprint.as_str()) {
                Some((fired, last_index)) => {
                    if *last_index == index {
                        continue; // the same finding twice in one instant
                    }
                    if *last_index + 1 != index {
                        fired.episodes += 1;
                    }
                    *last_index = index;
                    fired.last_at = *at;
                    fired.instants += 1;
                    fired.subject.clone_from(&m.subject);
                    fired.evidence.clone_from(&m.evidence);
                    fired.severity.clone_from(&m.severity);
                }
                None => {
                    by_print.insert(
                        &m.fingerprint,
                        (
                            Fired {
                                rule_id: m.rule_id.clone(),
                                host_id: m.host_id.clone(),
                                fingerprint: m.fingerprint.clone(),
                                severity: m.severity.clone(),
                                subject: m.subject.clone(),
                                evidence: m.evidence.clone(),
                                first_at: *at,
                                last_at: *at,
                                instants: 1,
                                episodes: 1,
                                open_at_end: false,
                            },
                            index,
                        ),
                    );
                }
            }
        }
    }
    let mut out: Vec<Fired> = by_print
        .into_values()
        .map(|(mut f, last_index)| {
            f.open_at_end = !rounds.is_empty() && last_index == last_round;
            f
        })
        .collect();
    out.sort_by(|a, b| {
        (a.first_at, &a.rule_id, &a.host_id, &a.subject)
            .cmp(&(b.first_at, &b.rule_id, &b.host_id, &b.subject))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(print: &str, evidence: &str) -> Match {
        Match {
            rule_id: "r".into(),
            host_id: "h".into(),
            fingerprint: print.into(),
            severity: "high".into(),
            subject: format!("subject {print}"),
            evidence: evidence.into(),
        }
    }

    #[test]
    fn instants_cover_the_window_and_end_now() {
        assert_eq!(instants(1000, 100, 30), Ok(vec![900, 930, 960, 990, 1000]));
        assert_eq!(instants(1000, 100, 50), Ok(vec![900, 950, 1000]));
        assert!(instants(1000, 0, 1).is_err());
        assert!(instants(1000, 10, 0).is_err());
        let too_many = instants(10_000_000, 7 * 86_400, 60)
            .err()
            .unwrap_or_default();
        assert!(
            too_many.contains("use a step of at least 303s"),
            "{too_many}"
        );
    }

    #[test]
    fn episodes_first_last_and_open_at_end() {
        let rounds = vec![
            (10, vec![m("A", "e1")]),
            (20, vec![m("A", "e2"), m("B", "x")]),
            (30, vec![]),
            (40, vec![m("A", "e4"), m("A", "e4")]),
        ];
        let got = summarise(&rounds);
        assert_eq!(got.len(), 2);
        let a = &got[0];
        assert_eq!(
            (a.first_at, a.last_at, a.instants, a.episodes, a.open_at_end),
            (10, 40, 3, 2, true)
        );
        assert_eq!(a.evidence, "e4");
        let b = &got[1];
        assert_eq!(
            (b.first_at, b.last_at, b.instants, b.episodes, b.open_at_end),
            (20, 20, 1, 1, false)
        );
    }

    proptest! {
        /// Counts agree with the rounds: instants matched, and episodes equal the runs.
        #[test]
        fn counts_follow_the_rounds(pattern in proptest::collection::vec(any::<bool>(), 1..40)) {
            let rounds: Vec<(u64, Vec<Match>)> = pattern
                .iter()
                .enumerate()
                .map(|(i, on)| (i as u64 * 10, if *on { vec![m("A", "e")] } else { vec![] }))
                .collect();
            let got = summarise(&rounds);
            let hits = pattern.iter().filter(|b| **b).count();
            if hits == 0 {
                prop_assert!(got.is_empty());
            } else {
                let runs = pattern.windows(2).filter(|w| !w[0] && w[1]).count() + usize::from(pattern[0]);
                prop_assert_eq!(got[0].instants as usize, hits);
                prop_assert_eq!(got[0].episodes as usize, runs);
                prop_assert_eq!(got[0].open_at_end, *pattern.last().unwrap_or(&false));
            }
        }
    }
}
