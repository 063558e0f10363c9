//! Valet: a self-hosted authentication server for machine-to-machine traffic.
//!
//! ARCHITECTURE.md at the repository root maps the modules and states the invariants.

pub mod key;
