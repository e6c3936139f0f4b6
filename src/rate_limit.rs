//! Per-client token buckets (`api.md` §11) and client address resolution (`security.md` §7).
//!
//! The buckets are governor's keyed GCRA limiter on its default store (a `DashMap`), which admits exactly what a token
//! bucket of `burst` tokens refilled at `rate` per second admits. Two rules of `api.md` §11 are ours: the bound on
//! clients, and what goes first when it is reached (governor's store grows without limit). Its `retain_recent` drops
//! the clients whose bucket is full again, which is what "idle" means here; the server runs it from a timer, and a full
//! limiter runs it before admitting a new client.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DefaultKeyedStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::Quota;
use ipnet::IpNet;

/// Most client entries a limiter keeps.
pub const MAX_ENTRIES: usize = 100_000;
/// Entries evicted at once when full and too few are idle.
pub const EVICT_BATCH: usize = 1_000;
/// How often [`RateLimiter::retain_recent`] should run (the server does it from a timer, off the request path).
pub const RETAIN_INTERVAL: Duration = Duration::from_secs(10);

/// Longest time a full bucket takes to refill (`burst` × one token's period): keeps governor's nanosecond arithmetic
/// far from `u64` overflow for absurdly slow rates, which then refill once a century.
const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// governor's default keyed store, shared between the limiter and the code that bounds it.
#[derive(Debug, Default, Clone)]
struct Clients(Arc<DefaultKeyedStateStore<IpAddr>>);

impl StateStore for Clients {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for Clients {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// governor's keyed limiter on `clock` (production: [`DefaultClock`]) over the shared store.
type Keyed<C> = governor::RateLimiter<IpAddr, Clients, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A token bucket per client IP, at most [`MAX_ENTRIES`] clients. A rate of 0 disables it.
pub struct RateLimiter<C: Clock = DefaultClock> {
    /// `None`: disabled.
    keyed: Option<(Keyed<C>, Clients)>,
    max_entries: usize,
    evict_batch: usize,
}

impl RateLimiter {
    /// `rate_per_second` tokens are added per second up to `burst` (a positive rate with burst 0 behaves as burst 1).
    /// A rate of 0 (or negative, or not finite) disables the limiter.
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self::with_clock(rate_per_second, burst, DefaultClock::default(), MAX_ENTRIES, EVICT_BATCH)
    }
}

impl<C: Clock> RateLimiter<C> {
    fn with_clock(rate_per_second: f64, burst: u32, clock: C, max_entries: usize, evict_batch: usize) -> Self {
        let keyed = quota(rate_per_second, burst).map(|quota| {
            let clients = Clients::default();
            (governor::RateLimiter::new(quota, clients.clone(), clock), clients)
        });
        RateLimiter { keyed, max_entries: max_entries.max(1), evict_batch: evict_batch.clamp(1, max_entries.max(1)) }
    }

    /// False when the rate is 0.
    pub fn is_enabled(&self) -> bool {
        self.keyed.is_some()
    }

    /// Takes a token for `key` now. `Err(seconds)` is the `Retry-After` value (whole seconds until a token is available,
    /// at least 1).
    pub fn check(&self, key: IpAddr) -> Result<(), u64> {
        let Some((keyed, clients)) = &self.keyed else {
            return Ok(());
        };
        if !clients.0.contains_key(&key) && clients.0.len() >= self.max_entries {
            self.make_room(keyed, clients);
        }
        keyed.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(keyed.clock().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    /// Drops the clients whose bucket is full again: their entry says nothing a fresh one would not.
    pub fn retain_recent(&self) {
        if let Some((keyed, _)) = &self.keyed {
            keyed.retain_recent();
            keyed.shrink_to_fit();
        }
    }

    /// Full: the idle clients go; if that leaves fewer than [`EVICT_BATCH`] places, enough others go too (the store keeps
    /// no last-seen time, so which ones is up to its iteration order).
    fn make_room(&self, keyed: &Keyed<C>, clients: &Clients) {
        keyed.retain_recent();
        let keep = self.max_entries - self.evict_batch;
        let excess = clients.0.len().saturating_sub(keep);
        let evicted: Vec<IpAddr> = clients.0.iter().take(excess).map(|entry| *entry.key()).collect();
        for key in evicted {
            clients.0.remove(&key);
        }
    }

    /// Number of client entries held.
    pub fn len(&self) -> usize {
        self.keyed.as_ref().map_or(0, |(_, clients)| clients.0.len())
    }

    /// True when no client entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("enabled", &self.is_enabled()).field("clients", &self.len()).finish()
    }
}

/// One token every `1 / rate` seconds, `burst` at most; `None` when the rate disables the limiter.
fn quota(rate_per_second: f64, burst: u32) -> Option<Quota> {
    if !(rate_per_second.is_finite() && rate_per_second > 0.0) {
        return None;
    }
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let slowest = MAX_REFILL / burst.get();
    let period = Duration::try_from_secs_f64(1.0 / rate_per_second).unwrap_or(slowest);
    let period = period.clamp(Duration::from_nanos(1), slowest);
    Quota::with_period(period).map(|quota| quota.allow_burst(burst))
}

/// The client IP (`security.md` §7): the TCP peer, unless the peer is a trusted proxy; then `X-Forwarded-For` is read
/// right to left and the first address that is not trusted is the client (all trusted → the left-most). Reading stops at
/// an entry that is not an address, keeping the last address read. IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_ip(peer: IpAddr, x_forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = x_forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for entry in header.rsplit(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let Some(ip) = parse_forwarded_addr(entry) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` element: an IP, or an IP with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    let ip =
        entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip())).or_else(|| {
            entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).and_then(|e| e.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

/// Parses one `server.trusted_proxies` entry: a CIDR, or a bare IP as /32 or /128.
pub fn parse_trusted_entry(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry.parse::<IpNet>().ok().or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Parses `server.trusted_proxies`; invalid entries (reported by configuration validation) are skipped.
pub fn parse_trusted(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|e| parse_trusted_entry(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    use governor::clock::FakeRelativeClock;

    /// A limiter on a clock that only moves when the test says so.
    fn fake(rate: f64, burst: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        bounded(rate, burst, MAX_ENTRIES, EVICT_BATCH)
    }

    fn bounded(rate: f64, burst: u32, max: usize, batch: usize) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateLimiter::with_clock(rate, burst, clock.clone(), max, batch), clock)
    }

    fn held(limiter: &RateLimiter<FakeRelativeClock>, key: &str) -> bool {
        limiter.keyed.as_ref().is_some_and(|(_, clients)| clients.0.contains_key(&ip(key)))
    }

    #[test]
    fn disabled_always_allows() {
        let limiter = RateLimiter::new(0.0, 5);
        assert!(!limiter.is_enabled());
        for _ in 0..10_000 {
            assert_eq!(limiter.check(ip("1.2.3.4")), Ok(()));
        }
        assert!(limiter.is_empty());
        assert!(!RateLimiter::new(-1.0, 5).is_enabled());
        assert!(!RateLimiter::new(f64::NAN, 5).is_enabled());
        assert!(!RateLimiter::new(f64::INFINITY, 5).is_enabled());
    }

    #[test]
    fn burst_then_reject() {
        let (limiter, _clock) = fake(10.0, 5);
        for i in 0..5 {
            assert_eq!(limiter.check(ip("10.0.0.1")), Ok(()), "request {i}");
        }
        assert_eq!(limiter.check(ip("10.0.0.1")), Err(1));
    }

    #[test]
    fn refills_over_time() {
        let (limiter, clock) = fake(10.0, 5);
        for _ in 0..5 {
            limiter.check(ip("10.0.0.1")).unwrap();
        }
        clock.advance(secs(0.05));
        assert!(limiter.check(ip("10.0.0.1")).is_err());
        clock.advance(secs(0.05));
        assert_eq!(limiter.check(ip("10.0.0.1")), Ok(()));
        assert!(limiter.check(ip("10.0.0.1")).is_err());
        // Never more than the burst after a long pause.
        clock.advance(secs(100.0));
        for _ in 0..5 {
            assert_eq!(limiter.check(ip("10.0.0.1")), Ok(()));
        }
        assert!(limiter.check(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let (limiter, _clock) = fake(1.0, 1);
        assert_eq!(limiter.check(ip("10.0.0.1")), Ok(()));
        assert!(limiter.check(ip("10.0.0.1")).is_err());
        assert_eq!(limiter.check(ip("10.0.0.2")), Ok(()));
        assert_eq!(limiter.check(ip("::1")), Ok(()));
        assert_eq!(limiter.len(), 3);
    }

    #[test]
    fn retry_after_in_whole_seconds() {
        // 0.1 token per second: after the burst the next token is 10 s away.
        let (limiter, clock) = fake(0.1, 1);
        limiter.check(ip("10.0.0.1")).unwrap();
        assert_eq!(limiter.check(ip("10.0.0.1")), Err(10));
        clock.advance(secs(2.5));
        assert_eq!(limiter.check(ip("10.0.0.1")), Err(8));
        clock.advance(secs(7.0));
        assert_eq!(limiter.check(ip("10.0.0.1")), Err(1));
        clock.advance(secs(0.5));
        assert_eq!(limiter.check(ip("10.0.0.1")), Ok(()));
        // Fast limiters still say at least 1 second.
        let (fast, _clock) = fake(1000.0, 1);
        fast.check(ip("10.0.0.1")).unwrap();
        assert_eq!(fast.check(ip("10.0.0.1")), Err(1));
    }

    #[test]
    fn default_link_limiter_shape() {
        // links: 100/s, burst 1 → the second immediate request is rejected; 150 rapid ones see 429s.
        let (limiter, clock) = fake(100.0, 1);
        let mut rejected = 0;
        for _ in 0..150 {
            rejected += usize::from(limiter.check(ip("10.0.0.9")).is_err());
            clock.advance(secs(0.001));
        }
        assert_eq!(rejected, 135, "one request in ten passes at 1000/s");
    }

    #[test]
    fn zero_burst_behaves_as_one() {
        let (limiter, _clock) = fake(1.0, 0);
        assert_eq!(limiter.check(ip("10.0.0.1")), Ok(()));
        assert!(limiter.check(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let (slow, _) = fake(1e-30, u32::MAX);
        assert!(slow.is_enabled());
        for _ in 0..3 {
            assert_eq!(slow.check(ip("10.0.0.1")), Ok(()));
        }
        let (slowest, _) = fake(f64::MIN_POSITIVE, 1);
        slowest.check(ip("10.0.0.1")).unwrap();
        let retry = slowest.check(ip("10.0.0.1")).unwrap_err();
        assert!(retry > 3_000_000_000, "about a century: {retry}");
        let (fast, _) = fake(1e30, 1);
        assert_eq!(fast.check(ip("10.0.0.1")), Ok(()));
    }

    #[test]
    fn retain_recent_drops_refilled_clients_only() {
        let (limiter, clock) = fake(1.0, 2);
        limiter.check(ip("10.0.0.1")).unwrap();
        clock.advance(secs(2.5));
        limiter.check(ip("10.0.0.2")).unwrap();
        limiter.check(ip("10.0.0.2")).unwrap();
        assert_eq!(limiter.len(), 2);
        limiter.retain_recent();
        // 10.0.0.1 is full again (for over a token's period) and goes; 10.0.0.2 is empty and must stay.
        assert_eq!(limiter.len(), 1);
        assert!(limiter.check(ip("10.0.0.2")).is_err(), "a dropped entry must not reset a limited client");
        assert_eq!(limiter.check(ip("10.0.0.1")), Ok(()));
        clock.advance(secs(10.0));
        limiter.retain_recent();
        assert!(limiter.is_empty());
        // Disabled limiters hold nothing to drop.
        RateLimiter::new(0.0, 1).retain_recent();
    }

    #[test]
    fn full_limiter_evicts_idle_first() {
        let (limiter, clock) = bounded(1.0, 1, 4, 2);
        limiter.check(ip("10.0.0.1")).unwrap(); // will be idle
        clock.advance(secs(590.0));
        for a in ["10.0.0.2", "10.0.0.3", "10.0.0.4"] {
            limiter.check(ip(a)).unwrap();
        }
        // Only 10.0.0.1 is idle: it goes, and as that leaves fewer than two places, one other goes too.
        limiter.check(ip("10.0.0.5")).unwrap();
        assert_eq!(limiter.len(), 3);
        assert!(!held(&limiter, "10.0.0.1"));
        assert!(held(&limiter, "10.0.0.5"));
        // Enough idle clients: only they go.
        clock.advance(secs(10.0));
        limiter.check(ip("10.0.0.6")).unwrap();
        limiter.check(ip("10.0.0.7")).unwrap();
        assert_eq!(limiter.len(), 2);
        assert!(held(&limiter, "10.0.0.6") && held(&limiter, "10.0.0.7"));
    }

    #[test]
    fn existing_key_never_evicts() {
        let (limiter, _clock) = bounded(1.0, 1, 2, 1);
        limiter.check(ip("10.0.0.1")).unwrap();
        limiter.check(ip("10.0.0.2")).unwrap();
        assert!(limiter.check(ip("10.0.0.2")).is_err());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn bounded_to_max_entries() {
        let limiter = RateLimiter::new(1.0, 1);
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let _ = limiter.check(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limiter.len() <= MAX_ENTRIES);
        assert!(limiter.len() > MAX_ENTRIES - EVICT_BATCH);
    }

    #[test]
    fn thread_safe() {
        let limiter = std::sync::Arc::new(RateLimiter::new(0.001, 100));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let l = limiter.clone();
                std::thread::spawn(move || (0..50).filter(|_| l.check(ip("10.1.1.1")).is_ok()).count())
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 100);
    }

    // ---- client_ip ----

    fn trusted() -> Vec<IpNet> {
        parse_trusted(&["10.0.0.0/8".to_owned(), "192.168.1.1".to_owned()])
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        assert_eq!(client_ip(ip("203.0.113.5"), Some("1.1.1.1"), &trusted()), ip("203.0.113.5"));
        assert_eq!(client_ip(ip("203.0.113.5"), Some("1.1.1.1"), &[]), ip("203.0.113.5"));
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted() {
        let t = trusted();
        assert_eq!(client_ip(ip("10.0.0.1"), Some("198.51.100.7"), &t), ip("198.51.100.7"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("6.6.6.6, 198.51.100.7, 10.2.3.4"), &t),
            ip("198.51.100.7"),
            "a spoofed left-most entry is not believed"
        );
        assert_eq!(client_ip(ip("192.168.1.1"), Some("198.51.100.7"), &t), ip("198.51.100.7"));
    }

    #[test]
    fn all_trusted_gives_leftmost() {
        assert_eq!(client_ip(ip("10.0.0.1"), Some("10.9.9.9, 10.8.8.8"), &trusted()), ip("10.9.9.9"));
    }

    #[test]
    fn trusted_peer_without_header_is_client() {
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted()), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some(""), &trusted()), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some(" , "), &trusted()), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_stops_the_walk() {
        let t = trusted();
        assert_eq!(client_ip(ip("10.0.0.1"), Some("1.1.1.1, junk"), &t), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("junk, 10.3.3.3"), &t), ip("10.3.3.3"));
    }

    #[test]
    fn ports_and_ipv6_in_forwarded_for() {
        let t = trusted();
        assert_eq!(client_ip(ip("10.0.0.1"), Some("198.51.100.7:4711"), &t), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("[2001:db8::1]:443"), &t), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("[2001:db8::2]"), &t), ip("2001:db8::2"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("2001:db8::3"), &t), ip("2001:db8::3"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_canonical() {
        let t = trusted();
        assert_eq!(client_ip(ip("::ffff:10.0.0.1"), Some("198.51.100.7"), &t), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("::ffff:203.0.113.5"), None, &t), ip("203.0.113.5"));
    }

    #[test]
    fn parse_trusted_entries() {
        let nets = parse_trusted(&[
            "10.0.0.0/8".to_owned(),
            " 192.168.1.1 ".to_owned(),
            "::1".to_owned(),
            "2001:db8::/32".to_owned(),
            "not-an-ip".to_owned(),
            "10.0.0.0/33".to_owned(),
        ]);
        let want: Vec<IpNet> =
            ["10.0.0.0/8", "192.168.1.1/32", "::1/128", "2001:db8::/32"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(nets, want);
        assert_eq!(parse_trusted_entry("bogus"), None);
    }
}
