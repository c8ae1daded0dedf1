//! The storefront: home, search and categories, product pages, the cart and
//! checkout, orders (live status, cancel), notifications, the account
//! (points, leaderboard, devices), and signing in and out.
//!
//! Forms post and redirect (303) to the page that shows the result, with a
//! fixed `?done=` notice; a signed-out visitor who needs an account is sent
//! to the log-in page and back.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::{Extension, Form};
use orderflow_core::CoreError;
use orderflow_core::services::auth::Principal;
use orderflow_domain::order::{Order, OrderStatus};
use orderflow_domain::product::{
    MAX_SEARCH_OFFSET, Product, ProductSearch, ProductSort, search_words,
};
use serde::Deserialize;

use super::session::{CookieChanges, Visitor, check_csrf, signed_in, signed_out};
use super::{Chrome, PageError, PageResult, live_positions, money, render};
use crate::AppState;
use crate::extract::{ClientIp, RequestTrace};

/// A product as a card or a page shows it.
pub struct ProductCard {
    pub id: String,
    pub name: String,
    pub description: String,
    pub category: Option<String>,
    pub price: String,
    pub stock: i64,
}

impl From<&Product> for ProductCard {
    fn from(p: &Product) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name.clone(),
            description: p.description.clone(),
            category: p.category.clone(),
            price: money(p.price_cents, &p.currency),
            stock: p.stock,
        }
    }
}

fn cards(products: &[Product]) -> Vec<ProductCard> {
    products.iter().map(ProductCard::from).collect()
}

/// The signed-in principal, or the way to the log-in page and back to
/// `next`.
fn signed_in_as(visitor: &Visitor, next: &str) -> Result<Principal, PageError> {
    visitor.principal.clone().ok_or_else(|| PageError::SignIn {
        next: next.to_owned(),
    })
}

/// What a signed-in page starts with: the principal (or the way to the
/// log-in page and back), and where its live channels stand, read before
/// the page's data.
async fn signed_in_page(
    state: &AppState,
    visitor: &Visitor,
    next: &str,
) -> Result<(Principal, super::LivePositions), PageError> {
    let principal = signed_in_as(visitor, next)?;
    Ok((principal, live_positions(state, visitor).await))
}

/// The signed-in principal of a form that changes state, once its CSRF
/// token checks out.
fn signed_in_form(visitor: &Visitor, csrf: &str, next: &str) -> Result<Principal, PageError> {
    let principal = signed_in_as(visitor, next)?;
    check_csrf(visitor, Some(csrf)).map_err(|e| PageError::from_core(e, visitor))?;
    Ok(principal)
}

/// A redirect to `to` after a form, showing the `done` notice there.
fn see(to: &str, done: &str) -> Response {
    let separator = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{separator}done={done}")).into_response()
}

#[derive(Debug, Deserialize, Default)]
pub struct Notice {
    pub done: Option<String>,
}

#[derive(Template)]
#[template(path = "web/home.html")]
struct HomePage {
    chrome: Chrome,
    categories: Vec<(String, i64)>,
    trending: Vec<ProductCard>,
    newest: Vec<ProductCard>,
}

pub async fn home(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let positions = live_positions(&state, &visitor).await;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let categories = state.catalog.categories().await.map_err(fail)?;
    let trending: Vec<Product> = state
        .catalog
        .trending(std::time::Duration::from_secs(3600), 8)
        .await
        .map_err(fail)?
        .into_iter()
        .map(|(product, _)| product)
        .collect();
    let newest = state
        .catalog
        .search(&ProductSearch {
            words: Vec::new(),
            category: None,
            min_price_cents: None,
            max_price_cents: None,
            sort: ProductSort::Newest,
            offset: 0,
            limit: 8,
        })
        .await
        .map_err(fail)?;
    Ok(render(&HomePage {
        chrome: Chrome::new(&visitor, "Shop")
            .notice(notice.done.as_deref())
            .live(&[], positions),
        categories,
        trending: cards(&trending),
        newest: cards(&newest.items),
    }))
}

#[derive(Debug, Deserialize, Default)]
pub struct SearchForm {
    q: Option<String>,
    category: Option<String>,
    sort: Option<String>,
    min: Option<String>,
    max: Option<String>,
    offset: Option<u32>,
}

/// A price typed in whole units or with cents (`12`, `12.50`), as cents.
fn cents(text: Option<&str>) -> Option<i64> {
    let text = text?.trim();
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    let units: i64 = units.parse().ok()?;
    let fraction: i64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<i64>().ok()? * 10,
        2 => fraction.parse().ok()?,
        _ => return None,
    };
    (units >= 0).then(|| units * 100 + fraction)
}

#[derive(Template)]
#[template(path = "web/products.html")]
struct ProductsPage {
    chrome: Chrome,
    heading: String,
    products: Vec<ProductCard>,
    categories: Vec<(String, i64)>,
    category: String,
    sort: String,
    min: String,
    max: String,
    query: String,
    previous: Option<String>,
    next: Option<String>,
}

const SORTS: [(&str, ProductSort); 5] = [
    ("relevance", ProductSort::Relevance),
    ("price_asc", ProductSort::PriceAsc),
    ("price_desc", ProductSort::PriceDesc),
    ("name", ProductSort::Name),
    ("newest", ProductSort::Newest),
];
const PAGE: u32 = 24;

pub async fn search(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(form): Query<SearchForm>,
) -> PageResult {
    products_page(state, visitor, form, None).await
}

pub async fn category(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
    Query(form): Query<SearchForm>,
) -> PageResult {
    products_page(state, visitor, form, Some(name)).await
}

async fn products_page(
    state: AppState,
    visitor: Visitor,
    form: SearchForm,
    category: Option<String>,
) -> PageResult {
    let positions = live_positions(&state, &visitor).await;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let category = category
        .or(form.category.clone())
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    let sort_name = form.sort.clone().unwrap_or_else(|| "relevance".into());
    let sort = SORTS
        .iter()
        .find(|(name, _)| *name == sort_name)
        .map_or(ProductSort::Relevance, |(_, sort)| *sort);
    let query = form.q.clone().unwrap_or_default();
    let offset = form.offset.unwrap_or(0).min(MAX_SEARCH_OFFSET);
    let search = ProductSearch {
        words: search_words(&query),
        category: category.clone(),
        min_price_cents: cents(form.min.as_deref()),
        max_price_cents: cents(form.max.as_deref()),
        sort,
        offset,
        limit: PAGE,
    };
    let page = state.catalog.search(&search).await.map_err(fail)?;
    let categories = state.catalog.categories().await.map_err(fail)?;
    let link = |offset: u32| {
        let mut pairs = form_urlencoded::Serializer::new(String::new());
        pairs.append_pair("q", &query);
        if let Some(category) = &category {
            pairs.append_pair("category", category);
        }
        pairs.append_pair("sort", &sort_name);
        pairs.append_pair("min", form.min.as_deref().unwrap_or_default());
        pairs.append_pair("max", form.max.as_deref().unwrap_or_default());
        pairs.append_pair("offset", &offset.to_string());
        format!("/search?{}", pairs.finish())
    };
    let heading = match (&category, query.trim().is_empty()) {
        (Some(category), true) => category.clone(),
        (Some(category), false) => format!("“{}” in {category}", query.trim()),
        (None, false) => format!("Results for “{}”", query.trim()),
        (None, true) => "All products".to_owned(),
    };
    let mut chrome = Chrome::new(&visitor, heading.clone()).live(&[], positions);
    chrome.query = query.clone();
    let previous = (offset > 0).then(|| link(offset.saturating_sub(PAGE)));
    let next = page.next_offset.map(link);
    Ok(render(&ProductsPage {
        chrome,
        heading,
        products: cards(&page.items),
        categories,
        category: category.unwrap_or_default(),
        sort: sort_name.clone(),
        min: form.min.clone().unwrap_or_default(),
        max: form.max.clone().unwrap_or_default(),
        query,
        previous,
        next,
    }))
}

#[derive(Template)]
#[template(path = "web/product.html")]
struct ProductPage {
    chrome: Chrome,
    product: ProductCard,
    in_cart: u32,
}

pub async fn product(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    client: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    Path(id): Path<uuid::Uuid>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let positions = live_positions(&state, &visitor).await;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let product = crate::routes::products::read_product(&state, id, client.map(|c| c.0), &headers)
        .await
        .map_err(fail)?;
    let in_cart = match &visitor.principal {
        Some(principal) => state
            .carts
            .quantity_of(principal.user_id, id)
            .await
            .map_err(fail)?,
        None => 0,
    };
    Ok(render(&ProductPage {
        chrome: Chrome::new(&visitor, product.name.clone())
            .notice(notice.done.as_deref())
            .live(&[(format!("product:{id}"), product.version)], positions),
        product: ProductCard::from(&product),
        in_cart,
    }))
}

#[derive(Debug, Deserialize)]
pub struct CartForm {
    csrf: String,
    product_id: uuid::Uuid,
    quantity: i64,
}

pub async fn add_to_cart(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<CartForm>,
) -> PageResult {
    let principal = signed_in_form(
        &visitor,
        &form.csrf,
        &format!("/products/{}", form.product_id),
    )?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    state
        .carts
        .add(principal.user_id, form.product_id, form.quantity)
        .await
        .map_err(fail)?;
    Ok(see(&format!("/products/{}", form.product_id), "added"))
}

pub async fn update_cart(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<CartForm>,
) -> PageResult {
    let principal = signed_in_form(&visitor, &form.csrf, "/cart")?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    state
        .carts
        .set(principal.user_id, form.product_id, form.quantity)
        .await
        .map_err(fail)?;
    Ok(see("/cart", "updated"))
}

/// One line of the cart page.
struct CartRow {
    product_id: String,
    name: String,
    quantity: u32,
    unit_price: String,
    line_total: String,
}

#[derive(Template)]
#[template(path = "web/cart.html")]
struct CartPage {
    chrome: Chrome,
    rows: Vec<CartRow>,
    unavailable: usize,
    total: Option<String>,
    /// The checkout's idempotency key: the cart's token, so a double
    /// click or two tabs make one order.
    token: String,
}

pub async fn cart(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let (principal, positions) = signed_in_page(&state, &visitor, "/cart").await?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let contents = state.carts.get(principal.user_id).await.map_err(fail)?;
    let rows = contents
        .items
        .iter()
        .map(|item| CartRow {
            product_id: item.line.product_id.to_string(),
            name: item.line.name.clone(),
            quantity: item.line.quantity,
            unit_price: money(item.line.unit_price_cents, &item.currency),
            line_total: money(item.line.line_total_cents, &item.currency),
        })
        .collect();
    Ok(render(&CartPage {
        chrome: Chrome::new(&visitor, "Your cart")
            .notice(notice.done.as_deref())
            .live(&[], positions),
        rows,
        unavailable: contents.unavailable.len(),
        total: contents.total.map(|t| t.to_string()),
        token: contents.token.unwrap_or_default(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct CheckoutForm {
    csrf: String,
    token: String,
}

pub async fn checkout(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    RequestTrace(trace): RequestTrace,
    Form(form): Form<CheckoutForm>,
) -> PageResult {
    let principal = signed_in_form(&visitor, &form.csrf, "/cart")?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let key = Some(form.token).filter(|t| !t.is_empty());
    let answer = state
        .carts
        .checkout(principal.user_id, key, Some(trace.to_string()))
        .await
        .map_err(fail)?;
    match answer.body["id"].as_str() {
        Some(id) if answer.status < 300 => {
            Ok(Redirect::to(&format!("/orders/{id}")).into_response())
        }
        _ => {
            let detail = answer.body["detail"]
                .as_str()
                .unwrap_or("the order could not be placed")
                .to_owned();
            Err(fail(CoreError::Conflict(detail)))
        }
    }
}

/// An order as the pages show it.
struct OrderRow {
    id: String,
    short_id: String,
    status: String,
    total: String,
    placed: String,
    items: Vec<(String, u32, String)>,
    cancellable: bool,
    refund: bool,
}

impl From<&Order> for OrderRow {
    fn from(order: &Order) -> Self {
        let id = order.id.to_string();
        Self {
            short_id: id[id.len() - 8..].to_owned(),
            id,
            status: order.status.to_string(),
            total: money(order.total_cents, &order.currency),
            placed: order.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            items: order
                .items
                .iter()
                .map(|line| {
                    (
                        line.name.clone(),
                        line.quantity,
                        money(line.line_total_cents, &order.currency),
                    )
                })
                .collect(),
            cancellable: matches!(
                order.status.on(orderflow_domain::order::OrderFact::Cancel),
                orderflow_domain::order::Transition::Apply(_)
            ),
            refund: order.status.is_charged(),
        }
    }
}

#[derive(Template)]
#[template(path = "web/orders.html")]
struct OrdersPage {
    chrome: Chrome,
    orders: Vec<OrderRow>,
}

pub async fn orders(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let (principal, positions) = signed_in_page(&state, &visitor, "/orders").await?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let orders = state
        .orders
        .list(principal.user_id, None, Some(50))
        .await
        .map_err(fail)?;
    Ok(render(&OrdersPage {
        chrome: Chrome::new(&visitor, "Your orders")
            .notice(notice.done.as_deref())
            .live(&[], positions),
        orders: orders.iter().map(OrderRow::from).collect(),
    }))
}

#[derive(Template)]
#[template(path = "web/order.html")]
struct OrderPage {
    chrome: Chrome,
    order: OrderRow,
    history: Vec<(String, String)>,
}

pub async fn order(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<uuid::Uuid>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let (principal, positions) = signed_in_page(&state, &visitor, &format!("/orders/{id}")).await?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let (order, history) = state
        .orders
        .get(principal.user_id, id)
        .await
        .map_err(fail)?;
    Ok(render(&OrderPage {
        chrome: Chrome::new(&visitor, "Your order")
            .notice(notice.done.as_deref())
            .live(&[], positions),
        order: OrderRow::from(&order),
        history: history
            .iter()
            .map(|step| {
                (
                    step.status.to_string(),
                    step.at.format("%H:%M:%S").to_string(),
                )
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn cancel_order(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    RequestTrace(trace): RequestTrace,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    let principal = signed_in_form(&visitor, &form.csrf, &format!("/orders/{id}"))?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    state
        .orders
        .cancel(principal.user_id, id, Some(trace.to_string()))
        .await
        .map_err(fail)?;
    Ok(see(&format!("/orders/{id}"), "cancelled"))
}

#[derive(Template)]
#[template(path = "web/notifications.html")]
struct NotificationsPage {
    chrome: Chrome,
    /// (when, channel, subject, order id)
    notifications: Vec<(String, String, String, Option<String>)>,
}

pub async fn notifications(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
) -> PageResult {
    let (principal, positions) = signed_in_page(&state, &visitor, "/notifications").await?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let list = state
        .queries
        .notifications(principal.user_id, Some(50))
        .await
        .map_err(fail)?;
    Ok(render(&NotificationsPage {
        chrome: Chrome::new(&visitor, "Notifications").live(&[], positions),
        notifications: list
            .iter()
            .map(|n| {
                (
                    n.sent_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    n.channel.as_str().to_owned(),
                    n.kind.subject().to_owned(),
                    n.order_id.map(|id| id.to_string()),
                )
            })
            .collect(),
    }))
}

struct DeviceRow {
    id: String,
    device: String,
    since: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "web/account.html")]
struct AccountPage {
    chrome: Chrome,
    points: i64,
    rank: Option<i64>,
    leaders: Vec<(i64, String, i64)>,
    devices: Vec<DeviceRow>,
}

pub async fn account(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let (principal, positions) = signed_in_page(&state, &visitor, "/account").await?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let standing = state
        .queries
        .points(principal.user_id)
        .await
        .map_err(fail)?;
    let leaders = state.queries.leaderboard(Some(10)).await.map_err(fail)?;
    let sessions = state.auth.sessions(&principal).await.map_err(fail)?;
    Ok(render(&AccountPage {
        chrome: Chrome::new(&visitor, "Your account")
            .notice(notice.done.as_deref())
            .live(&[], positions),
        points: standing.points,
        rank: standing.rank,
        leaders: leaders
            .into_iter()
            .map(|entry| (entry.rank, entry.name, entry.points))
            .collect(),
        devices: sessions
            .iter()
            .map(|session| DeviceRow {
                id: session.id.to_string(),
                device: session.device.clone(),
                since: session.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                current: session.id == principal.session_id,
            })
            .collect(),
    }))
}

pub async fn end_session(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    let principal = signed_in_form(&visitor, &form.csrf, "/account")?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    state
        .auth
        .revoke_session(&principal, id)
        .await
        .map_err(fail)?;
    if id == principal.session_id {
        return Ok(signed_out_response(&visitor, "/?done=signed-out"));
    }
    Ok(see("/account", "ended"))
}

#[derive(Template)]
#[template(path = "web/login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    email: String,
    error: Option<String>,
    register: bool,
    name: String,
}

#[derive(Debug, Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path of this site: a log-in link cannot send the shopper away.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn login_form(visitor: &Visitor, register: bool, next: String) -> LoginPage {
    LoginPage {
        chrome: Chrome::new(visitor, if register { "Register" } else { "Log in" }),
        next,
        email: String::new(),
        error: None,
        register,
        name: String::new(),
    }
}

pub async fn login_page(
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<NextQuery>,
) -> Response {
    render(&login_form(
        &visitor,
        false,
        safe_next(query.next.as_deref()),
    ))
}

pub async fn register_page(
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<NextQuery>,
) -> Response {
    render(&login_form(
        &visitor,
        true,
        safe_next(query.next.as_deref()),
    ))
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    csrf: String,
    email: String,
    password: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    next: Option<String>,
}

/// The device name a browser session is listed under.
fn device_of(headers: &HeaderMap) -> String {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("browser");
    let browser = ["Firefox", "Edg", "Chrome", "Safari"]
        .into_iter()
        .find(|name| agent.contains(name))
        .map_or("browser", |name| if name == "Edg" { "Edge" } else { name });
    format!("{browser} (web)")
}

pub async fn login(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    client: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    sign_in(state, visitor, client, headers, form, false).await
}

pub async fn register(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    client: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    sign_in(state, visitor, client, headers, form, true).await
}

/// Logs in (registering first when asked); a refusal shows the form
/// again with what was wrong, the e-mail kept.
async fn sign_in(
    state: AppState,
    visitor: Visitor,
    client: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    form: LoginForm,
    register: bool,
) -> PageResult {
    check_csrf(&visitor, Some(&form.csrf)).map_err(|e| PageError::from_core(e, &visitor))?;
    let next = safe_next(form.next.as_deref());
    let attempt = async {
        if register {
            state
                .auth
                .register(&form.email, &form.password, &form.name)
                .await?;
        }
        let ip = client.map(|c| c.0.0.to_string());
        state
            .auth
            .login(
                &form.email,
                &form.password,
                Some(&device_of(&headers)),
                ip.as_deref(),
            )
            .await
    };
    match attempt.await {
        Ok(pair) => {
            let done = if register { "welcome" } else { "signed-in" };
            let mut response = see(&next, done);
            response.extensions_mut().insert(CookieChanges(signed_in(
                &state,
                &pair,
                visitor.secure,
            )));
            Ok(response)
        }
        Err(error) => {
            let problem = error.problem();
            if problem.status >= 500 {
                return Err(PageError::from_core(error, &visitor));
            }
            let mut page = login_form(&visitor, register, next);
            page.email = form.email;
            page.name = form.name;
            page.error = Some(problem.detail);
            let status = axum::http::StatusCode::from_u16(problem.status)
                .unwrap_or(axum::http::StatusCode::UNPROCESSABLE_ENTITY);
            Ok((status, render(&page)).into_response())
        }
    }
}

fn signed_out_response(visitor: &Visitor, to: &str) -> Response {
    let mut response = Redirect::to(to).into_response();
    response
        .extensions_mut()
        .insert(CookieChanges(signed_out(visitor.secure)));
    response
}

pub async fn logout(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    sign_out(state, visitor, form, false).await
}

pub async fn logout_all(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    sign_out(state, visitor, form, true).await
}

/// The API's logout of this device, or of every device, and the cookies
/// cleared.
async fn sign_out(
    state: AppState,
    visitor: Visitor,
    form: CsrfForm,
    everywhere: bool,
) -> PageResult {
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    check_csrf(&visitor, Some(&form.csrf)).map_err(fail)?;
    if let Some(principal) = &visitor.principal {
        if everywhere {
            state.auth.logout_all(principal).await.map(drop)
        } else {
            state.auth.logout(principal).await
        }
        .map_err(fail)?;
    }
    Ok(signed_out_response(&visitor, "/?done=signed-out"))
}

/// A single-use ticket for the page's live connection (the API's
/// `POST /live/ticket`, for the cookie session): `{"ticket": …}`.
pub async fn live_ticket(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let refuse = |status: axum::http::StatusCode| status.into_response();
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    check_csrf(&visitor, sent).map_err(|_| refuse(axum::http::StatusCode::FORBIDDEN))?;
    let principal = visitor
        .principal
        .as_ref()
        .ok_or_else(|| refuse(axum::http::StatusCode::UNAUTHORIZED))?;
    let ticket = state
        .live
        .issue_ticket(principal)
        .await
        .map_err(|_| refuse(axum::http::StatusCode::SERVICE_UNAVAILABLE))?;
    Ok(Json(serde_json::json!({ "ticket": ticket })).into_response())
}

/// Whether a status is one an order rests in before its end (the order
/// page's live status shows a spinner while it is).
pub fn in_progress(status: &str) -> bool {
    OrderStatus::parse(status).is_some_and(|s| !s.is_final())
}
