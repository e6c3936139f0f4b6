//! Per-client token buckets (`api.md` §11) and client address resolution (`security.md` §7).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Most client entries a limiter keeps.
pub const MAX_ENTRIES: usize = 100_000;
/// Entries evicted at once when full and none is idle.
pub const EVICT_BATCH: usize = 1_000;
/// An entry not seen for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often idle entries are swept opportunistically during [`RateLimiter::check`].
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
struct State {
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

/// A token-bucket limiter keyed by client IP. A rate of 0 disables it.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_entries: usize,
    evict_batch: usize,
    idle: Duration,
    state: Mutex<State>,
}

impl RateLimiter {
    /// `rate_per_second` tokens are added per second up to `burst` (a positive rate with burst 0 behaves as burst 1).
    /// A rate of 0 (or negative, or not finite) disables the limiter.
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self::with_limits(rate_per_second, burst, MAX_ENTRIES, EVICT_BATCH, IDLE_TIMEOUT)
    }

    fn with_limits(rate_per_second: f64, burst: u32, max_entries: usize, evict_batch: usize, idle: Duration) -> Self {
        let rate = if rate_per_second.is_finite() && rate_per_second > 0.0 { rate_per_second } else { 0.0 };
        RateLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            max_entries: max_entries.max(1),
            evict_batch: evict_batch.max(1),
            idle,
            state: Mutex::new(State { buckets: HashMap::new(), last_sweep: None }),
        }
    }

    /// False when the rate is 0.
    pub fn is_enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes a token for `key` now. `Err(seconds)` is the `Retry-After` value (whole seconds until a token is available,
    /// at least 1).
    pub fn check(&self, key: IpAddr) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (instants must not go backwards by much; earlier ones add no tokens).
    pub fn check_at(&self, key: IpAddr, now: Instant) -> Result<(), u64> {
        if !self.is_enabled() {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state.last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
        if due {
            self.drop_idle(&mut state, now);
        }
        if !state.buckets.contains_key(&key) && state.buckets.len() >= self.max_entries {
            self.make_room(&mut state, now);
        }
        let bucket =
            state.buckets.entry(key).or_insert(Bucket { tokens: self.burst, refilled_at: now, last_seen: now });
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if now > bucket.refilled_at {
            bucket.refilled_at = now;
        }
        if now > bucket.last_seen {
            bucket.last_seen = now;
        }
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / self.rate).ceil();
            // `as` saturates for huge values; the minimum is 1 second.
            Err((wait as u64).max(1))
        }
    }

    /// Number of client entries held.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).buckets.len()
    }

    /// True when no client entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries idle for 10 minutes (also done opportunistically by [`RateLimiter::check`]).
    pub fn sweep_at(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.drop_idle(&mut state, now);
    }

    fn drop_idle(&self, state: &mut State, now: Instant) {
        let idle = self.idle;
        state.buckets.retain(|_, b| now.saturating_duration_since(b.last_seen) < idle);
        state.last_sweep = Some(now);
    }

    /// Full: evict idle entries; if none was idle, evict the `evict_batch` least recently seen.
    fn make_room(&self, state: &mut State, now: Instant) {
        self.drop_idle(state, now);
        if state.buckets.len() < self.max_entries {
            return;
        }
        let mut seen: Vec<(Instant, IpAddr)> = state.buckets.iter().map(|(k, b)| (b.last_seen, *k)).collect();
        let n = self.evict_batch.min(seen.len());
        if n < seen.len() {
            seen.select_nth_unstable_by_key(n, |(t, _)| *t);
        }
        for (_, key) in seen.iter().take(n) {
            state.buckets.remove(key);
        }
    }
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

    #[test]
    fn disabled_always_allows() {
        let limiter = RateLimiter::new(0.0, 5);
        assert!(!limiter.is_enabled());
        let t = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(limiter.check_at(ip("1.2.3.4"), t), Ok(()));
        }
        assert!(limiter.is_empty());
        assert!(!RateLimiter::new(-1.0, 5).is_enabled());
        assert!(!RateLimiter::new(f64::NAN, 5).is_enabled());
    }

    #[test]
    fn burst_then_reject() {
        let limiter = RateLimiter::new(10.0, 5);
        let t = Instant::now();
        for i in 0..5 {
            assert_eq!(limiter.check_at(ip("10.0.0.1"), t), Ok(()), "request {i}");
        }
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t), Err(1));
    }

    #[test]
    fn refills_over_time() {
        let limiter = RateLimiter::new(10.0, 5);
        let t = Instant::now();
        for _ in 0..5 {
            limiter.check_at(ip("10.0.0.1"), t).unwrap();
        }
        assert!(limiter.check_at(ip("10.0.0.1"), t + secs(0.05)).is_err());
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t + secs(0.1)), Ok(()));
        assert!(limiter.check_at(ip("10.0.0.1"), t + secs(0.1)).is_err());
        // Never more than the burst after a long pause.
        let later = t + secs(100.0);
        for _ in 0..5 {
            assert_eq!(limiter.check_at(ip("10.0.0.1"), later), Ok(()));
        }
        assert!(limiter.check_at(ip("10.0.0.1"), later).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let limiter = RateLimiter::new(1.0, 1);
        let t = Instant::now();
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t), Ok(()));
        assert!(limiter.check_at(ip("10.0.0.1"), t).is_err());
        assert_eq!(limiter.check_at(ip("10.0.0.2"), t), Ok(()));
        assert_eq!(limiter.check_at(ip("::1"), t), Ok(()));
        assert_eq!(limiter.len(), 3);
    }

    #[test]
    fn retry_after_in_whole_seconds() {
        // 0.1 token per second: after the burst the next token is 10 s away.
        let limiter = RateLimiter::new(0.1, 1);
        let t = Instant::now();
        limiter.check_at(ip("10.0.0.1"), t).unwrap();
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t), Err(10));
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t + secs(2.5)), Err(8));
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t + secs(9.5)), Err(1));
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t + secs(10.0)), Ok(()));
        // Fast limiters still say at least 1 second.
        let fast = RateLimiter::new(1000.0, 1);
        fast.check_at(ip("10.0.0.1"), t).unwrap();
        assert_eq!(fast.check_at(ip("10.0.0.1"), t), Err(1));
    }

    #[test]
    fn default_link_limiter_shape() {
        // links: 100/s, burst 1 → the second immediate request is rejected; 150 rapid ones see 429s.
        let limiter = RateLimiter::new(100.0, 1);
        let t = Instant::now();
        let rejected =
            (0..150).filter(|i| limiter.check_at(ip("10.0.0.9"), t + secs(*i as f64 * 0.001)).is_err()).count();
        assert!(rejected > 0);
        assert!(rejected < 150);
    }

    #[test]
    fn zero_burst_behaves_as_one() {
        let limiter = RateLimiter::new(1.0, 0);
        let t = Instant::now();
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t), Ok(()));
        assert!(limiter.check_at(ip("10.0.0.1"), t).is_err());
    }

    #[test]
    fn earlier_instant_does_not_add_tokens() {
        let limiter = RateLimiter::new(1.0, 1);
        let t = Instant::now() + secs(10.0);
        limiter.check_at(ip("10.0.0.1"), t).unwrap();
        assert!(limiter.check_at(ip("10.0.0.1"), t - secs(5.0)).is_err());
        assert!(limiter.check_at(ip("10.0.0.1"), t).is_err());
    }

    #[test]
    fn idle_entries_are_dropped() {
        let limiter = RateLimiter::new(1.0, 1);
        let t = Instant::now();
        limiter.check_at(ip("10.0.0.1"), t).unwrap();
        limiter.check_at(ip("10.0.0.2"), t + secs(300.0)).unwrap();
        assert_eq!(limiter.len(), 2);
        limiter.sweep_at(t + secs(599.0));
        assert_eq!(limiter.len(), 2);
        limiter.sweep_at(t + secs(600.0));
        assert_eq!(limiter.len(), 1);
        // Opportunistic sweep inside check (more than a minute after the last sweep).
        limiter.check_at(ip("10.0.0.3"), t + secs(1000.0)).unwrap();
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn full_limiter_evicts_idle_first() {
        let limiter = RateLimiter::with_limits(1.0, 1, 4, 2, secs(600.0));
        let t = Instant::now();
        limiter.check_at(ip("10.0.0.1"), t).unwrap(); // will be idle
        for (i, a) in ["10.0.0.2", "10.0.0.3", "10.0.0.4"].iter().enumerate() {
            limiter.check_at(ip(a), t + secs(590.0 + i as f64)).unwrap();
        }
        assert_eq!(limiter.len(), 4);
        // At t+601 only 10.0.0.1 is idle; it goes, the recent ones stay.
        limiter.check_at(ip("10.0.0.5"), t + secs(601.0)).unwrap();
        assert_eq!(limiter.len(), 4);
        let state = limiter.state.lock().unwrap();
        assert!(!state.buckets.contains_key(&ip("10.0.0.1")));
        assert!(state.buckets.contains_key(&ip("10.0.0.2")));
        assert!(state.buckets.contains_key(&ip("10.0.0.5")));
    }

    #[test]
    fn full_limiter_evicts_least_recently_seen() {
        let limiter = RateLimiter::with_limits(1.0, 1, 5, 2, secs(600.0));
        let t = Instant::now();
        for i in 1..=5u8 {
            limiter.check_at(IpAddr::from([10, 0, 0, i]), t + secs(f64::from(i))).unwrap();
        }
        // Touch 10.0.0.1 again so 10.0.0.2 and 10.0.0.3 are the least recently seen.
        let _ = limiter.check_at(ip("10.0.0.1"), t + secs(10.0));
        limiter.check_at(ip("10.0.0.6"), t + secs(11.0)).unwrap();
        let state = limiter.state.lock().unwrap();
        let mut keys: Vec<IpAddr> = state.buckets.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, ["10.0.0.1", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip));
    }

    #[test]
    fn existing_key_never_evicts() {
        let limiter = RateLimiter::with_limits(1.0, 1, 2, 1, secs(600.0));
        let t = Instant::now();
        limiter.check_at(ip("10.0.0.1"), t).unwrap();
        limiter.check_at(ip("10.0.0.2"), t).unwrap();
        let _ = limiter.check_at(ip("10.0.0.2"), t + secs(1.0));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn bounded_to_max_entries() {
        let limiter = RateLimiter::new(1.0, 1);
        let t = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let _ = limiter.check_at(IpAddr::from(i.to_be_bytes()), t);
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
