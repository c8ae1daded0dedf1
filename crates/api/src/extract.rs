//! Extractors. Authentication is an extractor (a handler that takes a
//! [`Caller`] cannot run for an anonymous request), and every rejection is a
//! problem document, never axum's plain-text default.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use ipnet::IpNet;
use orderflow_core::CoreError;
use orderflow_core::audit::AuditEvent;
use orderflow_core::services::auth::Principal;
use orderflow_domain::events::TraceParent;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::hostile::check_json;
use crate::problem::ApiError;

/// The request's W3C trace context: that of the span
/// [`TrackRequests`](crate::observe::TrackRequests) made for it (which
/// continues the caller's `traceparent`). The events a request causes carry
/// it, so every consumer's span joins the request's trace. Behind a router
/// without that middleware, a new root.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace(pub TraceParent);

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let context = parts.extensions.get::<TraceParent>().copied();
        Ok(RequestTrace(context.unwrap_or_else(|| {
            crate::observe::trace::continue_trace(&tracing::Span::none(), None)
        })))
    }
}

/// The authenticated caller (any role), from `Authorization: Bearer …`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The per-user rate limit already verified this request's token.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(Caller(principal.clone()));
        }
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| CoreError::Unauthorized("missing Authorization: Bearer token".into()))?;
        let token = bearer_token(value).ok_or_else(|| {
            CoreError::Unauthorized("Authorization must be `Bearer <token>`".into())
        })?;
        Ok(Caller(state.auth.authenticate(token).await?))
    }
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer_token(value: &axum::http::HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The authenticated caller, who must be an admin (403 otherwise). Both a
/// refusal and an admin's call that changes something write an audit line.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Principal);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Caller(principal) = Caller::from_request_parts(parts, state).await?;
        // The full path: a nested router sees only its own part of it.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or(parts.uri.path(), |original| original.path());
        let method = parts.method.as_str();
        if let Err(denied) = principal.require_admin() {
            AuditEvent::AdminDenied {
                user_id: principal.user_id,
                session_id: principal.session_id,
                method,
                path,
            }
            .record();
            return Err(denied.into());
        }
        // Reads are not actions; everything else an admin does is audited.
        if !parts.method.is_safe() {
            AuditEvent::AdminAction {
                user_id: principal.user_id,
                session_id: principal.session_id,
                method,
                path,
            }
            .record();
        }
        Ok(AdminCaller(principal))
    }
}

/// A JSON body whose rejections are problems (422 with what is wrong).
///
/// Before deserializing, the raw body is checked against the nesting-depth and
/// string-length limits of [`crate::HttpLimits`] (422 naming the limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes =
            axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
                .await
                .map_err(|e| ApiError::Status {
                    status: e.status(),
                    detail: e.body_text(),
                })?;
        let limits = &state.http_limits;
        check_json(&bytes, limits.max_json_depth, limits.max_json_string_chars)
            .map_err(|limit| ApiError::InputLimit(limit.to_string()))?;
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::Status {
                status: axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                detail: "send the body as Content-Type: application/json".into(),
            }),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::Status {
                status: e.status(),
                detail: e.body_text(),
            }),
            Err(rejection) => Err(ApiError::BadJson(rejection.body_text())),
        }
    }
}

/// A query string whose rejections are problems (400 with what is wrong).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::BadQuery(e.body_text()))
    }
}

/// The client's IP: resolved once per request by [`resolve_client_ip`]
/// (through the trusted proxies), else the socket peer.
pub fn client_ip(parts_extensions: &axum::http::Extensions) -> Option<IpAddr> {
    parts_extensions
        .get::<ClientIp>()
        .map(|client| client.0)
        .or_else(|| {
            parts_extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
}

/// The IP a request came from, past the trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The reverse proxies (nginx, a load balancer) whose `X-Forwarded-For` is
/// believed (`ORDERFLOW_TRUSTED_PROXIES`). A header from anyone else is
/// ignored: a client could write any address into it, and rate limits and
/// login lock-outs key on the address.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&ip))
    }

    /// The client behind `peer`: the peer itself unless it is a trusted
    /// proxy; then `X-Forwarded-For` read from the right (each proxy
    /// appends the address it was connected from), skipping trusted
    /// proxies, up to the first address none of them is: the rightmost
    /// one a trusted proxy vouches for. Entries left of it were written by
    /// the client and are never believed. An entry that is not an address
    /// stops the walk at the last hop that was.
    pub fn client_ip(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// Puts the request's [`ClientIp`] in its extensions, for the rate limits,
/// the login lock-outs and the sessions list, and returns it. The first step
/// of the rate limits in [`TrackRequests`](crate::observe::TrackRequests)
/// (one middleware, not two: each layer of `from_fn` boxes a future and
/// clones the inner service per request).
pub fn resolve_client_ip(state: &AppState, request: &mut Request) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    let client = state.trusted_proxies.client_ip(peer, request.headers());
    request.extensions_mut().insert(ClientIp(client));
    Some(client)
}

#[cfg(test)]
mod trusted_proxy_tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_peer_that_is_no_trusted_proxy_is_the_client_whatever_it_claims() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let claimed = headers(&["1.2.3.4"]);
        assert_eq!(
            proxies.client_ip(ip("203.0.113.9"), &claimed),
            ip("203.0.113.9")
        );
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("10.0.0.1"), &claimed), ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]);
        // The client forged the first entry; nginx (10.0.0.2) appended the
        // real peer, an inner proxy appended nginx.
        let forwarded = headers(&["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &forwarded),
            ip("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            proxies.client_ip(ip("10.0.0.2"), &headers(&[])),
            ip("10.0.0.2")
        );
        // Garbage stops the walk at the last address a proxy vouched for.
        let garbage = headers(&["198.51.100.7, not-an-ip, 10.0.0.3"]);
        assert_eq!(proxies.client_ip(ip("10.0.0.2"), &garbage), ip("10.0.0.3"));
        // IPv6 hops.
        let v6 = TrustedProxies::new(vec!["::1/128".parse().unwrap()]);
        assert_eq!(
            v6.client_ip(ip("::1"), &headers(&["2001:db8::5"])),
            ip("2001:db8::5")
        );
    }
}
