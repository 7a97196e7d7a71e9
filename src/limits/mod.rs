//! Per-key limits checked before a request reaches an upstream: requests per minute
//! ([`rate::KeyRateLimiter`], answered with 429 `rate_limit_exceeded`), tokens per minute
//! ([`tokens::TokenRateLimiter`], 429 as well) and daily/monthly spend caps of keys and the
//! monthly cap of accounts ([`spend::SpendCaps`], answered with 402 `spend_cap_exceeded`).
//!
//! All three are pure in-memory structures that take the current time as a parameter, so the
//! proxy owns the clock and the tests can move it. They return data; the proxy shapes the answers and
//! headers.
//!
//! All three key their state by key id in a fixed number of shards, each behind its own lock, so two
//! requests on different keys rarely touch the same lock and one key's lock is held only for a
//! few integer operations.
//!
//! The two per-minute limits share one mechanism, `window` (a sliding window of one-second
//! buckets per key, in such shards); `rate` and `tokens` hold only what each counts and when.

pub mod calendar;
pub mod conn;
pub mod login;
pub mod rate;
pub mod spend;
pub mod tokens;
mod window;

pub use rate::{KeyRateLimiter, RateDecision};
pub use spend::{CapExceeded, SpendCaps, SpendHold};
pub use tokens::{TokenRateLimiter, TpmDecision};

use std::hash::{BuildHasherDefault, Hasher};

/// Mixes a key id into well-spread bits (the splitmix64 finalizer).
///
/// Key ids are small sequential integers: used raw, they would put neighbouring keys in
/// neighbouring shards and give `HashMap` poorly spread hashes. SipHash would also work but
/// costs more than the rest of a rate check; ids are not attacker-chosen, so HashDoS
/// resistance buys nothing here.
#[inline]
pub(crate) fn mix_id(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which of `shards` (a power of two) a key id lives in. Uses the high bits of the mix, while
/// `HashMap` inside the shard uses the low ones, so keys in one shard still spread well.
#[inline]
pub(crate) fn shard_of(id: u64, shards: usize) -> usize {
    debug_assert!(shards.is_power_of_two());
    ((mix_id(id) >> 32) as usize) & (shards - 1)
}

/// `Hasher` for maps keyed by a `u64` key id (see [`mix_id`] for why not SipHash).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = mix_id(n);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys use this hasher; anything else still hashes correctly, just slower.
        for &b in bytes {
            self.0 = mix_id(self.0 ^ b as u64);
        }
    }
}

pub(crate) type IdBuildHasher = BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_shards() {
        let mut counts = [0usize; 16];
        for id in 0..16_000u64 {
            counts[shard_of(id, 16)] += 1;
        }
        // 1000 expected per shard; a poor spread would leave some near 0.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
