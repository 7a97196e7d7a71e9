//! Per-key tokens-per-minute limits (`tokens_per_minute` on a key).
//!
//! A request's tokens are only known once its response is complete, so a request cannot
//! reserve them the way spend caps reserve money. The rule is therefore: **a request is
//! admitted iff the tokens already counted for the key in the last 60 s are below the
//! limit** ([`TokenRateLimiter::check_tpm`], which counts nothing), and its tokens are
//! counted when it settles ([`TokenRateLimiter::record_tokens`]).
//!
//! What that guarantees, under any concurrency:
//! - check and record each run under the key's shard lock, so no count is lost or read torn,
//!   and a check after a record always sees it;
//! - once the counted tokens reach the limit, every later check refuses until enough of them
//!   age out: the boundary is exact for everything already settled;
//! - the overshoot is bounded by what was in flight when the limit was reached: requests
//!   admitted before the tokens that crossed the limit were counted (at most one per request
//!   in flight, each at most its own size). Tokens count for at least 60 s and at most 61 s
//!   (the same 61 one-second buckets as `rate`), so no 60-second span sees more admitted
//!   after the limit was reached.
//!
//! The window and the sharded per-key table are `window`'s, shared with `rate`; this file is
//! the policy: checks only look (a key never charged has no window), charges are added after
//! the fact.

use std::time::Instant;

use super::window::{KeyWindows, WINDOW_SECS};

/// What a check decided (nothing was counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpmDecision {
    pub allowed: bool,
    pub limit: u64,
    /// Tokens counted in the window.
    pub used: u64,
    /// `limit − used`, saturating.
    pub remaining: u64,
    /// For a refused request, seconds until enough tokens age out (≥ 1); 0 when allowed.
    pub retry_after_secs: u64,
}

/// Tokens per minute per key. One per process.
pub struct TokenRateLimiter {
    /// Settled tokens per key; `u64`, since what is recorded is not bounded by the limit.
    windows: KeyWindows<u64>,
}

impl Default for TokenRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenRateLimiter {
    pub fn new() -> Self {
        Self::with_epoch(Instant::now())
    }

    pub fn with_epoch(epoch: Instant) -> Self {
        TokenRateLimiter { windows: KeyWindows::with_epoch(epoch) }
    }

    /// Whether a request of `key_id` may start under `limit` tokens per minute. Counts
    /// nothing. A limit of 0 admits nothing.
    pub fn check_tpm(&self, key_id: u64, limit: u32, now: Instant) -> TpmDecision {
        let limit = u64::from(limit);
        self.windows.with_existing_window(key_id, now, |window, now_ms| {
            let Some(window) = window else {
                return TpmDecision {
                    allowed: limit > 0,
                    limit,
                    used: 0,
                    remaining: limit,
                    retry_after_secs: if limit > 0 { 0 } else { WINDOW_SECS },
                };
            };
            let used = window.total();
            if used < limit {
                TpmDecision { allowed: true, limit, used, remaining: limit - used, retry_after_secs: 0 }
            } else {
                let wait = if limit == 0 { WINDOW_SECS } else { window.secs_until_freed(used - limit + 1, now_ms) };
                TpmDecision { allowed: false, limit, used, remaining: 0, retry_after_secs: wait }
            }
        })
    }

    /// Counts a settled request's tokens (prompt + completion) at `now`.
    pub fn record_tokens(&self, key_id: u64, tokens: u64, now: Instant) {
        if tokens == 0 {
            return;
        }
        self.windows.with_window(key_id, now, |window, _| window.add(tokens));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn refuses_once_counted_tokens_reach_the_limit() {
        let t0 = Instant::now();
        let l = TokenRateLimiter::with_epoch(t0);
        assert!(l.check_tpm(1, 100, at(t0, 0)).allowed);
        l.record_tokens(1, 60, at(t0, 500));
        let d = l.check_tpm(1, 100, at(t0, 600));
        assert_eq!((d.allowed, d.used, d.remaining), (true, 60, 40));
        l.record_tokens(1, 39, at(t0, 700));
        assert!(l.check_tpm(1, 100, at(t0, 800)).allowed, "99 < 100");
        l.record_tokens(1, 1, at(t0, 900));
        let d = l.check_tpm(1, 100, at(t0, 1_000));
        assert!(!d.allowed, "100 counted: the boundary refuses");
        // All counted in second 0, which stops counting at second 61.
        assert_eq!(d.retry_after_secs, 60);
        assert!(!l.check_tpm(1, 100, at(t0, 60_999)).allowed);
        assert!(l.check_tpm(1, 100, at(t0, 61_000)).allowed);
        // Other keys and a limit of 0.
        assert!(l.check_tpm(2, 100, at(t0, 1_000)).allowed);
        assert!(!l.check_tpm(2, 0, at(t0, 1_000)).allowed);
    }

    #[test]
    fn retry_after_waits_only_for_enough_tokens() {
        let t0 = Instant::now();
        let l = TokenRateLimiter::with_epoch(t0);
        l.record_tokens(1, 30, at(t0, 0));
        l.record_tokens(1, 80, at(t0, 10_000));
        let d = l.check_tpm(1, 100, at(t0, 20_000));
        // 110 counted; 11 must age out: the 30 of second 0 go at second 61.
        assert_eq!((d.allowed, d.retry_after_secs), (false, 41));
        assert!(l.check_tpm(1, 100, at(t0, 61_000)).allowed);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let l = Arc::new(TokenRateLimiter::new());
        let now = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..1_000).for_each(|_| l.record_tokens(9, 3, now)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let d = l.check_tpm(9, 24_001, now);
        assert_eq!((d.used, d.allowed), (24_000, true));
        assert!(!l.check_tpm(9, 24_000, now).allowed);
    }
}
