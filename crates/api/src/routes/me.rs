//! What a shopper reads about themselves (notifications, points, sessions
//! per device), and the public leaderboard.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{ApiQuery, Caller};
use crate::problem::ApiResult;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    /// email, sms or push.
    pub channel: String,
    /// welcome, order_confirmed, order_rejected or payment_failed.
    pub kind: String,
    pub order_id: Option<uuid::Uuid>,
    pub sent_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationListView {
    pub items: Vec<NotificationView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PointsView {
    pub points: i64,
    /// 1 = most points; null until the shopper has points.
    pub rank: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaderboardEntryView {
    pub user_id: uuid::Uuid,
    pub name: String,
    pub points: i64,
    pub rank: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaderboardView {
    pub items: Vec<LeaderboardEntryView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitParams {
    /// (Larger values are accepted and clamped to the route's page size; the
    /// documented range is what parses.)
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub limit: Option<u32>,
}

/// The caller's notifications, newest first.
#[utoipa::path(get, operation_id = "list_notifications", path = "/api/v1/me/notifications", tag = "me", security(("bearer" = [])), params(LimitParams), responses((status = 200, body = NotificationListView)))]
pub async fn notifications(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(params): ApiQuery<LimitParams>,
) -> ApiResult<Json<NotificationListView>> {
    let items = state
        .queries
        .notifications(principal.user_id, params.limit)
        .await?;
    Ok(Json(NotificationListView {
        items: items
            .into_iter()
            .map(|n| NotificationView {
                channel: n.channel.as_str().into(),
                kind: n.kind.as_str().into(),
                order_id: n.order_id,
                sent_at: n.sent_at,
            })
            .collect(),
    }))
}

/// The caller's loyalty points and rank.
#[utoipa::path(get, operation_id = "get_points", path = "/api/v1/me/points", tag = "me", security(("bearer" = [])), responses((status = 200, body = PointsView)))]
pub async fn points(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<Json<PointsView>> {
    let standing = state.queries.points(principal.user_id).await?;
    Ok(Json(PointsView {
        points: standing.points,
        rank: standing.rank,
    }))
}

/// Shoppers with the most points.
#[utoipa::path(get, operation_id = "get_leaderboard", path = "/api/v1/leaderboard", tag = "me", params(LimitParams), responses((status = 200, body = LeaderboardView)))]
pub async fn leaderboard(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<LimitParams>,
) -> ApiResult<Json<LeaderboardView>> {
    let entries = state.queries.leaderboard(params.limit).await?;
    Ok(Json(LeaderboardView {
        items: entries
            .into_iter()
            .map(|e| LeaderboardEntryView {
                user_id: e.user_id,
                name: e.name,
                points: e.points,
                rank: e.rank,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub id: uuid::Uuid,
    /// The name given at login ("unknown" when none was).
    pub device: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When its refresh token was last used.
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    /// True for the session of the token making this request.
    pub current: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionListView {
    pub items: Vec<SessionView>,
}

/// The caller's signed-in devices, newest first.
#[utoipa::path(get, operation_id = "list_sessions", path = "/api/v1/me/sessions", tag = "me", security(("bearer" = [])), responses(
    (status = 200, body = SessionListView)))]
pub async fn sessions(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<Json<SessionListView>> {
    let sessions = state.auth.sessions(&principal).await?;
    Ok(Json(SessionListView {
        items: sessions
            .into_iter()
            .map(|s| SessionView {
                current: s.id == principal.session_id,
                id: s.id,
                device: s.device,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
            })
            .collect(),
    }))
}

/// Logs one device out: its refresh token dies and its access tokens stop
/// working at once.
#[utoipa::path(delete, operation_id = "end_session", path = "/api/v1/me/sessions/{id}", tag = "me", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "session id")),
    responses(
    (status = 204, description = "the session ended")))]
pub async fn end_session(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<uuid::Uuid>,
) -> ApiResult<StatusCode> {
    state.auth.revoke_session(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
