//! The catalog: paged listing, search with filters and sorting, the
//! categories, one product with conditional GET and its picture, trending
//! products, admin writes.

use axum::Json;
use std::net::{IpAddr, Ipv4Addr};

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use orderflow_core::CoreError;
use orderflow_core::services::catalog::ViewerKey;
use orderflow_domain::ValidationError;
use orderflow_domain::product::{
    self, MAX_SEARCH_OFFSET, Product, ProductDraft, ProductSearch, ProductSort, search_words,
};
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
    pub description: String,
    /// Absent for a product filed nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Its picture (an SVG the server draws from the name and category).
    pub image_url: String,
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
            description: p.description,
            category: p.category,
            image_url: format!("/api/v1/products/{}/image.svg", p.id),
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
    #[serde(default)]
    #[schema(schema_with = schema::description)]
    pub description: String,
    #[serde(default)]
    #[schema(schema_with = schema::category)]
    pub category: Option<String>,
}

impl ProductInput {
    fn draft(&self) -> Result<ProductDraft, ValidationError> {
        ProductDraft::new(
            &self.sku,
            &self.name,
            self.price_cents,
            &self.currency,
            self.stock,
        )?
        .described(&self.description, self.category.as_deref())
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find in the name, description or category; each must begin
    /// a word there (`mug` finds "Mugs"), all must match. Letters and
    /// digits count; anything else separates words (at most 8 are used).
    #[param(max_length = 200)]
    pub q: Option<String>,
    /// Only this category (its exact name).
    pub category: Option<String>,
    /// Cents, 0 to `MAX_PRICE_CENTS` (10,000,000,000) like a product's price.
    #[param(minimum = 0, maximum = 10_000_000_000_i64)]
    pub min_price_cents: Option<i64>,
    #[param(minimum = 0, maximum = 10_000_000_000_i64)]
    pub max_price_cents: Option<i64>,
    /// `relevance` (the default: best match first, or creation order
    /// without `q`), `price_asc`, `price_desc`, `name`, `newest`.
    #[serde(default)]
    #[param(inline)]
    pub sort: ProductSort,
    /// 1..=100, default 20.
    /// (Larger values are accepted and clamped to the route's page size; the
    /// documented range is what parses.)
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub limit: Option<u32>,
    /// Results to skip: the previous page's `next_offset`; at most 10,000.
    #[param(minimum = 0, maximum = 10000)]
    pub offset: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchView {
    pub items: Vec<ProductView>,
    /// Pass as `offset` for the next page; absent on the last page.
    pub next_offset: Option<u32>,
}

/// Finds products by words, category and price, in the order asked. The
/// products come from the cache (stock and price current); which products
/// match is kept for a few seconds.
#[utoipa::path(get, operation_id = "search_products", path = "/api/v1/products/search", tag = "catalog", params(SearchParams), responses((status = 200, body = SearchView)))]
pub async fn search(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> ApiResult<Json<SearchView>> {
    let search = params.search()?;
    let page = state.catalog.search(&search).await?;
    Ok(Json(SearchView {
        items: page.items.into_iter().map(Into::into).collect(),
        next_offset: page.next_offset,
    }))
}

impl SearchParams {
    fn search(self) -> Result<ProductSearch, ValidationError> {
        let price = |field: &str, value: Option<i64>| {
            value
                .map(|cents| product::PRICE_CENTS.check(field, cents))
                .transpose()
        };
        let offset = self.offset.unwrap_or(0);
        if offset > MAX_SEARCH_OFFSET {
            return Err(ValidationError::new(
                "offset",
                format!("must be at most {MAX_SEARCH_OFFSET}; narrow the search instead"),
            ));
        }
        if self.q.as_ref().is_some_and(|q| q.chars().count() > 200) {
            return Err(ValidationError::new("q", "must be at most 200 characters"));
        }
        Ok(ProductSearch {
            words: search_words(self.q.as_deref().unwrap_or_default()),
            category: self
                .category
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty()),
            min_price_cents: price("min_price_cents", self.min_price_cents)?,
            max_price_cents: price("max_price_cents", self.max_price_cents)?,
            sort: self.sort,
            offset,
            limit: self.limit.unwrap_or(20).clamp(1, 100),
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CategoryView {
    pub name: String,
    /// Products in it.
    pub products: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CategoriesView {
    /// By name.
    pub items: Vec<CategoryView>,
}

/// Every category, with how many products it holds.
#[utoipa::path(get, operation_id = "list_categories", path = "/api/v1/categories", tag = "catalog", responses((status = 200, body = CategoriesView)))]
pub async fn categories(State(state): State<AppState>) -> ApiResult<Json<CategoriesView>> {
    let items = state
        .catalog
        .categories()
        .await?
        .into_iter()
        .map(|(name, products)| CategoryView { name, products })
        .collect();
    Ok(Json(CategoriesView { items }))
}

/// A product's picture, drawn from its name and category: the demo shop
/// needs no image store, and every product has one.
#[derive(Template)]
#[template(path = "product.svg", escape = "html")]
struct ProductPicture<'a> {
    name: &'a str,
    label: String,
    initials: String,
    category: Option<&'a str>,
    hue: u16,
}

impl<'a> ProductPicture<'a> {
    fn of(product: &'a Product) -> Self {
        let label: String = product.name.chars().take(28).collect();
        let label = if label.len() < product.name.len() {
            format!("{label}…")
        } else {
            label
        };
        let initials = product
            .name
            .split_whitespace()
            .filter_map(|word| word.chars().find(|c| c.is_alphanumeric()))
            .take(2)
            .flat_map(char::to_uppercase)
            .collect();
        Self {
            name: &product.name,
            label,
            initials,
            category: product.category.as_deref(),
            hue: u16::from_be_bytes([product.id.as_bytes()[14], product.id.as_bytes()[15]]) % 360,
        }
    }
}

/// The product's picture as SVG; its `ETag` is a digest of the picture, so
/// a renamed product's picture is fetched again and an unchanged one
/// answers 304.
#[utoipa::path(get, operation_id = "product_image", path = "/api/v1/products/{id}/image.svg", tag = "catalog", params(("id" = uuid::Uuid, Path, description = "product id")), responses(
    (status = 200, content_type = "image/svg+xml", body = String, headers(("ETag" = String), ("Cache-Control" = String))),
    (status = 304, description = "not modified")))]
pub async fn image(
    State(state): State<AppState>,
    Path(id): Path<uuid::Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let product = find_product(&state, id).await?;
    let picture = ProductPicture::of(&product)
        .render()
        .map_err(|e| CoreError::Internal(e.to_string()))?;
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&picture))[..32]);
    Ok(conditional(
        &headers,
        etag,
        "image/svg+xml",
        picture.into_bytes(),
        "public, max-age=3600",
    ))
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
///
/// The `ETag` is the product's version: the database bumps it with every
/// change of the row, fields or stock, and the body is made of that row
/// alone, so one version is one body. Naming it costs nothing, where
/// hashing the body cost every read a SHA-256.
#[utoipa::path(get, operation_id = "get_product", path = "/api/v1/products/{id}", tag = "catalog", params(("id" = uuid::Uuid, Path, description = "product id")), responses(
    (status = 200, body = ProductView, headers(("ETag" = String), ("Cache-Control" = String))),
    (status = 304, description = "not modified")))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<uuid::Uuid>,
    client: Option<Extension<ClientIp>>,
    // The whole request, for its headers: a `HeaderMap` extractor copies them.
    request: axum::extract::Request,
) -> ApiResult<Response> {
    let headers = request.headers();
    // The body is made once per cached version of the product.
    let (product, body) = state
        .catalog
        .product_rendered(id, |product| {
            serde_json::to_vec(&ProductView::from(product.clone()))
                .expect("a product view is plain data, always serialisable")
        })
        .await?
        .ok_or(CoreError::NotFound("product"))?;
    count_view(&state, product.id, client.map(|c| c.0), headers);
    let etag = format!("\"v{}\"", product.version);
    // Short: stock changes as orders come in; revalidation is cheap with the ETag.
    Ok(conditional(
        headers,
        etag,
        "application/json",
        axum::body::Bytes::from_owner(body),
        "public, max-age=5, must-revalidate",
    ))
}

/// A product, or "not found".
async fn find_product(state: &AppState, id: uuid::Uuid) -> Result<Product, CoreError> {
    state
        .catalog
        .product(id)
        .await?
        .ok_or(CoreError::NotFound("product"))
}

/// A product as a reader reads it (`GET /products/{id}`, a product page):
/// the product, and a view counted in memory, flushed in batches
/// (write-behind); the reader is their address and browser, for the unique
/// viewers of the day.
pub(crate) async fn read_product(
    state: &AppState,
    id: uuid::Uuid,
    client: Option<ClientIp>,
    headers: &HeaderMap,
) -> Result<Product, CoreError> {
    let product = find_product(state, id).await?;
    count_view(state, product.id, client, headers);
    Ok(product)
}

/// Counts a view of product `id` by this reader (their address and
/// browser), in memory until the next flush (write-behind).
fn count_view(state: &AppState, id: uuid::Uuid, client: Option<ClientIp>, headers: &HeaderMap) {
    let address = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0);
    let user_agent = headers
        .get(header::USER_AGENT)
        .map_or(&b""[..], HeaderValue::as_bytes);
    state
        .catalog
        .record_view(id, ViewerKey::of(address, user_agent));
}

/// The headers a product read's answer ends up with: its type, `ETag`,
/// `Cache-Control` and length, `RateLimit-Policy` and `RateLimit`, the
/// request id, and one to spare.
const ANSWER_HEADERS: usize = 8;

/// A conditional GET's answer: 304 when `If-None-Match` names `etag` (or
/// `*`), else `body`; either way with the `ETag` and `Cache-Control`.
fn conditional(
    request: &HeaderMap,
    etag: String,
    content_type: &'static str,
    body: impl Into<axum::body::Body>,
    cache_control: &'static str,
) -> Response {
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|candidate| {
                let candidate = candidate.trim();
                candidate == "*" || candidate.trim_start_matches("W/") == etag
            })
        });
    // Header values made without parsing or copying: this answers every
    // product read.
    let mut response = if matches {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(body.into())
    };
    let headers = response.headers_mut();
    // Room for what the answer carries on its way out (the length, the
    // rate-limit pair, the request id): a header map starts with room for
    // six, and growing it at the seventh moved every header already in it.
    *headers = HeaderMap::with_capacity(ANSWER_HEADERS);
    if !matches {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(
        header::ETAG,
        HeaderValue::from_maybe_shared(axum::body::Bytes::from(etag))
            .expect("a quoted version is a valid header value"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response
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
