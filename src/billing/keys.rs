//! The in-memory API-key table, consulted on every request.
//!
//! Secrets are 256-bit random, so the table is simply keyed by their sha256: a lookup is one
//! hash of the presented secret plus one `HashMap` probe on an `ArcSwap` snapshot (no lock).
//! Timing differences of the probe reveal at most bits of a hash, never of a secret.
//! Changes (insert, revoke) are rare: they copy the maps and swap the snapshot in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use super::money::Nano;
use crate::store::KeyRecord;

/// sha256 of a secret.
pub type SecretHash = [u8; 32];

/// A live key. Shared with in-flight requests via `Arc`; `revoked` is flipped in place so a
/// request holding the entry can see it too.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: u64,
    pub account_id: u64,
    pub name: String,
    pub revoked: AtomicBool,
    pub rate_limit_rpm: Option<u32>,
    pub daily_cap_nano: Option<Nano>,
    pub monthly_cap_nano: Option<Nano>,
    /// Tokens (prompt + completion) per minute, checked with `limits::TokenRateLimiter`.
    pub tokens_per_minute: Option<u32>,
    /// Model slug globs (`*` matches any run of characters); None = every model.
    pub allowed_models: Option<Vec<String>>,
    /// Unix seconds from which the key is refused.
    pub expires_at: Option<u64>,
    /// `intl` or `cn`: the only catalog this key may use.
    pub platform: Option<String>,
    /// Unix seconds of the last request, kept in memory and flushed to the store lazily
    /// (`App::flush_key_usage`), never written per request.
    pub last_used: AtomicU64,
    /// The `last_used` value the store has, so a flush writes only keys that changed.
    pub flushed_last_used: AtomicU64,
}

impl KeyEntry {
    /// The entry and its hash for a stored record; None if `secret_hash` is not 64 hex digits.
    pub fn from_record(record: &KeyRecord) -> Option<(SecretHash, KeyEntry)> {
        let hash = parse_hash_hex(&record.secret_hash)?;
        let entry = KeyEntry {
            id: record.id,
            account_id: record.account_id,
            name: record.name.clone(),
            revoked: AtomicBool::new(record.revoked),
            rate_limit_rpm: record.rate_limit_rpm,
            daily_cap_nano: record.daily_cap_nano,
            monthly_cap_nano: record.monthly_cap_nano,
            tokens_per_minute: record.tokens_per_minute,
            allowed_models: record.allowed_models.clone(),
            expires_at: record.expires_at,
            platform: record.platform.clone(),
            last_used: AtomicU64::new(0),
            flushed_last_used: AtomicU64::new(0),
        };
        Some((hash, entry))
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Records a request at `now_secs`. Called on every request, so it writes the shared
    /// cache line only when the second changed (one relaxed load otherwise).
    #[inline]
    pub fn touch(&self, now_secs: u64) {
        if self.last_used.load(Ordering::Relaxed) < now_secs {
            self.last_used.fetch_max(now_secs, Ordering::Relaxed);
        }
    }

    /// Unix seconds of the last request seen (0 = never).
    pub fn last_used_secs(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Whether the key has expired at `now_secs`.
    pub fn is_expired(&self, now_secs: u64) -> bool {
        self.expires_at.is_some_and(|at| now_secs >= at)
    }

    /// Whether this key may use `slug`, a model listed in the `platforms` catalogs: its
    /// `allowed_models` globs and its `platform` both have to agree.
    pub fn permits_model(&self, slug: &str, platforms: &[String]) -> bool {
        let platform_ok = self.platform.as_ref().is_none_or(|p| platforms.iter().any(|m| m == p));
        let glob_ok = self
            .allowed_models
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| glob_match(g, slug)));
        platform_ok && glob_ok
    }
}

/// `*` matches any run of characters (slashes included), everything else itself. Iterative
/// with one backtrack point, so a pattern like `*a*a*a*b` stays linear-ish, never exponential.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[derive(Default, Clone)]
struct Maps {
    by_hash: crate::FastMap<SecretHash, Arc<KeyEntry>>,
    by_id: crate::FastMap<u64, SecretHash>,
}

/// Secret hash → live key. Revoked keys are not kept.
pub struct KeyRing {
    maps: ArcSwap<Maps>,
    /// Serialises the copy-and-swap of writers so two changes cannot overwrite each other.
    write: Mutex<()>,
}

impl Default for KeyRing {
    fn default() -> Self {
        KeyRing::new()
    }
}

impl KeyRing {
    pub fn new() -> KeyRing {
        KeyRing {
            maps: ArcSwap::from_pointee(Maps::default()),
            write: Mutex::new(()),
        }
    }

    /// The ring for the keys loaded at startup; revoked and malformed records are skipped.
    pub fn from_records(records: &[KeyRecord]) -> KeyRing {
        let mut maps = Maps::default();
        for record in records.iter().filter(|r| !r.revoked) {
            match KeyEntry::from_record(record) {
                Some((hash, entry)) => {
                    maps.by_id.insert(entry.id, hash);
                    maps.by_hash.insert(hash, Arc::new(entry));
                }
                None => log::error!(
                    "keys: key {} has a malformed secret_hash; skipped",
                    record.id
                ),
            }
        }
        KeyRing {
            maps: ArcSwap::from_pointee(maps),
            write: Mutex::new(()),
        }
    }

    /// The live key for a presented secret (the bearer token as sent), or None.
    pub fn lookup(&self, presented: &str) -> Option<Arc<KeyEntry>> {
        self.lookup_hash(&hash_secret(presented))
    }

    pub fn lookup_hash(&self, hash: &SecretHash) -> Option<Arc<KeyEntry>> {
        let entry = self.maps.load().by_hash.get(hash).cloned()?;
        // Checked as well as removed: revoke flips the flag before swapping the map.
        (!entry.is_revoked()).then_some(entry)
    }

    /// The live key with this id.
    pub fn get(&self, id: u64) -> Option<Arc<KeyEntry>> {
        let maps = self.maps.load();
        let hash = maps.by_id.get(&id)?;
        maps.by_hash.get(hash).cloned()
    }

    /// Adds a key, or replaces the key with the same id (e.g. new limits). A revoked entry is
    /// not added (and removes the id). Returns the shared entry.
    pub fn insert(&self, hash: SecretHash, entry: KeyEntry) -> Arc<KeyEntry> {
        let entry = Arc::new(entry);
        self.update(|maps| {
            if let Some(old_hash) = maps.by_id.remove(&entry.id) {
                if let Some(old) = maps.by_hash.remove(&old_hash) {
                    // A replacement (new limits) keeps the usage seen so far.
                    entry.touch(old.last_used_secs());
                    entry
                        .flushed_last_used
                        .fetch_max(old.flushed_last_used.load(Ordering::Relaxed), Ordering::Relaxed);
                    // Requests still holding the old entry must not keep a replaced key alive
                    // if the replacement is a revocation.
                    if entry.is_revoked() {
                        old.revoked.store(true, Ordering::Release);
                    }
                }
            }
            if !entry.is_revoked() {
                maps.by_id.insert(entry.id, hash);
                maps.by_hash.insert(hash, entry.clone());
            }
        });
        entry
    }

    /// [`insert`](Self::insert) from a stored record.
    pub fn insert_record(&self, record: &KeyRecord) -> Result<Arc<KeyEntry>, String> {
        let (hash, entry) = KeyEntry::from_record(record)
            .ok_or_else(|| format!("key {} has a malformed secret_hash", record.id))?;
        Ok(self.insert(hash, entry))
    }

    /// Revokes key `id`: the very next lookup misses, and requests holding the entry see the
    /// flag. Returns false if no live key had that id.
    pub fn revoke(&self, id: u64) -> bool {
        let mut found = false;
        self.update(|maps| {
            if let Some(hash) = maps.by_id.remove(&id) {
                if let Some(entry) = maps.by_hash.remove(&hash) {
                    entry.revoked.store(true, Ordering::Release);
                    found = true;
                }
            }
        });
        found
    }

    /// Every live key (a snapshot), for the periodic last-used flush.
    pub fn entries(&self) -> Vec<Arc<KeyEntry>> {
        self.maps.load().by_hash.values().cloned().collect()
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.maps.load().by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, change: impl FnOnce(&mut Maps)) {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut maps = Maps::clone(&self.maps.load());
        change(&mut maps);
        self.maps.store(Arc::new(maps));
    }
}

/// A new secret: `prefix` + 43 base64url characters encoding 32 bytes from the OS CSPRNG.
pub fn generate_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    if let Err(e) = rand::rngs::OsRng.try_fill_bytes(&mut bytes) {
        // Practically unreachable; the thread RNG is a CSPRNG seeded from the OS as well.
        log::warn!("keys: OS RNG failed ({e}); using the thread CSPRNG");
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
    }
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// sha256 of the full secret, prefix included.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Lower-case hex, as stored in `KeyRecord::secret_hash`.
pub fn hash_hex(hash: &SecretHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`hash_hex`] (either case); None unless exactly 64 hex digits.
pub fn parse_hash_hex(text: &str) -> Option<SecretHash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// What may be shown of a secret: its first 9 characters, "…", and its last 3. With the default
/// "sk-tg-" prefix that is "sk-tg-abc…xyz": 6 of 256 random bits, enough to tell keys apart.
/// (A fixed length because a base64url secret may itself contain '-' or '_', so the prefix
/// cannot be found reliably.) Strings under 16 characters, which are not real secrets, show only
/// "…" and, from 8 characters on, their last character.
pub fn redact(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    if n < 16 {
        let tail: String = chars[n - usize::from(n >= 8)..].iter().collect();
        return format!("…{tail}");
    }
    let head: String = chars[..9].iter().collect();
    let tail: String = chars[n - 3..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, secret: &str) -> KeyRecord {
        KeyRecord {
            id,
            account_id: 7,
            name: format!("key {id}"),
            secret_hash: hash_hex(&hash_secret(secret)),
            redacted: redact(secret),
            created_at: 0,
            revoked: false,
            rate_limit_rpm: Some(60),
            daily_cap_nano: None,
            monthly_cap_nano: None,
            tokens_per_minute: None,
            allowed_models: None,
            expires_at: None,
            platform: None,
            revoked_at: None,
        }
    }

    #[test]
    fn globs_match_slugs() {
        assert!(glob_match("openai/*", "openai/gpt-4o"));
        assert!(!glob_match("openai/*", "anthropic/claude"));
        assert!(glob_match("*", "anything/at-all"));
        assert!(glob_match("*/gpt-4o*", "openai/gpt-4o-mini"));
        assert!(glob_match("mock/echo-1", "mock/echo-1"));
        assert!(!glob_match("mock/echo-1", "mock/echo-10"));
        assert!(glob_match("*a*a*b", "aaaaaaaaaaaaab"));
        assert!(!glob_match("*a*a*b", &"a".repeat(5000)));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn permits_model_checks_globs_and_platform() {
        let mut r = record(1, "sk-tg-perm");
        r.allowed_models = Some(vec!["openai/*".into(), "mock/echo-1".into()]);
        r.platform = Some("cn".into());
        let (_, k) = KeyEntry::from_record(&r).unwrap();
        let both = ["intl".to_string(), "cn".to_string()];
        let intl = ["intl".to_string()];
        assert!(k.permits_model("openai/gpt-4o", &both));
        assert!(!k.permits_model("openai/gpt-4o", &intl), "not in the key's platform");
        assert!(!k.permits_model("anthropic/x", &both));
        assert!(k.permits_model("mock/echo-1", &both));
        r.allowed_models = None;
        r.platform = None;
        let (_, k) = KeyEntry::from_record(&r).unwrap();
        assert!(k.permits_model("anything", &intl));
    }

    #[test]
    fn touch_expiry_and_replacement_keep_last_used() {
        let s = generate_secret("sk-tg-");
        let mut r = record(4, &s);
        r.expires_at = Some(1_000);
        let ring = KeyRing::from_records(&[r.clone()]);
        let k = ring.lookup(&s).unwrap();
        assert!(!k.is_expired(999) && k.is_expired(1_000));
        k.touch(50);
        k.touch(40); // never backwards
        assert_eq!(k.last_used_secs(), 50);
        r.rate_limit_rpm = Some(1);
        let replaced = ring.insert_record(&r).unwrap();
        assert_eq!(replaced.last_used_secs(), 50);
        assert_eq!(ring.entries().len(), 1);
    }

    #[test]
    fn secrets_are_prefixed_random_base64url() {
        let a = generate_secret("sk-tg-");
        let b = generate_secret("sk-tg-");
        assert_ne!(a, b);
        assert_eq!(a.len(), "sk-tg-".len() + 43);
        assert!(a.starts_with("sk-tg-"));
        assert!(a["sk-tg-".len()..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = hash_secret("sk-tg-x");
        assert_eq!(parse_hash_hex(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash_hex(&hash_hex(&h).to_uppercase()), Some(h));
        assert_eq!(parse_hash_hex("zz"), None);
        assert_eq!(parse_hash_hex(&"g".repeat(64)), None);
        // sha256("") is well known.
        assert!(hash_hex(&hash_secret("")).starts_with("e3b0c442"));
    }

    #[test]
    fn redaction_keeps_prefix_and_tail_only() {
        let secret = "sk-tg-abcDEFghiJKLmnoPQRstuVWXyz0123456789_-ABCxyz";
        assert_eq!(redact(secret), "sk-tg-abc…xyz");
        assert_eq!(redact("tg_0123456789abcdefghijxyz"), "tg_012345…xyz");
        assert_eq!(redact("short"), "…");
        assert_eq!(redact("shortish"), "…h");
        assert_eq!(redact(""), "…");
        let r = redact(&generate_secret("sk-tg-"));
        assert_eq!(r.chars().count(), 13);
    }

    #[test]
    fn lookup_insert_revoke() {
        let s1 = generate_secret("sk-tg-");
        let s2 = generate_secret("sk-tg-");
        let mut revoked = record(3, "sk-tg-old");
        revoked.revoked = true;
        let ring = KeyRing::from_records(&[record(1, &s1), revoked]);
        assert_eq!(ring.len(), 1);
        assert!(
            ring.lookup("sk-tg-old").is_none(),
            "revoked records are not loaded"
        );

        let k1 = ring.lookup(&s1).expect("loaded key");
        assert_eq!((k1.id, k1.account_id, k1.rate_limit_rpm), (1, 7, Some(60)));
        assert!(ring.lookup(&s2).is_none());
        assert!(ring.lookup("").is_none());

        ring.insert_record(&record(2, &s2)).expect("valid record");
        assert_eq!(ring.lookup(&s2).map(|k| k.id), Some(2));

        // Replacing key 2 with new limits keeps it live under the same hash.
        let mut updated = record(2, &s2);
        updated.rate_limit_rpm = Some(5);
        ring.insert_record(&updated).expect("valid record");
        assert_eq!(ring.lookup(&s2).and_then(|k| k.rate_limit_rpm), Some(5));
        assert_eq!(ring.len(), 2);

        // Revocation is visible to the next lookup and to holders of the entry.
        assert!(ring.revoke(1));
        assert!(ring.lookup(&s1).is_none());
        assert!(k1.is_revoked());
        assert!(!ring.revoke(1));
        assert!(ring.get(1).is_none());

        // Storing a revoked record through insert also revokes.
        let held = ring.lookup(&s2).expect("live");
        let mut gone = record(2, &s2);
        gone.revoked = true;
        ring.insert_record(&gone).expect("valid record");
        assert!(ring.lookup(&s2).is_none());
        assert!(held.is_revoked());
        assert!(ring.is_empty());

        let mut bad = record(9, "x");
        bad.secret_hash = "nothex".into();
        assert!(ring.insert_record(&bad).is_err());
    }
}
