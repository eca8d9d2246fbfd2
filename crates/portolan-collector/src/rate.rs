//! Messages per second per agent: a token bucket per host id, shared by all of that host's
//! streams on this replica (`limits.max_messages_per_second`, `limits.max_message_burst`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Hosts remembered before idle buckets (full again) are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// One host's bucket: tokens refill at `rate` per second up to `burst`; each message
/// takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes one token at `now`; false when the bucket is empty (the message is over the
    /// rate).
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * f64::from(rate) >= f64::from(burst)
    }
}

/// The buckets of every host streaming to this replica.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: u32,
    burst: u32,
    buckets: Arc<Mutex<HashMap<String, TokenBucket>>>,
}

impl RateLimiter {
    /// `rate` messages per second on average, `burst` at once (both at least 1).
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: rate.max(1),
            burst: burst.max(1),
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts one message of `host_id` at `now`; the refusal names the keys to change.
    pub fn check(&self, host_id: &str, now: Instant) -> Result<(), String> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| !b.is_full(rate, burst, now));
        }
        let bucket = buckets
            .entry(host_id.to_owned())
            .or_insert_with(|| TokenBucket::full(self.burst, now));
        if bucket.take(self.rate, self.burst, now) {
            Ok(())
        } else {
            Err(format!(
                "host `{host_id}` sends more than {} messages per second (burst {}): over `limits.max_messages_per_second` / `limits.max_message_burst`; reconnect later",
                self.rate, self.burst
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_and_hosts_apart() {
        let limiter = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(limiter.check("a", t0), Ok(()), "message {i} of the burst");
        }
        let refused = limiter.check("a", t0).expect_err("over the burst");
        assert!(
            refused.contains("`limits.max_messages_per_second`"),
            "{refused}"
        );
        assert_eq!(
            limiter.check("b", t0),
            Ok(()),
            "another host has its own bucket"
        );
        // 10/s: one token per 100 ms.
        assert!(limiter.check("a", t0 + Duration::from_millis(50)).is_err());
        assert_eq!(limiter.check("a", t0 + Duration::from_millis(150)), Ok(()));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limiter.check("a", later), Ok(()));
        }
        assert!(limiter.check("a", later).is_err());
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let limiter = RateLimiter::new(20, 2);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let at = t0 + Duration::from_millis(50) * i;
            assert_eq!(limiter.check("a", at), Ok(()), "message {i}");
        }
    }
}
