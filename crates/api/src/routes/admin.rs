//! Operator routes (admin role): consumer lag, the dead-letter queue, the
//! review of orders the fraud check held, and sales (revenue per window of
//! event time, top products).

use axum::Json;
use axum::extract::{Path, State};
use orderflow_core::ports::store::{DeadLetter, ProductSales, SalesWindow};
use orderflow_core::services::admin::Operations;
use orderflow_domain::sales::{Granularity, WindowRange};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{AdminCaller, ApiQuery, RequestTrace};
use crate::problem::ApiResult;
use crate::routes::orders::{OrderView, order_page};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionLagView {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub end: i64,
    pub lag: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupLagView {
    pub group: String,
    pub lag: i64,
    pub partitions: Vec<PartitionLagView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsumersView {
    pub groups: Vec<GroupLagView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    pub id: uuid::Uuid,
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error: String,
    pub attempts: u32,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    /// The original event (structured-mode CloudEvent).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    pub failed_at: chrono::DateTime<chrono::Utc>,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        Self {
            id: d.id,
            group: d.group,
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
            error: d.error,
            attempts: d.attempts,
            event_id: d.event.id,
            event_type: d.event.type_name().to_owned(),
            event: d.event.to_json(),
            failed_at: d.failed_at,
            replayed_at: d.replayed_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterListView {
    pub items: Vec<DeadLetterView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// (Larger values are accepted and clamped to the route's page size; the
    /// documented range is what parses.)
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub limit: Option<u32>,
    /// Include dead letters that were replayed already.
    #[serde(default)]
    pub all: bool,
}

/// Every consumer group: committed and end offsets and lag per partition.
#[utoipa::path(get, operation_id = "list_consumers", path = "/api/v1/admin/consumers", tag = "admin", security(("bearer" = [])), responses(
    (status = 200, body = ConsumersView)))]
pub async fn consumers(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
) -> ApiResult<Json<ConsumersView>> {
    let mut groups: Vec<GroupLagView> = Vec::new();
    for lag in state.operations.consumer_lag().await? {
        let partition = PartitionLagView {
            topic: lag.topic,
            partition: lag.partition,
            committed: lag.committed,
            end: lag.end,
            lag: lag.lag,
        };
        match groups.iter_mut().find(|g| g.group == lag.group) {
            Some(group) => {
                group.lag += partition.lag;
                group.partitions.push(partition);
            }
            None => groups.push(GroupLagView {
                group: lag.group,
                lag: partition.lag,
                partitions: vec![partition],
            }),
        }
    }
    Ok(Json(ConsumersView { groups }))
}

/// Messages a consumer group gave up on, newest first.
#[utoipa::path(get, operation_id = "list_dead_letters", path = "/api/v1/admin/dlq", tag = "admin", security(("bearer" = [])), params(DeadLetterParams), responses(
    (status = 200, body = DeadLetterListView)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    ApiQuery(params): ApiQuery<DeadLetterParams>,
) -> ApiResult<Json<DeadLetterListView>> {
    let items = state
        .operations
        .dead_letters(params.limit, params.all)
        .await?;
    Ok(Json(DeadLetterListView {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// One dead letter.
#[utoipa::path(get, operation_id = "get_dead_letter", path = "/api/v1/admin/dlq/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "dead letter id")), responses(
    (status = 200, body = DeadLetterView)))]
pub async fn dead_letter(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    Path(id): Path<uuid::Uuid>,
) -> ApiResult<Json<DeadLetterView>> {
    Ok(Json(state.operations.dead_letter(id).await?.into()))
}

/// Puts the original event back on its topic for another try.
#[utoipa::path(post, operation_id = "replay_dead_letter", path = "/api/v1/admin/dlq/{id}/replay", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "dead letter id")), responses(
    (status = 200, body = DeadLetterView)))]
pub async fn replay(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    Path(id): Path<uuid::Uuid>,
) -> ApiResult<Json<DeadLetterView>> {
    let mut view: DeadLetterView = state.operations.replay(id).await?.into();
    view.replayed_at = Some(chrono::Utc::now());
    Ok(Json(view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HeldParams {
    /// 1..=100, default 20.
    /// (Larger values are accepted and clamped to 100; the documented
    /// range is what parses.)
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub after: Option<uuid::Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeldOrdersView {
    /// Oldest first: the order a reviewer takes them in.
    pub items: Vec<OrderView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<uuid::Uuid>,
}

/// The orders the fraud check holds, waiting for approve or reject.
#[utoipa::path(get, operation_id = "list_held_orders", path = "/api/v1/admin/orders/held", tag = "admin", security(("bearer" = [])), params(HeldParams), responses(
    (status = 200, body = HeldOrdersView)))]
pub async fn held_orders(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    ApiQuery(params): ApiQuery<HeldParams>,
) -> ApiResult<Json<HeldOrdersView>> {
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let orders = state.orders.held(params.after, Some(limit)).await?;
    let (items, next_cursor) = order_page(orders, limit);
    Ok(Json(HeldOrdersView { items, next_cursor }))
}

/// Approves an order the fraud check held: it is pending again, and stock
/// and payment follow as for any order.
#[utoipa::path(post, operation_id = "approve_order", path = "/api/v1/admin/orders/{id}/approve", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "order id")), responses(
    (status = 200, body = OrderView)))]
pub async fn approve_order(
    state: State<AppState>,
    admin: AdminCaller,
    id: Path<uuid::Uuid>,
    trace: RequestTrace,
) -> ApiResult<Json<OrderView>> {
    review(state, admin, id, trace, true).await
}

/// Rejects an order the fraud check held: it ends `rejected`, nothing is
/// reserved or charged, and the shopper is told.
#[utoipa::path(post, operation_id = "reject_order", path = "/api/v1/admin/orders/{id}/reject", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "order id")), responses(
    (status = 200, body = OrderView)))]
pub async fn reject_order(
    state: State<AppState>,
    admin: AdminCaller,
    id: Path<uuid::Uuid>,
    trace: RequestTrace,
) -> ApiResult<Json<OrderView>> {
    review(state, admin, id, trace, false).await
}

async fn review(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<uuid::Uuid>,
    RequestTrace(trace): RequestTrace,
    approve: bool,
) -> ApiResult<Json<OrderView>> {
    let order = state
        .orders
        .review(admin.user_id, id, approve, Some(trace.to_string()))
        .await?;
    Ok(Json(OrderView::new(order, None)))
}

/// The width of a sales window.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GranularityParam {
    #[default]
    Minute,
    Day,
}

impl From<GranularityParam> for Granularity {
    fn from(value: GranularityParam) -> Self {
        match value {
            GranularityParam::Minute => Granularity::Minute,
            GranularityParam::Day => Granularity::Day,
        }
    }
}

/// Which windows to read: those that start in `from..to`. Without both,
/// the latest 60 minutes or 30 days (up to `to`, or after `from`). At most
/// a week of minute windows, 3,660 day windows.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SalesParams {
    /// `minute` (the default) or `day`; day windows start at midnight UTC.
    #[serde(default)]
    #[param(inline)]
    pub granularity: GranularityParam,
    /// RFC 3339, inclusive.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339, exclusive.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

impl SalesParams {
    fn range(&self) -> Result<WindowRange, orderflow_core::CoreError> {
        Operations::sales_range(
            self.granularity.into(),
            self.from,
            self.to,
            chrono::Utc::now(),
        )
    }
}

/// [`SalesParams`] and how many products. (Not `#[serde(flatten)]`: the
/// query-string decoder then sees every value as a string, and `top`
/// would not parse.)
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopProductsParams {
    /// `minute` (the default) or `day`.
    #[serde(default)]
    #[param(inline)]
    pub granularity: GranularityParam,
    /// RFC 3339, inclusive.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339, exclusive.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// How many products per currency (default 10).
    #[param(minimum = 1, maximum = 100)]
    pub top: Option<u32>,
}

impl TopProductsParams {
    fn range(&self) -> Result<WindowRange, orderflow_core::CoreError> {
        SalesParams {
            granularity: self.granularity,
            from: self.from,
            to: self.to,
        }
        .range()
    }
}

/// Revenue, orders and units of one window, in one currency, from confirmed
/// orders (by the time they were confirmed).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SalesWindowView {
    pub window_start: chrono::DateTime<chrono::Utc>,
    /// Exclusive: the next window's start.
    pub window_end: chrono::DateTime<chrono::Utc>,
    pub currency: String,
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i64,
}

impl From<SalesWindow> for SalesWindowView {
    fn from(w: SalesWindow) -> Self {
        Self {
            window_end: w.window_start + w.granularity.width(),
            window_start: w.window_start,
            currency: w.currency,
            orders: w.orders,
            units: w.units,
            revenue_cents: w.revenue_cents,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SalesView {
    pub granularity: String,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    /// Oldest first; windows without sales are left out.
    pub windows: Vec<SalesWindowView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductSalesView {
    /// 1 = most revenue among the products sold in the same currency.
    pub place: i64,
    pub product_id: uuid::Uuid,
    /// Absent when the product was deleted since.
    pub name: Option<String>,
    pub currency: String,
    /// Orders that had the product.
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i64,
}

impl From<ProductSales> for ProductSalesView {
    fn from(p: ProductSales) -> Self {
        Self {
            place: p.place,
            product_id: p.product_id,
            name: p.name,
            currency: p.currency,
            orders: p.orders,
            units: p.units,
            revenue_cents: p.revenue_cents,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopProductsView {
    pub granularity: String,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    /// Per currency, by place.
    pub products: Vec<ProductSalesView>,
}

/// Revenue, orders and units per window of event time (the `analytics`
/// consumer group's tumbling windows), per currency.
#[utoipa::path(get, operation_id = "get_sales", path = "/api/v1/admin/sales", tag = "admin", security(("bearer" = [])), params(SalesParams), responses(
    (status = 200, body = SalesView)))]
pub async fn sales(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    ApiQuery(params): ApiQuery<SalesParams>,
) -> ApiResult<Json<SalesView>> {
    let range = params.range()?;
    let windows = state.operations.sales(range).await?;
    Ok(Json(SalesView {
        granularity: range.granularity.to_string(),
        from: range.from,
        to: range.to,
        windows: windows.into_iter().map(Into::into).collect(),
    }))
}

/// The products with the most revenue over a range of windows, per currency.
#[utoipa::path(get, operation_id = "get_top_products", path = "/api/v1/admin/sales/products", tag = "admin", security(("bearer" = [])), params(TopProductsParams), responses(
    (status = 200, body = TopProductsView)))]
pub async fn top_products(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    ApiQuery(params): ApiQuery<TopProductsParams>,
) -> ApiResult<Json<TopProductsView>> {
    let range = params.range()?;
    let products = state.operations.top_products(range, params.top).await?;
    Ok(Json(TopProductsView {
        granularity: range.granularity.to_string(),
        from: range.from,
        to: range.to,
        products: products.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ViewersParams {
    /// The UTC day, `YYYY-MM-DD`; default today.
    #[param(value_type = Option<String>, format = Date)]
    pub day: Option<chrono::NaiveDate>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UniqueViewersView {
    pub product_id: uuid::Uuid,
    #[schema(value_type = String, format = Date)]
    pub day: chrono::NaiveDate,
    /// Distinct readers of the product that day, told apart by address and
    /// User-Agent.
    pub unique_viewers: u64,
    /// Whether the count is exact (the embedded setup) or a HyperLogLog
    /// estimate (with Redis).
    pub exact: bool,
    /// The estimate's relative standard error (0.0081 for a HyperLogLog:
    /// about 68% of counts within 0.81%, 99.7% within 2.43%); 0 when exact.
    pub relative_standard_error: f64,
}

/// How many distinct visitors read a product on a day (the `trending`
/// consumer group's count).
#[utoipa::path(get, operation_id = "get_unique_viewers", path = "/api/v1/admin/products/{id}/viewers", tag = "admin", security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "product id"), ViewersParams), responses(
    (status = 200, body = UniqueViewersView)))]
pub async fn unique_viewers(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    Path(id): Path<uuid::Uuid>,
    ApiQuery(params): ApiQuery<ViewersParams>,
) -> ApiResult<Json<UniqueViewersView>> {
    let day = params
        .day
        .unwrap_or_else(|| chrono::Utc::now().date_naive());
    let viewers = state.catalog.unique_viewers(id, day).await?;
    Ok(Json(UniqueViewersView {
        product_id: id,
        day,
        unique_viewers: viewers.count,
        exact: viewers.standard_error == 0.0,
        relative_standard_error: viewers.standard_error,
    }))
}
