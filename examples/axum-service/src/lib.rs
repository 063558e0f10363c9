//! An orders API whose routes require Valet credentials with different scopes.
//!
//! `GET /orders` needs `orders:read`, `POST /orders` needs `orders:write`, and
//! `GET /healthz` is open. Handlers read the caller from the `Identity` extension.

use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use valet_tower::{Identity, Valet};

/// Builds the service's router, protected by `valet`.
pub fn app(valet: &Valet) -> Router {
    Router::new()
        .route(
            "/orders",
            get(list_orders)
                .route_layer(valet.require(["orders:read"]))
                .merge(
                    axum::routing::post(create_order).route_layer(valet.require(["orders:write"])),
                ),
        )
        .route("/healthz", get(|| async { "ok" }))
}

async fn list_orders(Extension(caller): Extension<Identity>) -> Json<Value> {
    Json(json!({
        "orders": [],
        "caller": caller_json(&caller),
    }))
}

async fn create_order(
    Extension(caller): Extension<Identity>,
) -> (axum::http::StatusCode, Json<Value>) {
    (
        axum::http::StatusCode::CREATED,
        Json(json!({ "created": true, "caller": caller_json(&caller) })),
    )
}

/// What the handlers learned about the caller, echoed so the example's test can check it.
fn caller_json(caller: &Identity) -> Value {
    json!({
        "key_id": caller.key_id(),
        "client_id": caller.client_id(),
        "owner": caller.owner(),
        "scopes": caller.scopes(),
        "env": caller.env().map(|env| format!("{env:?}").to_lowercase()),
    })
}
