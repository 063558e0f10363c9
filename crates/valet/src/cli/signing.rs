//! `valet signing-keys ...`: token signing key rotation, straight on the store.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::oauth::sealing::SealingKey;
use crate::oauth::service::OAuthService;
use crate::oauth::signing::SigningAlgorithm;
use crate::service::KeyService;

#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// Publish a new signing key now and sign with it after a delay. Older keys stay
    /// published until every token they signed has expired.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Algorithm of the new key: ES256 or EdDSA.
    #[arg(long, default_value = "ES256")]
    algorithm: SigningAlgorithm,
    /// Seconds between publishing the new key and signing with it. Keep it above the 30 s
    /// in which every node rereads the keys, and above how long resource servers cache
    /// the JWK set.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    delay_seconds: u32,
    /// Print the new key's public JWK and schedule as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(
    keys: Arc<KeyService>,
    sealing_key: Option<SealingKey>,
    command: SigningKeysCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        SigningKeysCommand::Rotate(args) => {
            // The issuer only shapes tokens, and this command issues none.
            let oauth = OAuthService::new(keys, String::new()).with_sealing_key(sealing_key);
            let delay = time::Duration::seconds(i64::from(args.delay_seconds));
            let key = oauth.rotate_signing_key(args.algorithm, delay).await?;
            let signs_from = key
                .signs_from
                .format(&time::format_description::well_known::Rfc3339)?;
            if args.json {
                let output = json!({
                    "kid": key.kid,
                    "algorithm": key.algorithm.as_str(),
                    "signs_from": signs_from,
                    "public_jwk": key.public_jwk,
                });
                println!("{}", serde_json::to_string_pretty(&output)?);
            } else {
                println!("kid         {}", key.kid);
                println!("algorithm   {}", key.algorithm.as_str());
                println!("signs_from  {signs_from}");
                eprintln!(
                    "The new key is published now; older keys stay published until their last token expires."
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
