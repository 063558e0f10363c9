//! The `valet` command line: `serve`, and `keys` subcommands that work on the store directly.

mod keys;
mod serve;
mod table;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::key::{KeyFormat, KeyPrefix};
use crate::service::{CacheConfig, KeyService};
use crate::store;

/// Exit code for a command that failed.
const EXIT_FAILURE: u8 = 1;

/// Valet: API keys for machine-to-machine traffic.
#[derive(Debug, Parser)]
#[command(name = "valet", version, about)]
pub struct Cli {
    /// Store to use: sqlite://PATH, relative or absolute (sqlite:///var/lib/valet/valet.db),
    /// created if missing; or postgres://USER:PASSWORD@HOST:PORT/DATABASE for several nodes.
    #[arg(
        long,
        env = "VALET_DATABASE_URL",
        default_value = "sqlite://valet.db",
        global = true
    )]
    pub database_url: String,

    /// Product tag at the start of every key: 2 to 10 characters, [a-z][a-z0-9]*.
    /// Keys with another prefix are rejected as malformed.
    #[arg(long, env = "VALET_KEY_PREFIX", default_value = "vk", global = true)]
    pub key_prefix: KeyPrefix,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(serve::ServeArgs),
    /// Manage keys directly in the store, without the HTTP API.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Key commands print results for a person; their progress logs would be noise.
    let default_filter = match cli.command {
        Command::Serve(_) => crate::telemetry::DEFAULT_FILTER,
        Command::Keys(_) => "warn",
    };
    crate::telemetry::init(default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        database_url,
        key_prefix,
        command,
    } = cli;
    let format = KeyFormat::new(key_prefix);
    match command {
        Command::Serve(args) => {
            let service = open_service(&database_url, true, format, args.cache_config()).await?;
            let result = serve::run(service.clone(), &args, &database_url).await;
            service.store().close().await;
            result
        }
        Command::Keys(command) => {
            // Only `keys create` may start a new store, for bootstrap without the server.
            // The other commands fail on a mistyped path instead of showing an empty store.
            let create = matches!(command, keys::KeysCommand::Create(_));
            let service =
                open_service(&database_url, create, format, CacheConfig::default()).await?;
            let result = keys::run(&service, command).await;
            service.store().close().await;
            result
        }
    }
}

async fn open_service(
    database_url: &str,
    create: bool,
    format: KeyFormat,
    cache: CacheConfig,
) -> anyhow::Result<Arc<KeyService>> {
    let store = store::connect(database_url, create).await.map_err(|err| {
        anyhow::anyhow!(
            "could not open the store named by --database-url ({}): {err}",
            store::redact_url(database_url)
        )
    })?;
    Ok(Arc::new(KeyService::with_cache(store, format, cache)))
}
