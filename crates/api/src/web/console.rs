//! The operator console (admin role): consumer groups with their lag per
//! partition, orders held by the fraud check (approve, reject), the
//! dead-letter queue (show, replay), sales per day, and the simulated
//! providers' latency and failure rate (so a demo can make SMS fail and
//! watch the retries and the dead-letter queue). The same use cases as the
//! admin API.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use orderflow_core::CoreError;
use orderflow_core::ports::store::DeadLetter;
use orderflow_core::services::admin::Operations;
use orderflow_core::services::auth::Principal;
use orderflow_domain::money::Currency;
use orderflow_domain::sales::Granularity;
use serde::Deserialize;

use super::session::{Visitor, check_csrf};
use super::{Chrome, PageError, PageResult, money, render};
use crate::AppState;
use crate::extract::RequestTrace;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/orders/{id}/{verdict}", post(review))
        .route("/console/dlq/{id}", get(dead_letter))
        .route("/console/dlq/{id}/replay", post(replay))
        .route("/console/providers/{name}", post(set_provider))
}

/// The admin principal, or: signed out, the log-in page; signed in without
/// the role, 403.
fn admin(visitor: &Visitor, next: &str) -> Result<Principal, PageError> {
    let principal = visitor.principal.clone().ok_or_else(|| PageError::SignIn {
        next: next.to_owned(),
    })?;
    principal
        .require_admin()
        .map_err(|e| PageError::from_core(e, visitor))?;
    Ok(principal)
}

/// The admin principal of a form that changes state, once its CSRF token
/// checks out.
fn admin_form(visitor: &Visitor, csrf: &str, next: &str) -> Result<Principal, PageError> {
    let principal = admin(visitor, next)?;
    check_csrf(visitor, Some(csrf)).map_err(|e| PageError::from_core(e, visitor))?;
    Ok(principal)
}

struct GroupRow {
    group: String,
    lag: i64,
    partitions: Vec<(String, i32, i64, i64, i64)>,
}

struct HeldRow {
    id: String,
    placed: String,
    total: String,
}

struct LetterRow {
    id: String,
    group: String,
    event_type: String,
    error: String,
    attempts: u32,
    failed: String,
    replayed: bool,
}

impl From<&DeadLetter> for LetterRow {
    fn from(letter: &DeadLetter) -> Self {
        Self {
            id: letter.id.to_string(),
            group: letter.group.clone(),
            event_type: letter.event.data.type_name().to_owned(),
            error: letter.error.clone(),
            attempts: letter.attempts,
            failed: letter.failed_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            replayed: letter.replayed_at.is_some(),
        }
    }
}

struct SalesRow {
    /// The day, or the product.
    day: String,
    orders: i64,
    revenue: String,
    /// Percent of the busiest day's revenue, for the bar.
    width: i64,
}

#[derive(Template)]
#[template(path = "web/console.html")]
struct ConsolePage {
    chrome: Chrome,
    groups: Vec<GroupRow>,
    held: Vec<HeldRow>,
    letters: Vec<LetterRow>,
    sales: Vec<SalesRow>,
    /// The best sellers of the last days, by revenue.
    top: Vec<SalesRow>,
    /// (name, latency in ms, failure rate in percent)
    providers: Vec<(&'static str, u128, f64)>,
}

pub async fn overview(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<super::shop::Notice>,
) -> PageResult {
    admin(&visitor, "/console")?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let mut groups: Vec<GroupRow> = Vec::new();
    for lag in state.operations.consumer_lag().await.map_err(fail)? {
        let row = (lag.topic, lag.partition, lag.committed, lag.end, lag.lag);
        match groups.iter_mut().find(|g| g.group == lag.group) {
            Some(group) => {
                group.lag += row.4;
                group.partitions.push(row);
            }
            None => groups.push(GroupRow {
                group: lag.group,
                lag: row.4,
                partitions: vec![row],
            }),
        }
    }
    let held = state.orders.held(None, Some(50)).await.map_err(fail)?;
    let letters = state
        .operations
        .dead_letters(Some(50), false)
        .await
        .map_err(fail)?;
    let days = state
        .store
        .daily_sales(14)
        .await
        .map_err(|e| fail(e.into()))?;
    let month =
        Operations::sales_range(Granularity::Day, None, None, chrono::Utc::now()).map_err(fail)?;
    let top = state
        .operations
        .top_products(month, Some(10))
        .await
        .map_err(fail)?;
    let mut chrome = Chrome::new(&visitor, "Console").notice(notice.done.as_deref());
    chrome.live = "admin:orders,admin:health".into();
    Ok(render(&ConsolePage {
        chrome,
        groups,
        held: held
            .iter()
            .map(|order| HeldRow {
                id: order.id.to_string(),
                placed: order.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                total: money(order.total_cents, &order.currency),
            })
            .collect(),
        letters: letters.iter().map(LetterRow::from).collect(),
        providers: state
            .provider_controls
            .as_ref()
            .map(|controls| {
                controls
                    .providers()
                    .into_iter()
                    .map(|p| {
                        (
                            p.name,
                            p.latency.as_millis(),
                            (p.failure_rate * 100.0).round(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        sales: bars(days.iter().map(|day| {
            (
                day.day.to_string(),
                day.orders,
                day.revenue_cents,
                day.currency.as_str(),
            )
        })),
        top: bars(top.iter().map(|product| {
            (
                product.name.clone().unwrap_or_else(|| "(deleted)".into()),
                product.orders,
                product.revenue_cents,
                product.currency.as_str(),
            )
        })),
    }))
}

/// Rows of a bar chart of revenue: `(label, orders, cents, currency)`, each
/// bar as long as its share of the largest.
fn bars<'a>(rows: impl Iterator<Item = (String, i64, i64, &'a str)>) -> Vec<SalesRow> {
    let rows: Vec<_> = rows.collect();
    let largest = rows.iter().map(|row| row.2).max().unwrap_or(0).max(1);
    rows.into_iter()
        .map(|(label, orders, cents, currency)| SalesRow {
            day: label,
            orders,
            revenue: match Currency::parse(currency) {
                Ok(currency) => money(cents, &currency),
                Err(_) => format!("{cents} cents {currency}"),
            },
            width: cents.max(0) * 100 / largest,
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn review(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    RequestTrace(trace): RequestTrace,
    Path((id, verdict)): Path<(uuid::Uuid, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    let principal = admin_form(&visitor, &form.csrf, "/console")?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let approve = match verdict.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(fail(CoreError::NotFound("action"))),
    };
    state
        .orders
        .review(principal.user_id, id, approve, Some(trace.to_string()))
        .await
        .map_err(fail)?;
    let done = if approve { "approved" } else { "rejected" };
    Ok(redirect(&format!("/console?done={done}#held")))
}

#[derive(Template)]
#[template(path = "web/dead_letter.html")]
struct DeadLetterPage {
    chrome: Chrome,
    letter: LetterRow,
    topic: String,
    partition: i32,
    offset: i64,
    event: String,
}

pub async fn dead_letter(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<uuid::Uuid>,
) -> PageResult {
    admin(&visitor, &format!("/console/dlq/{id}"))?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let letter = state.operations.dead_letter(id).await.map_err(fail)?;
    Ok(render(&DeadLetterPage {
        chrome: Chrome::new(&visitor, "Dead letter"),
        topic: letter.topic.clone(),
        partition: letter.partition,
        offset: letter.offset,
        event: serde_json::to_string_pretty(&letter.event.to_json()).unwrap_or_default(),
        letter: LetterRow::from(&letter),
    }))
}

pub async fn replay(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    admin_form(&visitor, &form.csrf, "/console")?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    state.operations.replay(id).await.map_err(fail)?;
    Ok(redirect("/console?done=replayed#dlq"))
}

#[derive(Debug, Deserialize)]
pub struct ProviderForm {
    csrf: String,
    latency_ms: u64,
    /// Percent, 0 to 100.
    failure_percent: f64,
}

pub async fn set_provider(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
    Form(form): Form<ProviderForm>,
) -> PageResult {
    admin_form(&visitor, &form.csrf, "/console")?;
    let fail = |e: CoreError| PageError::from_core(e, &visitor);
    let latency = std::time::Duration::from_millis(form.latency_ms.min(60_000));
    let rate = (form.failure_percent / 100.0).clamp(0.0, 1.0);
    let changed = state
        .provider_controls
        .as_ref()
        .is_some_and(|controls| controls.set(&name, latency, rate));
    if !changed {
        return Err(fail(CoreError::NotFound("simulated provider")));
    }
    Ok(redirect("/console?done=controls#providers"))
}

fn redirect(to: &str) -> Response {
    axum::response::IntoResponse::into_response(axum::response::Redirect::to(to))
}
