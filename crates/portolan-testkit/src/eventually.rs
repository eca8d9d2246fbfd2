//! Waiting for a condition with a deadline, never with a bare sleep.
//!
//! [`eventually!`](crate::eventually!) re-evaluates an expression until it holds, and
//! panics with the last value it observed when the deadline passes.
//! [`eventually_async!`](crate::eventually_async!) does the same in async code (the
//! expression may `.await`) and sleeps with tokio. The expression is a `bool`, an
//! `Option<T>` (holds when `Some`) or a `Result<T, E>` (holds when `Ok`; the last
//! error, printed with `{:?}`, is the failure message: make it say what was seen). The
//! macro's value is the `T`.
//!
//! The condition is the body of a closure: `?` and `return` in it end one attempt (an
//! error is retried), not the test, and behave as in any closure returning the
//! condition's type. Conditions that call fallible functions read best returning
//! `anyhow::Result<T>`: `?` takes any error, `bail!("only {n} sockets")` says what was
//! seen, and the whole chain is reported if it was the last thing seen.
//!
//! ```
//! use std::time::Duration;
//! use portolan_testkit::eventually;
//!
//! let start = std::time::Instant::now();
//! let elapsed = eventually!(timeout = Duration::from_secs(5), {
//!     let elapsed = start.elapsed();
//!     if elapsed > Duration::from_millis(20) { Ok(elapsed) } else { Err(format!("only {elapsed:?}")) }
//! });
//! assert!(elapsed > Duration::from_millis(20));
//! ```

use std::fmt::Debug;
use std::panic::Location;
use std::time::{Duration, Instant};

/// How long [`eventually!`](crate::eventually!) waits unless told otherwise: generous,
/// because CI machines are small and loaded.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the condition is re-evaluated unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

/// What a polled expression can evaluate to.
pub trait Outcome {
    /// The value when the condition holds.
    type Value;
    /// The value, or a description of what was observed instead.
    fn into_outcome(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_outcome(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false (return a `Result` whose error says what was seen)".to_string())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_string())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// The state of one wait: used by the macros, rarely directly.
#[derive(Debug)]
pub struct Poll {
    what: &'static str,
    location: &'static Location<'static>,
    start: Instant,
    timeout: Duration,
    interval: Duration,
    attempts: u32,
}

impl Poll {
    /// Starts waiting for `what` (the condition's source text).
    #[track_caller]
    pub fn new(what: &'static str, timeout: Duration, interval: Duration) -> Poll {
        Poll {
            what,
            location: Location::caller(),
            start: Instant::now(),
            timeout,
            interval,
            attempts: 0,
        }
    }

    /// The condition did not hold and `last` was observed: how long to sleep before the
    /// next attempt, or `Err` with the failure message once the deadline has passed.
    pub fn next_delay(&mut self, last: String) -> Result<Duration, String> {
        self.attempts += 1;
        let elapsed = self.start.elapsed();
        if elapsed >= self.timeout {
            return Err(format!(
                "condition not met within {:?} ({} attempts), waiting at {}:{} for:\n  {}\nlast observed: {}",
                self.timeout,
                self.attempts,
                self.location.file(),
                self.location.line(),
                self.what,
                last
            ));
        }
        Ok(self.interval.min(self.timeout - elapsed))
    }

    /// Sleeps before the next attempt, or panics with the last observed value once the
    /// deadline has passed.
    #[track_caller]
    pub fn retry(&mut self, last: String) {
        match self.next_delay(last) {
            Ok(delay) => std::thread::sleep(delay),
            Err(message) => panic!("{message}"),
        }
    }

    /// [`Poll::retry`] with tokio's sleep.
    #[track_caller]
    pub fn retry_async(&mut self, last: String) -> impl Future<Output = ()> + use<> {
        let delay = self
            .next_delay(last)
            .unwrap_or_else(|message| panic!("{message}"));
        tokio::time::sleep(delay)
    }
}

/// Re-evaluates a condition until it holds; panics with the last observed value after
/// the deadline. See the [module docs](mod@crate::eventually).
///
/// - `eventually!(expr)`: [`DEFAULT_TIMEOUT`], [`DEFAULT_INTERVAL`];
/// - `eventually!(timeout = duration, expr)`;
/// - `eventually!(timeout = duration, interval = duration, expr)`.
///
/// Blocks the thread between attempts: in async tests use
/// [`eventually_async!`](crate::eventually_async!).
#[macro_export]
macro_rules! eventually {
    (timeout = $timeout:expr, interval = $interval:expr, $check:expr $(,)?) => {{
        let mut poll = $crate::eventually::Poll::new(stringify!($check), $timeout, $interval);
        // A closure, so that `?` and `return` in the condition end this attempt, not
        // the caller.
        #[allow(unused_mut)]
        let mut check = || $check;
        loop {
            match $crate::eventually::Outcome::into_outcome(check()) {
                ::std::result::Result::Ok(value) => break value,
                ::std::result::Result::Err(last) => poll.retry(last),
            }
        }
    }};
    (timeout = $timeout:expr, $check:expr $(,)?) => {
        $crate::eventually!(
            timeout = $timeout,
            interval = $crate::eventually::DEFAULT_INTERVAL,
            $check
        )
    };
    ($check:expr $(,)?) => {
        $crate::eventually!(
            timeout = $crate::eventually::DEFAULT_TIMEOUT,
            interval = $crate::eventually::DEFAULT_INTERVAL,
            $check
        )
    };
}

/// [`eventually!`](crate::eventually!) for async code: the condition may `.await`, and
/// the wait between attempts is a tokio sleep. Same forms.
#[macro_export]
macro_rules! eventually_async {
    (timeout = $timeout:expr, interval = $interval:expr, $check:expr $(,)?) => {{
        let mut poll = $crate::eventually::Poll::new(stringify!($check), $timeout, $interval);
        // An async closure, so that `?` and `return` in the condition end this attempt,
        // not the caller.
        #[allow(unused_mut)]
        let mut check = async || $check;
        loop {
            match $crate::eventually::Outcome::into_outcome(check().await) {
                ::std::result::Result::Ok(value) => break value,
                ::std::result::Result::Err(last) => poll.retry_async(last).await,
            }
        }
    }};
    (timeout = $timeout:expr, $check:expr $(,)?) => {
        $crate::eventually_async!(
            timeout = $timeout,
            interval = $crate::eventually::DEFAULT_INTERVAL,
            $check
        )
    };
    ($check:expr $(,)?) => {
        $crate::eventually_async!(
            timeout = $crate::eventually::DEFAULT_TIMEOUT,
            interval = $crate::eventually::DEFAULT_INTERVAL,
            $check
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const SHORT: Duration = Duration::from_millis(200);
    const TICK: Duration = Duration::from_millis(1);

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let calls = Cell::new(0);
        let value = crate::eventually!(timeout = SHORT, interval = TICK, {
            calls.set(calls.get() + 1);
            if calls.get() >= 3 {
                Ok(calls.get())
            } else {
                Err("not yet")
            }
        });
        assert_eq!(value, 3);
    }

    #[test]
    fn question_mark_ends_the_attempt_not_the_test() {
        let mut calls = 0;
        let parsed: u32 = crate::eventually!(timeout = SHORT, interval = TICK, {
            calls += 1;
            let text = if calls < 3 { "x" } else { "42" };
            let n: u32 = text.parse()?;
            Ok::<_, std::num::ParseIntError>(n)
        });
        assert_eq!((parsed, calls), (42, 3));
    }

    #[test]
    fn an_error_from_question_mark_is_reported() {
        let panic = std::panic::catch_unwind(|| {
            crate::eventually!(timeout = Duration::from_millis(20), interval = TICK, {
                let n: u32 = "x".parse()?;
                Ok::<_, std::num::ParseIntError>(n)
            })
        })
        .expect_err("times out");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(
            message.contains("last observed: ParseIntError { kind: InvalidDigit }"),
            "{message}"
        );
    }

    #[test]
    fn accepts_bool_and_option() {
        crate::eventually!(timeout = SHORT, true);
        let n = crate::eventually!(timeout = SHORT, Some(7));
        assert_eq!(n, 7);
    }

    #[test]
    fn fails_with_the_last_observation() {
        let calls = Cell::new(0);
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::eventually!(timeout = Duration::from_millis(30), interval = TICK, {
                calls.set(calls.get() + 1);
                Err::<(), _>(format!("seen {}", calls.get()))
            })
        }))
        .expect_err("times out");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(
            message.contains("condition not met within 30ms"),
            "{message}"
        );
        assert!(
            message.contains(&format!("last observed: \"seen {}\"", calls.get())),
            "{message}"
        );
        assert!(message.contains(file!()), "{message}");
    }

    #[tokio::test]
    async fn async_conditions_may_await() {
        let mut calls = 0;
        let value = crate::eventually_async!(timeout = SHORT, interval = TICK, {
            tokio::task::yield_now().await;
            calls += 1;
            (calls >= 2).then_some(calls)
        });
        assert_eq!(value, 2);
    }
}
