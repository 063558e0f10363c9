//! `valet keys ...`: key management straight on the store, for bootstrap and recovery.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::table;
use crate::api::{CreatedKeyObject, KeyListObject, KeyObject, RolledKeyObject, VerifyObject};
use crate::key::{KeyEnv, KeyId};
use crate::model::{KeyName, KeyUpdate, Metadata, Owner, Scopes};
use crate::service::{KeyService, NewKey, VerifyCode};
use crate::store::{Cursor, ListQuery};

/// Exit code of `keys verify` for a key that is not valid.
const EXIT_KEY_INVALID: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it; the raw key is shown only this once.
    Create(CreateArgs),
    /// List keys, newest first.
    List(ListArgs),
    /// Show one key.
    Show(IdArgs),
    /// Change a key's name, owner, scopes or metadata.
    Update(UpdateArgs),
    /// Issue a successor and let the old key live for a grace period.
    Roll(RollArgs),
    /// Revoke a key at once.
    Revoke(IdArgs),
    /// Check a key; exits 0 when valid and 3 when not.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print the same JSON objects as the HTTP API instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Human-readable name.
    #[arg(long)]
    name: String,
    /// Scope to grant; repeat for several, or separate with commas.
    #[arg(long = "scope", value_delimiter = ',')]
    scopes: Vec<String>,
    /// Environment: live or test.
    #[arg(long, default_value = "live")]
    env: KeyEnv,
    /// Your own id for the customer or service that uses the key.
    #[arg(long)]
    owner: Option<String>,
    /// JSON object to attach, for example '{"team":"billing"}'.
    #[arg(long)]
    metadata: Option<String>,
    /// Expiry as an RFC 3339 timestamp, for example 2027-01-31T00:00:00Z.
    #[arg(long, value_parser = parse_rfc3339)]
    expires_at: Option<OffsetDateTime>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys with this owner.
    #[arg(long)]
    owner: Option<String>,
    /// Keys per page, 1 to 1000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue after this `next_cursor` from a previous page.
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Key id: the 8 characters after the environment in the key.
    id: String,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Key id.
    id: String,
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// New owner.
    #[arg(long, conflicts_with = "clear_owner")]
    owner: Option<String>,
    /// Remove the owner.
    #[arg(long)]
    clear_owner: bool,
    /// Replace the scopes; repeat for several, or separate with commas.
    #[arg(long = "scope", value_delimiter = ',', conflicts_with = "clear_scopes")]
    scopes: Option<Vec<String>>,
    /// Remove every scope.
    #[arg(long)]
    clear_scopes: bool,
    /// Replace the metadata with this JSON object.
    #[arg(long)]
    metadata: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RollArgs {
    /// Key id.
    id: String,
    /// Seconds the old key stays valid, 0 to 604800 (7 days).
    #[arg(long, default_value_t = 86_400)]
    grace_period_seconds: i64,
    /// Expiry of the new key as an RFC 3339 timestamp; none by default.
    #[arg(long, value_parser = parse_rfc3339)]
    expires_at: Option<OffsetDateTime>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Key to check. Leave it out to read it from standard input, which keeps it out of
    /// the shell history and the process list.
    key: Option<String>,
    /// Scope the key must hold; repeat for several, or separate with commas.
    #[arg(long = "scope", value_delimiter = ',')]
    scopes: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

impl std::fmt::Debug for VerifyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyArgs")
            .field("key", &self.key.as_ref().map(|_| "[REDACTED]"))
            .field("scopes", &self.scopes)
            .field("output", &self.output)
            .finish()
    }
}

pub(super) fn parse_rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|err| format!("not an RFC 3339 timestamp such as 2027-01-31T00:00:00Z: {err}"))
}

fn parse_metadata(text: &str) -> anyhow::Result<Metadata> {
    let value: serde_json::Value =
        serde_json::from_str(text).context("--metadata is not valid JSON")?;
    Ok(Metadata::parse(value)?)
}

fn parse_id(text: &str) -> anyhow::Result<KeyId> {
    KeyId::parse(text).map_err(|err| {
        if text.matches('_').count() == 4 {
            anyhow::anyhow!(
                "{err}: this looks like a whole key; pass only its id, the 8 characters after the environment"
            )
        } else {
            anyhow::anyhow!("{err}")
        }
    })
}

pub async fn run(service: &KeyService, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create(args) => {
            let new = NewKey {
                name: KeyName::parse(&args.name)?,
                owner: args.owner.as_deref().map(Owner::parse).transpose()?,
                scopes: Scopes::parse("scope", &args.scopes)?,
                env: args.env,
                metadata: args
                    .metadata
                    .as_deref()
                    .map(parse_metadata)
                    .transpose()?
                    .unwrap_or_default(),
                expires_at: args.expires_at,
                client_id: None,
            };
            let created = CreatedKeyObject::from(service.create(new).await?);
            if args.output.json {
                print_json(&created)?;
            } else {
                print_created(&created)?;
            }
        }
        KeysCommand::List(args) => {
            let after = args
                .cursor
                .as_deref()
                .map(|text| {
                    Cursor::decode(text).context(
                        "--cursor is not a cursor Valet wrote: pass next_cursor from the previous page unchanged",
                    )
                })
                .transpose()?;
            let query = ListQuery {
                owner: args.owner,
                limit: args.limit,
                after,
            };
            let page = KeyListObject::from(service.list(&query).await?);
            if args.output.json {
                print_json(&page)?;
            } else {
                print!("{}", table::key_rows(&page.keys));
                if let Some(cursor) = &page.next_cursor {
                    eprintln!("more keys follow: pass --cursor {cursor}");
                }
            }
        }
        KeysCommand::Show(args) => {
            let key = KeyObject::from(service.get(&parse_id(&args.id)?).await?);
            print_key(&key, args.output.json)?;
        }
        KeysCommand::Update(args) => {
            let owner = if args.clear_owner {
                Some(None)
            } else {
                args.owner
                    .as_deref()
                    .map(Owner::parse)
                    .transpose()?
                    .map(Some)
            };
            let update = KeyUpdate {
                name: args.name.as_deref().map(KeyName::parse).transpose()?,
                owner,
                scopes: if args.clear_scopes {
                    Some(Scopes::default())
                } else {
                    args.scopes
                        .map(|scopes| Scopes::parse("scope", &scopes))
                        .transpose()?
                },
                metadata: args.metadata.as_deref().map(parse_metadata).transpose()?,
            };
            anyhow::ensure!(
                !update.is_empty(),
                "nothing to update: pass --name, --owner, --clear-owner, --scope, --clear-scopes or --metadata"
            );
            let key = KeyObject::from(service.update(&parse_id(&args.id)?, update).await?);
            print_key(&key, args.output.json)?;
        }
        KeysCommand::Roll(args) => {
            let grace = Duration::seconds(args.grace_period_seconds);
            let rolled = RolledKeyObject::from(
                service
                    .roll(&parse_id(&args.id)?, grace, args.expires_at)
                    .await?,
            );
            if args.output.json {
                print_json(&rolled)?;
            } else {
                print_created(&rolled.successor)?;
                eprintln!(
                    "previous key {} stays valid until {}",
                    rolled.previous.id,
                    rolled
                        .previous
                        .expires_at
                        .and_then(|at| at.format(&Rfc3339).ok())
                        .unwrap_or_default()
                );
            }
        }
        KeysCommand::Revoke(args) => {
            let key = KeyObject::from(service.revoke(&parse_id(&args.id)?).await?);
            print_key(&key, args.output.json)?;
        }
        KeysCommand::Verify(args) => {
            let presented = match args.key {
                Some(key) => zeroize::Zeroizing::new(key),
                None => zeroize::Zeroizing::new(read_key_from_stdin()?),
            };
            let required = Scopes::parse("scope", &args.scopes)?;
            let verification = service.verify(&presented, &required).await?;
            let valid = verification.code == VerifyCode::Valid;
            let answer = VerifyObject::from(verification);
            if args.output.json {
                print_json(&answer)?;
            } else {
                println!("{}", answer.code.as_str());
                if let Some(message) = &answer.message {
                    eprintln!("{message}");
                }
                if let Some(key) = &answer.key {
                    print!("{}", table::key_detail(key));
                }
            }
            // An operator's check is not a use of the key, so the pending last_used_at is
            // dropped with the process rather than written.
            if !valid {
                return Ok(ExitCode::from(EXIT_KEY_INVALID));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one key from standard input: at most 1 KiB, surrounding ASCII whitespace
/// removed. Keys are ASCII, so other whitespace is left for the parser to reject.
fn read_key_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(1024)
        .read_line(&mut line)
        .context("could not read the key from standard input")?;
    let key = line.trim_ascii().to_owned();
    anyhow::ensure!(
        !key.is_empty(),
        "no key on standard input: pipe the key in, or pass it as an argument"
    );
    Ok(key)
}

pub(super) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn print_key(key: &KeyObject, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(key)
    } else {
        print!("{}", table::key_detail(key));
        Ok(())
    }
}

fn print_created(created: &CreatedKeyObject) -> anyhow::Result<()> {
    print!("{}", table::key_detail(&created.object));
    println!();
    println!("key           {}", created.key.expose());
    eprintln!("This is the only time the key is shown. Store it now.");
    Ok(())
}
