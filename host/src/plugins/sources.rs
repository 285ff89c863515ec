//! Who a plugin call works for, and what its faults are charged to.
//!
//! A plugin translates input from outside: a device's message, an enrollment request that
//! carries no credential yet, an admin's operation. When an input makes the plugin fault
//! (a trap, the CPU or memory limit), the question is whose fault it is. One source that
//! sends a deeply nested plist twenty times has found an input the plugin cannot handle;
//! it has not shown that the plugin version is broken for everyone. So:
//!
//! * every fault is charged to its [`Source`]. A source with [`HoldPolicy::faults`] faults
//!   within [`HoldPolicy::window`] is *held*: its calls into plugins are refused before
//!   any plugin runs, for [`HoldPolicy::hold`] (HTTP 429 with `Retry-After`, CoAP 4.29, an
//!   MQTT message dropped and counted), while every other source is served;
//! * only faults of authenticated sources (a device, an admin) count for the breaker, and
//!   the breaker acts only when faults come from several of them
//!   ([`FaultLedger::sources_within`]; `FaultPolicy::min_sources`). An unauthenticated
//!   request can therefore never suspend or roll back a plugin version.
//!
//! An IPv6 peer is held by its /64 (one subscriber's prefix), so a source cannot dodge its
//! hold by moving to the next address of its own network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Who sent the input a plugin call works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An enrolled device, authenticated by its credential (its key in the store).
    Device(i64),
    /// A request with no credential yet (enrollment, a LwM2M registration), by peer address.
    Peer(IpAddr),
    /// An admin (validating an operation) or the host itself (`describe` at load).
    Admin,
}

impl Source {
    /// Whether its faults count against the plugin version (the breaker): only input whose
    /// sender the host has authenticated.
    pub fn charges_version(self) -> bool {
        !matches!(self, Source::Peer(_))
    }

    /// The key a hold is kept under: an IPv6 peer by its /64.
    fn hold_key(self) -> Source {
        match self {
            Source::Peer(IpAddr::V6(a)) => {
                let s = a.segments();
                Source::Peer(IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
            }
            other => other,
        }
    }
}

/// When a source is held.
#[derive(Debug, Clone, Copy)]
pub struct HoldPolicy {
    /// Faults within `window` that put a source on hold.
    pub faults: u32,
    pub window: Duration,
    /// How long a held source's calls are refused.
    pub hold: Duration,
}

impl Default for HoldPolicy {
    fn default() -> Self {
        HoldPolicy { faults: 3, window: Duration::from_secs(60), hold: Duration::from_secs(60) }
    }
}

/// At most this many sources are remembered. Past it, expired entries are swept; if all are
/// live (a flood from ever-new addresses), a new source is not remembered. That costs
/// nothing but the hold: its faults never count against a version anyway.
const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    window_start: Instant,
    faults: u32,
    held_until: Option<Instant>,
}

/// The faults charged to each source lately, and which sources are held. One per runtime,
/// shared by every plugin.
#[derive(Debug)]
pub struct Holds {
    policy: HoldPolicy,
    records: Mutex<HashMap<Source, Record>>,
    /// When the last hold ends, in ms after `epoch`: every plugin call checks its source,
    /// and while nobody is held that check is one atomic read instead of a shared lock.
    holds_until: AtomicU64,
    epoch: Instant,
}

impl Holds {
    pub fn new(policy: HoldPolicy) -> Holds {
        Holds { policy, records: Mutex::new(HashMap::new()), holds_until: AtomicU64::new(0), epoch: Instant::now() }
    }

    /// `Err(retry after)` while `source` is held. The admin is never held.
    pub fn check(&self, source: Source) -> Result<(), Duration> {
        if source == Source::Admin {
            return Ok(());
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if self.holds_until.load(Ordering::Relaxed) < now_ms {
            return Ok(());
        }
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        match records.get(&source.hold_key()).and_then(|r| r.held_until) {
            Some(until) => {
                let now = Instant::now();
                if until > now { Err(until - now) } else { Ok(()) }
            }
            None => Ok(()),
        }
    }

    /// Charge a fault to `source`; whether that put it on hold.
    pub fn charge(&self, source: Source) -> bool {
        if source == Source::Admin {
            return false;
        }
        let now = Instant::now();
        let key = source.hold_key();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= MAX_SOURCES && !records.contains_key(&key) {
            let (window, hold) = (self.policy.window, self.policy.hold);
            records.retain(|_, r| {
                now.duration_since(r.window_start) < window || r.held_until.is_some_and(|u| u + hold > now)
            });
            if records.len() >= MAX_SOURCES {
                return false;
            }
        }
        let r = records.entry(key).or_insert(Record { window_start: now, faults: 0, held_until: None });
        if now.duration_since(r.window_start) >= self.policy.window {
            *r = Record { window_start: now, faults: 0, held_until: r.held_until.filter(|u| *u > now) };
        }
        r.faults += 1;
        if r.faults >= self.policy.faults {
            r.held_until = Some(now + self.policy.hold);
            let until_ms = (now + self.policy.hold).duration_since(self.epoch).as_millis() as u64 + 1;
            self.holds_until.fetch_max(until_ms, Ordering::Relaxed);
            r.faults = 0;
            r.window_start = now;
            return true;
        }
        false
    }
}

/// The authenticated sources whose input made one plugin version fault, with the last
/// time each did: the breaker asks how many distinct ones faulted within its window.
#[derive(Debug, Default)]
pub struct FaultLedger {
    last: Mutex<HashMap<Source, Instant>>,
}

/// The breaker needs only a handful of distinct sources to decide; this many is plenty.
const LEDGER_SOURCES: usize = 1024;

impl FaultLedger {
    pub fn record(&self, source: Source) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= LEDGER_SOURCES && !last.contains_key(&source) {
            // Forget the oldest half: what is left still answers any window the breaker asks.
            let mut times: Vec<Instant> = last.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            last.retain(|_, t| *t > cut);
        }
        last.insert(source, now);
    }

    /// How many distinct sources faulted at or after `since`.
    pub fn sources_since(&self, since: Instant) -> usize {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|t| **t >= since).count()
    }

    /// How many distinct sources faulted within the last `window`.
    pub fn sources_within(&self, window: Duration) -> usize {
        match Instant::now().checked_sub(window) {
            Some(since) => self.sources_since(since),
            // The clock started less than `window` ago: everything is within it.
            None => self.last.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }

    /// Forget everything (an admin re-enabled the plugin: its past faults are forgiven).
    pub fn clear(&self) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_held_after_its_faults_and_others_are_not() {
        let holds =
            Holds::new(HoldPolicy { faults: 3, window: Duration::from_secs(60), hold: Duration::from_secs(30) });
        let (a, b) = (Source::Peer("192.0.2.1".parse().unwrap()), Source::Device(7));
        assert!(!holds.charge(a));
        assert!(!holds.charge(a));
        assert!(holds.check(a).is_ok());
        assert!(holds.charge(a), "the third fault holds it");
        let retry = holds.check(a).unwrap_err();
        assert!(retry > Duration::from_secs(29) && retry <= Duration::from_secs(30), "{retry:?}");
        assert!(holds.check(b).is_ok());
        assert!(holds.check(Source::Peer("192.0.2.2".parse().unwrap())).is_ok());
        // The admin is never held.
        for _ in 0..10 {
            assert!(!holds.charge(Source::Admin));
        }
        assert!(holds.check(Source::Admin).is_ok());
    }

    #[test]
    fn an_ipv6_peer_is_held_by_its_prefix() {
        let holds = Holds::new(HoldPolicy { faults: 2, ..Default::default() });
        holds.charge(Source::Peer("2001:db8:1:2::1".parse().unwrap()));
        holds.charge(Source::Peer("2001:db8:1:2::ffff".parse().unwrap()));
        assert!(holds.check(Source::Peer("2001:db8:1:2:aaaa::9".parse().unwrap())).is_err());
        assert!(holds.check(Source::Peer("2001:db8:1:3::1".parse().unwrap())).is_ok());
    }

    #[test]
    fn only_authenticated_sources_charge_a_version() {
        assert!(Source::Device(1).charges_version());
        assert!(Source::Admin.charges_version());
        assert!(!Source::Peer("192.0.2.1".parse().unwrap()).charges_version());
    }

    #[test]
    fn the_ledger_counts_distinct_sources_in_a_window() {
        let ledger = FaultLedger::default();
        let start = Instant::now();
        for _ in 0..50 {
            ledger.record(Source::Device(1));
        }
        assert_eq!(ledger.sources_since(start), 1, "one device faulting often is one source");
        ledger.record(Source::Device(2));
        ledger.record(Source::Admin);
        assert_eq!(ledger.sources_since(start), 3);
        assert_eq!(ledger.sources_since(Instant::now() + Duration::from_secs(1)), 0);
        for d in 0..5000 {
            ledger.record(Source::Device(d));
        }
        assert!(ledger.sources_since(start) <= LEDGER_SOURCES);
        assert!(ledger.sources_since(start) >= 3);
    }
}
