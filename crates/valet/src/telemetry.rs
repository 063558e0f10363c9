//! Logging set-up: structured `tracing` output on standard error.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Filter used when `VALET_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Installs the global subscriber, filtered by `VALET_LOG` (`RUST_LOG` syntax) or else by
/// `default_filter`.
///
/// Logs go to standard error so that standard output carries only command results.
pub fn init(default_filter: &str) {
    let filter = match std::env::var("VALET_LOG") {
        Ok(text) => EnvFilter::try_new(&text).unwrap_or_else(|err| {
            eprintln!(
                "warning: ignoring invalid VALET_LOG {text:?} ({err}); using {default_filter:?}"
            );
            EnvFilter::new(default_filter)
        }),
        Err(_) => EnvFilter::new(default_filter),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
