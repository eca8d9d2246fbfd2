//! Notifications: findings that open, reopen and resolve go to Alertmanager-compatible
//! receivers ([`alertmanager`]) and generic JSON webhooks ([`webhook`]).
//!
//! The evaluator hands each round's outcome (an [`Evaluation`]) to the [`Notifier`],
//! which never waits for the network: every receiver has a bounded queue and a task of
//! its own, so a slow or dead receiver delays neither evaluation, nor ingestion, nor the
//! other receivers. A full queue drops its oldest notification, counts it
//! ([`ReceiverStats::dropped`]) and logs it.
//!
//! Each request has a deadline (the receiver's `timeout`). An answer `2xx` delivers; `429`,
//! `5xx`, a connection failure or a timeout are retried with exponential backoff and
//! jitter (honouring `Retry-After`) until `notify.max_attempts` or `notify.max_age`; any
//! other answer (`4xx`, a redirect) is not retried and is logged with the start of its
//! body.
//!
//! Only the evaluating replica (`rules.evaluate = true`) notifies. Nothing is kept across
//! restarts: after one, the next evaluation sends every open finding to Alertmanager
//! again, and a resolution that was still queued is lost to webhooks (Alertmanager
//! resolves such an alert by itself when its `endsAt` passes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use portolan_core::backoff::{Backoff, Jitter};
use portolan_rules::lifecycle::{Finding, Status};
use tracing::{info, warn};

use crate::config::NotifySection;

pub mod alertmanager;
pub(crate) mod http;
mod queue;
pub mod webhook;

use queue::Queue;

/// What happened to a finding in an evaluation round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// Seen for the first time.
    Opened,
    /// Matched again after it had been resolved.
    Reopened,
    /// No longer matches.
    Resolved,
}

impl Event {
    /// `opened`, `reopened` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Opened => "opened",
            Event::Reopened => "reopened",
            Event::Resolved => "resolved",
        }
    }

    /// The event of a finding whose status went from `before` (`None`: not stored yet)
    /// to `after`; `None` when its status did not change.
    pub fn between(before: Option<Status>, after: Status) -> Option<Event> {
        match (before, after) {
            (None, Status::Open) => Some(Event::Opened),
            (Some(Status::Resolved), Status::Open) => Some(Event::Reopened),
            (Some(Status::Open), Status::Resolved) => Some(Event::Resolved),
            _ => None,
        }
    }
}

/// A finding as notifications describe it: the stored finding and what the collector
/// knows around it.
///
/// Receivers decide what to send from a notice alone, so state that changes what is sent
/// (an acknowledgement, a silence until some time) belongs here as further fields; build
/// notices with [`Notice::new`] so that adding one breaks no caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notice {
    /// The finding.
    pub finding: Finding,
    /// The host's name; empty when unknown or for fleet-wide findings.
    pub hostname: String,
    /// The rule's description; empty when unknown (a rule no longer configured).
    pub description: String,
}

impl Notice {
    /// A notice of `finding`, with no hostname or description yet.
    pub fn new(finding: Finding) -> Notice {
        Notice {
            finding,
            hostname: String::new(),
            description: String::new(),
        }
    }
}

/// A change of one finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub event: Event,
    /// The finding after it happened.
    pub notice: Notice,
}

/// One evaluation round, as notifications see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Evaluation time, Unix seconds.
    pub at: u64,
    /// Findings that opened, reopened or resolved in this round.
    pub changes: Vec<Change>,
    /// Every finding open after this round (changed or not).
    pub open: Vec<Notice>,
}

impl Evaluation {
    /// The evaluation of a round at `at` that found `stored` findings and wrote `updates`
    /// (as [`reconcile`](portolan_rules::lifecycle::reconcile) returned them).
    pub fn from_round(at: u64, stored: &[Finding], updates: &[Finding]) -> Evaluation {
        let mut latest: BTreeMap<&str, &Finding> = stored
            .iter()
            .map(|f| (f.latest.fingerprint.as_str(), f))
            .collect();
        let mut changes = Vec::new();
        for u in updates {
            let before = latest.get(u.latest.fingerprint.as_str()).map(|f| f.status);
            if let Some(event) = Event::between(before, u.status) {
                changes.push(Change {
                    event,
                    notice: Notice::new(u.clone()),
                });
            }
            latest.insert(u.latest.fingerprint.as_str(), u);
        }
        let open = latest
            .into_values()
            .filter(|f| f.status == Status::Open)
            .map(|f| Notice::new(f.clone()))
            .collect();
        Evaluation { at, changes, open }
    }

    /// Every notice, changed and open, to fill in hostnames and descriptions.
    pub fn notices_mut(&mut self) -> impl Iterator<Item = &mut Notice> {
        self.changes
            .iter_mut()
            .map(|c| &mut c.notice)
            .chain(self.open.iter_mut())
    }
}

/// A notifier that cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A receiver's URL is unusable.
    #[error("notification receiver `{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A configured header is unusable.
    #[error("notification receiver `{endpoint}`: {reason}")]
    Header {
        /// The receiver.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// A receiver's `ca` file is unusable.
    #[error("notification receiver CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS cannot be set up.
    #[error("notification TLS: {0}")]
    Tls(String),
}

/// How failed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per notification, the first included.
    pub max_attempts: u32,
    /// No retry once a notification is this old.
    pub max_age: Duration,
    /// Wait before the first retry.
    pub backoff: Duration,
    /// Longest wait.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The policy of `[notify]`.
    pub fn from_config(section: &NotifySection) -> RetryPolicy {
        RetryPolicy {
            max_attempts: section.max_attempts.max(1),
            max_age: section.max_age,
            backoff: section.backoff,
            max_backoff: section.max_backoff.max(section.backoff),
        }
    }

    /// The wait after `failures` consecutive failures (1 or more): `backoff` doubled per
    /// failure up to `max_backoff`, then between half of that and all of it (jitter), and
    /// at least the receiver's `Retry-After` (capped by `max_backoff` too).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = Backoff {
            initial: self.backoff,
            max: self.max_backoff,
            jitter: Jitter::Half,
        }
        .wait(failures, fastrand::f64());
        jittered.max(retry_after.unwrap_or_default().min(self.max_backoff))
    }
}

/// What a receiver has done since start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverStats {
    /// `alertmanager` or `webhook`.
    pub kind: &'static str,
    /// Its URL (without query).
    pub receiver: String,
    /// Requests answered `2xx`.
    pub delivered: u64,
    /// Notifications given up: rejected, or still failing at the retry limits.
    pub failed: u64,
    /// Attempts that were retries.
    pub retried: u64,
    /// Notifications dropped from a full queue, oldest first.
    pub dropped: u64,
    /// Notifications waiting now.
    pub queued: usize,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

/// A receiver's task and the queue it reads.
#[derive(Debug)]
struct Handle<T> {
    kind: &'static str,
    name: String,
    queue: Arc<Queue<T>>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Handle<T> {
    fn push(&self, items: impl IntoIterator<Item = T>) {
        let mut dropped = 0;
        for item in items {
            dropped += u64::from(self.queue.push(item));
        }
        if dropped > 0 {
            warn!(
                receiver = %self.name,
                kind = self.kind,
                dropped,
                dropped_total = self.queue.dropped(),
                "notification queue full: dropped the oldest notifications (the receiver is slow or down; see the retry warnings, or raise `notify.queue_size`)"
            );
        }
    }

    fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            kind: self.kind,
            receiver: self.name.clone(),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            dropped: self.queue.dropped(),
            queued: self.queue.len(),
        }
    }
}

/// Sends evaluations to every configured receiver, each from a task of its own.
///
/// Dropping the notifier stops its tasks; what was still queued is not sent.
#[derive(Debug)]
pub struct Notifier {
    alertmanagers: Vec<Handle<Arc<Evaluation>>>,
    webhooks: Vec<Handle<webhook::Item>>,
    external_url: String,
}

impl Notifier {
    /// Starts a task per receiver of `section`. `evaluation_interval` is how often
    /// evaluations come (`rules.interval`): Alertmanager alerts stay valid for 4 ×
    /// max(its `resend_interval`, this). Must be called within a tokio runtime.
    pub fn start(
        section: &NotifySection,
        evaluation_interval: Duration,
    ) -> Result<Notifier, NotifyError> {
        let policy = RetryPolicy::from_config(section);
        let capacity = usize::try_from(section.queue_size.max(1)).unwrap_or(usize::MAX);
        let mut alertmanagers = Vec::new();
        for r in &section.alertmanager {
            let endpoint = http::Endpoint::parse(&r.url)
                .map_err(|reason| NotifyError::Url {
                    url: r.url.clone(),
                    reason,
                })?
                .join(alertmanager::ALERTS_PATH);
            let client = http::Client::new(endpoint, &r.headers, &r.ca, r.timeout)?;
            let settings = alertmanager::Settings {
                resend_interval: r.resend_interval,
                valid_for: 4 * r.resend_interval.max(evaluation_interval),
                labels: r.labels.clone(),
                external_url: section.external_url.clone(),
            };
            alertmanagers.push(spawn("alertmanager", client, policy, capacity, |d, q| {
                alertmanager::run(d, q, settings)
            }));
        }
        let mut webhooks = Vec::new();
        for r in &section.webhook {
            let endpoint = http::Endpoint::parse(&r.url).map_err(|reason| NotifyError::Url {
                url: r.url.clone(),
                reason,
            })?;
            let client = http::Client::new(endpoint, &r.headers, &r.ca, r.timeout)?;
            webhooks.push(spawn("webhook", client, policy, capacity, webhook::run));
        }
        for h in alertmanagers
            .iter()
            .map(|h| &h.name)
            .chain(webhooks.iter().map(|h| &h.name))
        {
            info!(receiver = %h, "notifications go to this receiver");
        }
        Ok(Notifier {
            alertmanagers,
            webhooks,
            external_url: section.external_url.clone(),
        })
    }

    /// Whether no receiver is configured.
    pub fn is_empty(&self) -> bool {
        self.alertmanagers.is_empty() && self.webhooks.is_empty()
    }

    /// Hands `evaluation` to every receiver's queue and returns at once.
    pub fn notify(&self, evaluation: Evaluation) {
        if !self.webhooks.is_empty() && !evaluation.changes.is_empty() {
            let born = Instant::now();
            let items: Vec<webhook::Item> = evaluation
                .changes
                .iter()
                .filter_map(|c| webhook::Item::new(c, evaluation.at, &self.external_url, born))
                .collect();
            for h in &self.webhooks {
                h.push(items.iter().cloned());
            }
        }
        if !self.alertmanagers.is_empty() {
            let evaluation = Arc::new(evaluation);
            for h in &self.alertmanagers {
                h.push([evaluation.clone()]);
            }
        }
    }

    /// Every receiver's figures, Alertmanagers first, in configuration order.
    pub fn stats(&self) -> Vec<ReceiverStats> {
        self.alertmanagers
            .iter()
            .map(Handle::stats)
            .chain(self.webhooks.iter().map(Handle::stats))
            .collect()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for h in &self.alertmanagers {
            h.task.abort();
        }
        for h in &self.webhooks {
            h.task.abort();
        }
    }
}

fn spawn<T, F, Fut>(
    kind: &'static str,
    client: http::Client,
    policy: RetryPolicy,
    capacity: usize,
    run: F,
) -> Handle<T>
where
    F: FnOnce(Delivery, Arc<Queue<T>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = client.endpoint().to_string();
    let queue = Arc::new(Queue::new(capacity));
    let counters = Arc::new(Counters::default());
    let delivery = Delivery {
        client,
        policy,
        counters: counters.clone(),
        failures: 0,
        name: name.clone(),
    };
    let task = tokio::spawn(run(delivery, queue.clone()));
    Handle {
        kind,
        name,
        queue,
        counters,
        task,
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Answered `2xx`.
    Delivered,
    /// Rejected, or given up at the retry limits.
    Failed,
    /// Newer data arrived while waiting to retry: the caller builds a new request.
    Superseded,
}

/// Sends requests to one receiver with the retry policy.
#[derive(Debug)]
pub(crate) struct Delivery {
    client: http::Client,
    policy: RetryPolicy,
    counters: Arc<Counters>,
    /// Consecutive failed attempts, across notifications: a receiver that is down is
    /// not hammered anew by each notification.
    failures: u32,
    name: String,
}

impl Delivery {
    /// Posts `body` until it is delivered, rejected or given up. `born` is when the
    /// notification was produced (for `max_age`). While waiting to retry, a push to the
    /// queue of `newer` after its `seen` pushes ends the delivery as [`Sent::Superseded`].
    pub(crate) async fn deliver<T>(
        &mut self,
        body: Bytes,
        what: &str,
        born: Instant,
        newer: Option<(&Queue<T>, u64)>,
    ) -> Sent {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            if attempts > 1 {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
            }
            let (reason, retry_after) = match self.client.post(body.clone()).await {
                Ok(answer) if answer.status.is_success() => {
                    if self.failures > 0 {
                        info!(receiver = %self.name, after_failures = self.failures, "notification receiver answers again");
                    }
                    self.failures = 0;
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    return Sent::Delivered;
                }
                Ok(answer) if is_retryable(answer.status) => (
                    format!("answered {}: {}", answer.status, answer.body),
                    answer.retry_after,
                ),
                Ok(answer) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        receiver = %self.name, what, status = %answer.status, body = %answer.body,
                        "notification rejected, not retried (check the receiver's `url`, `headers` and its own logs)"
                    );
                    return Sent::Failed;
                }
                Err(failure) => (failure.to_string(), None),
            };
            self.failures = self.failures.saturating_add(1);
            let delay = self.policy.delay(self.failures, retry_after);
            if attempts >= self.policy.max_attempts || born.elapsed() + delay > self.policy.max_age
            {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    receiver = %self.name, what, attempts, error = %reason,
                    "notification given up (see `notify.max_attempts` and `notify.max_age`)"
                );
                return Sent::Failed;
            }
            if attempts == 1 {
                warn!(receiver = %self.name, what, error = %reason, retry_in = ?delay, "notification failed; retrying");
            } else {
                tracing::debug!(receiver = %self.name, what, attempts, error = %reason, retry_in = ?delay, "notification failed again");
            }
            match newer {
                Some((queue, seen)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = queue.pushed_since(seen) => return Sent::Superseded,
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
        }
    }
}

/// `429` and `5xx` are worth another try; other non-success answers are not.
fn is_retryable(status: hyper::StatusCode) -> bool {
    status == hyper::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Whether `name` is a valid Prometheus/Alertmanager label name.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Unix seconds as RFC 3339 UTC, e.g. `2025-01-31T12:00:00Z`.
pub(crate) fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `external_url` with `{fingerprint}`, `{rule_id}` and `{host_id}` filled in; empty when
/// no external URL is configured.
pub(crate) fn link(external_url: &str, finding: &Finding) -> String {
    if external_url.is_empty() {
        return String::new();
    }
    let m = &finding.latest;
    external_url
        .replace("{fingerprint}", &url_encode(&m.fingerprint))
        .replace("{rule_id}", &url_encode(&m.rule_id))
        .replace("{host_id}", &url_encode(&m.host_id))
}

fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Fills in the hostname (from `hostnames`, by host id) and the rule's description (from
/// `descriptions`, by rule id) of every notice of `evaluation`.
pub fn fill_in(
    evaluation: &mut Evaluation,
    hostnames: &HashMap<String, String>,
    descriptions: &HashMap<String, String>,
) {
    for n in evaluation.notices_mut() {
        if let Some(h) = hostnames.get(&n.finding.latest.host_id) {
            n.hostname.clone_from(h);
        }
        if let Some(d) = descriptions.get(&n.finding.latest.rule_id) {
            n.description.clone_from(d);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portolan_rules::lifecycle::Match;

    pub(crate) fn finding(fp: &str, status: Status) -> Finding {
        Finding {
            latest: Match {
                rule_id: "database-exposed".into(),
                host_id: "db-1".into(),
                fingerprint: fp.into(),
                severity: "high".into(),
                subject: "tcp 0.0.0.0:5432 (postgres)".into(),
                evidence: "port=5432 scope=wildcard".into(),
            },
            status,
            first_seen: 1_700_000_000,
            last_seen: 1_700_000_100,
            resolved_at: if status == Status::Resolved {
                1_700_000_200
            } else {
                0
            },
            reopened: 0,
        }
    }

    #[test]
    fn events_follow_the_lifecycle() {
        use Status::{Open, Resolved};
        assert_eq!(Event::between(None, Open), Some(Event::Opened));
        assert_eq!(Event::between(Some(Resolved), Open), Some(Event::Reopened));
        assert_eq!(Event::between(Some(Open), Resolved), Some(Event::Resolved));
        assert_eq!(Event::between(Some(Open), Open), None);
        assert_eq!(Event::between(Some(Resolved), Resolved), None);
    }

    #[test]
    fn an_evaluation_has_the_changes_and_every_open_finding() {
        let stored = [
            finding("A", Status::Open),     // stays open
            finding("B", Status::Open),     // resolves
            finding("C", Status::Resolved), // reopens
            finding("D", Status::Resolved), // stays resolved
        ];
        let updates = [
            finding("A", Status::Open),
            finding("B", Status::Resolved),
            finding("C", Status::Open),
            finding("E", Status::Open), // new
        ];
        let e = Evaluation::from_round(42, &stored, &updates);
        let changes: Vec<(&str, Event)> = e
            .changes
            .iter()
            .map(|c| (c.notice.finding.latest.fingerprint.as_str(), c.event))
            .collect();
        assert_eq!(
            changes,
            [
                ("B", Event::Resolved),
                ("C", Event::Reopened),
                ("E", Event::Opened)
            ]
        );
        let open: Vec<&str> = e
            .open
            .iter()
            .map(|n| n.finding.latest.fingerprint.as_str())
            .collect();
        assert_eq!(open, ["A", "C", "E"]);
        assert_eq!(e.at, 42);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 10,
            max_age: Duration::from_secs(600),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
        };
        for _ in 0..100 {
            let d1 = p.delay(1, None);
            assert!(
                d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1),
                "{d1:?}"
            );
            let d3 = p.delay(3, None);
            assert!(
                d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4),
                "{d3:?}"
            );
            let d9 = p.delay(40, None);
            assert!(
                d9 >= Duration::from_secs(4) && d9 <= Duration::from_secs(8),
                "{d9:?}"
            );
            assert_eq!(
                p.delay(1, Some(Duration::from_secs(5))),
                Duration::from_secs(5)
            );
            assert_eq!(
                p.delay(1, Some(Duration::from_secs(3600))),
                Duration::from_secs(8)
            );
        }
    }

    #[test]
    fn links_and_labels() {
        let f = finding("00FF", Status::Open);
        assert_eq!(
            link(
                "https://grafana/d/x?var-fp={fingerprint}&var-host={host_id}",
                &f
            ),
            "https://grafana/d/x?var-fp=00FF&var-host=db-1"
        );
        let mut odd = f.clone();
        odd.latest.host_id = "a b/c".into();
        assert_eq!(link("http://x/{host_id}", &odd), "http://x/a%20b%2Fc");
        assert_eq!(link("", &f), "");
        assert!(is_label_name("cluster") && is_label_name("_x1"));
        assert!(!is_label_name("1x") && !is_label_name("a-b") && !is_label_name(""));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
