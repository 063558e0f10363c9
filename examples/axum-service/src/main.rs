//! Runs the example orders service.
//!
//! Settings come from the environment:
//! - `VALET_URL`: the Valet server, default `http://127.0.0.1:8080`
//! - `VALET_VERIFIER_KEY`: a Valet API key with scope `keys:verify` (required)
//! - `ORDERS_AUDIENCE`: the `aud` accepted in access tokens, default `orders`
//! - `ORDERS_LISTEN`: the address to listen on, default `127.0.0.1:3000`

use anyhow::Context;
use valet_tower::Valet;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
    let valet = Valet::builder(setting("VALET_URL", "http://127.0.0.1:8080"))
        .verifier_key(std::env::var("VALET_VERIFIER_KEY").context(
            "set VALET_VERIFIER_KEY to a Valet API key with scope keys:verify, for example \
             from `valet keys create --name orders-service --scope keys:verify`",
        )?)
        .audience(setting("ORDERS_AUDIENCE", "orders"))
        .build()?;

    let listen = setting("ORDERS_LISTEN", "127.0.0.1:3000");
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("could not listen on {listen}"))?;
    eprintln!("orders service listening on http://{listen}");
    axum::serve(listener, orders_service::app(&valet))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
