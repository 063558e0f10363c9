//! The `valet` command line: `serve`, and `keys` and `clients` subcommands that work on the
//! store directly.

mod clients;
mod keys;
mod serve;
mod signing;
mod table;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::key::{KeyFormat, KeyPrefix};
use crate::oauth::sealing::SealingKey;
use crate::oauth::service::OAuthService;
use crate::service::{CacheConfig, KeyService};
use crate::store;

/// Exit code for a command that failed.
const EXIT_FAILURE: u8 = 1;

/// The text of `--signing-key-encryption-key`, parsed only after clap is done, because
/// clap repeats an invalid value in its error message and this value is a secret.
#[derive(Clone)]
pub struct SealingKeyText(secrecy::SecretString);

impl std::fmt::Debug for SealingKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKeyText([REDACTED])")
    }
}

fn parse_sealing_key(text: &str) -> Result<SealingKeyText, String> {
    Ok(SealingKeyText(text.into()))
}

impl SealingKeyText {
    fn parse(&self) -> anyhow::Result<SealingKey> {
        Ok(SealingKey::parse(secrecy::ExposeSecret::expose_secret(
            &self.0,
        ))?)
    }
}

/// Issuer given to the `OAuthService` of `valet clients`. Those commands never issue a
/// token or load a signing key, so this value appears in no token. It is a URN rather than
/// a URL, so nothing can mistake it for a host to reach.
const CLI_ISSUER: &str = "urn:valet:cli:no-tokens-issued";

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

    /// 32 random bytes in base64 (`openssl rand -base64 32`) that encrypt the token signing
    /// keys in the store. Prefer the environment variable: command lines are visible to
    /// other users of the host.
    #[arg(
        long,
        env = "VALET_SIGNING_KEY_ENCRYPTION_KEY",
        global = true,
        hide_env_values = true,
        value_parser = parse_sealing_key
    )]
    pub signing_key_encryption_key: Option<SealingKeyText>,

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
    /// Manage OAuth clients directly in the store, without the HTTP API.
    ///
    /// A client secret is an API key bound to its client: roll or revoke one with
    /// `valet keys roll KEY_ID` or `valet keys revoke KEY_ID`, where KEY_ID is the
    /// secret's `client_secret_key_id`.
    #[command(subcommand)]
    Clients(clients::ClientsCommand),
    /// Manage the keys that sign access tokens, directly in the store.
    #[command(subcommand)]
    SigningKeys(signing::SigningKeysCommand),
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Key and client commands print results for a person; their progress logs would be
    // noise.
    let default_filter = match cli.command {
        Command::Serve(_) => crate::telemetry::DEFAULT_FILTER,
        Command::Keys(_) | Command::Clients(_) | Command::SigningKeys(_) => "warn",
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
        signing_key_encryption_key,
        command,
    } = cli;
    let format = KeyFormat::new(key_prefix);
    let signing_key_encryption_key = signing_key_encryption_key
        .as_ref()
        .map(SealingKeyText::parse)
        .transpose()?;
    match command {
        Command::Serve(args) => {
            let service = open_service(&database_url, true, format, args.cache_config())
                .await?
                .with_key_throttle(&args.throttle_config());
            let service = Arc::new(service);
            let result = serve::run(
                service.clone(),
                &args,
                &database_url,
                signing_key_encryption_key,
            )
            .await;
            service.store().close().await;
            result
        }
        Command::Keys(command) => {
            // Only `keys create` may start a new store, for bootstrap without the server.
            // The other commands fail on a mistyped path instead of showing an empty store.
            let create = matches!(command, keys::KeysCommand::Create(_));
            let service = Arc::new(
                open_service(&database_url, create, format, CacheConfig::default()).await?,
            );
            let result = keys::run(&service, command).await;
            service.store().close().await;
            result
        }
        Command::Clients(command) => {
            // As with keys, only `clients create` may start a new store.
            let create = matches!(command, clients::ClientsCommand::Create(_));
            let service = Arc::new(
                open_service(&database_url, create, format, CacheConfig::default()).await?,
            );
            // No `ensure_signing_key` here: managing clients needs no signing key, and the
            // server creates the first one when it starts.
            let oauth = OAuthService::new(service.clone(), CLI_ISSUER.to_owned());
            let prefix = service.format().prefix().as_str();
            let result = clients::run(&oauth, prefix, command).await;
            service.store().close().await;
            result
        }
        Command::SigningKeys(command) => {
            let service =
                Arc::new(open_service(&database_url, false, format, CacheConfig::default()).await?);
            let result = signing::run(service.clone(), signing_key_encryption_key, command).await;
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
) -> anyhow::Result<KeyService> {
    let store = store::connect(database_url, create).await.map_err(|err| {
        anyhow::anyhow!(
            "could not open the store named by --database-url ({}): {err}",
            store::redact_url(database_url)
        )
    })?;
    Ok(KeyService::with_cache(store, format, cache))
}
