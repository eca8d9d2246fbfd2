//! Liveness and readiness, as `/healthz` and `/readyz` report them.
//!
//! - **Liveness**: each long-running loop of the process promises when it will next come
//!   round ([`Health::beat`]); the process is alive while every loop keeps its promise. A
//!   loop that ended or hangs past its deadline makes `/healthz` fail, and the supervisor
//!   (kubelet, systemd watchdog) restarts the process.
//! - **Readiness**: named checks, each ready or not with a reason a person can act on
//!   ([`Health::set`]). The process is ready when every check is; `/readyz` lists the
//!   reasons of those that are not. [`Health::subscribe`] follows the overall state (the
//!   collector's gRPC health service does).
//!
//! A [`Health`] is a handle: clones share one state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The shared liveness and readiness state of one process.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    checks: Mutex<BTreeMap<&'static str, Result<(), String>>>,
    loops: Mutex<BTreeMap<&'static str, Deadline>>,
    ready: watch::Sender<bool>,
}

/// When a loop promised to come round again, or that it ended.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    By(Instant),
    Ended,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain values: still good to read after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A state with no checks and no loops: alive and ready until told otherwise.
    pub fn new() -> Health {
        let (ready, _) = watch::channel(true);
        Health {
            inner: Arc::new(Inner {
                checks: Mutex::new(BTreeMap::new()),
                loops: Mutex::new(BTreeMap::new()),
                ready,
            }),
        }
    }

    /// Sets the state of the readiness check `name`: `Err` holds why it is not ready and
    /// what to do, e.g. ``clickhouse at http://ch:8123: connection refused; check that it
    /// runs``.
    pub fn set(&self, name: &'static str, state: Result<(), String>) {
        let ready = {
            let mut checks = lock(&self.inner.checks);
            checks.insert(name, state);
            checks.values().all(Result::is_ok)
        };
        self.inner.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    /// `Ok` when every check is ready; else the reasons of those that are not, in the
    /// order of their names.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let reasons: Vec<String> = lock(&self.inner.checks)
            .values()
            .filter_map(|state| state.as_ref().err().cloned())
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Follows the overall readiness: `true` while every check is ready.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    /// Records that the loop `name` ran and promises to run again within `within`.
    pub fn beat(&self, name: &'static str, within: Duration) {
        let by = Instant::now() + within;
        lock(&self.inner.loops).insert(name, Deadline::By(by));
    }

    /// Records that the loop `name` ended: the process is no longer alive.
    pub fn ended(&self, name: &'static str) {
        lock(&self.inner.loops).insert(name, Deadline::Ended);
    }

    /// `Ok` while every loop kept its promise at `now`; else what each late or ended loop
    /// is.
    pub fn liveness(&self, now: Instant) -> Result<(), Vec<String>> {
        let problems: Vec<String> = lock(&self.inner.loops)
            .iter()
            .filter_map(|(name, deadline)| match deadline {
                Deadline::Ended => Some(format!("the `{name}` loop ended")),
                Deadline::By(by) if now > *by => Some(format!(
                    "the `{name}` loop is {}s late",
                    now.duration_since(*by).as_secs()
                )),
                Deadline::By(_) => None,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_is() {
        let health = Health::new();
        let mut follow = health.subscribe();
        assert_eq!(health.readiness(), Ok(()));
        health.set("scan", Err("no scan completed yet".into()));
        health.set("collector", Ok(()));
        assert_eq!(
            health.readiness(),
            Err(vec!["no scan completed yet".to_string()])
        );
        assert!(follow.has_changed().unwrap_or(false));
        assert!(!*follow.borrow_and_update());
        health.set("collector", Err("spool full".into()));
        assert_eq!(
            health.readiness(),
            Err(vec![
                "spool full".to_string(),
                "no scan completed yet".to_string()
            ])
        );
        // Still not ready: no change to report.
        assert!(!follow.has_changed().unwrap_or(true));
        health.set("scan", Ok(()));
        health.set("collector", Ok(()));
        assert_eq!(health.readiness(), Ok(()));
        assert!(*follow.borrow_and_update());
    }

    #[test]
    fn alive_while_every_loop_keeps_its_promise() {
        let health = Health::new();
        let now = Instant::now();
        assert_eq!(health.liveness(now), Ok(()));
        health.beat("scan", Duration::from_secs(60));
        health.beat("check", Duration::from_secs(10));
        assert_eq!(health.liveness(Instant::now()), Ok(()));
        let later = Instant::now() + Duration::from_secs(30);
        let late = health.liveness(later).expect_err("check is late");
        assert_eq!(late.len(), 1);
        assert!(late[0].starts_with("the `check` loop is "), "{late:?}");
        assert!(late[0].ends_with("s late"), "{late:?}");
        health.beat("check", Duration::from_secs(60));
        assert_eq!(health.liveness(later), Ok(()));
        health.ended("scan");
        assert_eq!(
            health.liveness(Instant::now()),
            Err(vec!["the `scan` loop ended".to_string()])
        );
    }
}
