//! Integration tests: the real `tollgate serve` in front of `tollgate mock-upstream`, both on
//! random loopback ports. One test binary (faster to link than one per file).

#[path = "../common/mod.rs"]
mod common;

mod billing;
mod bodies;
mod errors;
mod lifecycle;
mod limits;
mod proxying;
mod reload;
mod routes;
mod streaming;
mod tls;
