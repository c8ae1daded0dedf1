//! Browser sessions: the API's own tokens, carried in cookies.
//!
//! A signed-in browser holds the access token and the refresh token of an
//! API session in two `HttpOnly`, `SameSite=Lax` cookies (`Secure` behind
//! TLS: when the request arrived with `X-Forwarded-Proto: https`). Each page
//! request verifies the access token exactly as the API does (signature,
//! expiry, revocation); when it has expired, the refresh token is rotated
//! as `POST /auth/refresh` would, and the new pair replaces the cookies. So
//! logging out here is the API's logout (`jti` and session revoked), and
//! logging out everywhere in the API ends the browser's session too.
//!
//! Every form that changes state carries a CSRF token, compared with the
//! `of_csrf` cookie (double submit): another site can make the browser send
//! the cookie (not with `SameSite=Lax` on a POST, but older browsers) yet
//! cannot read it to put it in the form. Script requests send it in the
//! `X-CSRF-Token` header, read from the page's `<meta name="csrf-token">`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use orderflow_core::CoreError;
use orderflow_core::services::auth::{Principal, TokenPair, new_random_token};
use subtle::ConstantTimeEq;

use crate::AppState;

pub const ACCESS_COOKIE: &str = "of_access";
pub const REFRESH_COOKIE: &str = "of_refresh";
pub const CSRF_COOKIE: &str = "of_csrf";

/// Who is browsing: a signed-in principal or nobody, and the CSRF token
/// the page's forms carry.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub principal: Option<Principal>,
    pub csrf: String,
    /// Behind TLS: cookies are set `Secure`.
    pub secure: bool,
}

impl Visitor {
    pub fn is_admin(&self) -> bool {
        self.principal
            .as_ref()
            .is_some_and(|p| p.require_admin().is_ok())
    }
}

/// Cookies to set (or clear) on the way out, for [`browser_session`].
#[derive(Debug, Default, Clone)]
pub struct CookieChanges(pub Vec<Cookie<'static>>);

/// An `HttpOnly`, `SameSite=Lax` cookie for the whole site, living
/// `max_age_secs` (none: until the browser closes).
fn cookie(
    name: &'static str,
    value: String,
    secure: bool,
    max_age_secs: Option<i64>,
) -> Cookie<'static> {
    let mut made = Cookie::new(name, value);
    made.set_http_only(true);
    made.set_same_site(SameSite::Lax);
    made.set_path("/");
    made.set_secure(secure);
    made.set_max_age(max_age_secs.map(cookie::time::Duration::seconds));
    made
}

/// The cookies of a new token pair.
pub fn signed_in(state: &AppState, pair: &TokenPair, secure: bool) -> Vec<Cookie<'static>> {
    let refresh_ttl = state.auth.settings().refresh_token_ttl.as_secs() as i64;
    vec![
        cookie(
            ACCESS_COOKIE,
            pair.access_token.clone(),
            secure,
            Some(pair.expires_in as i64),
        ),
        cookie(
            REFRESH_COOKIE,
            pair.refresh_token.clone(),
            secure,
            Some(refresh_ttl),
        ),
    ]
}

/// The cookies that end a browser session here.
pub fn signed_out(secure: bool) -> Vec<Cookie<'static>> {
    [ACCESS_COOKIE, REFRESH_COOKIE]
        .into_iter()
        .map(|name| cookie(name, String::new(), secure, Some(0)))
        .collect()
}

fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// Resolves the [`Visitor`] of every page request (rotating an expired
/// access token), and sets the cookies the handler asked for
/// ([`CookieChanges`] in the response's extensions) or the session needs.
pub async fn browser_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let jar = CookieJar::from_headers(request.headers());
    let secure = behind_tls(request.headers());
    let mut changes: Vec<Cookie<'static>> = Vec::new();
    let csrf = match jar.get(CSRF_COOKIE).map(|c| c.value().to_owned()) {
        Some(token) if token.len() >= 32 => token,
        _ => {
            let token = new_random_token();
            // A session cookie: a new browser session, a new token.
            changes.push(cookie(CSRF_COOKIE, token.clone(), secure, None));
            token
        }
    };
    let mut principal = None;
    if let Some(access) = jar.get(ACCESS_COOKIE) {
        principal = state.auth.authenticate(access.value()).await.ok();
    }
    if principal.is_none()
        && let Some(refresh) = jar.get(REFRESH_COOKIE).map(|c| c.value().to_owned())
        && !refresh.is_empty()
    {
        match state.auth.refresh(&refresh).await {
            Ok(pair) => {
                principal = state.auth.authenticate(&pair.access_token).await.ok();
                changes.extend(signed_in(&state, &pair, secure));
            }
            // Expired, revoked or reused: the browser is signed out.
            Err(_) => changes.extend(signed_out(secure)),
        }
    }
    request.extensions_mut().insert(Visitor {
        principal,
        csrf,
        secure,
    });
    let mut response = next.run(request).await;
    if let Some(CookieChanges(set)) = response.extensions_mut().remove::<CookieChanges>() {
        changes.extend(set);
    }
    for cookie in changes {
        if let Ok(value) = HeaderValue::from_str(&cookie.encoded().to_string()) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Refuses a state-changing request whose CSRF token (form field or
/// `X-CSRF-Token` header) is not the visitor's.
pub fn check_csrf(visitor: &Visitor, sent: Option<&str>) -> Result<(), CoreError> {
    match sent {
        Some(token) if bool::from(token.as_bytes().ct_eq(visitor.csrf.as_bytes())) => Ok(()),
        _ => Err(CoreError::Forbidden(
            "this form has expired or did not come from this site; reload the page and try again"
                .into(),
        )),
    }
}
