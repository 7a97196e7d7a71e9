//! Bring-your-own-key: provider keys that accounts register for themselves.
//!
//! At rest each key is AES-256-GCM encrypted under the master key from the environment
//! variable named by `server.byok_key_env` (32 bytes, base64 or hex), with a fresh random
//! 96-bit nonce per encryption and `tollgate-byok:<account>:<provider>` as associated data, so
//! a ciphertext copied to another account's or provider's row does not decrypt. In memory the
//! keys are kept decrypted (the request path must not pay for AES), and never leave this
//! module except through [`ByokVault::get`] for the upstream request: no `Debug`, no listing.
//!
//! Without a master key BYOK is disabled: nothing is decrypted and registration is refused.
//! Changing the master key makes stored keys undecryptable (logged at startup); rotation is
//! not supported.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD, STANDARD_NO_PAD};
use base64::Engine;
use rand::TryRngCore;

use crate::store::ByokRecord;

/// The 256-bit master key. Its `Debug` never shows the bytes (the config derives `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct ByokKey([u8; 32]);

impl fmt::Debug for ByokKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByokKey(<redacted>)")
    }
}

impl ByokKey {
    /// 64 hex digits, or base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<ByokKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "not hex".to_string())?
        } else {
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(|| "must be 32 bytes as base64 or 64 hex digits".to_string())?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("must be 32 bytes, got {}", b.len()))?;
        Ok(ByokKey(key))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }
}

fn aad(account_id: u64, provider: &str) -> Vec<u8> {
    format!("tollgate-byok:{account_id}:{provider}").into_bytes()
}

/// Encrypts `api_key` for storage.
pub fn seal(key: &ByokKey, account_id: u64, provider: &str, api_key: &str, now: u64) -> Result<ByokRecord, String> {
    let mut nonce = [0u8; 12];
    if rand::rngs::OsRng.try_fill_bytes(&mut nonce).is_err() {
        rand::Rng::fill(&mut rand::rng(), &mut nonce);
    }
    let aad = aad(account_id, provider);
    let ciphertext = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: api_key.as_bytes(), aad: &aad })
        .map_err(|_| "encryption failed".to_string())?;
    Ok(ByokRecord {
        account_id,
        provider: provider.to_string(),
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ciphertext),
        created_at: now,
    })
}

/// Decrypts a stored record; an error says why without any key material.
pub fn open(key: &ByokKey, record: &ByokRecord) -> Result<String, String> {
    let nonce = STANDARD.decode(&record.nonce).map_err(|_| "bad nonce encoding")?;
    if nonce.len() != 12 {
        return Err("bad nonce length".into());
    }
    let ciphertext = STANDARD.decode(&record.ciphertext).map_err(|_| "bad ciphertext encoding")?;
    let aad = aad(record.account_id, &record.provider);
    let plain = key
        .cipher()
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: &aad })
        .map_err(|_| "does not decrypt with the configured master key".to_string())?;
    String::from_utf8(plain).map_err(|_| "not UTF-8".to_string())
}

/// Decrypted keys by account, then provider (an account has a handful, so a small vector
/// avoids allocating a lookup key on the request path).
#[derive(Default)]
pub struct ByokVault {
    keys: RwLock<HashMap<u64, Vec<(String, String)>>>,
}

impl ByokVault {
    /// The vault for the stored records, decrypted with `key` (None: BYOK disabled, nothing
    /// loaded). Records that do not decrypt are skipped with a log line naming only their
    /// account and provider.
    pub fn load(records: &[ByokRecord], key: Option<&ByokKey>) -> ByokVault {
        let vault = ByokVault::default();
        match key {
            None if !records.is_empty() => log::warn!(
                "byok: {} stored provider key(s) not loaded: no master key (server.byok_key_env)",
                records.len()
            ),
            None => {}
            Some(key) => {
                for r in records {
                    match open(key, r) {
                        Ok(plain) => vault.put(r.account_id, &r.provider, plain),
                        Err(e) => log::error!("byok: key of account {} for {}: {e}; skipped", r.account_id, r.provider),
                    }
                }
            }
        }
        vault
    }

    /// The decrypted key of `account_id` for `provider`.
    pub fn get(&self, account_id: u64, provider: &str) -> Option<String> {
        let map = self.keys.read().unwrap_or_else(|p| p.into_inner());
        map.get(&account_id)?.iter().find(|(p, _)| p == provider).map(|(_, k)| k.clone())
    }

    pub fn put(&self, account_id: u64, provider: &str, api_key: String) {
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(account_id).or_default();
        list.retain(|(p, _)| p != provider);
        list.push((provider.to_string(), api_key));
    }

    /// Returns whether there was a key.
    pub fn remove(&self, account_id: u64, provider: &str) -> bool {
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(&account_id) else { return false };
        let before = list.len();
        list.retain(|(p, _)| p != provider);
        before != list.len()
    }

    /// Provider names an account has keys for, sorted. Never the keys.
    pub fn providers(&self, account_id: u64) -> Vec<String> {
        let map = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = map.get(&account_id).map(|l| l.iter().map(|(p, _)| p.clone()).collect()).unwrap_or_default();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ByokKey {
        ByokKey([byte; 32])
    }

    #[test]
    fn master_key_forms() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(ByokKey::parse(&hex).unwrap().0[31], 0xff);
        let b64 = STANDARD.encode([7u8; 32]);
        assert_eq!(ByokKey::parse(&b64).unwrap(), key(7));
        assert_eq!(ByokKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap(), key(7));
        assert!(ByokKey::parse("short").is_err());
        assert!(ByokKey::parse(&STANDARD.encode([1u8; 16])).is_err());
        assert_eq!(format!("{:?}", key(9)), "ByokKey(<redacted>)");
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = key(3);
        let r = seal(&k, 7, "openai", "sk-provider-secret", 1).unwrap();
        assert!(!r.ciphertext.contains("secret"));
        assert_eq!(open(&k, &r).unwrap(), "sk-provider-secret");
        // Another master key, account or provider: refused.
        assert!(open(&key(4), &r).is_err());
        let mut moved = r.clone();
        moved.account_id = 8;
        assert!(open(&k, &moved).is_err());
        moved = r.clone();
        moved.provider = "anthropic".into();
        assert!(open(&k, &moved).is_err());
        // Nonces are fresh.
        assert_ne!(seal(&k, 7, "openai", "x", 1).unwrap().nonce, seal(&k, 7, "openai", "x", 1).unwrap().nonce);
    }

    #[test]
    fn vault_lookup() {
        let k = key(5);
        let records = vec![seal(&k, 1, "openai", "a", 0).unwrap(), seal(&key(6), 1, "groq", "b", 0).unwrap()];
        let v = ByokVault::load(&records, Some(&k));
        assert_eq!(v.get(1, "openai").as_deref(), Some("a"));
        assert_eq!(v.get(1, "groq"), None, "undecryptable records are skipped");
        v.put(1, "openai", "c".into());
        v.put(1, "mistral", "d".into());
        assert_eq!(v.get(1, "openai").as_deref(), Some("c"));
        assert_eq!(v.providers(1), vec!["mistral", "openai"]);
        assert!(v.remove(1, "openai"));
        assert!(!v.remove(1, "openai"));
        assert_eq!(v.get(2, "openai"), None);
        assert!(ByokVault::load(&records, None).providers(1).is_empty());
    }
}
