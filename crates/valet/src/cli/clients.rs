//! `valet clients ...`: OAuth client management straight on the store, without the HTTP API.
//!
//! A client secret is an API key bound to its client, so `valet keys roll` and
//! `valet keys revoke` manage existing secrets, and this module only adds new ones.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use time::OffsetDateTime;

use super::keys::{parse_rfc3339, print_json};
use super::table;
use crate::api::{ClientListObject, ClientObject, CreatedClientObject, SecretObject};
use crate::model::{KeyName, Owner, Scopes};
use crate::oauth::client::{
    CLIENT_ID_LEN, MAX_TOKEN_LIFETIME_SECONDS, check_audience, check_audiences, check_jwks,
    is_client_id,
};
use crate::oauth::service::{ClientUpdate, NewClient, OAuthError, OAuthService};
use crate::redact::redact_keys;
use crate::service::ServiceError;
use crate::store::Cursor;

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client and print its id and first secret, which is shown only this once.
    Create(CreateArgs),
    /// List clients, newest first.
    List(ListArgs),
    /// Show one client.
    ///
    /// Its secrets are API keys and are not listed here. Find them in
    /// `valet keys list --json` by their `client_id`.
    Show(IdArgs),
    /// Change a client's name, owner, scopes, audiences, token lifetime or JWK set.
    Update(UpdateArgs),
    /// Delete a client and revoke every one of its secrets at once.
    Delete(DeleteArgs),
    /// Issue another secret for a client and print it. It is shown only this once.
    ///
    /// Secrets are API keys, so roll or revoke one with `valet keys roll KEY_ID` or
    /// `valet keys revoke KEY_ID`, where KEY_ID is its `client_secret_key_id`.
    AddSecret(AddSecretArgs),
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
    /// Scope the client may be granted. Repeat for several, or separate with commas.
    #[arg(long = "scope", value_delimiter = ',')]
    scopes: Vec<String>,
    /// Your own id for the customer or service that runs the client.
    #[arg(long)]
    owner: Option<String>,
    /// Audience the client may request with `resource` or `audience`: 1 to 256 printable
    /// ASCII characters. Repeat for several, at most 32.
    #[arg(long = "audience", value_parser = parse_audience)]
    audiences: Vec<String>,
    /// Audience of a token whose request names none. It must be one of the --audience values.
    #[arg(long, value_parser = parse_default_audience)]
    default_audience: Option<String>,
    /// Lifetime of the client's access tokens in seconds, 1 to 86400 (default 900, which is
    /// 15 minutes).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=MAX_TOKEN_LIFETIME_SECONDS))]
    token_lifetime_seconds: Option<i64>,
    /// Public JWK set for `private_key_jwt`, as JSON: {"keys": [...]} with 1 to 8 EC P-256
    /// or OKP Ed25519 public keys.
    #[arg(long)]
    jwks: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Clients per page, 1 to 1000.
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
    /// Client id: the 16 letters and digits of `client_id`.
    id: String,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Client id.
    id: String,
    /// Print the client as it was before the deletion, as the JSON object of the HTTP API.
    /// The HTTP API itself returns no body for a deletion.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Client id.
    id: String,
    #[command(flatten)]
    fields: UpdateFields,
    #[command(flatten)]
    output: OutputArgs,
}

/// The options of `clients update` that change a field.
#[derive(Debug, Args)]
pub struct UpdateFields {
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// New owner.
    #[arg(long, conflicts_with = "clear_owner")]
    owner: Option<String>,
    /// Remove the owner.
    #[arg(long)]
    clear_owner: bool,
    /// Replace the scopes. Repeat for several, or separate with commas.
    #[arg(long = "scope", value_delimiter = ',', conflicts_with = "clear_scopes")]
    scopes: Option<Vec<String>>,
    /// Remove every scope.
    #[arg(long)]
    clear_scopes: bool,
    /// Replace the audiences. Repeat for several, at most 32.
    #[arg(long = "audience", value_parser = parse_audience, conflicts_with = "clear_audiences")]
    audiences: Option<Vec<String>>,
    /// Remove every audience. A default audience must be cleared as well.
    #[arg(long)]
    clear_audiences: bool,
    /// New default audience, which must be one of the client's audiences after the update.
    #[arg(
        long,
        value_parser = parse_default_audience,
        conflicts_with = "clear_default_audience"
    )]
    default_audience: Option<String>,
    /// Remove the default audience, so every token request must name its audience.
    #[arg(long)]
    clear_default_audience: bool,
    /// New lifetime of the client's access tokens in seconds, 1 to 86400.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=MAX_TOKEN_LIFETIME_SECONDS))]
    token_lifetime_seconds: Option<i64>,
    /// Replace the public JWK set for `private_key_jwt`, as JSON: {"keys": [...]}.
    #[arg(long, conflicts_with = "clear_jwks")]
    jwks: Option<String>,
    /// Remove the JWK set, so the client can no longer authenticate with `private_key_jwt`.
    #[arg(long)]
    clear_jwks: bool,
}

#[derive(Debug, Args)]
pub struct AddSecretArgs {
    /// Client id.
    id: String,
    /// Expiry of the secret as an RFC 3339 timestamp, for example 2027-01-31T00:00:00Z.
    /// None by default.
    #[arg(long, value_parser = parse_rfc3339)]
    expires_at: Option<OffsetDateTime>,
    #[command(flatten)]
    output: OutputArgs,
}

fn parse_audience(text: &str) -> Result<String, String> {
    check_audience("audience", text).map_err(|err| err.reason)?;
    Ok(text.to_owned())
}

fn parse_default_audience(text: &str) -> Result<String, String> {
    check_audience("default_audience", text).map_err(|err| err.reason)?;
    Ok(text.to_owned())
}

fn parse_jwks(text: &str) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(text).context("--jwks is not valid JSON")?;
    Ok(check_jwks(&value)?)
}

/// Checks the shape of a client id before it reaches the store. The message repeats the
/// input only after `redact_keys`, because a pasted secret is a likely mistake here.
fn parse_client_id<'a>(text: &'a str, key_prefix: &str) -> anyhow::Result<&'a str> {
    if is_client_id(text) {
        return Ok(text);
    }

    let redacted = redact_keys(text, key_prefix);
    if text.starts_with(&format!("{key_prefix}_")) {
        anyhow::bail!(
            "invalid client id `{redacted}`: this looks like a client secret, so pass the client_id instead"
        );
    }
    anyhow::bail!(
        "invalid client id `{redacted}`: expected {CLIENT_ID_LEN} letters and digits, \
         the client_id that `valet clients create` or `valet clients list` printed"
    )
}

/// Adds the CLI options that fix a default audience the service rejected, because the
/// service names the JSON fields `default_audience` and `audiences`.
fn explain_default_audience(err: OAuthError, fix: &str) -> anyhow::Error {
    match err {
        OAuthError::Service(ServiceError::InvalidField(field))
            if field.field == "default_audience" =>
        {
            anyhow::anyhow!("{field}: {fix}")
        }
        other => other.into(),
    }
}

/// Runs one `clients` subcommand. `key_prefix` is only used to keep a pasted secret out of
/// error messages.
pub async fn run(
    oauth: &OAuthService,
    key_prefix: &str,
    command: ClientsCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        ClientsCommand::Create(args) => create(oauth, args).await?,
        ClientsCommand::List(args) => list(oauth, args).await?,
        ClientsCommand::Show(args) => {
            let id = parse_client_id(&args.id, key_prefix)?;
            let client = ClientObject::from(oauth.get_client(id).await?);
            print_client(&client, args.output.json)?;
        }
        ClientsCommand::Update(args) => {
            let id = parse_client_id(&args.id, key_prefix)?;
            let update = client_update(args.fields)?;
            let client = oauth.update_client(id, update).await.map_err(|err| {
                explain_default_audience(
                    err,
                    "name it with --audience as well, or pass --clear-default-audience",
                )
            })?;
            let client = ClientObject::from(client);
            print_client(&client, args.output.json)?;
        }
        ClientsCommand::Delete(args) => {
            let id = parse_client_id(&args.id, key_prefix)?;
            // The client is read first only to print it. A change made between the read
            // and the delete would be missing from the output, not from the deletion.
            let client = ClientObject::from(oauth.get_client(id).await?);
            oauth.delete_client(id).await?;
            if args.json {
                print_json(&client)?;
            } else {
                println!(
                    "deleted client {} ({}); every secret of it is revoked",
                    client.client_id, client.name
                );
            }
        }
        ClientsCommand::AddSecret(args) => {
            let id = parse_client_id(&args.id, key_prefix)?;
            let secret = SecretObject::from(oauth.add_secret(id, args.expires_at).await?);
            if args.output.json {
                print_json(&secret)?;
            } else {
                print!("{}", table::secret_detail(id, &secret));
                warn_secret_shown_once();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(oauth: &OAuthService, args: CreateArgs) -> anyhow::Result<()> {
    let new = NewClient {
        name: KeyName::parse(&args.name)?,
        owner: args.owner.as_deref().map(Owner::parse).transpose()?,
        scopes: Scopes::parse("scope", &args.scopes)?,
        audiences: check_audiences(&args.audiences)?,
        default_audience: args.default_audience,
        token_lifetime_seconds: args.token_lifetime_seconds,
        jwks: args.jwks.as_deref().map(parse_jwks).transpose()?,
    };
    let created = oauth
        .create_client(new)
        .await
        .map_err(|err| explain_default_audience(err, "name it with --audience as well"))?;
    let created = CreatedClientObject::from(created);
    if args.output.json {
        print_json(&created)?;
    } else {
        print!(
            "{}",
            table::created_client_detail(&created.client, &created.secret)
        );
        warn_secret_shown_once();
    }
    Ok(())
}

async fn list(oauth: &OAuthService, args: ListArgs) -> anyhow::Result<()> {
    let after = args
        .cursor
        .as_deref()
        .map(|text| {
            Cursor::decode(text).context(
                "--cursor is not a cursor Valet wrote: pass next_cursor from the previous page unchanged",
            )
        })
        .transpose()?;
    let (clients, next) = oauth.list_clients(args.limit, after).await?;
    let page = ClientListObject::from_page(clients, next);
    if args.output.json {
        print_json(&page)?;
    } else {
        print!("{}", table::client_rows(&page.clients));
        if let Some(cursor) = &page.next_cursor {
            eprintln!("more clients follow: pass --cursor {cursor}");
        }
    }
    Ok(())
}

/// Validates the update options into a [`ClientUpdate`]. The service checks what depends on
/// the stored client: that the default audience is one of the audiences.
fn client_update(fields: UpdateFields) -> anyhow::Result<ClientUpdate> {
    let owner = if fields.clear_owner {
        Some(None)
    } else {
        fields
            .owner
            .as_deref()
            .map(Owner::parse)
            .transpose()?
            .map(Some)
    };
    let scopes = if fields.clear_scopes {
        Some(Scopes::default())
    } else {
        fields
            .scopes
            .map(|scopes| Scopes::parse("scope", &scopes))
            .transpose()?
    };
    let audiences = if fields.clear_audiences {
        Some(Vec::new())
    } else {
        fields
            .audiences
            .map(|audiences| check_audiences(&audiences))
            .transpose()?
    };
    let default_audience = if fields.clear_default_audience {
        Some(None)
    } else {
        fields.default_audience.map(Some)
    };
    let jwks = if fields.clear_jwks {
        Some(None)
    } else {
        fields
            .jwks
            .as_deref()
            .map(parse_jwks)
            .transpose()?
            .map(Some)
    };
    let update = ClientUpdate {
        name: fields.name.as_deref().map(KeyName::parse).transpose()?,
        owner,
        scopes,
        audiences,
        default_audience,
        token_lifetime_seconds: fields.token_lifetime_seconds,
        jwks,
    };

    let empty = update.name.is_none()
        && update.owner.is_none()
        && update.scopes.is_none()
        && update.audiences.is_none()
        && update.default_audience.is_none()
        && update.token_lifetime_seconds.is_none()
        && update.jwks.is_none();
    anyhow::ensure!(
        !empty,
        "nothing to update: pass --name, --owner, --clear-owner, --scope, --clear-scopes, \
         --audience, --clear-audiences, --default-audience, --clear-default-audience, \
         --token-lifetime-seconds, --jwks or --clear-jwks"
    );
    Ok(update)
}

fn print_client(client: &ClientObject, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(client)
    } else {
        print!("{}", table::client_detail(client));
        Ok(())
    }
}

fn warn_secret_shown_once() {
    eprintln!("This is the only time the client secret is shown. Store it now.");
    eprintln!(
        "Roll or revoke it later with `valet keys roll KEY_ID` or `valet keys revoke KEY_ID`, \
         where KEY_ID is its client_secret_key_id."
    );
}
