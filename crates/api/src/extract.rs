//! Extractors. Authentication is an extractor (a handler that takes a
//! [`Caller`] cannot run for an anonymous request), and every rejection is a
//! problem document, never axum's plain-text default.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use orderflow_core::CoreError;
use orderflow_core::services::auth::Principal;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::hostile::check_json;
use crate::problem::ApiError;

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

/// The authenticated caller, who must be an admin (403 otherwise).
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Principal);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Caller(principal) = Caller::from_request_parts(parts, state).await?;
        principal.require_admin()?;
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

/// The client's IP: the socket peer. (Behind a proxy, a later change can trust
/// `X-Forwarded-For` from configured proxies only.)
pub fn client_ip(parts_extensions: &axum::http::Extensions) -> Option<IpAddr> {
    parts_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}
