//! Markup tiers: an account's markup follows its billed spend over the last 30 days.
//!
//! The ladder comes from config (`[[billing.tiers]]`). The spend is recomputed in the
//! background every `billing.tier_recompute_secs` from the usage rollups (one range read per
//! account, never a scan of generations) and kept here, so the request path only reads a
//! number: [`TierBook::spend_30d`] is one read lock and one map probe. The ladder is applied
//! at read time, so a config reload with new tiers takes effect at once, without waiting for
//! a recompute.
//!
//! The window is the 30 UTC calendar days ending with the day of the recompute (today
//! included), because rollups are per UTC day.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use super::money::{Nano, NANO_PER_USD};
use crate::limits::calendar::day_index;

/// Days of spend that decide a tier.
pub const WINDOW_DAYS: u64 = 30;

/// One rung: accounts whose 30-day spend is at least `min_spend` pay `markup_bps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub min_spend: Nano,
    /// Basis points (2500 = 25 %).
    pub markup_bps: u32,
}

/// The ladder used when the config has no `[[billing.tiers]]`: 40 % below $50 of 30-day spend,
/// 30 % from $50, 22 % from $200, 15 % from $1,000, 10 % from $5,000.
pub fn default_ladder() -> Vec<Tier> {
    [(0, 4_000), (50, 3_000), (200, 2_200), (1_000, 1_500), (5_000, 1_000)]
        .into_iter()
        .map(|(usd, bps)| Tier { min_spend: usd * NANO_PER_USD, markup_bps: bps })
        .collect()
}

/// The rung for `spend` in a ladder sorted by `min_spend` (ascending): the last one whose
/// minimum is reached. None when spend is below every rung.
pub fn tier_for(ladder: &[Tier], spend: Nano) -> Option<Tier> {
    ladder.iter().rev().find(|t| spend >= t.min_spend).copied()
}

/// The next rung up from `spend`, if any.
pub fn next_tier(ladder: &[Tier], spend: Nano) -> Option<Tier> {
    ladder.iter().find(|t| t.min_spend > spend).copied()
}

/// UTC day indexes `(first, last)` of the window that ends on `now`'s day.
pub fn window(now_secs: u64) -> (u64, u64) {
    let last = day_index(now_secs);
    (last.saturating_sub(WINDOW_DAYS - 1), last)
}

/// Every account's 30-day spend as of the last recompute.
#[derive(Default)]
pub struct TierBook {
    spend: RwLock<HashMap<u64, Nano>>,
    /// Unix seconds the last recompute was "as of" (0 = never).
    computed_at: AtomicU64,
}

impl TierBook {
    pub fn new() -> TierBook {
        TierBook::default()
    }

    /// Replaces all accounts' spend with a fresh computation as of `at`.
    pub fn replace(&self, spend: HashMap<u64, Nano>, at: u64) {
        *self.spend.write().unwrap_or_else(|p| p.into_inner()) = spend;
        self.computed_at.store(at, Ordering::Release);
    }

    /// An account's billed spend over the window of the last recompute (0 if none).
    pub fn spend_30d(&self, account_id: u64) -> Nano {
        let map = self.spend.read().unwrap_or_else(|p| p.into_inner());
        map.get(&account_id).copied().unwrap_or(0)
    }

    pub fn computed_at(&self) -> u64 {
        self.computed_at.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::calendar::SECS_PER_DAY;

    const USD: Nano = NANO_PER_USD;

    #[test]
    fn default_ladder_thresholds() {
        let l = default_ladder();
        let bps = |usd_nano: Nano| tier_for(&l, usd_nano).map(|t| t.markup_bps);
        assert_eq!(bps(0), Some(4_000));
        assert_eq!(bps(50 * USD - 1), Some(4_000));
        assert_eq!(bps(50 * USD), Some(3_000));
        assert_eq!(bps(199 * USD), Some(3_000));
        assert_eq!(bps(200 * USD), Some(2_200));
        assert_eq!(bps(1_000 * USD), Some(1_500));
        assert_eq!(bps(5_000 * USD), Some(1_000));
        assert_eq!(bps(1_000_000 * USD), Some(1_000));
        assert_eq!(next_tier(&l, 60 * USD).map(|t| t.min_spend), Some(200 * USD));
        assert_eq!(next_tier(&l, 5_000 * USD), None);
        // A ladder whose first rung is above zero leaves small spenders to the default.
        assert_eq!(tier_for(&l[1..], 10 * USD), None);
    }

    #[test]
    fn window_is_thirty_days_including_today() {
        let now = 20_000 * SECS_PER_DAY + 123;
        assert_eq!(window(now), (19_971, 20_000));
        assert_eq!(window(5), (0, 0));
    }

    #[test]
    fn book_replaces_whole() {
        let book = TierBook::new();
        assert_eq!((book.spend_30d(1), book.computed_at()), (0, 0));
        book.replace(HashMap::from([(1, 5), (2, 7)]), 99);
        assert_eq!((book.spend_30d(1), book.spend_30d(2), book.computed_at()), (5, 7, 99));
        book.replace(HashMap::from([(2, 1)]), 100);
        assert_eq!((book.spend_30d(1), book.spend_30d(2)), (0, 1));
    }
}
