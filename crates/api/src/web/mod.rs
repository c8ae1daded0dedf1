//! The browser front: the storefront at `/` and the operator console at
//! `/console`, rendered on the server.
//!
//! Pages call the same use cases as the API (the services in
//! [`crate::AppState`]), never a copy of their logic: an order placed from
//! the cart page is [`CartService::checkout`](orderflow_core::services::carts::CartService::checkout),
//! a cancel button is `OrderService::cancel`. Every page works without
//! script (forms post and redirect); a small script adds live updates over
//! the API's Server-Sent Events, and the vendored htmx library updates the
//! cart in place. Nothing is fetched from another site: templates are
//! compiled into the binary (askama), assets are embedded and served with
//! long-lived cache headers under names that change with their content,
//! and the Content-Security-Policy allows scripts from this origin only,
//! never inline.
//!
//! Map:
//! - this file: the routes, the page frame every template shares
//!   ([`Chrome`]), assets, security headers and error pages;
//! - [`session`]: browser sessions (the API's tokens in cookies) and CSRF;
//! - [`shop`]: the storefront's pages and forms;
//! - [`console`]: the operator console (admin role).

pub mod console;
pub mod session;
pub mod shop;

use std::sync::LazyLock;

use askama::Template;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use orderflow_core::CoreError;
use orderflow_domain::money::{Currency, Money};
use sha2::{Digest, Sha256};

use crate::AppState;
use session::Visitor;

/// The page routes; [`session::browser_session`] resolves the visitor of
/// each.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(shop::home))
        .route("/search", get(shop::search))
        .route("/category/{name}", get(shop::category))
        .route("/products/{id}", get(shop::product))
        .route("/cart", get(shop::cart))
        .route("/cart/add", post(shop::add_to_cart))
        .route("/cart/update", post(shop::update_cart))
        .route("/checkout", post(shop::checkout))
        .route("/orders", get(shop::orders))
        .route("/orders/{id}", get(shop::order))
        .route("/orders/{id}/cancel", post(shop::cancel_order))
        .route("/notifications", get(shop::notifications))
        .route("/account", get(shop::account))
        .route("/account/sessions/{id}/end", post(shop::end_session))
        .route("/login", get(shop::login_page).post(shop::login))
        .route("/register", get(shop::register_page).post(shop::register))
        .route("/logout", post(shop::logout))
        .route("/logout-all", post(shop::logout_all))
        .route("/live-ticket", post(shop::live_ticket))
        .merge(console::router())
        .layer(axum::middleware::from_fn_with_state(
            state,
            session::browser_session,
        ))
        .layer(axum::middleware::from_fn(page_headers))
        .route("/assets/{file}", get(asset))
}

/// The security headers of every page: scripts, styles and connections
/// from this origin only (no inline script anywhere), no framing.
async fn page_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        // Pages show a shopper's own data: never kept by a shared cache.
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache"),
        );
    }
    response
}

/// One embedded asset.
pub struct Asset {
    /// The URL it is served under: its name with a digest of its content,
    /// so it can be cached for a year and still change with a release.
    pub url: String,
    content_type: &'static str,
    body: &'static [u8],
}

impl Asset {
    fn new(stem: &str, extension: &str, content_type: &'static str, body: &'static [u8]) -> Self {
        let digest = hex::encode(Sha256::digest(body));
        Self {
            url: format!("/assets/{stem}-{}.{extension}", &digest[..12]),
            content_type,
            body,
        }
    }
}

/// Every asset the pages use.
pub struct Assets {
    pub css: Asset,
    pub icon: Asset,
    pub htmx: Asset,
    pub live: Asset,
}

pub static ASSETS: LazyLock<Assets> = LazyLock::new(|| Assets {
    icon: Asset::new(
        "icon",
        "svg",
        "image/svg+xml",
        include_bytes!("../../assets/icon.svg"),
    ),
    css: Asset::new(
        "site",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/site.css"),
    ),
    htmx: Asset::new(
        "htmx-2.0.11",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/htmx-2.0.11.min.js"),
    ),
    live: Asset::new(
        "live",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/live.js"),
    ),
});

async fn asset(Path(file): Path<String>) -> Response {
    let assets = &*ASSETS;
    let wanted = format!("/assets/{file}");
    let Some(asset) = [&assets.css, &assets.icon, &assets.htmx, &assets.live]
        .into_iter()
        .find(|asset| asset.url == wanted)
    else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.body,
    )
        .into_response()
}

/// What every page shows around its content.
pub struct Chrome {
    pub title: String,
    pub csrf: String,
    pub signed_in: bool,
    pub admin: bool,
    /// The search box's text.
    pub query: String,
    /// A one-line message about what just happened.
    pub notice: Option<String>,
    /// The live channels this page follows (comma-separated), if any.
    pub live: String,
    /// Where to resume them (`channel=position;…`, the stream's
    /// `Last-Event-ID` format); a channel not named: from now.
    pub live_from: String,
    pub assets: &'static Assets,
}

impl Chrome {
    pub fn new(visitor: &Visitor, title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            csrf: visitor.csrf.clone(),
            signed_in: visitor.principal.is_some(),
            admin: visitor.is_admin(),
            query: String::new(),
            notice: None,
            live: String::new(),
            live_from: String::new(),
            assets: &ASSETS,
        }
    }

    pub fn notice(mut self, notice: Option<&str>) -> Self {
        self.notice = notice.and_then(notice_text).map(str::to_owned);
        self
    }

    /// Follows `channels`, plus the shopper's own order and notification
    /// channels when signed in.
    /// Follows `extra` channels at the positions given, plus the shopper's
    /// own order and notification channels at `positions` (see
    /// [`live_positions`], empty for a visitor who is not signed in: they
    /// follow the public `extra` channels, a product's, as a guest).
    pub fn live(mut self, extra: &[(String, i64)], positions: LivePositions) -> Self {
        let all: Vec<(String, Option<i64>)> = extra
            .iter()
            .map(|(channel, position)| (channel.clone(), Some(*position)))
            .chain(positions.0)
            .collect();
        if !all.is_empty() {
            self.live = all
                .iter()
                .map(|(channel, _)| channel.as_str())
                .collect::<Vec<_>>()
                .join(",");
            self.live_from = all
                .iter()
                .filter_map(|(channel, position)| Some(format!("{channel}={}", (*position)?)))
                .collect::<Vec<_>>()
                .join(";");
        }
        self
    }
}

/// Where the shopper's live channels stood when a page was drawn. Read
/// before the page's data: a change that lands between the two is sent
/// again by the stream (which resumes after these positions) rather than
/// missed, and the page applies it a second time harmlessly.
pub struct LivePositions(Vec<(String, Option<i64>)>);

pub async fn live_positions(state: &AppState, visitor: &Visitor) -> LivePositions {
    let Some(principal) = &visitor.principal else {
        return LivePositions(Vec::new());
    };
    let user = principal.user_id;
    let orders = state.store.last_order_change(Some(user)).await;
    let notifications = state.store.last_notification(user).await;
    for error in [&orders, &notifications]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
    {
        // The page still works; that channel's stream starts from now.
        tracing::warn!(%error, "a live position is unknown; the page follows it from now");
    }
    LivePositions(vec![
        (format!("orders:{user}"), orders.ok()),
        (format!("notifications:{user}"), notifications.ok()),
    ])
}

/// The messages a redirect can ask a page to show (`?done=…`): fixed
/// texts, so a link cannot make the page say anything else.
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "added" => "Added to your cart.",
        "updated" => "Your cart is updated.",
        "cancelled" => "The order is cancelled. Anything charged is refunded.",
        "welcome" => "Welcome! Your account is ready.",
        "signed-in" => "You are signed in.",
        "signed-out" => "You are signed out.",
        "ended" => "That device is signed out.",
        "approved" => "The order is approved and goes on.",
        "rejected" => "The order is rejected; the shopper is told.",
        "replayed" => "The message is back on its topic.",
        "controls" => "The simulated provider's settings are changed.",
        _ => return None,
    })
}

/// A price as a shopper reads it: `12.99 EUR`.
pub fn money(cents: i64, currency: &Currency) -> String {
    Money::new(cents, currency.clone()).to_string()
}

#[derive(Template)]
#[template(path = "web/error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    heading: String,
    detail: String,
}

/// A page's failure: an error page with the problem's status and words,
/// or the log-in page for a visitor who must sign in first.
pub enum PageError {
    /// Boxed: a page's `Result` stays small.
    Core(Box<(CoreError, Visitor)>),
    SignIn {
        next: String,
    },
}

impl PageError {
    pub fn from_core(error: impl Into<CoreError>, visitor: &Visitor) -> Self {
        PageError::Core(Box::new((error.into(), visitor.clone())))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn { next } => {
                let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
                Redirect::to(&format!("/login?next={next}")).into_response()
            }
            PageError::Core(failure) => {
                let (error, visitor) = *failure;
                let problem = error.problem();
                if problem.status >= 500 {
                    tracing::error!(%error, "page failed");
                }
                let page = ErrorPage {
                    chrome: Chrome::new(&visitor, problem.title),
                    status: problem.status,
                    heading: problem.title.to_owned(),
                    detail: problem.detail,
                };
                let status =
                    StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, render(&page)).into_response()
            }
        }
    }
}

/// A template rendered, or the plain error a broken template gives.
pub fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be drawn",
            )
                .into_response()
        }
    }
}

pub type PageResult = Result<Response, PageError>;
