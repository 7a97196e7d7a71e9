//! The request path: one `ProxyHttp` implementation ([`gateway::Gateway`]) and the pieces
//! each of its phases uses.

pub mod access_log;
pub mod attempt;
pub mod body_replay;
pub mod coalesce;
pub mod cors;
pub mod ctx;
pub mod endpoints;
pub mod front;
pub mod gateway;
pub mod guard;
pub mod header_parts;
pub mod head_syntax;
pub mod local;
pub mod read_body;
pub mod resolve;
pub mod settle;
pub mod upstream_error;
pub mod upstream_headers;
pub mod watchdog;
pub mod wire;

pub use gateway::Gateway;
