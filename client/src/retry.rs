//! Retries with exponential backoff and jitter, bounded by the caller's deadline.
//!
//! The server says RESOURCE_EXHAUSTED when a model's queue is full and the transport says
//! UNAVAILABLE while a server restarts or an endpoint is down: both are worth another try a little
//! later. Backoff grows geometrically so a struggling server is not hammered, jitter spreads the
//! retries of many clients apart, and no sleep ever runs past the deadline: a retry that could not
//! start before it fails at once with [`Error::DeadlineExceeded`].
//!
//! The backoff schedule and the retry loop are `backon`'s ([`ExponentialBuilder`], [`Retryable`]);
//! this module adds what is rllr's: which gRPC codes retry, the deadline (each attempt is cut at
//! it, and a wait that would end past it gives up instead) and the error that says so.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// How to retry a failed call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Base wait before the first retry.
    pub initial_backoff: Duration,
    /// Largest base wait: the base stops growing here.
    pub max_backoff: Duration,
    /// Factor by which the base wait grows after each failure.
    pub multiplier: f32,
    /// Add a random part to each wait so many clients do not retry in step: the wait is drawn
    /// from `[b, 2b)` for the base `b` (`backon`'s jitter), so with the defaults the first retry
    /// waits 50–100 ms and the longest 2.5–5 s.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(2500),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

/// What one attempt may use: its number (from 1) and the time left before the deadline.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub number: u32,
    pub remaining: Option<Duration>,
}

/// Codes worth retrying for any RPC: the request did not run (or was refused before running).
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

/// Why one attempt failed: the server's status, or the deadline passed while it ran.
enum Failure {
    Status(Status),
    Deadline,
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff schedule: one wait per retry, `max_attempts - 1` of them.
    fn schedule(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(self.multiplier.max(1.0))
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            b.with_jitter()
        } else {
            b
        }
    }

    /// The wait after the `failures`-th consecutive failure (1-based), jitter applied; for loops
    /// that reconnect rather than retry one call (a batch stream).
    pub fn backoff(&self, failures: u32) -> Duration {
        self.schedule()
            .without_max_times()
            .build()
            .nth(failures.saturating_sub(1) as usize)
            .unwrap_or(self.max_backoff)
    }

    /// Run `op` until it succeeds, fails with a code that is not retryable, runs out of attempts,
    /// or the deadline passes. Each attempt is also cut off at the deadline.
    pub async fn run<T, F, Fut>(&self, deadline: Option<Instant>, mut op: F) -> Result<T>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let attempts = Cell::new(0u32);
        // The status of the last failed attempt, for the deadline error.
        let last: Cell<Option<Status>> = Cell::new(None);
        let out_of_time = Cell::new(false);
        let attempt = || {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // An attempt that cannot start before the deadline is not made (nor counted).
            let fut = (remaining != Some(Duration::ZERO)).then(|| {
                let number = attempts.get() + 1;
                attempts.set(number);
                op(Attempt { number, remaining })
            });
            async move {
                let Some(fut) = fut else {
                    return Err(Failure::Deadline);
                };
                let res = match deadline {
                    Some(d) => tokio::time::timeout_at(d, fut)
                        .await
                        .map_err(|_| Failure::Deadline)?,
                    None => fut.await,
                };
                res.map_err(Failure::Status)
            }
        };
        let res = attempt
            .retry(self.schedule())
            .sleep(tokio::time::sleep)
            .when(|f| matches!(f, Failure::Status(s) if is_retryable(s.code())))
            .adjust(|f, wait| {
                let wait = wait?;
                if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                    out_of_time.set(true);
                    return None;
                }
                if let Failure::Status(s) = f {
                    tracing::debug!(attempt = attempts.get(), code = ?s.code(), ?wait, "retrying");
                }
                Some(wait)
            })
            .notify(|f, _| {
                if let Failure::Status(s) = f {
                    last.set(Some(s.clone()));
                }
            })
            .await;
        match res {
            Ok(v) => Ok(v),
            Err(Failure::Status(s)) if out_of_time.get() => {
                Err(deadline_error(attempts.get(), Some(s)))
            }
            Err(Failure::Status(s)) => Err(s.into()),
            Err(Failure::Deadline) => Err(deadline_error(attempts.get(), last.take())),
        }
    }
}

fn deadline_error(attempts: u32, last: Option<Status>) -> Error {
    Error::DeadlineExceeded {
        attempts,
        last: last.map_or_else(
            || "none (the deadline passed during the first attempt)".into(),
            |s| format!("{:?}: {}", s.code(), s.message()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(40),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: false,
        }
    }

    /// A wait in whole milliseconds (backon computes in f32 seconds, so 80 ms may be 79.99998).
    fn ms(d: Duration) -> u128 {
        (d.as_secs_f64() * 1e3).round() as u128
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = policy(10);
        let w = |f| ms(p.backoff(f));
        assert_eq!((w(1), w(2), w(3), w(4)), (40, 80, 160, 320));
        assert_eq!(w(40), 10_000);
    }

    #[test]
    fn jitter_draws_each_wait_from_base_to_twice_base() {
        let j = RetryPolicy {
            jitter: true,
            ..policy(10)
        };
        let mut seen_above_base = false;
        for f in 1..8 {
            for _ in 0..20 {
                let base = ms(policy(1).backoff(f));
                let b = ms(j.backoff(f));
                assert!(b >= base && b <= 2 * base, "{b} vs base {base}");
                seen_above_base |= b > base;
            }
        }
        assert!(seen_above_base, "jitter never moved a wait");
    }

    #[test]
    fn default_policy_keeps_its_documented_range() {
        // 50 ms base, jitter up to 2x: the first retry waits 50-100 ms, the longest 2.5-5 s.
        let p = RetryPolicy::default();
        assert!((50..=100).contains(&ms(p.backoff(1))));
        assert!((2500..=5000).contains(&ms(p.backoff(30))));
    }

    #[tokio::test]
    async fn never_sleeps_past_the_deadline() {
        // Waits 40, 80, 160, 320 ms: the 4th retry would start after 600 ms, past the deadline
        // of 500 ms, so the policy gives up after 4 attempts without sleeping into the deadline.
        let calls = Arc::new(AtomicU32::new(0));
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(500);
        let c = calls.clone();
        let err = policy(100)
            .run(Some(deadline), move |a| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    assert!(a.remaining.unwrap() <= Duration::from_millis(500));
                    Err::<(), _>(Status::unavailable("down"))
                }
            })
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert!(took >= Duration::from_millis(280), "{took:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        match err {
            Error::DeadlineExceeded { attempts, last } => {
                assert_eq!(attempts, 4);
                assert!(last.contains("Unavailable"), "{last}");
            }
            e => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_slow_attempt_is_cut_at_the_deadline() {
        let t0 = Instant::now();
        let err = policy(3)
            .run(Some(t0 + Duration::from_millis(100)), |_| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<(), Status>(())
            })
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_millis(1000));
        assert_eq!(err.code(), Some(Code::DeadlineExceeded));
    }

    #[tokio::test]
    async fn retries_only_retryable_codes_and_stops_at_max_attempts() {
        let calls = AtomicU32::new(0);
        let r = policy(5)
            .run(None, |a| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if a.number < 3 {
                        Err(Status::resource_exhausted("queue full"))
                    } else {
                        Ok(a.number)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(r, 3);
        // A code that is not retryable fails at once; a retryable one until the attempts run out.
        for (attempts, status, want_calls) in [
            (5, Status::invalid_argument("bad"), 1),
            (3, Status::unavailable("down"), 3),
        ] {
            let code = status.code();
            let calls = AtomicU32::new(0);
            let e = policy(attempts)
                .run(None, |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let s = status.clone();
                    async move { Err::<(), _>(s) }
                })
                .await
                .unwrap_err();
            assert_eq!(
                (e.code(), calls.load(Ordering::SeqCst)),
                (Some(code), want_calls)
            );
        }
    }
}
