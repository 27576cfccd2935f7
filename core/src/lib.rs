//! Trailmark's SDK core: a sans-IO engine for event tracking and attribution.
//!
//! * [`protocol`] — the wire contract shared with the server.
//! * [`engine::Engine`] — the state machine: calls go in with the current time, uploads come out
//!   as [`engine::UploadTask`]s, their results go back in with [`engine::Engine::report`].
//! * [`store`] — the durable queue behind the [`store::EventStore`] trait (memory, a queue file,
//!   SQLite).
//! * [`pii`] — normalisation and hashing of email and phone.
//! * `native` (feature `native`, on by default) — a ready driver for Rust hosts: worker thread,
//!   the queue file; with feature `http` (on by default) a built-in reqwest uploader.
//!
//! The crate builds for `wasm32-unknown-unknown` with `--no-default-features`.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

/// What std's prelude gives, for the `no_std` build (feature `std` off: the web build).
mod prelude {
    #[allow(unused_imports)]
    pub(crate) use alloc::{
        borrow::ToOwned,
        boxed::Box,
        format,
        string::{String, ToString},
        vec,
        vec::Vec,
    };
}

pub mod config;
pub mod engine;
pub mod json;
pub mod pii;
pub mod protocol;
pub mod store;
pub mod time;
pub mod urls;

#[cfg(feature = "native")]
pub mod native;

pub use config::{Config, ConfigError, HostConfig, Policy, TrackLimits};
pub use engine::{Action, ConsentUpdate, Engine, Logger, Millis, OpenError, Stats, UploadOutcome, UploadTask};
pub use protocol::ValidationError;
pub use store::{EventStore, MemoryStore, StoreError};
