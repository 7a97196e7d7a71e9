//! Everything shared by the request path: the live config, the store and its writer, the
//! in-memory balances and keys, and the access log. Built once at startup.

use crate::billing::keys::KeyRing;
use crate::billing::ledger::Ledger;
use crate::config::ConfigHandle;
use crate::limits::{calendar, KeyRateLimiter, SpendCaps};
use crate::proxy::access_log::AccessLog;
use crate::store::records::AccountRecord;
use crate::store::writer::StoreWriter;
use crate::store::{IdCounters, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub struct App {
    pub config: Arc<ConfigHandle>,
    pub store: Store,
    pub writer: Arc<StoreWriter>,
    pub ledger: Ledger,
    pub keys: KeyRing,
    pub ids: Arc<IdCounters>,
    /// Account records by id (emails, markup, suspension); small and read-mostly.
    pub accounts: RwLock<HashMap<u64, AccountRecord>>,
    pub access_log: AccessLog,
    /// Per-key requests per minute.
    pub rate: KeyRateLimiter,
    /// Per-key daily and monthly spend, settled plus held by requests in flight.
    pub caps: SpendCaps,
    ready: AtomicBool,
}

impl App {
    /// Open the store under the config's `data_dir`, load balances and keys into memory, and
    /// start the writer thread.
    pub fn open(config: Arc<ConfigHandle>) -> Result<App, StoreError> {
        let cfg = config.pin();
        let store = Store::open(&cfg.server.data_dir)?;
        let state = store.load_state()?;
        let ids = Arc::new(IdCounters::from_state(&state));
        let writer = Arc::new(store.start_writer());
        let ledger = Ledger::new(&state, writer.clone(), ids.clone());
        let keys = KeyRing::from_records(&state.keys);
        let accounts = state.accounts.iter().map(|a| (a.id, a.clone())).collect();
        // Spend caps count this UTC month's charges (the daily cap is a subset of it).
        let now = crate::store::now_secs();
        let month_start = month_start_secs(now);
        let caps = SpendCaps::new();
        caps.seed(store.generation_costs_since(month_start)?.into_iter(), now);
        Ok(App {
            config,
            store,
            writer,
            ledger,
            keys,
            ids,
            accounts: RwLock::new(accounts),
            access_log: AccessLog::start(cfg.server.access_log),
            rate: KeyRateLimiter::new(),
            caps,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn account(&self, id: u64) -> Option<AccountRecord> {
        self.accounts.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    pub fn account_by_email(&self, email: &str) -> Option<AccountRecord> {
        let accounts = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        accounts.values().find(|a| a.email.eq_ignore_ascii_case(email)).cloned()
    }

    pub fn put_account(&self, record: AccountRecord) {
        self.accounts.write().unwrap_or_else(|p| p.into_inner()).insert(record.id, record);
    }
}

/// Unix seconds of the first instant of the UTC month containing `now`.
fn month_start_secs(now: u64) -> u64 {
    let date = calendar::civil_from_days(calendar::day_index(now) as i64);
    let days = calendar::days_from_civil(date.year, date.month, 1);
    days.max(0) as u64 * calendar::SECS_PER_DAY
}
