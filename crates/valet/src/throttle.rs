//! Throttling of failed attempts, per client address and per key id.
//!
//! Each address or key id gets a fixed window that opens at its first failure. Once the
//! window contains the configured number of failures, further attempts are rejected with 429
//! until the window closes. Counters live in this process's memory, so each node of a
//! cluster throttles on its own.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Maximum number of addresses or key ids tracked by one counter. Past it, new ones are
/// not tracked until old windows close, so memory stays bounded under a spray of addresses.
const MAX_TRACKED: usize = 100_000;

/// Settings of failed-attempt throttling.
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    /// Length of a counting window.
    pub window: Duration,
    /// Failed attempts from one client address per window; 0 turns it off.
    pub max_failures_per_address: u32,
    /// Failed attempts naming one key id per window; 0 turns it off.
    pub max_failures_per_key: u32,
    /// Peers whose `Forwarded` and `X-Forwarded-For` headers name the client address.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            max_failures_per_address: 30,
            max_failures_per_key: 20,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ThrottleConfig {
    /// Returns a configuration that never throttles.
    pub fn disabled() -> Self {
        Self {
            max_failures_per_address: 0,
            max_failures_per_key: 0,
            ..Self::default()
        }
    }
}

/// An attempt rejected because its address or key id failed too often.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// Time until the window closes, rounded up to whole seconds when sent.
    pub retry_after: Duration,
}

impl Throttled {
    /// Returns the `Retry-After` value in whole seconds, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

struct Window {
    opened: Instant,
    failures: u32,
}

/// Counts failures per `K` in fixed windows.
pub struct FailureCounter<K> {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<K, Window>>,
    /// Windows that reached the limit and may still be open. While it is zero, checks
    /// take no lock, so the common path costs one atomic load.
    blocked: AtomicUsize,
}

impl<K: Hash + Eq + Clone> FailureCounter<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
            blocked: AtomicUsize::new(0),
        }
    }

    /// Returns `Err` while `key` has reached the limit in its current window.
    pub fn check(&self, key: &K) -> Result<(), Throttled> {
        if self.limit == 0 || self.blocked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let Some(window) = windows.get(key) else {
            return Ok(());
        };
        let elapsed = window.opened.elapsed();
        if window.failures >= self.limit && elapsed < self.window {
            return Err(Throttled {
                retry_after: self.window - elapsed,
            });
        }
        Ok(())
    }

    /// Records one failure for `key`. Returns true when this failure reached the limit.
    pub fn record(&self, key: &K) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_TRACKED && !windows.contains_key(key) {
            self.forget_closed(&mut windows);
            if windows.len() >= MAX_TRACKED {
                return false;
            }
        }
        let window = windows.entry(key.clone()).or_insert(Window {
            opened: Instant::now(),
            failures: 0,
        });
        if window.opened.elapsed() >= self.window {
            if window.failures >= self.limit {
                self.blocked.fetch_sub(1, Ordering::Relaxed);
            }
            *window = Window {
                opened: Instant::now(),
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        let reached = window.failures == self.limit;
        if reached {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
        reached
    }

    /// Drops closed windows, keeping the count of blocked ones exact.
    fn forget_closed(&self, windows: &mut HashMap<K, Window>) {
        let (window, limit) = (self.window, self.limit);
        let mut unblocked = 0;
        windows.retain(|_, entry| {
            let open = entry.opened.elapsed() < window;
            if !open && entry.failures >= limit {
                unblocked += 1;
            }
            open
        });
        self.blocked.fetch_sub(unblocked, Ordering::Relaxed);
    }
}

/// Throttling by client address, with the trusted proxies that may name the address.
pub struct AddressThrottle {
    counter: FailureCounter<IpAddr>,
    trusted_proxies: Vec<IpNet>,
}

impl AddressThrottle {
    pub fn new(config: &ThrottleConfig) -> Self {
        Self {
            counter: FailureCounter::new(config.max_failures_per_address, config.window),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    pub fn check(&self, client: IpAddr) -> Result<(), Throttled> {
        self.counter.check(&bucket(client))
    }

    pub fn record_failure(&self, client: IpAddr) {
        if self.counter.record(&bucket(client)) {
            tracing::warn!(
                client = %client,
                "client address reached the failed-attempt limit; rejecting its requests with 429 \
                 until the window closes"
            );
        }
    }

    /// Returns the client's address: the peer's, or, when the peer is a trusted proxy, the
    /// nearest address in `forwarded` (the `Forwarded` or `X-Forwarded-For` chain, client
    /// first) that is not itself a trusted proxy.
    pub fn client_address(&self, peer: IpAddr, forwarded: &[Option<IpAddr>]) -> IpAddr {
        let mut client = peer;
        for hop in forwarded.iter().rev() {
            if !self.is_trusted(client) {
                break;
            }
            // A hop that cannot be read ends the walk at the proxy that reported it.
            let Some(address) = hop else {
                break;
            };
            client = *address;
        }
        client
    }

    /// Returns whether `address` is a trusted proxy.
    pub fn is_trusted(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }
}

/// Unwraps IPv4-mapped IPv6 addresses, so `::ffff:192.0.2.1` counts as `192.0.2.1`.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Groups IPv6 addresses by /64, the block one subscriber usually holds, so one client
/// cannot escape its limit by rotating through its own addresses.
fn bucket(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Parses `--trusted-proxies`: comma-separated addresses or CIDR networks.
pub fn parse_trusted_proxies(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "invalid trusted proxy `{item}`: expected an IP address or a CIDR network \
                         such as 10.0.0.0/8, separated by commas"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn failure_counter_blocks_until_window_closes() {
        let counter = FailureCounter::new(3, Duration::from_millis(80));
        assert!(!counter.record(&"a"));
        assert!(!counter.record(&"a"));
        assert_eq!(counter.check(&"a"), Ok(()));
        assert!(counter.record(&"a"));
        let throttled = counter.check(&"a").unwrap_err();
        assert!(throttled.retry_after <= Duration::from_millis(80));
        assert_eq!(throttled.retry_after_seconds(), 1);
        assert_eq!(counter.check(&"b"), Ok(()));

        std::thread::sleep(Duration::from_millis(90));
        assert_eq!(counter.check(&"a"), Ok(()));
        assert!(!counter.record(&"a"));
        assert_eq!(counter.blocked.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failure_counter_with_limit_zero_never_blocks() {
        let counter = FailureCounter::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            assert!(!counter.record(&1));
        }
        assert_eq!(counter.check(&1), Ok(()));
    }

    #[test]
    fn client_address_follows_only_trusted_proxies() {
        let config = ThrottleConfig {
            trusted_proxies: parse_trusted_proxies("10.0.0.0/8, 127.0.0.1").unwrap(),
            ..ThrottleConfig::default()
        };
        let throttle = AddressThrottle::new(&config);
        let chain = [Some(ip("198.51.100.7")), Some(ip("10.1.2.3"))];

        // An untrusted peer's headers are ignored.
        assert_eq!(
            throttle.client_address(ip("203.0.113.9"), &chain),
            ip("203.0.113.9")
        );
        // A trusted peer is walked through, past every trusted hop.
        assert_eq!(
            throttle.client_address(ip("127.0.0.1"), &chain),
            ip("198.51.100.7")
        );
        // A spoofed entry left of an untrusted hop is never reached.
        let spoofed = [
            Some(ip("192.0.2.1")),
            Some(ip("198.51.100.7")),
            Some(ip("10.1.2.3")),
        ];
        assert_eq!(
            throttle.client_address(ip("127.0.0.1"), &spoofed),
            ip("198.51.100.7")
        );
        // An unreadable hop stops at the proxy that reported it.
        assert_eq!(
            throttle.client_address(ip("127.0.0.1"), &[None, Some(ip("10.1.2.3"))]),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn bucket_groups_ipv6_and_mapped_ipv4() {
        assert_eq!(bucket(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(bucket(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn parse_trusted_proxies_takes_addresses_and_networks() {
        let parsed = parse_trusted_proxies("127.0.0.1, 10.0.0.0/8,::1").unwrap();
        assert_eq!(parsed.len(), 3);
        let err = parse_trusted_proxies("10.0.0.0/33").unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(parse_trusted_proxies("").unwrap().is_empty());
    }
}
