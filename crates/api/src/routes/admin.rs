//! Operator routes (admin role): consumer lag and the dead-letter queue.

use axum::Json;
use axum::extract::{Path, State};
use orderflow_core::ports::store::DeadLetter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{AdminCaller, ApiQuery};
use crate::problem::ApiResult;

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
