//! The shopper's cart: read, change a line, replace, empty, check out.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use orderflow_core::services::carts::CartContents;
use orderflow_domain::order::RequestedLine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::extract::{ApiJson, Caller, RequestTrace};
use crate::problem::ApiResult;
use crate::routes::orders::{OrderLineInput, answer_response, idempotency_key};
use crate::schema;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartItemView {
    pub product_id: uuid::Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    /// The price now (a cart holds no prices: it shows the catalog's).
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
    pub currency: String,
    pub image_url: String,
}

/// A cart, priced from the catalog at this read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartView {
    /// In the order the products were added.
    pub items: Vec<CartItemView>,
    /// Products in the cart that no longer exist: remove them to check out.
    pub unavailable: Vec<uuid::Uuid>,
    /// The items' total, when they share a currency (absent for an empty cart).
    pub total_cents: Option<i64>,
    pub currency: Option<String>,
    /// Changes with every change of the cart; absent for an empty cart.
    pub token: Option<String>,
}

impl From<CartContents> for CartView {
    fn from(cart: CartContents) -> Self {
        Self {
            items: cart
                .items
                .into_iter()
                .map(|item| CartItemView {
                    image_url: format!("/api/v1/products/{}/image.svg", item.line.product_id),
                    product_id: item.line.product_id,
                    sku: item.line.sku,
                    name: item.line.name,
                    quantity: item.line.quantity,
                    unit_price_cents: item.line.unit_price_cents,
                    line_total_cents: item.line.line_total_cents,
                    currency: item.currency.to_string(),
                })
                .collect(),
            unavailable: cart.unavailable,
            total_cents: cart.total.as_ref().map(|total| total.cents),
            currency: cart.total.map(|total| total.currency.to_string()),
            token: cart.token,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartInput {
    /// Every line of the cart (an empty list empties it); lines of one
    /// product are merged, as in an order.
    #[schema(schema_with = schema::cart_lines)]
    pub items: Vec<OrderLineInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartLineInput {
    /// 0 removes the product from the cart.
    #[serde(deserialize_with = "schema::whole_number")]
    #[schema(schema_with = schema::cart_quantity)]
    pub quantity: i64,
}

/// The caller's cart.
#[utoipa::path(get, operation_id = "get_cart", path = "/api/v1/cart", tag = "cart", security(("bearer" = [])), responses((status = 200, body = CartView)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<Json<CartView>> {
    Ok(Json(state.carts.get(principal.user_id).await?.into()))
}

/// Replaces the whole cart.
#[utoipa::path(put, operation_id = "replace_cart", path = "/api/v1/cart", tag = "cart", request_body = CartInput, security(("bearer" = [])), responses((status = 200, body = CartView)))]
pub async fn replace(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<CartInput>,
) -> ApiResult<Json<CartView>> {
    let lines: Vec<RequestedLine> = body
        .items
        .into_iter()
        .map(|line| RequestedLine {
            product_id: line.product_id,
            quantity: line.quantity,
        })
        .collect();
    Ok(Json(
        state.carts.replace(principal.user_id, &lines).await?.into(),
    ))
}

/// Empties the cart.
#[utoipa::path(delete, operation_id = "empty_cart", path = "/api/v1/cart", tag = "cart", security(("bearer" = [])), responses((status = 200, body = CartView)))]
pub async fn empty(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<Json<CartView>> {
    Ok(Json(
        state.carts.replace(principal.user_id, &[]).await?.into(),
    ))
}

/// Sets how many of one product the cart holds (0 removes it); a new
/// product goes last.
#[utoipa::path(put, operation_id = "set_cart_item", path = "/api/v1/cart/items/{product_id}", tag = "cart", request_body = CartLineInput, security(("bearer" = [])),
    params(("product_id" = uuid::Uuid, Path, description = "product id")), responses((status = 200, body = CartView)))]
pub async fn set_item(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(product_id): Path<uuid::Uuid>,
    ApiJson(body): ApiJson<CartLineInput>,
) -> ApiResult<Json<CartView>> {
    Ok(Json(
        state
            .carts
            .set(principal.user_id, product_id, body.quantity)
            .await?
            .into(),
    ))
}

/// Removes one product from the cart.
#[utoipa::path(delete, operation_id = "remove_cart_item", path = "/api/v1/cart/items/{product_id}", tag = "cart", security(("bearer" = [])),
    params(("product_id" = uuid::Uuid, Path, description = "product id")), responses((status = 200, body = CartView)))]
pub async fn remove_item(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(product_id): Path<uuid::Uuid>,
) -> ApiResult<Json<CartView>> {
    Ok(Json(
        state
            .carts
            .remove(principal.user_id, product_id)
            .await?
            .into(),
    ))
}

/// Places the cart as an order, priced now, and empties the cart. With
/// `Idempotency-Key`, a retry gets the same order and never empties a cart
/// refilled since; without one, the cart's token is the key (two checkouts
/// of one cart make one order). 409 `cart-empty` for an empty cart.
#[utoipa::path(post, operation_id = "checkout_cart", path = "/api/v1/cart/checkout", tag = "cart", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = crate::routes::orders::OrderView)))]
pub async fn checkout(
    State(state): State<AppState>,
    Caller(principal): Caller,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let answer = state
        .carts
        .checkout(
            principal.user_id,
            idempotency_key(&headers),
            Some(trace.to_string()),
        )
        .await?;
    Ok(answer_response(answer))
}
