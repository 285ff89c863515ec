//! Requests made before any credential, per client address: enrollment, the enrollment
//! exchange and profile, SCEP, a first certificate, a pending certificate's claim.
//!
//! Each of them costs the server before it knows who asks: SCEP's `PKIOperation` an RSA
//! decryption, an enrollment a plugin call and a database read, a profile a plugin call.
//! Nothing else stops one address from asking as fast as its link allows and taking that
//! work from everyone else, so each client address gets a token bucket
//! (`--enroll-rate-per-sec`, `--enroll-burst`; governor's GCRA): past it, `429
//! rate_limited` with `Retry-After`, before anything of the request is read. An enrolled
//! device's own requests are authenticated first and never counted here.
//!
//! A client address is the TCP peer, or behind a proxy listed in `--trusted-proxies` the
//! address it appends to `X-Forwarded-For` (`listener.rs`); an untrusted peer's header is
//! not read, so making one up does not make a new client. IPv6 clients count by their /64,
//! what one subscriber usually holds, so an attacker cannot walk its own prefix for fresh
//! buckets. Buckets of addresses not seen for a while are dropped ([`Throttle::sweep`]).

use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// The buckets; `None` when the operator switched them off (a rate of 0).
pub struct Throttle(Option<DefaultKeyedRateLimiter<IpAddr>>);

impl Throttle {
    /// `per_sec` requests a second with bursts of `burst`; 0 switches throttling off.
    pub fn new(per_sec: u32, burst: u32) -> Throttle {
        let Some(rate) = NonZeroU32::new(per_sec) else { return Throttle(None) };
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Throttle(Some(DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))))
    }

    /// Take one request of `client` from its bucket; `Err`: how long until one is free.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.0 else { return Ok(()) };
        limiter.check_key(&key(client)).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
        })
    }

    /// Drop the buckets that are full again (their clients quiet): the map holds only the
    /// addresses seen lately, whatever number of addresses has asked.
    pub fn sweep(&self) {
        if let Some(limiter) = &self.0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Buckets held (for the tests of the sweep).
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bucket a client address counts in: IPv4 as itself (also when mapped into IPv6),
/// IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_burst_waits_and_others_do_not() {
        let t = Throttle::new(1, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(a).is_ok());
        }
        let wait = t.check(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(t.check("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn an_ipv6_prefix_is_one_client_and_a_mapped_ipv4_is_its_address() {
        let t = Throttle::new(1, 1);
        assert!(t.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(t.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err(), "same /64");
        assert!(t.check("2001:db8:1:3::1".parse().unwrap()).is_ok(), "another /64");
        assert!(t.check("192.0.2.7".parse().unwrap()).is_ok());
        assert!(t.check("::ffff:192.0.2.7".parse().unwrap()).is_err(), "the same IPv4 client");
    }

    #[test]
    fn zero_switches_it_off() {
        let t = Throttle::new(0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..1000).all(|_| t.check(a).is_ok()));
        assert!(t.is_empty());
    }
}
