//! Kiln: run many coding agents side by side, each in its own sandbox on its own
//! branch, with live events and terminals. See `docs/architecture.md`.

pub mod actors;
pub mod app;
pub mod cli;
pub mod config;
pub mod confine;
pub mod db;
pub mod error;
pub mod http;
pub mod integrations;
pub mod metrics;
pub mod providers;
pub mod redact;
pub mod util;
pub mod terminal;
pub mod validate;
