//! Logging set-up: structured `tracing` output on standard error.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Filter used when `VALET_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Installs the global subscriber, filtered by `VALET_LOG` (`RUST_LOG` syntax).
///
/// Logs go to standard error so that standard output carries only command results.
pub fn init() {
    let filter =
        EnvFilter::try_from_env("VALET_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
