//! Several server endpoints behind one client: DNS discovery and round-robin over the healthy
//! addresses.
//!
//! Behind a Kubernetes Service with one virtual IP, every call of a client would ride one HTTP/2
//! connection to one pod. So each configured endpoint whose host is a *name* is resolved to all
//! its addresses (a headless Service answers with one address per ready pod), each address gets
//! its own lazily connected tonic `Channel`, and calls go round-robin over the addresses. The names
//! are resolved again every `resolve_every` and soon after an address fails, so pods that come
//! and go are found and dropped; a failed or empty resolution keeps the addresses known so far (a
//! DNS blip does not empty the pool). Endpoints given as IP literals are used as they are.
//!
//! A call that fails with UNAVAILABLE marks its address down for [`DOWN_FOR`], so the next attempt
//! (and every other call meanwhile) goes to another one; when all are down the pool round-robins
//! over all of them so a recovered server is found again. Passive health from real calls needs no
//! extra traffic; `Client::health` asks each address actively.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tonic::codegen::http::Uri;
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// How long an address that failed with UNAVAILABLE is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(2);

/// Shortest time between two resolutions, however often addresses fail.
const MIN_RESOLVE_GAP: Duration = Duration::from_millis(500);

/// The future a [`Resolve`] returns.
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name and port into addresses. The system resolver is the default; tests and
/// embedders (service registries) plug in their own.
pub trait Resolve: Send + Sync + 'static {
    /// All current addresses of `host:port`.
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture;
}

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// One endpoint as configured.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URI as given (`http://rllr:50051`).
    pub uri: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parse `scheme://host[:port]` (default port 80 / 443).
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("endpoint {uri:?}: {why}"));
        let u: Uri = uri.parse().map_err(|_| bad("not a URI"))?;
        let scheme = match u.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_string(),
            _ => return Err(bad("the scheme must be http:// or https://")),
        };
        let host = u.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Target {
            uri: uri.to_string(),
            scheme,
            host,
            port,
        })
    }

    /// Whether the host is a name to resolve (not an IP literal).
    pub fn is_name(&self) -> bool {
        self.host.parse::<IpAddr>().is_err()
    }

    /// The URI of one of its addresses.
    pub fn uri_of(&self, addr: SocketAddr) -> String {
        format!("{}://{addr}", self.scheme)
    }
}

/// Builds the channel of one address: `(target, Some(addr))`, or of the target as configured
/// (`None`: an IP literal, or a name that has not resolved yet and is left to the connector).
pub type MakeChannel = Box<dyn Fn(&Target, Option<SocketAddr>) -> Result<Channel> + Send + Sync>;

/// One address calls can go to.
pub struct Member {
    target: usize,
    addr: Option<SocketAddr>,
    label: String,
    channel: Channel,
    down_until: Mutex<Option<Instant>>,
    answered: AtomicU64,
}

impl Member {
    /// Its channel.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `http://10.1.2.3:50051 (rllr:50051)` for a resolved address, the configured URI otherwise.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn is_up(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .expect("lock")
            .is_none_or(|t| t <= now)
    }
}

struct Shared {
    targets: Vec<Target>,
    members: RwLock<Arc<Vec<Arc<Member>>>>,
    next: AtomicUsize,
    make: MakeChannel,
    resolver: Arc<dyn Resolve>,
    /// Wakes the resolver task early (an address failed).
    refresh: Notify,
    /// Answered counts of addresses that left the pool, so the spread over a job stays whole.
    gone: Mutex<BTreeMap<String, u64>>,
}

/// A set of addresses with round-robin selection, kept up to date from DNS.
pub struct Pool {
    shared: Arc<Shared>,
    ready: watch::Receiver<bool>,
}

impl Pool {
    /// A pool over `targets` (at least one), resolving names with `resolver` every `resolve_every`
    /// (`None`: never; names are then left to the connector, one connection per name). Must be
    /// called within a tokio runtime (the resolver runs as a task that ends with the pool).
    pub fn new(
        targets: Vec<Target>,
        make: MakeChannel,
        resolver: Arc<dyn Resolve>,
        resolve_every: Option<Duration>,
    ) -> Result<Self> {
        let mut members = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            members.push(Arc::new(Member {
                target: i,
                addr: None,
                label: t.uri.clone(),
                channel: make(t, None)?,
                down_until: Mutex::new(None),
                answered: AtomicU64::new(0),
            }));
        }
        let any_name = targets.iter().any(Target::is_name);
        let shared = Arc::new(Shared {
            targets,
            members: RwLock::new(Arc::new(members)),
            next: AtomicUsize::new(0),
            make,
            resolver,
            refresh: Notify::new(),
            gone: Mutex::new(BTreeMap::new()),
        });
        let (tx, ready) = watch::channel(false);
        match resolve_every {
            Some(every) if any_name => {
                tokio::spawn(resolve_loop(Arc::downgrade(&shared), every, tx));
            }
            _ => {
                let _ = tx.send(true);
            }
        }
        Ok(Pool { shared, ready })
    }

    /// Wait until the names have been resolved once (successfully or not), so the first calls
    /// are spread over every address instead of all going to the name.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|&done| done).await;
    }

    /// The current addresses.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.shared.members.read().expect("lock").clone()
    }

    /// Number of current addresses.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// Whether the pool has no addresses.
    pub fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    /// The next address in round-robin order that is not marked down (any, if all are).
    pub fn pick(&self) -> Arc<Member> {
        let members = self.members();
        let n = members.len();
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| members[i].is_up(now))
            .unwrap_or(start % n);
        members[i].clone()
    }

    /// Skip `m` for [`DOWN_FOR`] and look the names up again soon: the pod may be gone.
    pub fn mark_down(&self, m: &Member) {
        *m.down_until.lock().expect("lock") = Some(Instant::now() + DOWN_FOR);
        if m.addr.is_some() {
            self.shared.refresh.notify_one();
        }
    }

    /// `m` answered: use it again.
    pub fn mark_up(&self, m: &Member) {
        *m.down_until.lock().expect("lock") = None;
    }

    /// `m` answered `n` items (for [`Pool::answered`]).
    pub fn count(&self, m: &Member, n: u64) {
        m.answered.fetch_add(n, Ordering::Relaxed);
    }

    /// Items answered per address label, including addresses that have left the pool.
    pub fn answered(&self) -> BTreeMap<String, u64> {
        let mut out = self.shared.gone.lock().expect("lock").clone();
        for m in self.members().iter() {
            *out.entry(m.label.clone()).or_default() += m.answered.load(Ordering::Relaxed);
        }
        out.retain(|_, n| *n > 0);
        out
    }

    /// Resolve every name now and update the addresses (what the background task does).
    pub async fn refresh(&self) {
        refresh(&self.shared).await;
    }
}

async fn resolve_loop(shared: Weak<Shared>, every: Duration, ready: watch::Sender<bool>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        refresh(&s).await;
        let _ = ready.send(true);
        let wake = async {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = s.refresh.notified() => {}
            }
        };
        wake.await;
        drop(s);
        tokio::time::sleep(MIN_RESOLVE_GAP).await;
    }
}

/// One resolution pass: per name, keep the members whose address is still listed, add new ones,
/// drop the rest; a name that fails to resolve (or resolves to nothing) keeps what it had.
async fn refresh(s: &Shared) {
    let old = s.members.read().expect("lock").clone();
    let mut next: Vec<Arc<Member>> = Vec::new();
    let mut changed = false;
    for (i, t) in s.targets.iter().enumerate() {
        let current: Vec<&Arc<Member>> = old.iter().filter(|m| m.target == i).collect();
        if !t.is_name() {
            next.extend(current.into_iter().cloned());
            continue;
        }
        let addrs = match s.resolver.resolve(&t.host, t.port).await {
            Ok(mut a) if !a.is_empty() => {
                a.sort();
                a.dedup();
                a
            }
            Ok(_) => {
                tracing::warn!(endpoint = %t.uri, "resolved to no address; keeping the known ones");
                next.extend(current.into_iter().cloned());
                continue;
            }
            Err(e) => {
                tracing::warn!(endpoint = %t.uri, error = %e, "resolution failed; keeping the known addresses");
                next.extend(current.into_iter().cloned());
                continue;
            }
        };
        for a in &addrs {
            match current.iter().find(|m| m.addr == Some(*a)) {
                Some(m) => next.push((*m).clone()),
                None => match (s.make)(t, Some(*a)) {
                    Ok(channel) => {
                        tracing::info!(endpoint = %t.uri, address = %a, "address added");
                        changed = true;
                        next.push(Arc::new(Member {
                            target: i,
                            addr: Some(*a),
                            label: format!("{} ({}:{})", t.uri_of(*a), t.host, t.port),
                            channel,
                            down_until: Mutex::new(None),
                            answered: AtomicU64::new(0),
                        }));
                    }
                    Err(e) => tracing::warn!(address = %a, error = %e, "cannot use address"),
                },
            }
        }
        for m in current {
            if !m.addr.is_some_and(|a| addrs.contains(&a)) {
                if m.addr.is_some() {
                    tracing::info!(endpoint = %t.uri, address = %m.label, "address removed");
                }
                changed = true;
                let n = m.answered.load(Ordering::Relaxed);
                *s.gone
                    .lock()
                    .expect("lock")
                    .entry(m.label.clone())
                    .or_default() += n;
            }
        }
    }
    if changed && !next.is_empty() {
        *s.members.write().expect("lock") = Arc::new(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver whose answer the test sets.
    #[derive(Clone)]
    struct Fake(Arc<Mutex<io::Result<Vec<SocketAddr>>>>);

    impl Default for Fake {
        fn default() -> Self {
            Fake(Arc::new(Mutex::new(Ok(vec![]))))
        }
    }

    impl Fake {
        fn set(&self, r: io::Result<Vec<SocketAddr>>) {
            *self.0.lock().unwrap() = r;
        }
    }

    impl Resolve for Fake {
        fn resolve(&self, _host: &str, _port: u16) -> ResolveFuture {
            let r = match &*self.0.lock().unwrap() {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { r })
        }
    }

    fn lazy(t: &Target, a: Option<SocketAddr>) -> Result<Channel> {
        let uri = a.map_or_else(|| t.uri.clone(), |a| t.uri_of(a));
        Ok(tonic::transport::Endpoint::from_shared(uri)
            .unwrap()
            .connect_lazy())
    }

    fn pool(uris: &[&str], r: &Fake, every: Option<Duration>) -> Pool {
        let targets = uris.iter().map(|u| Target::parse(u).unwrap()).collect();
        Pool::new(targets, Box::new(lazy), Arc::new(r.clone()), every).unwrap()
    }

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    fn addrs(p: &Pool) -> Vec<Option<SocketAddr>> {
        p.members().iter().map(|m| m.addr).collect()
    }

    #[tokio::test]
    async fn round_robin_skips_endpoints_marked_down() {
        let r = Fake::default();
        let p = pool(
            &[
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3",
            ],
            &r,
            None,
        );
        let label = |m: Arc<Member>| m.label().to_string();
        let picks: Vec<String> = (0..6).map(|_| label(p.pick())).collect();
        assert_eq!(picks[..3], picks[3..]);
        assert_eq!(picks[0], "http://127.0.0.1:1");
        let members = p.members();
        p.mark_down(&members[1]);
        assert!((0..4).all(|_| p.pick().label() != "http://127.0.0.1:2"));
        for m in members.iter() {
            p.mark_down(m);
        }
        let all_down: std::collections::BTreeSet<String> =
            (0..3).map(|_| label(p.pick())).collect();
        assert_eq!(all_down.len(), 3, "all down: still round-robin over all");
        p.mark_up(&members[1]);
        assert!((0..3).all(|_| p.pick().label() == "http://127.0.0.1:2"));
    }

    #[tokio::test]
    async fn a_name_becomes_one_member_per_address() {
        let r = Fake::default();
        r.set(Ok(vec![addr(3, 9), addr(2, 9), addr(2, 9)]));
        let p = pool(&["http://rllr.test:9"], &r, Some(Duration::from_secs(3600)));
        p.ready().await;
        assert_eq!(addrs(&p), [Some(addr(2, 9)), Some(addr(3, 9))]);
        assert_eq!(
            p.members()[0].label(),
            "http://127.0.0.2:9 (rllr.test:9)",
            "label names the address and the name"
        );
    }

    #[tokio::test]
    async fn re_resolution_adds_and_drops_addresses_and_keeps_survivors() {
        let r = Fake::default();
        r.set(Ok(vec![addr(1, 9), addr(2, 9)]));
        let p = pool(&["http://rllr.test:9"], &r, None);
        p.refresh().await;
        let survivor = p.members()[1].clone();
        p.count(&p.members()[0], 5);
        r.set(Ok(vec![addr(2, 9), addr(3, 9)]));
        p.refresh().await;
        assert_eq!(addrs(&p), [Some(addr(2, 9)), Some(addr(3, 9))]);
        assert!(
            Arc::ptr_eq(&p.members()[0], &survivor),
            "kept, with its channel"
        );
        assert_eq!(
            p.answered().get("http://127.0.0.1:9 (rllr.test:9)"),
            Some(&5),
            "a gone address's count stays in the spread"
        );
    }

    #[tokio::test]
    async fn failed_or_empty_resolution_keeps_the_known_addresses() {
        let r = Fake::default();
        r.set(Ok(vec![addr(1, 9)]));
        let p = pool(&["http://rllr.test:9"], &r, None);
        p.refresh().await;
        r.set(Err(io::Error::other("SERVFAIL")));
        p.refresh().await;
        assert_eq!(addrs(&p), [Some(addr(1, 9))]);
        r.set(Ok(vec![]));
        p.refresh().await;
        assert_eq!(addrs(&p), [Some(addr(1, 9))]);
    }

    #[tokio::test]
    async fn ip_literals_are_not_resolved_and_names_wait_for_the_first_lookup() {
        let r = Fake::default();
        r.set(Ok(vec![addr(7, 9)]));
        let p = pool(&["http://127.0.0.1:5", "http://rllr.test:9"], &r, None);
        assert_eq!(addrs(&p), [None, None], "before resolution: as configured");
        p.refresh().await;
        assert_eq!(addrs(&p), [None, Some(addr(7, 9))]);
        assert_eq!(p.members()[0].label(), "http://127.0.0.1:5");
    }

    #[tokio::test]
    async fn a_failed_address_triggers_an_early_lookup() {
        let r = Fake::default();
        r.set(Ok(vec![addr(1, 9), addr(2, 9)]));
        let p = pool(&["http://rllr.test:9"], &r, Some(Duration::from_secs(3600)));
        p.ready().await;
        r.set(Ok(vec![addr(2, 9)]));
        p.mark_down(&p.members()[0]);
        let t0 = Instant::now();
        while p.len() != 1 {
            assert!(t0.elapsed() < Duration::from_secs(10), "no early lookup");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(addrs(&p), [Some(addr(2, 9))]);
    }

    #[test]
    fn targets_parse_with_default_ports_and_reject_other_schemes() {
        let t = Target::parse("https://rllr.prod").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.is_name()),
            ("rllr.prod", 443, true)
        );
        let t = Target::parse("http://[::1]:7").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.is_name()), ("::1", 7, false));
        let e = Target::parse("ftp://x:1").unwrap_err().to_string();
        assert!(e.contains("http:// or https://"), "{e}");
    }
}
