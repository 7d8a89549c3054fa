//! Retries with exponential backoff and jitter, bounded by the caller's deadline.
//!
//! The server says RESOURCE_EXHAUSTED when a model's queue is full and the transport says
//! UNAVAILABLE while a server restarts or an endpoint is down: both are worth another try a little
//! later. Backoff grows geometrically so a struggling server is not hammered, jitter spreads the
//! retries of many clients apart, and no sleep ever runs past the deadline: a retry that could not
//! start before it fails at once with [`Error::DeadlineExceeded`].

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// How to retry a failed call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Factor by which the wait grows after each failure.
    pub multiplier: f64,
    /// Fraction of each wait drawn at random: the wait is `b * (1 - jitter * u)`, u in [0, 1).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
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

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait after the `failures`-th consecutive failure (1-based), jitter applied.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(failures.saturating_sub(1).min(64) as i32);
        let base = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        let j = self.jitter.clamp(0.0, 1.0);
        let u: f64 = if j > 0.0 {
            rand::rng().random::<f64>()
        } else {
            0.0
        };
        Duration::from_secs_f64(base * (1.0 - j * u))
    }

    /// Run `op` until it succeeds, fails with a code that is not retryable, runs out of attempts,
    /// or the deadline passes. Each attempt is also cut off at the deadline.
    pub async fn run<T, F, Fut>(&self, deadline: Option<Instant>, mut op: F) -> Result<T>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let mut number = 0;
        let mut last: Option<Status> = None;
        loop {
            number += 1;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if remaining == Some(Duration::ZERO) {
                return Err(deadline_error(number - 1, last));
            }
            let fut = op(Attempt { number, remaining });
            let res = match deadline {
                Some(d) => match tokio::time::timeout_at(d, fut).await {
                    Ok(r) => r,
                    Err(_) => return Err(deadline_error(number, last)),
                },
                None => fut.await,
            };
            let status = match res {
                Ok(v) => return Ok(v),
                Err(s) => s,
            };
            if !is_retryable(status.code()) || number >= self.max_attempts {
                return Err(status.into());
            }
            let wait = self.backoff(number);
            if let Some(d) = deadline {
                if Instant::now() + wait >= d {
                    return Err(deadline_error(number, Some(status)));
                }
            }
            tracing::debug!(attempt = number, code = ?status.code(), ?wait, "retrying");
            last = Some(status);
            tokio::time::sleep(wait).await;
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
            jitter: 0.0,
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters_downwards() {
        let p = policy(10);
        let ms = |f| p.backoff(f).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(4)), (40, 80, 160, 320));
        assert_eq!(ms(40), 10_000);
        let j = RetryPolicy { jitter: 0.5, ..p };
        for f in 1..8 {
            let full = policy(1).backoff(f);
            let b = j.backoff(f);
            assert!(b <= full && b >= full / 2, "{b:?} vs {full:?}");
        }
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
