//! Everything shared by the request path: the live config, the store and its writer, the
//! in-memory balances and keys, and the access log. Built once at startup.

use crate::api::password::Passwords;
use crate::billing::byok::ByokVault;
use crate::billing::keys::KeyRing;
use crate::billing::ledger::Ledger;
use crate::billing::money::Nano;
use crate::billing::tiers::{self, TierBook};
use crate::config::{Config, ConfigHandle};
use crate::limits::login::LoginLimiter;
use crate::limits::{calendar, CapExceeded, KeyRateLimiter, SpendCaps, SpendHold, TokenRateLimiter};
use crate::proxy::access_log::AccessLog;
use crate::store::records::AccountRecord;
use crate::store::writer::{StoreWriter, WriteOp};
use crate::store::{IdCounters, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often keys' last-used times are flushed to the store.
const KEY_FLUSH_INTERVAL: Duration = Duration::from_secs(15);

pub struct App {
    pub config: Arc<ConfigHandle>,
    pub store: Store,
    pub writer: Arc<StoreWriter>,
    pub ledger: Ledger,
    pub keys: KeyRing,
    pub ids: Arc<IdCounters>,
    /// Account records by id (emails, markup, suspension); small and read-mostly.
    pub accounts: RwLock<crate::FastMap<u64, AccountRecord>>,
    pub access_log: AccessLog,
    /// Per-key requests per minute.
    pub rate: KeyRateLimiter,
    /// Per-key daily and monthly spend, settled plus held by requests in flight; and every
    /// account's monthly spend, for account caps.
    pub caps: SpendCaps,
    /// Per-key tokens per minute.
    pub tpm: TokenRateLimiter,
    /// Every account's 30-day spend, for markup tiers.
    pub tiers: TierBook,
    /// Accounts' own provider keys, decrypted.
    pub byok: ByokVault,
    /// argon2id hashing off the worker threads.
    pub passwords: Passwords,
    /// Login and registration attempts per address and email.
    pub login_limits: LoginLimiter,
    /// Serialises read-modify-write changes of account and key records (admin and
    /// self-service), each held across its durable write: two concurrent changes of one
    /// record can neither lose one another nor un-revoke a key. Rare, so one lock is enough.
    pub mutations: tokio::sync::Mutex<()>,
    /// Lower-cased email → account id.
    emails: RwLock<HashMap<String, u64>>,
    ready: AtomicBool,
    /// Set once this process handed the store to a new one (graceful upgrade).
    handed_off: AtomicBool,
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
        for entry in keys.entries() {
            if let Some(&at) = state.key_last_used.get(&entry.id) {
                entry.touch(at);
                entry.flushed_last_used.store(at, Ordering::Relaxed);
            }
        }
        let accounts: crate::FastMap<u64, AccountRecord> = state.accounts.iter().map(|a| (a.id, a.clone())).collect();
        let emails = accounts.values().map(|a| (a.email.to_ascii_lowercase(), a.id)).collect();
        // Spend caps count this UTC month's charges (the daily cap is a subset of it), read
        // from the usage rollups (a few rows per account and day, not every generation).
        let now = crate::store::now_secs();
        let caps = SpendCaps::new();
        let charges = store.costs_since_day(accounts.keys().copied(), calendar::month_start_day(now))?;
        caps.seed(charges.iter().map(|&(_, key, at, cost)| (key, cost, at)), now);
        caps.seed_accounts(charges.iter().map(|&(account, _, at, cost)| (account, cost, at)), now);
        let tiers = TierBook::new();
        let (first, last) = tiers::window(now);
        tiers.replace(store.cost_by_account(accounts.keys().copied(), first, last)?, now);
        let byok = ByokVault::load(&state.byok, cfg.server.byok_key.as_ref());
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
            tpm: TokenRateLimiter::new(),
            tiers,
            byok,
            passwords: Passwords::new(),
            login_limits: LoginLimiter::new(),
            mutations: tokio::sync::Mutex::new(()),
            emails: RwLock::new(emails),
            ready: AtomicBool::new(false),
            handed_off: AtomicBool::new(false),
        })
    }

    /// Graceful upgrade, old process: the writer commits what is queued and switches to the
    /// handoff journal, and the store is closed so the new process can open it. Requests still
    /// in flight settle into the journal; API routes answer 503 `upgrading` from now on.
    /// Blocks for up to one commit. Returns the journal's path.
    pub fn hand_off(self: &Arc<Self>) -> Result<std::path::PathBuf, StoreError> {
        if self.handed_off.swap(true, Ordering::AcqRel) {
            return Err(StoreError("already handed off".into()));
        }
        let dir = self.config.pin().server.data_dir.clone();
        let app = Arc::downgrade(self);
        let holds = Box::new(move || app.upgrade().map(|a| a.ledger.holds()).unwrap_or_default());
        let journal = crate::store::handoff::Journal::create(&dir, holds)?;
        let path = journal.path().to_path_buf();
        self.writer.hand_off(journal).map_err(StoreError)?;
        self.store.close();
        Ok(path)
    }

    /// Whether [`hand_off`](Self::hand_off) ran: the store belongs to another process.
    pub fn handed_off(&self) -> bool {
        self.handed_off.load(Ordering::Acquire)
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
        let id = *self.emails.read().unwrap_or_else(|p| p.into_inner()).get(&email.trim().to_ascii_lowercase())?;
        self.account(id)
    }

    pub fn put_account(&self, record: AccountRecord) {
        let mut accounts = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        let mut emails = self.emails.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = accounts.get(&record.id) {
            emails.remove(&old.email.to_ascii_lowercase());
        }
        emails.insert(record.email.to_ascii_lowercase(), record.id);
        accounts.insert(record.id, record);
    }

    // ---- Called by the proxy on the request path: each is a lock-free or read-locked lookup.

    /// Whether the account is suspended (its keys are refused with 401). Unknown accounts
    /// read as not suspended; they cannot have keys.
    pub fn account_suspended(&self, account_id: u64) -> bool {
        let accounts = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        accounts.get(&account_id).is_some_and(|a| a.suspended)
    }

    /// The markup the account pays now, in basis points: its operator-set override, else the
    /// tier of its 30-day spend in the live config's ladder, else
    /// `billing.default_markup_percent`.
    pub fn markup_bps(&self, account_id: u64) -> u32 {
        self.markup_bps_in(&self.config.pin(), account_id)
    }

    /// [`markup_bps`](Self::markup_bps) against a given (the request's pinned) config.
    pub fn markup_bps_in(&self, config: &Config, account_id: u64) -> u32 {
        self.markup(config, account_id).0
    }

    /// The markup in basis points and where it comes from: "override", "tier" or "default".
    pub fn markup(&self, config: &Config, account_id: u64) -> (u32, &'static str) {
        let override_bps = {
            let accounts = self.accounts.read().unwrap_or_else(|p| p.into_inner());
            accounts.get(&account_id).and_then(|a| a.markup_override_bps)
        };
        if let Some(bps) = override_bps {
            return (bps, "override");
        }
        match tiers::tier_for(&config.billing.tiers, self.tiers.spend_30d(account_id)) {
            Some(t) => (t.markup_bps, "tier"),
            None => (config.billing.default_markup_bps, "default"),
        }
    }

    /// Holds `amount` (the request's worst case, nano-USD) against the account's monthly cap,
    /// or refuses with what to put in a 402 `spend_cap_exceeded`. Settle the hold with
    /// `app.caps.settle(hold, cost, now_secs)` or drop it to release (as for a key's hold).
    /// Every account is counted, capped or not, so a cap set later applies at once.
    pub fn reserve_account(&self, account_id: u64, amount: Nano, now_secs: u64) -> Result<SpendHold, CapExceeded> {
        let cap = {
            let accounts = self.accounts.read().unwrap_or_else(|p| p.into_inner());
            accounts.get(&account_id).and_then(|a| a.monthly_cap_nano)
        };
        self.caps.reserve_account(account_id, cap, amount, now_secs)
    }

    /// The account's own key for `provider` (a `[providers.NAME]` name), decrypted; None when
    /// it has none (or BYOK is disabled). Never log it.
    pub fn byok_key(&self, account_id: u64, provider: &str) -> Option<String> {
        self.byok.get(account_id, provider)
    }

    // ---- Background work (started from the server's housekeeping service).

    /// Starts the periodic work on the current tokio runtime: flushing keys' last-used times
    /// every 15 s and recomputing markup tiers every `billing.tier_recompute_secs`.
    pub fn spawn_background(self: &Arc<Self>) {
        let app = self.clone();
        tokio::spawn(async move {
            app.passwords.warm().await;
            let mut last_tiers = std::time::Instant::now();
            let mut tick = tokio::time::interval(KEY_FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                app.flush_key_usage();
                let every = Duration::from_secs(app.config.pin().billing.tier_recompute_secs);
                if last_tiers.elapsed() >= every {
                    last_tiers = std::time::Instant::now();
                    match app.recompute_tiers(crate::store::now_secs()).await {
                        Ok(n) => log::info!("tiers: recomputed for {n} accounts"),
                        Err(e) => log::error!("tiers: recompute failed: {e}"),
                    }
                }
            }
        });
    }

    /// Writes the last-used time of every key used since the previous flush, in one op
    /// (nothing when no key was used). Never waits.
    pub fn flush_key_usage(&self) {
        let mut changed = Vec::new();
        for entry in self.keys.entries() {
            let at = entry.last_used_secs();
            if at > entry.flushed_last_used.swap(at, Ordering::Relaxed) {
                changed.push((entry.id, at));
            }
        }
        if !changed.is_empty() {
            self.writer.submit(WriteOp::TouchKeys(changed));
        }
    }

    /// Recomputes every account's 30-day spend as of `now_secs` from the usage rollups (one
    /// range read per account, on the blocking pool) and swaps it in. Returns the number of
    /// accounts.
    pub async fn recompute_tiers(&self, now_secs: u64) -> Result<usize, StoreError> {
        let ids: Vec<u64> = self.accounts.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        let (first, last) = tiers::window(now_secs);
        let store = self.store.clone();
        let spend = tokio::task::spawn_blocking(move || store.cost_by_account(ids, first, last))
            .await
            .map_err(|e| StoreError(format!("tier recompute task: {e}")))??;
        let n = spend.len();
        self.tiers.replace(spend, now_secs);
        Ok(n)
    }
}
