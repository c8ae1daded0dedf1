//! Registration, login, refresh, logout of one device and of all of them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::extract::{ApiJson, Caller, client_ip};
use crate::problem::ApiResult;
use crate::schema;

/// A new shopper account.
// Like every request body, unknown properties are refused (422
// malformed-body), so a misspelt field is never silently dropped; the
// derived schema says `additionalProperties: false`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::password)]
    pub password: String,
    #[schema(schema_with = schema::user_name)]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: uuid::Uuid,
    pub email: String,
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(schema_with = schema::login_email)]
    pub email: String,
    #[schema(schema_with = schema::login_password)]
    pub password: String,
    #[schema(schema_with = schema::device)]
    pub device: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(schema_with = schema::refresh_token)]
    pub refresh_token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenPairView {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

impl From<orderflow_core::services::auth::TokenPair> for TokenPairView {
    fn from(pair: orderflow_core::services::auth::TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: pair.token_type,
            expires_in: pair.expires_in,
        }
    }
}

/// Creates a shopper account.
#[utoipa::path(post, operation_id = "register", path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest, responses(
    (status = 201, body = UserView)))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let user = state
        .auth
        .register(&body.email, &body.password, &body.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            id: user.id,
            email: user.email,
            name: user.name,
        }),
    ))
}

/// Logs in on a device: an access token and a refresh token.
///
/// Failed attempts are counted per account and per client IP; past a few,
/// further attempts are refused with 429 and `Retry-After` for a window that
/// doubles with each failure.
#[utoipa::path(post, operation_id = "login", path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = TokenPairView)))]
pub async fn login(
    State(state): State<AppState>,
    parts: Parts,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenPairView>> {
    let ip = client_ip(&parts.extensions).map(|ip| ip.to_string());
    let pair = state
        .auth
        .login(
            &body.email,
            &body.password,
            body.device.as_deref(),
            ip.as_deref(),
        )
        .await?;
    Ok(Json(pair.into()))
}

/// Swaps a refresh token for a new pair; the old refresh token stops working.
#[utoipa::path(post, operation_id = "refresh", path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, body = TokenPairView)))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPairView>> {
    Ok(Json(state.auth.refresh(&body.refresh_token).await?.into()))
}

/// Logs this device out: the access token is revoked until it would expire.
#[utoipa::path(post, operation_id = "logout", path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "logged out")))]
pub async fn logout(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<StatusCode> {
    state.auth.logout(&principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Logs out every device of the caller: every refresh token dies, and every
/// access token stops working at once.
#[utoipa::path(post, operation_id = "logout_all", path = "/api/v1/auth/logout-all", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "every session ended")))]
pub async fn logout_all(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<StatusCode> {
    state.auth.logout_all(&principal).await?;
    Ok(StatusCode::NO_CONTENT)
}
