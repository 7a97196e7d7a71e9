//! The store writer's cost per proxied request: a batch of `WriteOp::Settle` (a charge in
//! LEDGER, a generation record in GENERATIONS and its GENERATION_BY_BODY index, the usage
//! rollup) applied in ONE fsync'd transaction by the writer's own commit code
//! (`Store::commit_batch`), as the writer thread does every ~10 ms.
//!
//! The store is pre-filled (STORE_BENCH_PREFILL records, default 100,000) and keeps growing
//! while measured: a gateway's tables are large, and leaf splits and dirty pages depend on it.
//! STORE_BENCH_BODY_IDS=gateway|random|mock|none chooses the body ids (see [`BodyIds`]): the
//! gateway's own (the default) need no GENERATION_BY_BODY row; with random ones, like a real
//! provider's (what clients saw until 2026-11-25), that index cost about two thirds of the
//! writer's CPU (a commit dirties a random leaf of it per request).
//! One criterion iteration is ONE request's op; ops are committed in batches of [`BATCH`]
//! (STORE_BENCH_BATCH).
//! `thread CPU` is the committing thread's CPU time, user + system (what the writer thread
//! costs the machine); wall time adds the fdatasync wait, which depends on the disk. Before
//! criterion runs, two fixed phases (the pre-fill, then 100,000 more settles) print their CPU
//! and wall time per op: the numbers to compare between builds.
//!
//! Run: `cargo bench --bench store_writer`.
//!
//! Measured on 2 shared cores, fixed run, µs of writer CPU per request, serde_json rows →
//! binary rows (`store::codec`): random body ids 17.7 → 14.9, mock ids 7.6 → 5.6, none
//! 6.0 → 4.1.

use criterion::{criterion_group, criterion_main, Criterion};
use rand::Rng;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tollgate::store::records::AttemptRecord;
use tollgate::store::tables::{decode, encode, encode_into};
use tollgate::store::{new_generation_id, now_millis, now_secs, GenerationRecord, LedgerEntry, LedgerKind, Store, WriteOp};

// The gateway's allocator (src/main.rs): the writer's allocations cost what they cost there.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Ops per transaction (STORE_BENCH_BATCH, default 200: what the writer's old 10 ms linger
/// collected at 20k requests/s; its 50 ms linger collects ~1,000).
static BATCH: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::env::var("STORE_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(200)
});
const ACCOUNTS: u64 = 50;

/// A scratch data dir, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes the ops of successive requests, as `proxy::settle` and `Ledger::settle` build them.
struct Requests {
    seq: u64,
    body_ids: BodyIds,
}

/// The upstream body ids the requests carry (STORE_BENCH_BODY_IDS). Each is a key of the
/// GENERATION_BY_BODY index, and where it lands in that table decides most of the cost.
#[derive(Clone, Copy, Debug)]
enum BodyIds {
    /// `gateway` (default): the gateway's own body ids since 2026-11-25,
    /// "chatcmpl-<generation id>" (`store::client_response_id`): no index row is written.
    Gateway,
    /// `random`: "chatcmpl-" and 29 random characters, like OpenAI's, as the gateway answered
    /// with until 2026-11-25 (and still indexes for a body id it did not make). Every insert
    /// lands in a random leaf of the index, so a commit dirties about one leaf per request.
    Random,
    /// `mock`: "chatcmpl-mock-<n>", like the in-process mock: nearly in key order.
    Mock,
    /// `none`: no body id, no index row (a provider response without an `id`).
    None,
}

impl Requests {
    fn next(&mut self) -> WriteOp {
        self.seq += 1;
        let mut rng = rand::rng();
        let id = new_generation_id();
        // The provider's own id, kept in the record as `upstream_id` whatever the body carried.
        let provider_id = || -> String {
            "chatcmpl-".chars().chain((0..29).map(|_| rand::rng().sample(rand::distr::Alphanumeric) as char)).collect()
        };
        let (body_id, upstream_id) = match self.body_ids {
            BodyIds::Gateway => (tollgate::store::client_response_id(&id, false), provider_id()),
            BodyIds::Random => {
                let p = provider_id();
                (p.clone(), p)
            }
            BodyIds::Mock => {
                let m = format!("chatcmpl-mock-{}", self.seq);
                (m.clone(), m)
            }
            BodyIds::None => (String::new(), String::new()),
        };
        let account_id = 1 + self.seq % ACCOUNTS;
        let cost = rng.random_range(1_000..2_000_000i64);
        let latency_ms = rng.random_range(200..3_000u64);
        let generation = GenerationRecord {
            id: id.clone(),
            body_id,
            upstream_id,
            account_id,
            key_id: account_id * 10 + 1,
            model: "openai/gpt-4o-mini".into(),
            provider: "openai".into(),
            tokens_prompt: rng.random_range(10..4_000),
            tokens_completion: rng.random_range(1..1_000),
            total_cost_nano: cost,
            latency_ms,
            status: 200,
            streamed: self.seq.is_multiple_of(2),
            usage_estimated: false,
            created_at: now_secs(),
            attempts: 1,
            error: None,
            attempt_log: vec![AttemptRecord {
                model: "openai/gpt-4o-mini".into(),
                provider: "openai".into(),
                upstream_model: "gpt-4o-mini-2024-07-18".into(),
                status: 200,
                latency_ms: latency_ms - 3,
                error: None,
            }],
        };
        let charge = LedgerEntry {
            seq: self.seq,
            account_id,
            amount_nano: -cost,
            kind: LedgerKind::Charge,
            generation_id: Some(id),
            note: None,
            at: now_millis(),
        };
        WriteOp::Settle { charge, generation }
    }

    fn batch(&mut self, n: u64) -> Vec<WriteOp> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// This thread's CPU time (user + system), which leaves out the time blocked in fdatasync.
fn thread_cpu() -> Duration {
    let (user, sys) = thread_rusage();
    user + sys
}

/// This thread's (user, system) CPU time so far.
fn thread_rusage() -> (Duration, Duration) {
    // SAFETY: getrusage only writes the struct it is given; all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    let d = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (d(ru.ru_utime), d(ru.ru_stime))
}

/// Wall time since the first call (a clock for `run`).
fn wall() -> Duration {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

/// Commits `iters` requests' ops in batches of [`BATCH`]; returns the time `clock` measured
/// around the commits only (building the ops is the request path's work, not the writer's).
fn run(store: &Store, requests: &mut Requests, iters: u64, clock: fn() -> Duration) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(*BATCH);
        let ops = requests.batch(n);
        let start = clock();
        store.commit_batch(black_box(&ops)).expect("commit");
        spent += clock() - start;
        left -= n;
    }
    spent
}

/// Commits `n` requests' ops and prints what they cost per op: a fixed amount of work, so
/// two builds can be compared exactly (criterion's runs grow the store by however many ops
/// fit in its time, which a faster build pays for with a larger store).
fn phase(label: &str, store: &Store, requests: &mut Requests, n: u64) {
    let (user0, sys0) = thread_rusage();
    let wall_spent = run(store, requests, n, wall);
    let (user1, sys1) = thread_rusage();
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let file = std::fs::metadata(store.path()).map(|m| m.len()).unwrap_or(0);
    println!(
        "{label}: {n} settles, per op: {:.2} µs CPU ({:.2} user + {:.2} system), {:.2} µs wall; \
         file now {:.1} MiB for {} requests",
        per_op(user1 - user0 + sys1 - sys0),
        per_op(user1 - user0),
        per_op(sys1 - sys0),
        per_op(wall_spent),
        file as f64 / (1 << 20) as f64,
        requests.seq
    );
}

fn store_writer(c: &mut Criterion) {
    let prefill: u64 = std::env::var("STORE_BENCH_PREFILL").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = TempDir(std::env::temp_dir().join(format!("tollgate-bench-store-writer-{}", std::process::id())));
    let store = Store::open(&dir.0).expect("open a scratch store");
    let body_ids = match std::env::var("STORE_BENCH_BODY_IDS").as_deref() {
        Ok("mock") => BodyIds::Mock,
        Ok("none") => BodyIds::None,
        Ok("random") => BodyIds::Random,
        Ok("gateway") | Err(_) => BodyIds::Gateway,
        Ok(other) => panic!("STORE_BENCH_BODY_IDS={other}: gateway, random, mock or none"),
    };
    println!("body ids: {body_ids:?}");
    let mut requests = Requests { seq: 0, body_ids };

    // What one request's rows weigh: as stored, and as the serde_json they were before.
    let sample = requests.batch(1000);
    requests.seq = 0;
    let size = |encode: &dyn Fn(&WriteOp) -> (usize, usize)| {
        let (l, g) = sample.iter().map(encode).fold((0, 0), |(l, g), (a, b)| (l + a, g + b));
        format!("ledger entry {} bytes, generation {} bytes", l / sample.len(), g / sample.len())
    };
    let settle = |op: &WriteOp| match op {
        WriteOp::Settle { charge, generation } => (charge.clone(), generation.clone()),
        _ => unreachable!("the sample is settles"),
    };
    println!(
        "encoded row size, average of {}: stored: {}; as JSON: {}",
        sample.len(),
        size(&|op| {
            let (l, g) = settle(op);
            (encode(&l).expect("encode").len(), encode(&g).expect("encode").len())
        }),
        size(&|op| {
            let (l, g) = settle(op);
            (serde_json::to_vec(&l).expect("json").len(), serde_json::to_vec(&g).expect("json").len())
        })
    );

    phase("pre-fill from empty", &store, &mut requests, prefill);
    phase("fixed run on the pre-filled store", &store, &mut requests, 100_000);

    let mut g = c.benchmark_group("store_writer");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.bench_function("settle, 200 per commit: thread CPU per op", |b| {
        b.iter_custom(|iters| run(&store, &mut requests, iters, thread_cpu))
    });
    let (charge, generation) = settle(&sample[0]);
    let mut buf = Vec::new();
    g.bench_function("encode one settle's ledger entry + generation (stored form)", |b| {
        b.iter(|| {
            encode_into(black_box(&charge), &mut buf).expect("encode");
            encode_into(black_box(&generation), &mut buf).expect("encode");
            black_box(buf.len());
        })
    });
    g.bench_function("encode one settle's ledger entry + generation (JSON)", |b| {
        b.iter(|| {
            let l = serde_json::to_vec(black_box(&charge)).expect("encode");
            let g = serde_json::to_vec(black_box(&generation)).expect("encode");
            black_box((l, g));
        })
    });
    let (stored_l, stored_g) = (encode(&charge).expect("encode"), encode(&generation).expect("encode"));
    g.bench_function("decode one settle's ledger entry + generation (stored form)", |b| {
        b.iter(|| {
            let l: LedgerEntry = decode(black_box(&stored_l), "ledger entry").expect("decode");
            let g: GenerationRecord = decode(black_box(&stored_g), "generation").expect("decode");
            black_box((l, g));
        })
    });
    g.finish();
    let file = std::fs::metadata(store.path()).map(|m| m.len()).unwrap_or(0);
    println!("after the bench: {} requests, file {:.1} MiB", requests.seq, file as f64 / (1 << 20) as f64);
}

criterion_group!(benches, store_writer);
criterion_main!(benches);
