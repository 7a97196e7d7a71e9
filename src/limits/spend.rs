//! Per-key daily and monthly spend caps.
//!
//! A cap is checked *before* the upstream call, so it cannot be checked against settled spend
//! alone: 100 concurrent requests would all see the same settled total and all be admitted.
//! Instead each request reserves its worst-case cost ([`SpendCaps::reserve`]); the reservation
//! counts against the caps while the request is in flight, and on completion is replaced by the
//! exact cost ([`SpendCaps::settle`]). Admission is `settled + held + amount ≤ cap` under the
//! key's lock, so the sum of everything admitted can never pass a cap, however many requests
//! race. (Settled spend can exceed a cap only if a request costs more than it reserved.)
//!
//! Periods are the UTC calendar day and calendar month of the time passed in. A key's counters
//! are rolled forward lazily, by whichever call first sees a new day or month; holds belong to
//! no period and count against both caps until released.
//!
//! Accounts have a monthly cap of their own (`monthly_cap_usd`, set by the operator), counted
//! the same way over all of the account's keys ([`SpendCaps::reserve_account`]). Unlike keys,
//! every account's monthly spend is tracked, capped or not, so a cap set mid-month applies
//! at once against the exact spend so far, in-flight requests included.
//!
//! State is one small `Arc<Mutex<KeySpend>>` per capped key in a sharded map. The hold carries
//! the `Arc`, so releasing it (on settle or on drop) needs no map lookup and no reference to
//! the `SpendCaps`, and entries are never removed: an entry that vanished while a hold pointed
//! at it would let a re-created entry admit past the cap. Entries are bounded by the number of
//! keys that have caps (or spend when seeded), a few dozen bytes each.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::calendar::{day_index, month_index, next_day_start, next_month_start};
use super::{shard_of, IdBuildHasher};
use crate::billing::keys::KeyEntry;
use crate::billing::money::{format_usd, Nano};

const SHARDS: usize = 16;

/// Why a reservation was refused (answered with 402 `spend_cap_exceeded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapExceeded {
    /// "key" or "account": whose cap it is.
    pub scope: &'static str,
    /// "daily" or "monthly". When both caps would be exceeded, "monthly": waiting for the next
    /// day would not help.
    pub period: &'static str,
    /// The cap, nano-USD.
    pub cap: Nano,
    /// What counts against the cap now: settled spend of the period plus in-flight holds.
    pub spent: Nano,
    /// Unix seconds when the period ends and its settled spend goes back to 0 (UTC midnight of
    /// the next day or of the first of next month).
    pub resets_at: u64,
}

impl fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = if self.scope == "account" { "account " } else { "" };
        write!(
            f,
            "{scope}{} spend cap of ${} reached (${} spent or reserved)",
            self.period,
            format_usd(self.cap),
            format_usd(self.spent)
        )
    }
}

impl std::error::Error for CapExceeded {}

/// One key's spend in its current periods.
#[derive(Debug, Default)]
struct KeySpend {
    /// Day index (days since 1970-01-01 UTC) that `day_settled` belongs to.
    day: u64,
    day_settled: Nano,
    /// Month index (year * 12 + month - 1) that `month_settled` belongs to.
    month: i64,
    month_settled: Nano,
    /// Sum of the amounts of live holds.
    held: Nano,
}

impl KeySpend {
    /// Starts new periods if `now` is in a later day or month. Never moves back: a caller
    /// whose clock reading lags another's (read before midnight, locked after) is counted in
    /// the newer period rather than resurrecting the old one.
    #[inline]
    fn roll(&mut self, now: Period) {
        if now.day > self.day {
            self.day = now.day;
            self.day_settled = 0;
        }
        if now.month > self.month {
            self.month = now.month;
            self.month_settled = 0;
        }
    }
}

/// The UTC day and month of a unix second.
#[derive(Clone, Copy)]
struct Period {
    day: u64,
    month: i64,
}

impl Period {
    #[inline]
    fn of(unix_secs: u64) -> Self {
        Period {
            day: day_index(unix_secs),
            month: month_index(unix_secs),
        }
    }
}

fn lock(state: &Mutex<KeySpend>) -> MutexGuard<'_, KeySpend> {
    // Every update leaves the counters consistent before anything can panic, so a poisoned
    // lock still holds good numbers; refusing all requests of the key would be worse.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Amount reserved against a key's caps by one in-flight request.
///
/// Settle it with [`SpendCaps::settle`]; if it is dropped instead (the request failed, was
/// aborted or panicked), the amount is released, so held spend never leaks.
#[must_use = "dropping a hold releases it at once"]
#[derive(Debug)]
pub struct SpendHold {
    /// The key id, or the account id for an account hold.
    key_id: u64,
    amount: Nano,
    /// None for keys without caps, and once settled.
    state: Option<Arc<Mutex<KeySpend>>>,
}

impl SpendHold {
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// The amount held (0 for an untracked hold).
    pub fn amount(&self) -> Nano {
        if self.state.is_some() {
            self.amount
        } else {
            0
        }
    }

    /// Whether this hold counts against caps (false for keys with no caps).
    pub fn is_tracked(&self) -> bool {
        self.state.is_some()
    }

    /// Releases the hold and records `cost` in the periods of `now_unix_secs`. Same as
    /// [`SpendCaps::settle`].
    pub fn settle(mut self, cost: Nano, now_unix_secs: u64) {
        if let Some(state) = self.state.take() {
            let mut spend = lock(&state);
            spend.roll(Period::of(now_unix_secs));
            spend.held -= self.amount;
            debug_assert!(spend.held >= 0);
            // A negative cost is not a refund path; caps only ever count spend.
            let cost = cost.max(0);
            spend.day_settled = spend.day_settled.saturating_add(cost);
            spend.month_settled = spend.month_settled.saturating_add(cost);
        }
    }
}

impl Drop for SpendHold {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let mut spend = lock(&state);
            spend.held -= self.amount;
            debug_assert!(spend.held >= 0);
        }
    }
}

type Shard = RwLock<HashMap<u64, Arc<Mutex<KeySpend>>, IdBuildHasher>>;

/// Per-key spend accounting for daily and monthly caps. Share one per process.
pub struct SpendCaps {
    shards: Box<[Shard]>,
    /// Account monthly spend, by account id (ids overlap with key ids, hence its own map).
    accounts: Box<[Shard]>,
}

impl Default for SpendCaps {
    fn default() -> Self {
        Self::new()
    }
}

impl SpendCaps {
    pub fn new() -> Self {
        let shards = || (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect();
        SpendCaps { shards: shards(), accounts: shards() }
    }

    fn get(&self, key_id: u64) -> Option<Arc<Mutex<KeySpend>>> {
        get_in(&self.shards, key_id)
    }

    fn get_or_insert(&self, key_id: u64) -> Arc<Mutex<KeySpend>> {
        get_or_insert_in(&self.shards, key_id)
    }

    /// Reserves `amount` (the request's worst-case cost; negative counts as 0) against the
    /// key's caps, or says which cap it would pass.
    ///
    /// Admitted iff for each configured cap `settled_in_period + held + amount ≤ cap`, and the
    /// cap is not already reached (so a cap that is exactly used up refuses even a zero
    /// reservation, and a cap of 0 blocks the key). A key with no caps gets an untracked hold
    /// without touching the map.
    pub fn reserve(
        &self,
        key: &KeyEntry,
        amount: Nano,
        now_unix_secs: u64,
    ) -> Result<SpendHold, CapExceeded> {
        if key.daily_cap_nano.is_none() && key.monthly_cap_nano.is_none() {
            return Ok(SpendHold {
                key_id: key.id,
                amount: 0,
                state: None,
            });
        }
        let amount = amount.max(0);
        let now = Period::of(now_unix_secs);
        let state = self.get_or_insert(key.id);
        {
            let mut spend = lock(&state);
            spend.roll(now);
            let over = |settled: Nano, cap: Option<Nano>| {
                let spent = settled.saturating_add(spend.held);
                cap.filter(|&cap| spent >= cap || spent.saturating_add(amount) > cap)
                    .map(|cap| (cap, spent))
            };
            // Monthly first: if both are exceeded, it is the one that lasts.
            if let Some((cap, spent)) = over(spend.month_settled, key.monthly_cap_nano) {
                let resets_at = next_month_start(now_unix_secs);
                return Err(CapExceeded {
                    scope: "key",
                    period: "monthly",
                    cap,
                    spent,
                    resets_at,
                });
            }
            if let Some((cap, spent)) = over(spend.day_settled, key.daily_cap_nano) {
                let resets_at = next_day_start(now_unix_secs);
                return Err(CapExceeded {
                    scope: "key",
                    period: "daily",
                    cap,
                    spent,
                    resets_at,
                });
            }
            spend.held = spend.held.saturating_add(amount);
        }
        Ok(SpendHold {
            key_id: key.id,
            amount,
            state: Some(state),
        })
    }

    /// Releases `hold` and adds `cost` (the exact cost; negative counts as 0) to the day and
    /// month of `now_unix_secs` — the period the request settled in, which differs from the one
    /// it reserved in only for requests that straddle midnight.
    pub fn settle(&self, hold: SpendHold, cost: Nano, now_unix_secs: u64) {
        hold.settle(cost, now_unix_secs);
    }

    /// Rebuilds settled spend from stored generations: `(key_id, cost, created_at_secs)`.
    ///
    /// For every key that appears, today's and this month's settled spend are *replaced* by
    /// the sums of its generations in those periods (other periods and non-positive costs are
    /// skipped), so seeding twice is harmless; in-flight holds are kept. Keys that do not
    /// appear are untouched. Call it at startup before traffic, and again with one key's
    /// generations of this month when a cap is set on a key that had none (spend of uncapped
    /// keys is not tracked).
    pub fn seed(&self, generations: impl Iterator<Item = (u64, Nano, u64)>, now_unix_secs: u64) {
        seed_into(&self.shards, generations, now_unix_secs);
    }

    /// Reserves `amount` against an account's monthly cap (`cap`, None = uncapped but still
    /// counted), or says the cap would be passed: admitted iff `settled this month + held +
    /// amount ≤ cap` under the account's lock, so no number of concurrent requests can pass
    /// it. Settle or drop the hold exactly like a key's ([`SpendCaps::settle`]).
    pub fn reserve_account(
        &self,
        account_id: u64,
        cap: Option<Nano>,
        amount: Nano,
        now_unix_secs: u64,
    ) -> Result<SpendHold, CapExceeded> {
        let amount = amount.max(0);
        let state = get_or_insert_in(&self.accounts, account_id);
        {
            let mut spend = lock(&state);
            spend.roll(Period::of(now_unix_secs));
            let spent = spend.month_settled.saturating_add(spend.held);
            if let Some(cap) = cap.filter(|&cap| spent >= cap || spent.saturating_add(amount) > cap) {
                return Err(CapExceeded {
                    scope: "account",
                    period: "monthly",
                    cap,
                    spent,
                    resets_at: next_month_start(now_unix_secs),
                });
            }
            spend.held = spend.held.saturating_add(amount);
        }
        Ok(SpendHold { key_id: account_id, amount, state: Some(state) })
    }

    /// [`seed`](Self::seed) for accounts: `(account_id, cost, created_at_secs)`.
    pub fn seed_accounts(&self, charges: impl Iterator<Item = (u64, Nano, u64)>, now_unix_secs: u64) {
        seed_into(&self.accounts, charges, now_unix_secs);
    }

    /// An account's settled spend this UTC month and what its requests in flight hold.
    pub fn account_spent(&self, account_id: u64, now_unix_secs: u64) -> (Nano, Nano) {
        let Some(state) = get_in(&self.accounts, account_id) else { return (0, 0) };
        let spend = lock(&state);
        let month = if spend.month >= month_index(now_unix_secs) { spend.month_settled } else { 0 };
        (month, spend.held)
    }
}

fn get_in(shards: &[Shard], id: u64) -> Option<Arc<Mutex<KeySpend>>> {
    let map = shards[shard_of(id, SHARDS)].read().unwrap_or_else(|e| e.into_inner());
    map.get(&id).cloned()
}

fn get_or_insert_in(shards: &[Shard], id: u64) -> Arc<Mutex<KeySpend>> {
    // The read lock is the common path; the write lock only for an id's first reservation.
    if let Some(state) = get_in(shards, id) {
        return state;
    }
    let mut map = shards[shard_of(id, SHARDS)].write().unwrap_or_else(|e| e.into_inner());
    map.entry(id).or_default().clone()
}

/// See [`SpendCaps::seed`].
fn seed_into(shards: &[Shard], generations: impl Iterator<Item = (u64, Nano, u64)>, now_unix_secs: u64) {
    {
        let now = Period::of(now_unix_secs);
        let mut sums: HashMap<u64, (Nano, Nano), IdBuildHasher> = HashMap::default();
        for (key_id, cost, created_at) in generations {
            // Every key that appears gets an entry in `sums`, so re-seeding resets a key whose
            // spend this month is gone, e.g. 0 after a correction.
            let sum = sums.entry(key_id).or_default();
            if cost <= 0 {
                continue;
            }
            let day = day_index(created_at);
            if day == now.day {
                sum.0 = sum.0.saturating_add(cost);
                sum.1 = sum.1.saturating_add(cost);
            } else if day < now.day && month_index(created_at) == now.month {
                sum.1 = sum.1.saturating_add(cost);
            }
        }
        for (key_id, (day_sum, month_sum)) in sums {
            // No entry for keys without spend this month: seeding is handed every stored
            // generation, and most keys in it will be uncapped and idle.
            let state = if day_sum == 0 && month_sum == 0 {
                match get_in(shards, key_id) {
                    Some(state) => state,
                    None => continue,
                }
            } else {
                get_or_insert_in(shards, key_id)
            };
            let mut spend = lock(&state);
            spend.roll(now);
            spend.day = now.day;
            spend.month = now.month;
            spend.day_settled = day_sum;
            spend.month_settled = month_sum;
        }
    }
}

impl SpendCaps {
    /// Settled spend of the key today and this month (UTC), for display. Holds are not
    /// included. Only keys with caps are tracked: an uncapped key reads as what was seeded.
    pub fn spent(&self, key_id: u64, now_unix_secs: u64) -> (Nano, Nano) {
        let Some(state) = self.get(key_id) else {
            return (0, 0);
        };
        let now = Period::of(now_unix_secs);
        let spend = lock(&state);
        // Read-only: a stale period reads as 0 without rolling the stored counters.
        let day = if spend.day >= now.day {
            spend.day_settled
        } else {
            0
        };
        let month = if spend.month >= now.month {
            spend.month_settled
        } else {
            0
        };
        (day, month)
    }

    /// Amount currently held by the key's in-flight reservations.
    pub fn held(&self, key_id: u64) -> Nano {
        self.get(key_id).map_or(0, |state| lock(&state).held)
    }

    /// Keys with spend state (for metrics and tests).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::money::NANO_PER_USD;
    use crate::limits::calendar::{days_from_civil, SECS_PER_DAY};
    use std::sync::atomic::AtomicBool;
    use std::sync::Barrier;
    use std::time::Instant;

    const USD: Nano = NANO_PER_USD;

    fn key(id: u64, daily: Option<Nano>, monthly: Option<Nano>) -> KeyEntry {
        KeyEntry {
            id,
            account_id: 1,
            name: format!("k{id}"),
            revoked: AtomicBool::new(false),
            rate_limit_rpm: None,
            daily_cap_nano: daily,
            monthly_cap_nano: monthly,
            tokens_per_minute: None,
            allowed_models: None,
            expires_at: None,
            platform: None,
            last_used: Default::default(),
            flushed_last_used: Default::default(),
        }
    }

    /// Unix seconds of a UTC date and time of day.
    fn ts(y: i64, m: u32, d: u32, secs_of_day: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * SECS_PER_DAY + secs_of_day
    }

    #[test]
    fn uncapped_keys_get_an_untracked_hold_and_no_state() {
        let caps = SpendCaps::new();
        let hold = caps
            .reserve(&key(1, None, None), 5 * USD, ts(2025, 3, 3, 0))
            .unwrap();
        assert!(!hold.is_tracked());
        assert_eq!(hold.amount(), 0);
        caps.settle(hold, 5 * USD, ts(2025, 3, 3, 10));
        assert_eq!(caps.tracked_keys(), 0);
        assert_eq!(caps.spent(1, ts(2025, 3, 3, 10)), (0, 0));
    }

    #[test]
    fn reservations_count_until_the_cap_and_refusal_says_why() {
        let caps = SpendCaps::new();
        let k = key(1, Some(10 * USD), None);
        let now = ts(2025, 3, 3, 3_600);
        let a = caps.reserve(&k, 4 * USD, now).unwrap();
        let b = caps.reserve(&k, 6 * USD, now).unwrap(); // exactly reaches the cap: admitted
        assert_eq!(caps.held(1), 10 * USD);
        let err = caps.reserve(&k, 1, now).unwrap_err();
        assert_eq!(
            err,
            CapExceeded {
                scope: "key",
                period: "daily",
                cap: 10 * USD,
                spent: 10 * USD,
                resets_at: ts(2025, 3, 4, 0)
            }
        );
        assert_eq!(
            err.to_string(),
            "daily spend cap of $10 reached ($10 spent or reserved)"
        );
        // Reached means reached: even a zero reservation is refused.
        assert!(caps.reserve(&k, 0, now).is_err());
        drop((a, b));
        assert_eq!(caps.held(1), 0);
    }

    #[test]
    fn settling_for_less_frees_room() {
        let caps = SpendCaps::new();
        let k = key(1, Some(10 * USD), Some(100 * USD));
        let now = ts(2025, 3, 3, 0);
        let hold = caps.reserve(&k, 8 * USD, now).unwrap();
        assert!(caps.reserve(&k, 3 * USD, now).is_err());
        caps.settle(hold, 2 * USD, now + 5);
        assert_eq!(caps.held(1), 0);
        assert_eq!(caps.spent(1, now + 5), (2 * USD, 2 * USD));
        let hold = caps.reserve(&k, 8 * USD, now + 5).unwrap(); // 2 + 8 = 10
        assert!(caps.reserve(&k, 1, now + 5).is_err());
        caps.settle(hold, 8 * USD, now + 6);
        assert_eq!(caps.spent(1, now + 6), (10 * USD, 10 * USD));
    }

    #[test]
    fn dropping_a_hold_releases_it() {
        let caps = SpendCaps::new();
        let k = key(1, None, Some(5 * USD));
        let now = ts(2025, 3, 3, 0);
        {
            let _hold = caps.reserve(&k, 5 * USD, now).unwrap();
            assert_eq!(caps.reserve(&k, 1, now).unwrap_err().period, "monthly");
        }
        assert_eq!(caps.held(1), 0);
        // Also when the request's task panics while holding it.
        let caps = Arc::new(caps);
        let c = caps.clone();
        let hold = caps.reserve(&k, 5 * USD, now).unwrap();
        let r = std::thread::spawn(move || {
            let _hold = hold;
            panic!("request aborted");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(c.held(1), 0);
        assert!(caps.reserve(&k, 5 * USD, now).is_ok());
        assert_eq!(caps.spent(1, now), (0, 0));
    }

    #[test]
    fn day_rollover_resets_daily_but_not_monthly() {
        let caps = SpendCaps::new();
        let k = key(1, Some(10 * USD), Some(25 * USD));
        let day1 = ts(2025, 3, 3, SECS_PER_DAY - 1);
        caps.reserve(&k, 10 * USD, day1)
            .unwrap()
            .settle(10 * USD, day1);
        let err = caps.reserve(&k, 1, day1).unwrap_err();
        assert_eq!(err.period, "daily");
        let day2 = day1 + 1;
        assert_eq!(caps.spent(1, day2), (0, 10 * USD));
        caps.reserve(&k, 10 * USD, day2)
            .unwrap()
            .settle(10 * USD, day2);
        assert_eq!(caps.spent(1, day2), (10 * USD, 20 * USD));
        // Day 3: the daily cap has room, the monthly one only 5 more.
        let day3 = day2 + SECS_PER_DAY;
        let err = caps.reserve(&k, 6 * USD, day3).unwrap_err();
        assert_eq!(
            err,
            CapExceeded {
                scope: "key",
                period: "monthly",
                cap: 25 * USD,
                spent: 20 * USD,
                resets_at: ts(2025, 4, 1, 0)
            }
        );
        assert!(caps.reserve(&k, 5 * USD, day3).is_ok());
    }

    #[test]
    fn month_rollover_resets_both() {
        let caps = SpendCaps::new();
        let k = key(1, Some(10 * USD), Some(10 * USD));
        let last = ts(2024, 12, 31, SECS_PER_DAY - 1);
        caps.reserve(&k, 10 * USD, last)
            .unwrap()
            .settle(10 * USD, last);
        // Both exceeded: monthly is the one reported.
        assert_eq!(caps.reserve(&k, 1, last).unwrap_err().period, "monthly");
        let first = last + 1;
        assert_eq!(caps.spent(1, first), (0, 0));
        caps.reserve(&k, 10 * USD, first)
            .unwrap()
            .settle(3 * USD, first);
        assert_eq!(caps.spent(1, first), (3 * USD, 3 * USD));
    }

    #[test]
    fn a_request_straddling_midnight_settles_into_the_new_day() {
        let caps = SpendCaps::new();
        let k = key(1, Some(10 * USD), None);
        let before = ts(2025, 3, 3, SECS_PER_DAY - 2);
        caps.reserve(&k, 6 * USD, before)
            .unwrap()
            .settle(6 * USD, before);
        let hold = caps.reserve(&k, 4 * USD, before).unwrap();
        let after = before + 10;
        caps.settle(hold, 4 * USD, after);
        assert_eq!(caps.held(1), 0);
        assert_eq!(caps.spent(1, after), (4 * USD, 10 * USD));
        // A lagging clock reading from the old day cannot resurrect it.
        caps.reserve(&k, USD, before).unwrap().settle(USD, before);
        assert_eq!(caps.spent(1, after), (5 * USD, 11 * USD));
    }

    #[test]
    fn seeding_rebuilds_today_and_this_month() {
        let caps = SpendCaps::new();
        let now = ts(2025, 3, 15, 12 * 3_600);
        let gens = vec![
            (1, 2 * USD, ts(2025, 3, 15, 60)),               // today
            (1, 3 * USD, ts(2025, 3, 1, 0)),                 // this month
            (1, 7 * USD, ts(2025, 2, 28, SECS_PER_DAY - 1)), // last month
            (1, 0, ts(2025, 3, 15, 120)),                    // unbilled
            (2, USD, ts(2025, 3, 14, 0)),                    // another key, yesterday
            (3, 9 * USD, ts(2024, 3, 15, 0)),                // same month, a year ago
        ];
        caps.seed(gens.clone().into_iter(), now);
        assert_eq!(caps.spent(1, now), (2 * USD, 5 * USD));
        assert_eq!(caps.spent(2, now), (0, USD));
        assert_eq!(caps.spent(3, now), (0, 0));
        assert_eq!(
            caps.tracked_keys(),
            2,
            "no entry for a key without spend this month"
        );
        // Idempotent.
        caps.seed(gens.into_iter(), now);
        assert_eq!(caps.spent(1, now), (2 * USD, 5 * USD));
        // And enforced.
        let k = key(1, Some(3 * USD), Some(6 * USD));
        assert_eq!(
            caps.reserve(&k, 2 * USD, now).unwrap_err().period,
            "monthly"
        );
        let err = caps
            .reserve(&key(1, Some(3 * USD), None), 2 * USD, now)
            .unwrap_err();
        assert_eq!((err.period, err.spent), ("daily", 2 * USD));
        assert!(caps.reserve(&k, USD, now).is_ok());
    }

    #[test]
    fn hundred_threads_never_exceed_the_cap() {
        let caps = Arc::new(SpendCaps::new());
        let cap = 10 * USD;
        let k = Arc::new(key(1, Some(cap), Some(cap)));
        let barrier = Arc::new(Barrier::new(100));
        let now = ts(2025, 3, 3, 0);
        let threads: Vec<_> = (0..100u64)
            .map(|i| {
                let (caps, k, barrier) = (caps.clone(), k.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Amounts 0.17 .. 0.50 USD: 100 of them sum to ~33 USD, far over the cap.
                    let amount = (17 + (i * 7) % 34) as Nano * USD / 100;
                    barrier.wait();
                    caps.reserve(&k, amount, now).ok()
                })
            })
            .collect();
        let holds: Vec<SpendHold> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        let admitted: Nano = holds.iter().map(|h| h.amount()).sum();
        assert!(admitted <= cap, "admitted {admitted} > cap {cap}");
        assert_eq!(caps.held(1), admitted);
        // Not starved: whatever is left is smaller than the largest single request.
        assert!(cap - admitted < USD / 2, "admitted only {admitted}");
        // Settle at half cost, concurrently: everything lands, nothing stays held.
        let settled: Nano = holds.iter().map(|h| h.amount() / 2).sum();
        let threads: Vec<_> = holds
            .into_iter()
            .map(|h| {
                let caps = caps.clone();
                std::thread::spawn(move || {
                    let cost = h.amount() / 2;
                    caps.settle(h, cost, now + 1)
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(caps.held(1), 0);
        assert_eq!(caps.spent(1, now + 1), (settled, settled));
    }

    #[test]
    fn concurrent_reserve_settle_and_abort_keep_the_books_exact() {
        let caps = Arc::new(SpendCaps::new());
        let cap = 50 * USD;
        let k = Arc::new(key(7, Some(cap), None));
        let now = ts(2025, 3, 3, 0);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (caps, k) = (caps.clone(), k.clone());
                std::thread::spawn(move || {
                    let mut settled = 0;
                    for i in 0..2_000u64 {
                        if let Ok(h) = caps.reserve(&k, USD / 100, now) {
                            if (i + t) % 3 == 0 {
                                drop(h); // aborted
                            } else {
                                caps.settle(h, USD / 1_000, now);
                                settled += USD / 1_000;
                            }
                        }
                    }
                    settled
                })
            })
            .collect();
        let settled: Nano = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(caps.held(7), 0);
        assert_eq!(caps.spent(7, now).0, settled);
        assert!(settled <= cap);
    }

    #[test]
    fn account_cap_holds_under_a_hundred_threads() {
        let caps = Arc::new(SpendCaps::new());
        let cap = 10 * USD;
        let now = ts(2025, 3, 3, 0);
        // Spend from earlier this month and from last month (which does not count).
        caps.seed_accounts(vec![(5, 2 * USD, ts(2025, 3, 1, 0)), (5, 9 * USD, ts(2025, 2, 27, 0))].into_iter(), now);
        assert_eq!(caps.account_spent(5, now), (2 * USD, 0));
        let barrier = Arc::new(Barrier::new(100));
        let threads: Vec<_> = (0..100u64)
            .map(|i| {
                let (caps, barrier) = (caps.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let amount = (17 + (i * 7) % 34) as Nano * USD / 100;
                    barrier.wait();
                    caps.reserve_account(5, Some(cap), amount, now).ok()
                })
            })
            .collect();
        let holds: Vec<SpendHold> = threads.into_iter().filter_map(|t| t.join().unwrap()).collect();
        let admitted: Nano = holds.iter().map(|h| h.amount()).sum();
        assert!(2 * USD + admitted <= cap, "admitted {admitted}");
        assert!(cap - 2 * USD - admitted < USD / 2, "not starved: {admitted}");
        assert_eq!(caps.account_spent(5, now), (2 * USD, admitted));
        let err = caps.reserve_account(5, Some(cap), USD, now).unwrap_err();
        assert_eq!((err.scope, err.period, err.resets_at), ("account", "monthly", ts(2025, 4, 1, 0)));
        for h in holds {
            caps.settle(h, USD / 10, now);
        }
        let (month, held) = caps.account_spent(5, now);
        assert_eq!(held, 0);
        assert!(month > 2 * USD);
        // Uncapped accounts are still counted, and a key's caps are separate.
        caps.reserve_account(6, None, 100 * USD, now).unwrap().settle(USD, now);
        assert_eq!(caps.account_spent(6, now), (USD, 0));
        assert_eq!(caps.spent(6, now), (0, 0));
        // Next month starts from zero.
        assert_eq!(caps.account_spent(6, ts(2025, 4, 1, 0)), (0, 0));
        assert!(caps.reserve_account(5, Some(cap), 9 * USD, ts(2025, 4, 1, 0)).is_ok());
    }

    #[test]
    #[ignore = "timing; run with --ignored --nocapture"]
    fn time_reserve_settle() {
        let caps = SpendCaps::new();
        let keys: Vec<KeyEntry> = (0..1_000)
            .map(|i| key(i, Some(Nano::MAX / 2), Some(Nano::MAX / 2)))
            .collect();
        let now = ts(2025, 3, 3, 0);
        let n = 1_000_000usize;
        let start = Instant::now();
        for i in 0..n {
            let hold = caps.reserve(&keys[i % keys.len()], 1_000, now).unwrap();
            caps.settle(hold, 500, now);
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!("SpendCaps reserve+settle: {per:.0} ns/op over 1k capped keys");
        let uncapped = key(5_000, None, None);
        let start = Instant::now();
        for _ in 0..n {
            let hold = caps.reserve(&uncapped, 1_000, now).unwrap();
            caps.settle(hold, 500, now);
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!("SpendCaps reserve+settle (no caps): {per:.0} ns/op");
    }
}
