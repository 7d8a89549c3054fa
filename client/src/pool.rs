//! Several server endpoints behind one client: round-robin over the healthy ones.
//!
//! Each endpoint has its own lazily connected tonic `Channel` (HTTP/2, reconnecting on its own).
//! A call that fails with UNAVAILABLE marks its endpoint down for a short while, so the next
//! attempt (and every other call meanwhile) goes to another endpoint; when all are down the pool
//! round-robins over all of them so a recovered server is found again. Passive health from real
//! calls needs no extra traffic; `Client::health` asks each endpoint actively.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

/// How long an endpoint that failed with UNAVAILABLE is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(2);

struct Member {
    uri: String,
    channel: Channel,
    down_until: Mutex<Option<Instant>>,
}

/// A set of endpoints with round-robin selection.
pub struct Pool {
    members: Vec<Member>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool over `(uri, channel)` pairs (at least one).
    pub fn new(channels: Vec<(String, Channel)>) -> Self {
        Pool {
            members: channels
                .into_iter()
                .map(|(uri, channel)| Member {
                    uri,
                    channel,
                    down_until: Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The endpoint URIs, in configuration order.
    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.uri.as_str())
    }

    /// The channel of endpoint `i`.
    pub fn channel(&self, i: usize) -> Channel {
        self.members[i].channel.clone()
    }

    fn is_up(&self, i: usize, now: Instant) -> bool {
        let d = self.members[i].down_until.lock().expect("lock");
        d.is_none_or(|t| t <= now)
    }

    /// The next endpoint in round-robin order that is not marked down (any, if all are).
    pub fn pick(&self) -> (usize, Channel) {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.is_up(i, now))
            .unwrap_or(start % n);
        (i, self.channel(i))
    }

    /// Skip endpoint `i` for [`DOWN_FOR`].
    pub fn mark_down(&self, i: usize) {
        *self.members[i].down_until.lock().expect("lock") = Some(Instant::now() + DOWN_FOR);
    }

    /// Endpoint `i` answered: use it again.
    pub fn mark_up(&self, i: usize) {
        *self.members[i].down_until.lock().expect("lock") = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_robin_skips_endpoints_marked_down() {
        let ch = |p: u16| {
            let uri = format!("http://127.0.0.1:{p}");
            let c = tonic::transport::Endpoint::from_shared(uri.clone())
                .unwrap()
                .connect_lazy();
            (uri, c)
        };
        let pool = Pool::new(vec![ch(1), ch(2), ch(3)]);
        let picks: Vec<usize> = (0..6).map(|_| pool.pick().0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        pool.mark_down(1);
        let picks: Vec<usize> = (0..4).map(|_| pool.pick().0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        for i in 0..3 {
            pool.mark_down(i);
        }
        let picks: Vec<usize> = (0..3).map(|_| pool.pick().0).collect();
        assert_eq!(picks.len(), 3, "all down: still round-robin");
        pool.mark_up(1);
        assert!((0..3).all(|_| pool.pick().0 == 1));
    }
}
