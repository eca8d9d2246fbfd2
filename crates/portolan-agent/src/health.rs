//! The agent's liveness and readiness, as `/healthz` and `/readyz` report them.
//!
//! - Alive while the scan loop comes round on time (a scan longer than its interval plus
//!   a minute, or a scan loop that ended, is not).
//! - Ready once a scan completed and the last one succeeded, and while the changes reach
//!   the collector: connected, or spooling within `spool.max_size`. An agent that is
//!   disconnected and whose spool overflowed since it last connected (changes are folded
//!   into one snapshot: a gap in history) is not ready until it connects again.
//!
//! [`AgentReadiness`] is the pure state; [`global`] feeds it into the [`Health`] that the
//! HTTP endpoints read.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use portolan_metrics::Health;

/// The readiness check's name in [`Health`].
const CHECK: &str = "agent";
/// The liveness loop of the scans.
pub const SCAN_LOOP: &str = "scan";

/// What the agent knows about its own progress. Pure.
#[derive(Debug, Clone, Default)]
pub struct AgentReadiness {
    /// A scan completed since start.
    scanned: bool,
    /// Why the last scan failed, when it did.
    scan_failure: Option<String>,
    /// The collector welcomed this agent and the stream is up.
    connected: bool,
    /// The spool overflowed since the agent last connected.
    overflowed: bool,
    /// Why the last connection attempt or stream failed.
    last_stream_error: Option<String>,
}

impl AgentReadiness {
    /// A scan completed.
    pub fn scan_succeeded(&mut self) {
        self.scanned = true;
        self.scan_failure = None;
    }

    /// A scan failed with `error`.
    pub fn scan_failed(&mut self, error: String) {
        self.scan_failure = Some(error);
    }

    /// The collector welcomed the agent: what the spool holds is being delivered.
    pub fn connected(&mut self) {
        self.connected = true;
        self.overflowed = false;
        self.last_stream_error = None;
    }

    /// The stream ended (or could not start) with `error`.
    pub fn disconnected(&mut self, error: Option<String>) {
        self.connected = false;
        if error.is_some() {
            self.last_stream_error = error;
        }
    }

    /// The spool was full and folded unsent changes into one snapshot.
    pub fn spool_overflowed(&mut self) {
        if !self.connected {
            self.overflowed = true;
        }
    }

    /// Ready, or why not and what to do. `endpoint` and `max_size` name the collector
    /// and the spool's bound in the reasons.
    pub fn state(&self, endpoint: &str, max_size: &str) -> Result<(), String> {
        if !self.scanned {
            return Err(match &self.scan_failure {
                Some(e) => format!("no scan completed yet; the last one failed: {e}"),
                None => "no scan completed yet".to_string(),
            });
        }
        if let Some(e) = &self.scan_failure {
            return Err(format!(
                "the last scan failed: {e}; see the agent's log for what it cannot read"
            ));
        }
        if !self.connected && self.overflowed {
            let why = self
                .last_stream_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(format!(
                "not connected to the collector at {endpoint}{why} and the spool is full (`spool.max_size` = {max_size}): changes are folded into snapshots, so history has gaps; check that the collector is reachable"
            ));
        }
        Ok(())
    }
}

/// The agent's process-wide health.
#[derive(Debug)]
pub struct AgentHealth {
    health: Health,
    state: Mutex<(AgentReadiness, String, String)>,
}

/// The process's health state.
pub fn global() -> &'static AgentHealth {
    static HEALTH: LazyLock<AgentHealth> = LazyLock::new(|| {
        let health = Health::new();
        health.set(CHECK, Err("no scan completed yet".into()));
        AgentHealth {
            health,
            state: Mutex::new((AgentReadiness::default(), String::new(), String::new())),
        }
    });
    &HEALTH
}

impl AgentHealth {
    /// A handle on the state the HTTP endpoints read.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Names the collector and the spool bound for the reasons `/readyz` gives.
    pub fn describe(&self, endpoint: &str, max_size: u64) {
        self.update(|state| {
            state.1 = endpoint.to_string();
            state.2 = portolan_config::bytes::format(max_size);
        });
    }

    /// Changes the readiness state and publishes it.
    pub fn update_readiness(&self, f: impl FnOnce(&mut AgentReadiness)) {
        self.update(|state| f(&mut state.0));
    }

    fn update(&self, f: impl FnOnce(&mut (AgentReadiness, String, String))) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
        let (readiness, endpoint, max_size) = &*state;
        self.health.set(CHECK, readiness.state(endpoint, max_size));
    }

    /// The scan loop ran and will come round again within `within`.
    pub fn scan_loop_beat(&self, within: Duration) {
        self.health.beat(SCAN_LOOP, within);
    }

    /// The scan loop ended: the agent is no longer alive.
    pub fn scan_loop_ended(&self) {
        self.health.ended(SCAN_LOOP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "https://collector:7443";

    #[test]
    fn not_ready_before_the_first_scan() {
        let mut r = AgentReadiness::default();
        assert_eq!(r.state(AT, "1MiB"), Err("no scan completed yet".into()));
        r.scan_failed("permission denied".into());
        assert_eq!(
            r.state(AT, "1MiB"),
            Err("no scan completed yet; the last one failed: permission denied".into())
        );
        r.scan_succeeded();
        assert_eq!(r.state(AT, "1MiB"), Ok(()));
    }

    #[test]
    fn disconnected_is_ready_while_the_spool_keeps_everything() {
        let mut r = AgentReadiness::default();
        r.scan_succeeded();
        r.disconnected(Some("connection refused".into()));
        assert_eq!(r.state(AT, "1MiB"), Ok(()));
        r.spool_overflowed();
        let err = r.state(AT, "1MiB").expect_err("spool overflowed");
        assert!(
            err.starts_with(
                "not connected to the collector at https://collector:7443 (connection refused) and the spool is full (`spool.max_size` = 1MiB)"
            ),
            "{err}"
        );
        // Still not ready after more scans while disconnected...
        r.scan_succeeded();
        r.disconnected(Some("connection refused".into()));
        assert!(r.state(AT, "1MiB").is_err());
        // ...ready once connected: the spool drains.
        r.connected();
        assert_eq!(r.state(AT, "1MiB"), Ok(()));
        // A disconnection after that starts with a clean slate.
        r.disconnected(None);
        assert_eq!(r.state(AT, "1MiB"), Ok(()));
    }

    #[test]
    fn an_overflow_while_connected_does_not_count() {
        let mut r = AgentReadiness::default();
        r.scan_succeeded();
        r.connected();
        r.spool_overflowed();
        r.disconnected(Some("reset".into()));
        assert_eq!(r.state(AT, "1MiB"), Ok(()));
    }

    #[test]
    fn a_failing_scan_after_good_ones_is_not_ready() {
        let mut r = AgentReadiness::default();
        r.scan_succeeded();
        r.connected();
        r.scan_failed("netlink: no buffer space".into());
        let err = r.state(AT, "1MiB").expect_err("scan failed");
        assert!(err.starts_with("the last scan failed: netlink"), "{err}");
        r.scan_succeeded();
        assert_eq!(r.state(AT, "1MiB"), Ok(()));
    }
}
