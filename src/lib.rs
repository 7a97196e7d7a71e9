//! Tollgate: an OpenAI-compatible AI gateway on Pingora.
//!
//! The folders follow a request's life: `config` (the immutable snapshot every request pins),
//! `proxy` (the one `ProxyHttp` implementation and its phases), `providers` (one file per wire
//! format), `metering` (SSE decoding and token counting as bodies stream past), `billing`
//! (nano-USD money, reservations and settlement), `store` (redb and its batching writer),
//! `api` (routes answered without an upstream), `limits` (per-key rate limits) and `mock`
//! (the project's own fake provider for tests, benches and the demo), `tls` (the listener's
//! certificates by SNI with hot reload, and upstream trust), `alloc` (the process's allocator).

pub mod alloc;
pub mod api;
pub mod app;
pub mod billing;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod metering;
pub mod mock;
pub mod ops;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod store;
pub mod upgrade;
pub mod tls;
#[cfg(test)]
mod testing;

/// The map behind the request path's lookups: keys by digest, accounts by id, models and
/// providers by name, the store writer's rollups. std's SipHash cost 150-280 instructions per
/// lookup, and a request makes about nine, ~1% of its CPU; foldhash costs a fraction of that.
/// Seeded per process. These maps are filled from config, the store or the admin API, never
/// with keys a client picks, and the request path only reads them.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
