//! Attempts per minute on `/auth/login` and `/auth/register`: per client address (both
//! routes) and per email (login), so neither one address guessing many accounts' passwords nor
//! many addresses guessing one account's get more than `server.login_attempts_per_minute`
//! tries a minute. Every attempt counts, successful or not.
//!
//! The per-email limit lets anyone slow down one account's logins (not lock it: the window
//! slides); that is the usual price of stopping distributed guessing and is documented.
//!
//! Both reuse the sliding window of [`KeyRateLimiter`], keyed by a 64-bit SipHash of the
//! address or lower-cased email under a per-process random key (so an attacker cannot craft
//! collisions to push someone else over the limit).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

use super::{KeyRateLimiter, RateDecision};

#[derive(Default)]
pub struct LoginLimiter {
    by_addr: KeyRateLimiter,
    by_email: KeyRateLimiter,
    hasher: RandomState,
}

impl LoginLimiter {
    pub fn new() -> LoginLimiter {
        LoginLimiter::default()
    }

    /// Counts one attempt from `addr` (None: not an IP socket; such clients share one window).
    pub fn check_addr(&self, addr: Option<IpAddr>, per_minute: u32, now: Instant) -> RateDecision {
        let id = self.hasher.hash_one(addr);
        self.by_addr.check(id, per_minute, now)
    }

    /// Counts one login attempt for `email` (compared case-insensitively).
    pub fn check_email(&self, email: &str, per_minute: u32, now: Instant) -> RateDecision {
        let id = self.hasher.hash_one(email.trim().to_ascii_lowercase());
        self.by_email.check(id, per_minute, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_per_email() {
        let l = LoginLimiter::new();
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check_addr(Some(a), 3, now).allowed);
        }
        let d = l.check_addr(Some(a), 3, now);
        assert!(!d.allowed && d.retry_after_secs >= 1);
        assert!(l.check_addr(Some(b), 3, now).allowed);
        for _ in 0..3 {
            assert!(l.check_email("A@x.com", 3, now).allowed);
        }
        assert!(!l.check_email(" a@X.com", 3, now).allowed, "same email, any case");
        assert!(l.check_email("b@x.com", 3, now).allowed);
    }
}
