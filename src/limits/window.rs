//! The sliding one-minute window and the sharded per-key table of windows, shared by
//! [`rate`](super::rate) (requests per minute) and [`tokens`](super::tokens) (tokens per
//! minute).
//!
//! Both limits need the same mechanism: per key, what was counted in the last 60 s, exact under
//! concurrency, cheap to check, and when enough of it will have aged out to answer
//! `Retry-After`. What differs between them is policy, and stays in their files: what is
//! counted (an admitted request; a settled request's tokens), when (in the same critical
//! section as the check; after the response, while the check only looks), and what the answer
//! carries. This file holds only the mechanism:
//!
//! - [`Window`]: 61 one-second buckets. A count made in bucket `b` counts while the newest
//!   bucket is `b ..= b + 60`, i.e. for at least 60 s and at most 61 s, so no 60-second span
//!   ever sees more than the window says (see `rate` for why that trade is worth it). The
//!   buckets are a ring indexed by bucket number, with their sum kept alongside, so a check is
//!   a few integer operations plus, when the second has changed, clearing the expired buckets.
//! - [`KeyWindows`]: windows by key id in a fixed number of shards, each a `HashMap` behind its
//!   own `Mutex`, so requests on different keys rarely meet on a lock and one key's lock is held
//!   for a few integer operations. Bucket numbers are milliseconds since an epoch `Instant`
//!   (instants are opaque), divided. A window idle for over a minute is all zeros, so each
//!   shard drops such windows once a minute, on whichever call first notices.
//!
//! The count type is a parameter ([`Count`]): requests count in `u32` (a request limit is a
//! `u32`, and it keeps a window at 256 bytes), tokens in `u64` (what is recorded is not bounded
//! by the limit: requests in flight when it is reached still settle).

use std::collections::HashMap;
use std::ops::{AddAssign, SubAssign};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{shard_of, IdBuildHasher};

/// The window of every per-minute limit.
pub const WINDOW_SECS: u64 = 60;

/// Bucket width in milliseconds: the granularity of the window's sliding.
const BUCKET_MS: u64 = 1_000;

/// Buckets a count lives in: every bucket that overlaps the last `WINDOW_SECS`, i.e. the
/// current one and the 60 before it.
const BUCKETS: u64 = WINDOW_SECS * 1_000 / BUCKET_MS + 1;

/// Power of two; enough that a few cores rarely meet on one lock.
const SHARDS: usize = 64;

/// An unsigned integer a window counts in.
pub(super) trait Count: Copy + Default + PartialOrd + AddAssign + SubAssign {
    fn saturating_add(self, n: Self) -> Self;
}

impl Count for u32 {
    #[inline]
    fn saturating_add(self, n: Self) -> Self {
        u32::saturating_add(self, n)
    }
}

impl Count for u64 {
    #[inline]
    fn saturating_add(self, n: Self) -> Self {
        u64::saturating_add(self, n)
    }
}

/// One key's sliding window.
pub(super) struct Window<C> {
    /// Counted per bucket; bucket `b` lives at `counts[b % BUCKETS]`.
    counts: [C; BUCKETS as usize],
    /// The newest bucket seen. Buckets `head - 60 ..= head` are live.
    head: u64,
    /// Sum of `counts`, kept so a check does not add 61 numbers.
    total: C,
}

impl<C: Count> Window<C> {
    fn new(bucket: u64) -> Self {
        Window {
            counts: [C::default(); BUCKETS as usize],
            head: bucket,
            total: C::default(),
        }
    }

    /// Slides the window so `bucket` is the newest, dropping buckets that no longer overlap
    /// the last 60 s. A `bucket` older than `head` (a thread that read the clock, then waited
    /// for the lock behind a newer one) does not move the window back: what it counts goes in
    /// `head`, which only makes it count longer.
    #[inline]
    fn advance(&mut self, bucket: u64) {
        if bucket <= self.head {
            return;
        }
        if bucket - self.head >= BUCKETS {
            self.counts = [C::default(); BUCKETS as usize];
            self.total = C::default();
        } else {
            for b in self.head + 1..=bucket {
                let slot = &mut self.counts[(b % BUCKETS) as usize];
                self.total -= *slot;
                *slot = C::default();
            }
        }
        self.head = bucket;
    }

    /// What the live buckets count.
    #[inline]
    pub(super) fn total(&self) -> C {
        self.total
    }

    /// Counts `n` in the newest bucket. Saturating: tokens are recorded after the fact, without
    /// a bound; requests never get near it (one is counted only while `total < limit`).
    #[inline]
    pub(super) fn add(&mut self, n: C) {
        let slot = &mut self.counts[(self.head % BUCKETS) as usize];
        *slot = slot.saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    /// The oldest live bucket.
    #[inline]
    fn oldest(&self) -> u64 {
        self.head.saturating_sub(BUCKETS - 1)
    }

    /// Seconds from `now_ms` until the live buckets, oldest first, whose counts add up to at
    /// least `need` have all stopped counting; always ≥ 1. `need` must be in `1..=total`.
    pub(super) fn secs_until_freed(&self, need: C, now_ms: u64) -> u64 {
        let mut freed = C::default();
        for b in self.oldest()..=self.head {
            freed += self.counts[(b % BUCKETS) as usize];
            if freed >= need {
                // Bucket b counts while head ≤ b + 60, so it stops counting at bucket b + 61.
                let free_at_ms = (b + BUCKETS) * BUCKET_MS;
                return free_at_ms.saturating_sub(now_ms).div_ceil(1_000).max(1);
            }
        }
        // Unreachable while `need <= total`; a full window is the safe answer.
        WINDOW_SECS
    }
}

struct Shard<C> {
    windows: HashMap<u64, Window<C>, IdBuildHasher>,
    /// Bucket of the last sweep for idle windows.
    last_sweep: u64,
}

impl<C: Count> Shard<C> {
    /// Drops the windows idle for a whole window, at most once a window per shard, so the
    /// table holds only keys active in the last minute or two and no call pays for a sweep
    /// more than once a minute per shard.
    #[inline]
    fn sweep_if_due(&mut self, bucket: u64) {
        if bucket < self.last_sweep + BUCKETS {
            return;
        }
        // A window whose newest bucket is 61+ buckets old is all zeros: same as absent.
        self.windows.retain(|_, w| w.head + BUCKETS > bucket);
        // After a burst of keys has gone idle, give the memory back (but not for small maps,
        // which would only regrow).
        if self.windows.capacity() > 64 && self.windows.len() < self.windows.capacity() / 4 {
            self.windows.shrink_to_fit();
        }
        self.last_sweep = bucket;
    }
}

/// Sliding windows by key id, sharded. Each limiter holds one.
pub(super) struct KeyWindows<C> {
    /// Instants are opaque; bucket numbers are milliseconds since this one, divided.
    epoch: Instant,
    shards: Box<[Mutex<Shard<C>>]>,
}

impl<C: Count> KeyWindows<C> {
    /// A table whose bucket clock starts at `epoch`; earlier instants are read as `epoch`.
    pub(super) fn with_epoch(epoch: Instant) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    windows: HashMap::with_hasher(Default::default()),
                    last_sweep: 0,
                })
            })
            .collect();
        KeyWindows { epoch, shards }
    }

    #[inline]
    fn shard(&self, key_id: u64) -> MutexGuard<'_, Shard<C>> {
        // A panic while holding the lock cannot leave a window half-updated in a way that
        // matters (they are counters); keep limiting rather than failing every request.
        self.shards[shard_of(key_id, SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// `now` as milliseconds since the epoch, and its bucket.
    #[inline]
    fn clock(&self, now: Instant) -> (u64, u64) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        (now_ms, now_ms / BUCKET_MS)
    }

    /// Runs `f` on `key_id`'s window slid to `now` (created empty if the key has none), with
    /// `now` in milliseconds since the epoch, under the key's shard lock: whatever `f` reads
    /// and counts is one critical section. Sweeps the shard first if a minute has passed.
    #[inline]
    pub(super) fn with_window<R>(
        &self,
        key_id: u64,
        now: Instant,
        f: impl FnOnce(&mut Window<C>, u64) -> R,
    ) -> R {
        let (now_ms, bucket) = self.clock(now);
        let mut shard = self.shard(key_id);
        shard.sweep_if_due(bucket);
        let window = shard
            .windows
            .entry(key_id)
            .or_insert_with(|| Window::new(bucket));
        window.advance(bucket);
        f(window, now_ms)
    }

    /// Like [`with_window`](Self::with_window), for a caller that only looks: a key without a
    /// window gets `None` and is not added (so looking costs no memory), and no sweep is run
    /// (the calls that add windows sweep).
    #[inline]
    pub(super) fn with_existing_window<R>(
        &self,
        key_id: u64,
        now: Instant,
        f: impl FnOnce(Option<&mut Window<C>>, u64) -> R,
    ) -> R {
        let (now_ms, bucket) = self.clock(now);
        let mut shard = self.shard(key_id);
        let mut window = shard.windows.get_mut(&key_id);
        if let Some(w) = &mut window {
            w.advance(bucket);
        }
        f(window, now_ms)
    }

    /// Keys with a window (for metrics and tests).
    pub(super) fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).windows.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// The sum of the live buckets, the slow way.
    fn summed<C: Count>(w: &Window<C>) -> C {
        let mut sum = C::default();
        for b in w.oldest()..=w.head {
            sum += w.counts[(b % BUCKETS) as usize];
        }
        sum
    }

    #[test]
    fn the_kept_total_matches_the_buckets_as_the_ring_wraps() {
        // Steps of 0 to 70 s, so the window slides by less than, exactly and more than its
        // length, and the ring index wraps many times.
        let mut w = Window::<u32>::new(0);
        let mut bucket = 0;
        for i in 0u64..2_000 {
            bucket += (i * 7) % 71;
            w.advance(bucket);
            assert_eq!(w.total(), summed(&w), "after advancing to {bucket}");
            w.add((i % 5) as u32);
            assert_eq!(w.total(), summed(&w), "after counting at {bucket}");
        }
        // Sliding by a whole window or more empties it.
        w.add(1);
        w.advance(w.head + BUCKETS);
        assert_eq!((w.total(), summed(&w)), (0, 0));
    }

    #[test]
    fn counts_saturate_rather_than_wrap() {
        let mut w = Window::<u64>::new(3);
        w.add(u64::MAX - 1);
        w.add(5);
        assert_eq!(w.total(), u64::MAX);
        assert_eq!(w.secs_until_freed(u64::MAX, 3_000), 61);
    }

    #[test]
    fn looking_neither_adds_a_window_nor_sweeps() {
        let t0 = Instant::now();
        let t = KeyWindows::<u32>::with_epoch(t0);
        assert!(t.with_existing_window(1, t0, |w, _| w.is_none()));
        assert_eq!(t.tracked_keys(), 0);

        t.with_window(1, t0, |w, _| w.add(1));
        // Two minutes later key 1 is idle. Looking at another key of its shard sweeps nothing...
        let k2 = (2..)
            .find(|&k| shard_of(k, SHARDS) == shard_of(1, SHARDS))
            .unwrap();
        let later = at(t0, 125_000);
        assert_eq!(
            t.with_existing_window(k2, later, |w, now_ms| (w.is_none(), now_ms)),
            (true, 125_000)
        );
        assert_eq!(t.tracked_keys(), 1);
        // ...counting on it sweeps key 1 out, then adds key 2.
        t.with_window(k2, later, |w, _| w.add(1));
        assert_eq!(t.tracked_keys(), 1);
        assert!(t.with_existing_window(1, later, |w, _| w.is_none()));
        assert_eq!(
            t.with_existing_window(k2, later, |w, _| w.map(|w| w.total())),
            Some(1)
        );
    }
}
