//! Stateline at the edge: a Cloudflare Worker that routes each request to a Durable Object
//! running the same core as the native server.
//!
//! Owns only the Workers side: routing (`route`, pure and tested on the host), the Durable
//! Object adapter (`object`; its in-memory state and fan-out: `live`), its SQLite storage (`sql`) and conversions between Workers and
//! `http` types (`convert`). What a request means is the core's business.

pub mod route;

#[cfg(target_arch = "wasm32")]
mod assets;
#[cfg(target_arch = "wasm32")]
mod convert;
#[cfg(target_arch = "wasm32")]
mod live;
#[cfg(target_arch = "wasm32")]
mod object;
#[cfg(target_arch = "wasm32")]
mod sql;
#[cfg(target_arch = "wasm32")]
mod worker_entry;

#[cfg(target_arch = "wasm32")]
pub use object::Namespace;
