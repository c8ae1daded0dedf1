//! Placing and reading orders.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_core::services::orders::{OrderAnswer, PlaceOrder};
use orderflow_domain::order::{HistoryEntry, Order, OrderStatus, RequestedLine};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Caller, RequestTrace};
use crate::problem::{ApiResult, PROBLEM_JSON};
use crate::schema;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineInput {
    /// A product of the catalog; an unknown one, or products in different
    /// currencies, are refused (422 validation naming the line).
    pub product_id: uuid::Uuid,
    #[serde(deserialize_with = "schema::whole_number")]
    #[schema(schema_with = schema::quantity)]
    pub quantity: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    #[schema(schema_with = schema::order_lines)]
    pub items: Vec<OrderLineInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderLineView {
    pub product_id: uuid::Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    #[schema(value_type = OrderStatus)]
    pub status: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// An order. `held`: the fraud check flagged it, and it waits for an
/// admin's review (nothing reserved or charged yet).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    pub id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    #[schema(value_type = OrderStatus)]
    pub status: String,
    pub total_cents: i64,
    pub currency: String,
    pub items: Vec<OrderLineView>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Present on `GET /orders/{id}`: every state the order went through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryView>>,
}

impl OrderView {
    pub(crate) fn new(order: Order, history: Option<Vec<HistoryEntry>>) -> Self {
        Self {
            id: order.id,
            user_id: order.user_id,
            status: order.status.to_string(),
            total_cents: order.total_cents,
            currency: order.currency.to_string(),
            items: order
                .items
                .into_iter()
                .map(|l| OrderLineView {
                    product_id: l.product_id,
                    sku: l.sku,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                    line_total_cents: l.line_total_cents,
                })
                .collect(),
            created_at: order.created_at,
            updated_at: order.updated_at,
            history: history.map(|h| {
                h.into_iter()
                    .map(|e| HistoryView {
                        status: e.status.to_string(),
                        at: e.at,
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderListView {
    pub items: Vec<OrderView>,
    /// Pass as `before` for older orders; absent on the last page.
    pub next_cursor: Option<uuid::Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1..=100, default 20.
    /// (Larger values are accepted and clamped to the route's page size; the
    /// documented range is what parses.)
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub limit: Option<u32>,
    /// Orders older than this order id.
    pub before: Option<uuid::Uuid>,
}

/// Places an order. With `Idempotency-Key`, retries of the same request get
/// the same answer and never make a second order.
#[utoipa::path(post, operation_id = "place_order", path = "/api/v1/orders", tag = "orders", request_body = PlaceOrderRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 201, body = OrderView)))]
pub async fn place(
    State(state): State<AppState>,
    Caller(principal): Caller,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrderRequest>,
) -> ApiResult<Response> {
    let answer = state
        .orders
        .place(PlaceOrder {
            user_id: principal.user_id,
            idempotency_key: idempotency_key(&headers),
            lines: body
                .items
                .into_iter()
                .map(|l| RequestedLine {
                    product_id: l.product_id,
                    quantity: l.quantity,
                })
                .collect(),
            traceparent: Some(trace.to_string()),
            fingerprint: None,
            idempotency_scope: "",
        })
        .await?;
    Ok(answer_response(answer))
}

/// The request's `Idempotency-Key`, as sent (checked by the use case).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// An order's answer as HTTP: its status and body (a problem document for
/// a saved failure), marked `Idempotent-Replayed` when it is a saved one.
pub(crate) fn answer_response(answer: OrderAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(answer.body)).into_response();
    if status.as_u16() >= 400 {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    }
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// One of the caller's orders, with its history. Another shopper's order is 404.
#[utoipa::path(get, operation_id = "get_order", path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "order id")), responses(
    (status = 200, body = OrderView)))]
pub async fn get_one(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<uuid::Uuid>,
) -> ApiResult<Json<OrderView>> {
    let (order, history) = state.orders.get(principal.user_id, id).await?;
    Ok(Json(OrderView::new(order, Some(history))))
}

/// Cancels one of the caller's orders while it is pending, held, reserved
/// or confirmed: its stock comes back at once; a charged order is refunded
/// through the payment provider (by the `payment` group, right after) and
/// its loyalty points are taken back; the shopper is notified. 409
/// `order-not-cancellable` once it ended otherwise or is cancelled already;
/// another shopper's order is 404.
#[utoipa::path(post, operation_id = "cancel_order", path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "order id")), responses(
    (status = 200, body = OrderView)))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<uuid::Uuid>,
    RequestTrace(trace): RequestTrace,
) -> ApiResult<Json<OrderView>> {
    let order = state
        .orders
        .cancel(principal.user_id, id, Some(trace.to_string()))
        .await?;
    Ok(Json(OrderView::new(order, None)))
}

/// The caller's orders, newest first.
#[utoipa::path(get, operation_id = "list_orders", path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), params(ListParams), responses((status = 200, body = OrderListView)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<OrderListView>> {
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let orders = state
        .orders
        .list(principal.user_id, params.before, Some(limit))
        .await?;
    let (items, next_cursor) = order_page(orders, limit);
    Ok(Json(OrderListView { items, next_cursor }))
}

/// A page of orders as views, and the cursor of the next page: the last
/// order's id when the page is full (there may be more), else none.
pub(crate) fn order_page(
    orders: Vec<orderflow_domain::order::Order>,
    limit: u32,
) -> (Vec<OrderView>, Option<uuid::Uuid>) {
    let next_cursor = if orders.len() == limit as usize {
        orders.last().map(|o| o.id)
    } else {
        None
    };
    let items = orders
        .into_iter()
        .map(|o| OrderView::new(o, None))
        .collect();
    (items, next_cursor)
}
