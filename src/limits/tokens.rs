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

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{shard_of, IdBuildHasher};

const WINDOW_SECS: u64 = 60;
/// Buckets overlapping the last 60 s: the current second and the 60 before it.
const BUCKETS: u64 = WINDOW_SECS + 1;
const SHARDS: usize = 64;

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

struct Window {
    counts: [u64; BUCKETS as usize],
    head: u64,
    total: u64,
}

impl Window {
    fn new(bucket: u64) -> Window {
        Window { counts: [0; BUCKETS as usize], head: bucket, total: 0 }
    }

    /// Slides forward to `bucket` (never back: a late reading counts in the newest bucket).
    fn advance(&mut self, bucket: u64) {
        if bucket <= self.head {
            return;
        }
        if bucket - self.head >= BUCKETS {
            self.counts = [0; BUCKETS as usize];
            self.total = 0;
        } else {
            for b in self.head + 1..=bucket {
                let slot = &mut self.counts[(b % BUCKETS) as usize];
                self.total -= *slot;
                *slot = 0;
            }
        }
        self.head = bucket;
    }

    /// Seconds from `now_ms` until the oldest buckets holding `need` tokens stop counting.
    fn secs_until_freed(&self, need: u64, now_ms: u64) -> u64 {
        let mut freed = 0;
        for b in self.head.saturating_sub(BUCKETS - 1)..=self.head {
            freed += self.counts[(b % BUCKETS) as usize];
            if freed >= need {
                return ((b + BUCKETS) * 1_000).saturating_sub(now_ms).div_ceil(1_000).max(1);
            }
        }
        WINDOW_SECS
    }
}

struct Shard {
    windows: HashMap<u64, Window, IdBuildHasher>,
    last_sweep: u64,
}

/// Tokens per minute per key. One per process.
pub struct TokenRateLimiter {
    epoch: Instant,
    shards: Box<[Mutex<Shard>]>,
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
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard { windows: HashMap::default(), last_sweep: 0 }))
            .collect();
        TokenRateLimiter { epoch, shards }
    }

    fn shard(&self, key_id: u64) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(key_id, SHARDS)].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bucket(&self, now: Instant) -> (u64, u64) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        (ms / 1_000, ms)
    }

    /// Whether a request of `key_id` may start under `limit` tokens per minute. Counts
    /// nothing. A limit of 0 admits nothing.
    pub fn check_tpm(&self, key_id: u64, limit: u32, now: Instant) -> TpmDecision {
        let limit = u64::from(limit);
        let (bucket, now_ms) = self.bucket(now);
        let mut shard = self.shard(key_id);
        let Some(window) = shard.windows.get_mut(&key_id) else {
            return TpmDecision {
                allowed: limit > 0,
                limit,
                used: 0,
                remaining: limit,
                retry_after_secs: if limit > 0 { 0 } else { WINDOW_SECS },
            };
        };
        window.advance(bucket);
        let used = window.total;
        if used < limit {
            TpmDecision { allowed: true, limit, used, remaining: limit - used, retry_after_secs: 0 }
        } else {
            let wait = if limit == 0 { WINDOW_SECS } else { window.secs_until_freed(used - limit + 1, now_ms) };
            TpmDecision { allowed: false, limit, used, remaining: 0, retry_after_secs: wait }
        }
    }

    /// Counts a settled request's tokens (prompt + completion) at `now`.
    pub fn record_tokens(&self, key_id: u64, tokens: u64, now: Instant) {
        if tokens == 0 {
            return;
        }
        let (bucket, _) = self.bucket(now);
        let mut shard = self.shard(key_id);
        if bucket >= shard.last_sweep + BUCKETS {
            shard.windows.retain(|_, w| w.head + BUCKETS > bucket);
            shard.last_sweep = bucket;
        }
        let window = shard.windows.entry(key_id).or_insert_with(|| Window::new(bucket));
        window.advance(bucket);
        let head = window.head;
        let slot = &mut window.counts[(head % BUCKETS) as usize];
        *slot = slot.saturating_add(tokens);
        window.total = window.total.saturating_add(tokens);
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
