//! The collector's readiness: it can write to ClickHouse and the schema there is current.
//!
//! Two sources feed it ([`global`]):
//!
//! - a check every few seconds ([`watch_clickhouse`]) reads the applied schema version,
//!   which proves the server answers and says whether the schema is current;
//! - the outcome of every real write of ingest: a failed write makes the collector not
//!   ready at once, until a later write succeeds or, with no write failing for
//!   [`WRITE_FAILURE_HOLD`], the checks alone say it is ready.
//!
//! `/readyz` reports it, and the gRPC health service follows it (NOT_SERVING while not
//! ready), so load balancers stop sending agents to a replica that cannot store what they
//! send. [`ClickHouseReadiness`] is the pure state; the rest is plumbing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use portolan_metrics::Health;
use portolan_store::{SchemaStatus, Store, StoreError};
use tokio::sync::watch;

/// The readiness check's name in [`Health`].
const CHECK: &str = "clickhouse";
/// The liveness loop of the periodic check.
const LOOP: &str = "clickhouse-check";
/// How often the collector checks ClickHouse.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a failed write keeps the collector not ready when no write succeeded since.
pub const WRITE_FAILURE_HOLD: Duration = Duration::from_secs(30);

/// What the collector knows about its ClickHouse: the last check and the last failed
/// write. Pure: times come in as arguments.
#[derive(Debug, Clone)]
pub struct ClickHouseReadiness {
    url: String,
    check: Option<Result<SchemaStatus, String>>,
    write_failure: Option<(Instant, String)>,
    hold: Duration,
}

impl ClickHouseReadiness {
    /// Nothing known yet about the server at `url`; a failed write counts for `hold`.
    pub fn new(url: &str, hold: Duration) -> ClickHouseReadiness {
        ClickHouseReadiness {
            url: url.to_string(),
            check: None,
            write_failure: None,
            hold,
        }
    }

    /// Records a check: the schema status read, or why it could not be read and what to
    /// do (see [`check_failure`]).
    pub fn checked(&mut self, result: Result<SchemaStatus, String>) {
        self.check = Some(result);
    }

    /// Records a write that reached ClickHouse: an earlier failure no longer counts.
    pub fn write_succeeded(&mut self) {
        self.write_failure = None;
    }

    /// Records a write that failed at `now` with `error`.
    pub fn write_failed(&mut self, now: Instant, error: String) {
        self.write_failure = Some((now, error));
    }

    /// Ready, or why not and what to do, as of `now`.
    pub fn state(&self, now: Instant) -> Result<(), String> {
        let url = &self.url;
        let status = match &self.check {
            None => return Err(format!("clickhouse at {url}: not checked yet")),
            Some(Err(e)) => return Err(format!("clickhouse at {url}: {e}")),
            Some(Ok(status)) => status,
        };
        if let Some((at, error)) = &self.write_failure {
            let ago = now.saturating_duration_since(*at);
            if ago < self.hold {
                return Err(format!(
                    "a write to clickhouse at {url} failed {}s ago: {error}; check the server's log, disk and quotas",
                    ago.as_secs()
                ));
            }
        }
        if !status.is_current() {
            return Err(format!(
                "the schema in clickhouse at {url} is at version {}, this collector needs {}; restart a collector of this version to migrate it",
                status.applied, status.required
            ));
        }
        Ok(())
    }
}

/// The collector's process-wide health: what `/healthz` and `/readyz` report.
#[derive(Debug)]
pub struct CollectorHealth {
    health: Health,
    clickhouse: Mutex<Option<ClickHouseReadiness>>,
    /// A failed write is recorded and no write succeeded since: only then has a success
    /// anything to clear, so the acknowledgement path takes no lock otherwise.
    write_failure_recorded: AtomicBool,
}

/// The process's health state.
pub fn global() -> &'static CollectorHealth {
    static HEALTH: LazyLock<CollectorHealth> = LazyLock::new(|| CollectorHealth {
        health: Health::new(),
        clickhouse: Mutex::new(None),
        write_failure_recorded: AtomicBool::new(false),
    });
    &HEALTH
}

impl CollectorHealth {
    /// A handle on the state the HTTP endpoints and the gRPC health service read.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    fn update(&self, f: impl FnOnce(&mut ClickHouseReadiness)) {
        let mut guard = self.clickhouse.lock().unwrap_or_else(|e| e.into_inner());
        // Before `watch_clickhouse` starts (in-process tests), writes are not tracked.
        if let Some(readiness) = guard.as_mut() {
            f(readiness);
            self.health.set(CHECK, readiness.state(Instant::now()));
        }
    }

    /// A write of ingest reached ClickHouse.
    pub fn write_succeeded(&self) {
        if self.write_failure_recorded.swap(false, Ordering::AcqRel) {
            self.update(ClickHouseReadiness::write_succeeded);
        }
    }

    /// A write of ingest failed.
    pub fn write_failed(&self, error: &StoreError) {
        let reason = reason(error);
        self.update(|r| r.write_failed(Instant::now(), reason));
        // After the failure is in place: a success racing with it clears it next time.
        self.write_failure_recorded.store(true, Ordering::Release);
    }
}

/// The innermost cause of a store error when the server could not be reached (e.g.
/// `Connection refused (os error 111)`), else the whole message.
fn reason(error: &StoreError) -> String {
    if let StoreError::Unreachable { error, .. } = error {
        let mut cause: &dyn std::error::Error = error;
        while let Some(next) = cause.source() {
            cause = next;
        }
        return cause.to_string();
    }
    error.to_string()
}

/// Why a check failed and what to do: a TLS failure says what to configure in
/// `[clickhouse.tls]`; anything else is a server that does not run or is not the one named.
pub fn check_failure(error: &StoreError) -> String {
    match error {
        StoreError::Tls { problem, .. } => {
            format!("cannot open a TLS connection: {problem}")
        }
        StoreError::TlsFile { .. } | StoreError::TlsSetup(_) => error.to_string(),
        _ => format!("{}; {UNREACHABLE_ADVICE}", reason(error)),
    }
}

/// What to do when a check finds no answering server.
const UNREACHABLE_ADVICE: &str = "check that it runs and that `clickhouse.url` names it";

/// Checks `store` every [`CHECK_INTERVAL`] until `stop` turns true, feeding [`global`].
/// `url` is the ClickHouse URL; readiness reports it without credentials.
pub async fn watch_clickhouse(store: Arc<Store>, url: &str, mut stop: watch::Receiver<bool>) {
    let state = global();
    *state.clickhouse.lock().unwrap_or_else(|e| e.into_inner()) = Some(ClickHouseReadiness::new(
        &crate::config::without_credentials(url),
        WRITE_FAILURE_HOLD,
    ));
    let within = CHECK_INTERVAL + CHECK_TIMEOUT + Duration::from_secs(10);
    loop {
        state.health.beat(LOOP, within);
        let result = match tokio::time::timeout(CHECK_TIMEOUT, store.schema_status()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(check_failure(&e)),
            Err(_) => Err(format!(
                "no answer within {}s; {UNREACHABLE_ADVICE}",
                CHECK_TIMEOUT.as_secs_f64()
            )),
        };
        let was_ready = state.health.readiness().is_ok();
        state.update(|r| r.checked(result));
        match state.health.readiness() {
            Ok(()) if !was_ready => tracing::info!("collector is ready"),
            Err(reasons) if was_ready => {
                tracing::warn!(reason = %reasons.join("; "), "collector is not ready");
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://ch:8123";

    fn current() -> SchemaStatus {
        SchemaStatus {
            applied: 4,
            required: 4,
        }
    }

    #[test]
    fn not_ready_until_checked_then_ready_with_a_current_schema() {
        let mut r = ClickHouseReadiness::new(URL, Duration::from_secs(30));
        let now = Instant::now();
        assert_eq!(
            r.state(now),
            Err("clickhouse at http://ch:8123: not checked yet".into())
        );
        r.checked(Ok(current()));
        assert_eq!(r.state(now), Ok(()));
    }

    #[test]
    fn a_failed_check_says_what_failed_and_what_to_do() {
        let mut r = ClickHouseReadiness::new(URL, Duration::from_secs(30));
        r.checked(Err(format!(
            "Connection refused (os error 111); {UNREACHABLE_ADVICE}"
        )));
        assert_eq!(
            r.state(Instant::now()),
            Err("clickhouse at http://ch:8123: Connection refused (os error 111); check that it runs and that `clickhouse.url` names it".into())
        );
        r.checked(Ok(current()));
        assert_eq!(r.state(Instant::now()), Ok(()));
    }

    #[test]
    fn a_schema_behind_is_not_ready_and_one_ahead_is() {
        let mut r = ClickHouseReadiness::new(URL, Duration::from_secs(30));
        r.checked(Ok(SchemaStatus {
            applied: 2,
            required: 4,
        }));
        let err = r.state(Instant::now()).expect_err("behind");
        assert!(
            err.contains("at version 2, this collector needs 4"),
            "{err}"
        );
        r.checked(Ok(SchemaStatus {
            applied: 5,
            required: 4,
        }));
        assert_eq!(r.state(Instant::now()), Ok(()));
    }

    #[test]
    fn a_failed_write_holds_until_a_write_succeeds_or_the_hold_ends() {
        let hold = Duration::from_secs(30);
        let mut r = ClickHouseReadiness::new(URL, hold);
        r.checked(Ok(current()));
        let t0 = Instant::now();
        r.write_failed(t0, "disk full".into());
        // At once, even though the last check passed.
        let err = r.state(t0).expect_err("a write failed");
        assert!(err.contains("failed 0s ago: disk full"), "{err}");
        // Checks that pass do not clear it within the hold...
        r.checked(Ok(current()));
        assert!(r.state(t0 + Duration::from_secs(29)).is_err());
        // ...but it ends after the hold with no new failure.
        assert_eq!(r.state(t0 + hold), Ok(()));
        // A successful write clears it at once.
        r.write_failed(t0, "disk full".into());
        r.write_succeeded();
        assert_eq!(r.state(t0), Ok(()));
    }

    #[test]
    fn an_unreachable_server_comes_before_a_failed_write() {
        let mut r = ClickHouseReadiness::new(URL, Duration::from_secs(30));
        let t0 = Instant::now();
        r.write_failed(t0, "broken pipe".into());
        r.checked(Err("Connection refused".into()));
        let err = r.state(t0).expect_err("unreachable");
        assert!(
            err.starts_with("clickhouse at http://ch:8123: Connection refused"),
            "{err}"
        );
    }
}
