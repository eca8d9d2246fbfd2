//! Watch streams: live changes, found by polling ClickHouse.
//!
//! The collector keeps no fleet state and another replica may store the changes or
//! evaluate the rules, so a stream polls the store at the interval its client asked for
//! (within [`MIN_POLL`]..=[`MAX_POLL`]) and sends what changed since the previous poll.
//! Each stream is one task holding a permit of the service's semaphore: a collector
//! serves a bounded number at once. A stream ends when its client goes away (its
//! receiver is dropped: the task notices while waiting or sending), or with
//! UNAVAILABLE after [`MAX_FAILURES`] failed polls in a row.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use portolan_proto::v1 as pb;
use portolan_rules::lifecycle::Status as FindingState;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{debug, info, warn};

use super::convert::history_event;
use super::fields::{required, unix};
use super::findings::{FindingFilter, FindingView, finding_order};
use super::{Query, QueryError};
use portolan_store::Store;
use portolan_store::history::EventQuery;

/// The shortest poll interval a client may ask for.
pub const MIN_POLL: Duration = Duration::from_secs(1);
/// The longest poll interval.
pub const MAX_POLL: Duration = Duration::from_secs(60);
/// WatchFindings' interval when the request sets none.
pub const DEFAULT_FINDINGS_POLL: Duration = Duration::from_secs(5);
/// WatchHost's interval when the request sets none.
pub const DEFAULT_HOST_POLL: Duration = Duration::from_secs(2);
/// Failed polls in a row after which a stream ends with UNAVAILABLE.
pub const MAX_FAILURES: u32 = 3;
/// Events per WatchHost message.
const EVENTS_PER_MESSAGE: u32 = 1000;
/// Messages buffered per stream before the task waits for its client.
const CHANNEL_DEPTH: usize = 16;

/// The poll interval of a request: `ms`, or `default` for 0, within the bounds.
fn poll_interval(ms: u32, default: Duration) -> Duration {
    if ms == 0 {
        return default;
    }
    Duration::from_millis(u64::from(ms)).clamp(MIN_POLL, MAX_POLL)
}

/// What a watch remembers of a finding between polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    status: FindingState,
    reopened: u32,
    /// The version of the acknowledgement in force; `None`: none.
    ack: Option<u64>,
}

fn seen(view: &FindingView) -> HashMap<String, Seen> {
    view.findings
        .iter()
        .map(|f| {
            let ack = view
                .ack(f)
                .filter(|a| a.in_force(f, view.now))
                .map(|a| a.version);
            (
                f.latest.fingerprint.clone(),
                Seen {
                    status: f.status,
                    reopened: f.reopened,
                    ack,
                },
            )
        })
        .collect()
}

/// The changes from `old` (`None`: a finding not seen before) to `new`, in the order
/// they happened: status first, acknowledgement last.
fn changes(old: Option<&Seen>, new: &Seen) -> Vec<pb::FindingChange> {
    let mut out = Vec::new();
    match old {
        None => {
            out.push(pb::FindingChange::Opened);
            if new.status == FindingState::Resolved {
                out.push(pb::FindingChange::Resolved);
            }
        }
        Some(old) => {
            if new.reopened > old.reopened {
                out.push(pb::FindingChange::Reopened);
                if new.status == FindingState::Resolved {
                    out.push(pb::FindingChange::Resolved);
                }
            } else if old.status == FindingState::Open && new.status == FindingState::Resolved {
                out.push(pb::FindingChange::Resolved);
            }
        }
    }
    let old_ack = old.and_then(|o| o.ack);
    if new.ack != old_ack {
        out.push(if new.ack.is_some() {
            pb::FindingChange::Acked
        } else {
            pb::FindingChange::Unacked
        });
    }
    out
}

fn finding_message(
    change: pb::FindingChange,
    finding: Option<pb::Finding>,
) -> pb::WatchFindingsResponse {
    pb::WatchFindingsResponse {
        change: change as i32,
        finding,
        observed_unix: unix(SystemTime::now()),
    }
}

/// Why a watch task ended, for the log.
const CLIENT_GONE: &str = "the client went away";
const STORE_DOWN: &str = "ClickHouse stayed unreachable";

impl Query {
    fn watch_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, QueryError> {
        self.watches
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryError::TooManyWatches(self.max_watches))
    }

    pub(super) async fn watch_findings_inner(
        &self,
        who: String,
        r: pb::WatchFindingsRequest,
    ) -> Result<ReceiverStream<Result<pb::WatchFindingsResponse, Status>>, QueryError> {
        let filter = Self::finding_filter(r.hosts, 0, r.rule_id, &r.min_severity, 0)?;
        let interval = poll_interval(r.poll_interval_ms, DEFAULT_FINDINGS_POLL);
        let permit = self.watch_permit()?;
        // The first read happens before the stream starts, so that its failure is the
        // call's status and changes are counted from the moment the call is answered.
        let view = FindingView::read(&self.store, &filter.hosts).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let store = self.store.clone();
        let initial = r.initial;
        tokio::spawn(async move {
            let _permit = permit;
            info!(who = %who, interval = ?interval, "finding watch started");
            let why = watch_findings(&store, &filter, view, initial, interval, &tx).await;
            info!(who = %who, "finding watch ended: {why}");
        });
        Ok(ReceiverStream::new(rx))
    }

    pub(super) async fn watch_host_inner(
        &self,
        who: String,
        r: pb::WatchHostRequest,
    ) -> Result<ReceiverStream<Result<pb::WatchHostResponse, Status>>, QueryError> {
        required("host_id", &r.host_id, "`portolan hosts` lists the hosts")?;
        let interval = poll_interval(r.poll_interval_ms, DEFAULT_HOST_POLL);
        let permit = self.watch_permit()?;
        self.known_host(&r.host_id).await?;
        // Fixed before the call is answered: a change stored after the answer is sent.
        let start = if r.after_seq > 0 {
            r.after_seq
        } else {
            self.store.last_seq(&r.host_id).await?
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let store = self.store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            info!(who = %who, host_id = %r.host_id, after_seq = start, interval = ?interval, "host watch started");
            let why = watch_host(&store, &r.host_id, r.include_flows, start, interval, &tx).await;
            info!(who = %who, host_id = %r.host_id, "host watch ended: {why}");
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Waits `interval`; `false` when the client went away meanwhile.
async fn wait<T>(tx: &mpsc::Sender<T>, interval: Duration) -> bool {
    tokio::select! {
        () = tx.closed() => false,
        () = tokio::time::sleep(interval) => true,
    }
}

async fn watch_findings(
    store: &Store,
    filter: &FindingFilter,
    view: FindingView,
    initial: bool,
    interval: Duration,
    tx: &mpsc::Sender<Result<pb::WatchFindingsResponse, Status>>,
) -> &'static str {
    if initial {
        let mut current: Vec<pb::Finding> = view
            .findings
            .iter()
            .filter(|f| view.matches(f, filter))
            .map(|f| view.to_pb(f))
            .collect();
        current.sort_by_key(finding_order);
        for f in current {
            let message = finding_message(pb::FindingChange::Current, Some(f));
            if tx.send(Ok(message)).await.is_err() {
                return CLIENT_GONE;
            }
        }
    }
    if tx
        .send(Ok(finding_message(pb::FindingChange::Synced, None)))
        .await
        .is_err()
    {
        return CLIENT_GONE;
    }
    let mut known = seen(&view);
    let mut failures = 0;
    loop {
        if !wait(tx, interval).await {
            return CLIENT_GONE;
        }
        let view = match FindingView::read(store, &filter.hosts).await {
            Ok(view) => {
                failures = 0;
                view
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, failures, "finding watch: poll failed");
                if failures >= MAX_FAILURES {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return STORE_DOWN;
                }
                continue;
            }
        };
        let now = seen(&view);
        for f in &view.findings {
            let fp = &f.latest.fingerprint;
            let Some(new) = now.get(fp) else { continue };
            let happened = changes(known.get(fp), new);
            if happened.is_empty() || !view.matches(f, filter) {
                continue;
            }
            debug!(fingerprint = %fp, changes = ?happened, "finding changed");
            for change in happened {
                let message = finding_message(change, Some(view.to_pb(f)));
                if tx.send(Ok(message)).await.is_err() {
                    return CLIENT_GONE;
                }
            }
        }
        known = now;
    }
}

async fn watch_host(
    store: &Store,
    host_id: &str,
    include_flows: bool,
    start: u64,
    interval: Duration,
    tx: &mpsc::Sender<Result<pb::WatchHostResponse, Status>>,
) -> &'static str {
    let mut done = start;
    let mut failures = 0;
    loop {
        match send_new_events(store, host_id, include_flows, &mut done, tx).await {
            Ok(true) => failures = 0,
            Ok(false) => return CLIENT_GONE,
            Err(e) => {
                failures += 1;
                warn!(host_id, error = %e, failures, "host watch: poll failed");
                if failures >= MAX_FAILURES {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return STORE_DOWN;
                }
            }
        }
        if !wait(tx, interval).await {
            return CLIENT_GONE;
        }
    }
}

/// Sends the events of the changes committed after `*done` and advances it; `false`
/// when the client went away.
async fn send_new_events(
    store: &Store,
    host_id: &str,
    include_flows: bool,
    done: &mut u64,
    tx: &mpsc::Sender<Result<pb::WatchHostResponse, Status>>,
) -> Result<bool, QueryError> {
    let last = store.last_seq(host_id).await?;
    if last <= *done {
        return Ok(true);
    }
    let mut query = EventQuery {
        host_id: host_id.to_string(),
        include_flows,
        newest_first: false,
        after_seq: *done,
        upto_seq: Some(last),
        limit: EVENTS_PER_MESSAGE,
        ..EventQuery::default()
    };
    loop {
        let (events, more) = store.events(&query).await?;
        let cursor = events.last().map(|e| e.cursor());
        if !events.is_empty() {
            let message = pb::WatchHostResponse {
                events: events
                    .into_iter()
                    .map(|e| history_event(host_id, e))
                    .collect(),
            };
            if tx.send(Ok(message)).await.is_err() {
                return Ok(false);
            }
        }
        match cursor {
            Some(cursor) if more => query.after = Some(cursor),
            _ => break,
        }
    }
    *done = last;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(status: FindingState, reopened: u32, ack: Option<u64>) -> Seen {
        Seen {
            status,
            reopened,
            ack,
        }
    }

    #[test]
    fn poll_intervals_have_a_floor_and_a_ceiling() {
        assert_eq!(poll_interval(0, DEFAULT_HOST_POLL), DEFAULT_HOST_POLL);
        assert_eq!(poll_interval(10, DEFAULT_HOST_POLL), MIN_POLL);
        assert_eq!(
            poll_interval(1500, DEFAULT_HOST_POLL),
            Duration::from_millis(1500)
        );
        assert_eq!(poll_interval(u32::MAX, DEFAULT_HOST_POLL), MAX_POLL);
    }

    #[test]
    fn finding_changes_are_named_in_order() {
        use FindingState::{Open, Resolved};
        use pb::FindingChange as C;
        assert_eq!(changes(None, &s(Open, 0, None)), [C::Opened]);
        assert_eq!(
            changes(None, &s(Resolved, 0, None)),
            [C::Opened, C::Resolved]
        );
        assert_eq!(
            changes(Some(&s(Open, 0, Some(1))), &s(Resolved, 0, None)),
            [C::Resolved, C::Unacked]
        );
        assert_eq!(
            changes(Some(&s(Resolved, 0, None)), &s(Open, 1, None)),
            [C::Reopened]
        );
        assert_eq!(
            changes(Some(&s(Open, 0, None)), &s(Resolved, 1, None)),
            [C::Reopened, C::Resolved],
            "resolved, reopened and resolved again between two polls"
        );
        assert_eq!(
            changes(Some(&s(Open, 0, None)), &s(Open, 0, Some(5))),
            [C::Acked]
        );
        assert_eq!(
            changes(Some(&s(Open, 0, Some(5))), &s(Open, 0, Some(6))),
            [C::Acked],
            "a replaced acknowledgement"
        );
        assert!(changes(Some(&s(Open, 0, Some(5))), &s(Open, 0, Some(5))).is_empty());
    }
}
