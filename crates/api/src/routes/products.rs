//! The catalog: paged listing, one product with conditional GET, trending
//! products, admin writes.

use axum::Json;
use std::net::{IpAddr, Ipv4Addr};

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_core::CoreError;
use orderflow_core::services::catalog::ViewerKey;
use orderflow_domain::ValidationError;
use orderflow_domain::product::{Product, ProductDraft};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{AdminCaller, ApiJson, ApiQuery, ClientIp};
use crate::problem::ApiResult;
use crate::schema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub id: uuid::Uuid,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    pub stock: i64,
    /// Grows with every change of the product (fields or stock); a client
    /// holding two copies keeps the one with the higher version.
    pub version: i64,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            price_cents: p.price_cents,
            currency: p.currency.to_string(),
            stock: p.stock,
            version: p.version,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductPageView {
    pub items: Vec<ProductView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
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
    pub cursor: Option<uuid::Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    #[schema(schema_with = schema::sku)]
    pub sku: String,
    #[schema(schema_with = schema::product_name)]
    pub name: String,
    #[serde(deserialize_with = "schema::whole_number")]
    #[schema(schema_with = schema::price_cents)]
    pub price_cents: i64,
    #[schema(schema_with = schema::currency)]
    pub currency: String,
    #[serde(deserialize_with = "schema::whole_number")]
    #[schema(schema_with = schema::stock)]
    pub stock: i64,
}

impl ProductInput {
    fn draft(&self) -> Result<ProductDraft, ValidationError> {
        ProductDraft::new(
            &self.sku,
            &self.name,
            self.price_cents,
            &self.currency,
            self.stock,
        )
    }
}

/// Lists products in a stable order, a page at a time.
#[utoipa::path(get, operation_id = "list_products", path = "/api/v1/products", tag = "catalog", params(ListParams), responses((status = 200, body = ProductPageView)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<ProductPageView>> {
    let page = state.catalog.list(params.cursor, params.limit).await?;
    Ok(Json(ProductPageView {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// How far back trending looks.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
pub enum TrendingWindow {
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "15m")]
    FifteenMinutes,
    #[default]
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "6h")]
    SixHours,
    #[serde(rename = "24h")]
    Day,
}

impl TrendingWindow {
    fn duration(self) -> std::time::Duration {
        let minutes = match self {
            TrendingWindow::FiveMinutes => 5,
            TrendingWindow::FifteenMinutes => 15,
            TrendingWindow::Hour => 60,
            TrendingWindow::SixHours => 6 * 60,
            TrendingWindow::Day => 24 * 60,
        };
        std::time::Duration::from_secs(minutes * 60)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrendingParams {
    /// How far back: `5m`, `15m`, `1h` (the default), `6h` or `24h`.
    #[serde(default)]
    #[param(inline)]
    pub window: TrendingWindow,
    /// How many products, 1 to 50; default 10.
    #[param(minimum = 1, maximum = 50)]
    pub top: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrendingProductView {
    pub product: ProductView,
    /// Views in the window.
    pub views: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrendingView {
    /// Most viewed first.
    pub items: Vec<TrendingProductView>,
}

/// The most viewed products over the last `window`: a hopping window of
/// whole minutes that ends with the current minute and advances every
/// minute. A product read counts a view; views are counted in memory and
/// reach this list at each process's next flush (every second by default).
#[utoipa::path(get, operation_id = "trending_products", path = "/api/v1/products/trending", tag = "catalog", params(TrendingParams), responses(
    (status = 200, body = TrendingView)))]
pub async fn trending(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<TrendingParams>,
) -> ApiResult<Json<TrendingView>> {
    let items = state
        .catalog
        .trending(params.window.duration(), params.top.unwrap_or(10))
        .await?;
    Ok(Json(TrendingView {
        items: items
            .into_iter()
            .map(|(product, views)| TrendingProductView {
                product: product.into(),
                views,
            })
            .collect(),
    }))
}

/// One product. Answers 304 when `If-None-Match` carries the current `ETag`.
#[utoipa::path(get, operation_id = "get_product", path = "/api/v1/products/{id}", tag = "catalog", params(("id" = uuid::Uuid, Path, description = "product id")), responses(
    (status = 200, body = ProductView, headers(("ETag" = String), ("Cache-Control" = String))),
    (status = 304, description = "not modified")))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<uuid::Uuid>,
    client: Option<Extension<ClientIp>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let product = state
        .catalog
        .product(id)
        .await?
        .ok_or(CoreError::NotFound("product"))?;
    // Counted in memory, flushed in batches (write-behind); the reader is
    // their address and browser, for the unique viewers of the day.
    let address = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.0);
    let user_agent = headers
        .get(header::USER_AGENT)
        .map_or(&b""[..], HeaderValue::as_bytes);
    state
        .catalog
        .record_view(product.id, ViewerKey::of(address, user_agent));
    let view = ProductView::from(product);
    let body = serde_json::to_vec(&view).map_err(|e| CoreError::Internal(e.to_string()))?;
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|candidate| {
                let candidate = candidate.trim();
                candidate == "*" || candidate.trim_start_matches("W/") == etag
            })
        });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header"),
    );
    // Short: stock changes as orders come in; revalidation is cheap with the ETag.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=5, must-revalidate"),
    );
    Ok(response)
}

/// Adds a product (admin).
#[utoipa::path(post, operation_id = "create_product", path = "/api/v1/products", tag = "catalog", request_body = ProductInput, security(("bearer" = [])), responses(
    (status = 201, body = ProductView)))]
pub async fn create(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    ApiJson(input): ApiJson<ProductInput>,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    let product = state.catalog.create(input.draft()?).await?;
    Ok((StatusCode::CREATED, Json(product.into())))
}

/// Replaces a product's fields (admin); cached copies are invalidated.
#[utoipa::path(put, operation_id = "update_product", path = "/api/v1/products/{id}", tag = "catalog", request_body = ProductInput, security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "product id")), responses(
    (status = 200, body = ProductView)))]
pub async fn update(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
    Path(id): Path<uuid::Uuid>,
    ApiJson(input): ApiJson<ProductInput>,
) -> ApiResult<Json<ProductView>> {
    Ok(Json(state.catalog.update(id, input.draft()?).await?.into()))
}
