//! Exponential backoff with jitter, the one rule every retry loop of Portolan waits by
//! (the agent's reconnections, the collector's notifications).
//!
//! Pure: the caller passes the random fraction (`fastrand::f64()`), so the waits are
//! testable without a clock or a random source.

use std::time::Duration;

/// How a wait is spread below its bound, so that many clients failing together (a fleet
/// after a collector restart) do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly the bound.
    None,
    /// Anywhere between zero and the bound ("full jitter").
    Full,
    /// Between half the bound and the bound.
    Half,
}

/// Waits that start at `initial`, double per consecutive failure up to `max`, and are
/// spread by `jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The bound after the first failure.
    pub initial: Duration,
    /// The largest bound.
    pub max: Duration,
    /// How a wait is spread below its bound.
    pub jitter: Jitter,
}

impl Backoff {
    /// The bound after `failures` consecutive failures (0 counts as 1): `initial` doubled
    /// `failures - 1` times, at most `max`.
    pub fn bound(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait after `failures` consecutive failures, `random` a fraction in `[0, 1]`
    /// (clamped) that places it below the bound as `jitter` says.
    pub fn wait(&self, failures: u32, random: f64) -> Duration {
        let bound = self.bound(failures);
        let random = if random.is_nan() {
            0.0
        } else {
            random.clamp(0.0, 1.0)
        };
        match self.jitter {
            Jitter::None => bound,
            Jitter::Full => bound.mul_f64(random),
            Jitter::Half => bound / 2 + (bound - bound / 2).mul_f64(random),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn backoff(jitter: Jitter) -> Backoff {
        Backoff {
            initial: SECOND,
            max: 8 * SECOND,
            jitter,
        }
    }

    #[test]
    fn the_bound_doubles_per_failure_up_to_the_cap() {
        let b = backoff(Jitter::None);
        let bounds: Vec<u64> = (0..7).map(|f| b.bound(f).as_secs()).collect();
        assert_eq!(bounds, [1, 1, 2, 4, 8, 8, 8]);
        assert_eq!(b.bound(u32::MAX), 8 * SECOND);
        assert_eq!(b.wait(3, 0.3), 4 * SECOND);
    }

    #[test]
    fn jitter_spreads_the_wait_below_the_bound() {
        assert_eq!(backoff(Jitter::Full).wait(3, 0.0), Duration::ZERO);
        assert_eq!(backoff(Jitter::Full).wait(3, 0.25), SECOND);
        assert_eq!(backoff(Jitter::Full).wait(3, 1.0), 4 * SECOND);
        assert_eq!(backoff(Jitter::Half).wait(3, 0.0), 2 * SECOND);
        assert_eq!(backoff(Jitter::Half).wait(3, 1.0), 4 * SECOND);
        assert_eq!(backoff(Jitter::Half).wait(3, f64::NAN), 2 * SECOND);
        assert_eq!(backoff(Jitter::Full).wait(3, 7.0), 4 * SECOND);
    }

    proptest! {
        #[test]
        fn waits_stay_within_the_bound_which_never_shrinks(
            initial_ms in 1u64..10_000,
            max_ms in 1u64..1_000_000,
            failures in 0u32..100,
            random in 0.0f64..=1.0,
        ) {
            let b = Backoff {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                jitter: Jitter::Half,
            };
            prop_assert!(b.bound(failures) <= b.max);
            prop_assert!(b.bound(failures) <= b.bound(failures + 1));
            let wait = b.wait(failures, random);
            prop_assert!(wait <= b.bound(failures) && wait >= b.bound(failures) / 2);
        }
    }
}
