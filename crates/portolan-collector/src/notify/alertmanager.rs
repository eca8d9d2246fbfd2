//! Alertmanager-compatible receivers: the v2 alerts API (`POST <url>/api/v2/alerts`, a
//! JSON array of alerts), spoken the way Prometheus speaks it.
//!
//! - Every open finding is a firing alert, sent again every `resend_interval` (and at
//!   once when anything changed) with `endsAt` = now + 4 × max(`resend_interval`,
//!   `rules.interval`): Alertmanager keeps it firing while the collector keeps sending,
//!   and resolves it by itself if the collector stops.
//! - A resolved finding is sent with `endsAt` = its resolution time, with every batch
//!   for [`RESOLVED_RETENTION`] after it resolved (Prometheus does the same), so that an
//!   Alertmanager that missed one batch still learns it.
//! - The finding's fingerprint is a label, so an alert's identity is the finding's.
//!
//! A batch always holds the latest state: when a new evaluation arrives while a batch
//! waits to be retried, the batch is rebuilt from it instead.
//!
//! Labels: `alertname` (the rule id), `severity`, `host_id` and `hostname` (when
//! known), `fingerprint`, `portolan_rule` (the rule id), `subject`, plus the receiver's
//! static `labels` (which cannot replace these). Annotations: `summary`, `description`,
//! `evidence`. `generatorURL` is `notify.external_url` filled in for the finding, or
//! empty.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tracing::warn;

use super::queue::Queue;
use super::{Delivery, Evaluation, Event, Notice, Sent, link, rfc3339};

/// Where alerts are posted, under the receiver's base URL.
pub const ALERTS_PATH: &str = "/api/v2/alerts";

/// How long a resolved finding keeps being sent after it resolved.
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);

/// One alert of the v2 API (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Identity and routing.
    pub labels: BTreeMap<String, String>,
    /// Text for people.
    pub annotations: BTreeMap<String, String>,
    /// When the finding was first seen.
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// In the future while firing; the resolution time once resolved.
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    /// A link for people; empty when `notify.external_url` is not set.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

impl Alert {
    /// The alert of `notice`, ending at `ends_at` (Unix seconds), with `static_labels`
    /// under the finding's own.
    pub fn new(
        notice: &Notice,
        ends_at: u64,
        static_labels: &BTreeMap<String, String>,
        external_url: &str,
    ) -> Alert {
        let f = &notice.finding;
        let m = &f.latest;
        let mut labels = static_labels.clone();
        let mut label = |name: &str, value: &str| {
            if !value.is_empty() {
                labels.insert(name.to_string(), value.to_string());
            }
        };
        label("alertname", &m.rule_id);
        label("severity", &m.severity);
        label("host_id", &m.host_id);
        label("hostname", &notice.hostname);
        label("fingerprint", &m.fingerprint);
        label("portolan_rule", &m.rule_id);
        label("subject", &m.subject);
        let host = if !notice.hostname.is_empty() {
            notice.hostname.as_str()
        } else if !m.host_id.is_empty() {
            m.host_id.as_str()
        } else {
            "the fleet"
        };
        let summary = format!("{}: {} on {host}", m.rule_id, m.subject);
        let what = if notice.description.is_empty() {
            format!("Rule {} matched", m.rule_id)
        } else {
            notice.description.trim_end_matches('.').to_string()
        };
        let mut description = format!(
            "{what}: {} on {host}, severity {}, first seen {}",
            m.subject,
            m.severity,
            rfc3339(f.first_seen)
        );
        if f.reopened > 0 {
            description.push_str(&format!(", reopened {} times", f.reopened));
        }
        description.push('.');
        let annotations = BTreeMap::from([
            ("summary".to_string(), summary),
            ("description".to_string(), description),
            ("evidence".to_string(), m.evidence.clone()),
        ]);
        Alert {
            labels,
            annotations,
            starts_at: rfc3339(f.first_seen),
            ends_at: rfc3339(ends_at.max(f.first_seen)),
            generator_url: link(external_url, f),
        }
    }
}

/// How one Alertmanager receiver behaves.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Firing alerts are sent again this often.
    pub(crate) resend_interval: Duration,
    /// A firing alert's `endsAt` is this far ahead.
    pub(crate) valid_for: Duration,
    /// Static labels.
    pub(crate) labels: BTreeMap<String, String>,
    /// `notify.external_url`.
    pub(crate) external_url: String,
}

/// What the receiver knows: the latest open findings and the recently resolved ones.
#[derive(Debug, Default)]
struct State {
    open: Vec<Notice>,
    resolved: BTreeMap<String, Notice>,
    /// Something changed since the last batch went out.
    dirty: bool,
    last_sent: Option<Instant>,
}

impl State {
    fn apply(&mut self, evaluation: &Evaluation) {
        self.open.clone_from(&evaluation.open);
        for c in &evaluation.changes {
            let fingerprint = c.notice.finding.latest.fingerprint.clone();
            match c.event {
                Event::Resolved => {
                    self.resolved.insert(fingerprint, c.notice.clone());
                }
                Event::Opened | Event::Reopened => {
                    self.resolved.remove(&fingerprint);
                }
            }
            self.dirty = true;
        }
    }

    fn due(&self, resend_interval: Duration) -> bool {
        (!self.open.is_empty() || !self.resolved.is_empty())
            && (self.dirty
                || self
                    .last_sent
                    .is_none_or(|t| t.elapsed() >= resend_interval))
    }

    /// The batch to send now: every open finding firing, every retained resolved one.
    fn batch(&mut self, settings: &Settings) -> Vec<Alert> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.resolved
            .retain(|_, n| n.finding.resolved_at + RESOLVED_RETENTION.as_secs() >= now);
        let until = now + settings.valid_for.as_secs();
        self.open
            .iter()
            .map(|n| Alert::new(n, until, &settings.labels, &settings.external_url))
            .chain(self.resolved.values().map(|n| {
                Alert::new(
                    n,
                    n.finding.resolved_at,
                    &settings.labels,
                    &settings.external_url,
                )
            }))
            .collect()
    }

    fn sent(&mut self) {
        self.dirty = false;
        self.last_sent = Some(Instant::now());
    }
}

/// Keeps one Alertmanager up to date until the task is aborted.
pub(crate) async fn run(
    mut delivery: Delivery,
    queue: Arc<Queue<Arc<Evaluation>>>,
    settings: Settings,
) {
    let mut state = State::default();
    loop {
        let resend_at = match (
            &state.last_sent,
            state.open.is_empty() && state.resolved.is_empty(),
        ) {
            (Some(t), false) => Some(*t + settings.resend_interval),
            _ => None,
        };
        tokio::select! {
            evaluation = queue.next() => state.apply(&evaluation),
            () = async {
                match resend_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        loop {
            let seen = queue.pushes();
            while let Some(evaluation) = queue.pop() {
                state.apply(&evaluation);
            }
            if !state.due(settings.resend_interval) {
                break;
            }
            let alerts = state.batch(&settings);
            if alerts.is_empty() {
                state.sent();
                break;
            }
            let body = match serde_json::to_vec(&alerts) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    warn!(error = %e, "cannot render the alerts for alertmanager; they are not sent");
                    state.sent();
                    break;
                }
            };
            let what = format!("{} alerts", alerts.len());
            match delivery
                .deliver(body, &what, Instant::now(), Some((&*queue, seen)))
                .await
            {
                // Given up: try again at the next change or resend, with the state then.
                Sent::Delivered | Sent::Failed => {
                    state.sent();
                    break;
                }
                Sent::Superseded => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::tests::finding;
    use portolan_rules::lifecycle::Status;

    #[test]
    fn firing_and_resolved_alerts_have_the_v2_shape() -> Result<(), serde_json::Error> {
        let mut notice = Notice::new(finding("00FF", Status::Open));
        notice.hostname = "db-1.example".into();
        notice.description = "A database port listens on a public or wildcard address.".into();
        let statics = BTreeMap::from([
            ("cluster".to_string(), "eu-1".to_string()),
            ("severity".to_string(), "ignored".to_string()),
        ]);
        let json = serde_json::to_value(Alert::new(&notice, 1_700_000_400, &statics, ""))?;
        let expected = serde_json::json!({
            "labels": {
                "alertname": "database-exposed",
                "cluster": "eu-1",
                "fingerprint": "00FF",
                "host_id": "db-1",
                "hostname": "db-1.example",
                "portolan_rule": "database-exposed",
                "severity": "high",
                "subject": "tcp 0.0.0.0:5432 (postgres)"
            },
            "annotations": {
                "summary": "database-exposed: tcp 0.0.0.0:5432 (postgres) on db-1.example",
                "description": "A database port listens on a public or wildcard address: tcp 0.0.0.0:5432 (postgres) on db-1.example, severity high, first seen 2023-11-14T22:13:20Z.",
                "evidence": "port=5432 scope=wildcard"
            },
            "startsAt": "2023-11-14T22:13:20Z",
            "endsAt": "2023-11-14T22:20:00Z",
            "generatorURL": ""
        });
        assert_eq!(json, expected);

        let resolved = Notice::new(finding("00FF", Status::Resolved));
        let json = serde_json::to_value(Alert::new(
            &resolved,
            resolved.finding.resolved_at,
            &BTreeMap::new(),
            "http://x/{fingerprint}",
        ))?;
        assert_eq!(json["endsAt"], "2023-11-14T22:16:40Z");
        assert_eq!(json["generatorURL"], "http://x/00FF");
        assert_eq!(
            json["labels"].get("hostname"),
            None,
            "unknown hostname: no label"
        );
        Ok(())
    }

    #[test]
    fn the_state_keeps_the_latest_open_set_and_resolutions() {
        let settings = Settings {
            resend_interval: Duration::from_secs(60),
            valid_for: Duration::from_secs(240),
            labels: BTreeMap::new(),
            external_url: String::new(),
        };
        let mut state = State::default();
        assert!(!state.due(settings.resend_interval), "nothing to send");
        let open = Notice::new(finding("A", Status::Open));
        state.apply(&Evaluation {
            at: 1,
            changes: vec![super::super::Change {
                event: Event::Opened,
                notice: open.clone(),
            }],
            open: vec![open.clone()],
        });
        assert!(state.due(settings.resend_interval));
        state.sent();
        // Nothing changed, resend not yet due.
        state.apply(&Evaluation {
            at: 2,
            changes: vec![],
            open: vec![open],
        });
        assert!(!state.due(settings.resend_interval));
        // Resolved now (and recently, by the clock): sent with the open ones.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut gone = Notice::new(finding("A", Status::Resolved));
        gone.finding.resolved_at = now;
        state.apply(&Evaluation {
            at: 3,
            changes: vec![super::super::Change {
                event: Event::Resolved,
                notice: gone,
            }],
            open: vec![],
        });
        assert!(state.due(settings.resend_interval));
        let batch = state.batch(&settings);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].ends_at, rfc3339(now));
        // Long resolved: no longer sent.
        state
            .resolved
            .values_mut()
            .for_each(|n| n.finding.resolved_at = now - RESOLVED_RETENTION.as_secs() - 10);
        assert!(state.batch(&settings).is_empty());
    }
}
