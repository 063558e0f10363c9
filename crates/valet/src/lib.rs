//! Valet: a self-hosted authentication server for machine-to-machine traffic.
//!
//! ARCHITECTURE.md at the repository root maps the modules and states the invariants.

pub mod api;
pub mod cache;
pub mod cli;
pub mod http;
pub mod key;
pub mod metrics;
pub mod model;
pub mod oauth;
pub mod redact;
pub mod secret;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod throttle;
pub mod usage;
