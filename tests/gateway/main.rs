//! Integration tests: the real `tollgate serve` in front of `tollgate mock-upstream`, both on
//! random loopback ports. One test binary (faster to link than one per file).

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod billing;
mod bodies;
mod backup;
mod byok;
mod crash;
mod endpoints;
mod errors;
mod hostile;
mod keys;
mod lifecycle;
mod limits;
mod providers;
mod proxying;
mod reload;
mod routing;
mod routes;
mod streaming;
mod tls;
mod upgrade;
mod usage;
