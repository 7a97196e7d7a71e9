//! The per-request admission path of an inference request: key lookup (sha256 of the
//! presented secret + key ring), rate-limit check, spend-cap hold and balance reservation,
//! then their release — what every request pays before the upstream is called.
//!
//! Run: `cargo bench --bench admission -- --quick`. Target: ≤ 2 µs per request.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use tollgate::billing::keys::{generate_secret, hash_hex, hash_secret, redact, KeyRing};
use tollgate::billing::ledger::Ledger;
use tollgate::limits::{KeyRateLimiter, SpendCaps};
use tollgate::store::records::KeyRecord;
use tollgate::store::{IdCounters, LoadedState, Store};

fn key_record(id: u64, secret: &str) -> KeyRecord {
    KeyRecord {
        id,
        account_id: 1,
        name: "bench".into(),
        secret_hash: hash_hex(&hash_secret(secret)),
        redacted: redact(secret),
        created_at: 0,
        revoked: false,
        rate_limit_rpm: Some(u32::MAX),
        daily_cap_nano: Some(i64::MAX / 4),
        monthly_cap_nano: Some(i64::MAX / 4),
        tokens_per_minute: None,
        allowed_models: None,
        expires_at: None,
        platform: None,
        revoked_at: None,
    }
}

fn admission(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tollgate-bench-admission-{}", std::process::id()));
    let store = Store::open(&dir).expect("open a scratch store");
    let mut state = LoadedState::default();
    state.balances.insert(1, i64::MAX / 4);
    let writer = Arc::new(store.start_writer());
    let ledger = Ledger::new(&state, writer, Arc::new(IdCounters::from_state(&state)));

    // A ring of 10,000 keys, as a busy gateway would hold.
    let secrets: Vec<String> = (0..10_000).map(|_| generate_secret("sk-tg-")).collect();
    let records: Vec<KeyRecord> = secrets.iter().enumerate().map(|(i, s)| key_record(i as u64 + 1, s)).collect();
    let ring = KeyRing::from_records(&records);
    let rate = KeyRateLimiter::new();
    let caps = SpendCaps::new();
    let presented = format!("Bearer {}", secrets[4242]);

    c.bench_function("admission: key lookup + rate limit + cap hold + reservation", |b| {
        b.iter(|| {
            let token = black_box(presented.as_str()).strip_prefix("Bearer ").unwrap_or("");
            let key = ring.lookup(token).expect("known key");
            let d = rate.check(key.id, key.rate_limit_rpm.unwrap_or(u32::MAX), Instant::now());
            let hold = caps.reserve(&key, 1_000, 1_790_000_000).expect("under the cap");
            let reservation = ledger.reserve(key.account_id, 1_000, 0).expect("funded");
            black_box((d, &hold, &reservation));
            drop((hold, reservation)); // released, as a refused or failed request would be
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, admission);
criterion_main!(benches);
