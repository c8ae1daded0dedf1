//! Request metrics, the `/metrics` endpoint, the problem fallback and the
//! rate-limit middleware.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use orderflow_core::ports::rate_limit::RatePolicy;
use orderflow_core::services::auth::Principal;

use crate::AppState;
use crate::extract::{bearer_token, client_ip};
use crate::limits::{Scope, group_of};
use crate::problem::{ApiError, PROBLEM_JSON, problem_response, status_problem};

/// Counts and times every request by route template (never the raw path, so
/// ids do not explode the label set), method and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    metrics::gauge!("orderflow_http_requests_in_flight").increment(1.0);
    let response = next.run(request).await;
    metrics::gauge!("orderflow_http_requests_in_flight").decrement(1.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!("orderflow_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("orderflow_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Turns any error response that is not already a problem (axum's 404/405,
/// tower-http's 413/408, a panic's 500) into one, so clients see one format.
pub async fn problem_fallback(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no such route".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not accept that method".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is over the size limit".to_owned(),
        StatusCode::REQUEST_TIMEOUT => "the request was not completed in time".to_owned(),
        s if s.is_server_error() => "something went wrong on our side".to_owned(),
        s => s.canonical_reason().unwrap_or("request failed").to_owned(),
    };
    let mut fixed = problem_response(&status_problem(status, detail));
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            fixed.headers_mut().insert(name, value.clone());
        }
    }
    fixed
}

/// Applies every rate-limit policy of the request (the per-IP auth or
/// general policy, and its route group's policy, per IP or per user) and sets
/// the `RateLimit-Policy` / `RateLimit` headers (IETF draft) on the answer,
/// one list item per policy.
///
/// A refused request is answered 429 with `Retry-After` (the longest wait
/// any refusing policy asks for). An allowed request that a leaky bucket
/// queued waits here for its turn before it reaches the handler; the queue
/// is bounded by the policy, so the wait is too.
pub async fn rate_limit(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(ip) = client_ip(request.extensions()) else {
        return next.run(request).await;
    };
    let ip = ip.to_string();
    let group = group_of(request.method(), request.uri().path());
    let per_ip = if group == Some("login") || group == Some("auth") {
        state.rate_limits.auth.as_ref()
    } else {
        state.rate_limits.general.as_ref()
    };
    let mut checks: Vec<(&RatePolicy, String)> = Vec::new();
    if let Some(policy) = per_ip {
        checks.push((policy, format!("ip:{ip}")));
    }
    if let Some(route) = group.and_then(|g| state.rate_limits.routes.iter().find(|r| r.group == g))
    {
        let key = match route.scope {
            Scope::Ip => format!("ip:{ip}"),
            Scope::User => match caller(&state, request.headers()).await {
                Some(principal) => {
                    let key = format!("user:{}", principal.user_id);
                    // The handler's `Caller` reuses it: one verification per request.
                    request.extensions_mut().insert(principal);
                    key
                }
                None => format!("ip:{ip}"),
            },
        };
        checks.push((&route.policy, key));
    }
    if checks.is_empty() {
        return next.run(request).await;
    }

    let mut policies = Vec::with_capacity(checks.len());
    let mut states = Vec::with_capacity(checks.len());
    let mut refused: Option<(String, std::time::Duration)> = None;
    let mut delay = std::time::Duration::ZERO;
    for (policy, key) in checks {
        let decision = state.limiter.check(policy, &key).await;
        let (limit, window) = policy.quota();
        policies.push(format!(
            "\"{}\";q={};w={}",
            policy.name,
            limit,
            window.as_secs().max(1)
        ));
        states.push(format!(
            "\"{}\";r={};t={}",
            policy.name,
            decision.remaining,
            decision.reset_after.as_secs_f64().ceil() as u64
        ));
        if decision.allowed {
            delay = delay.max(decision.delay);
        } else {
            metrics::counter!("orderflow_rate_limited_total", "policy" => policy.name.clone())
                .increment(1);
            if refused
                .as_ref()
                .is_none_or(|(_, wait)| decision.retry_after > *wait)
            {
                refused = Some((policy.name.clone(), decision.retry_after));
            }
        }
    }
    let mut response = match refused {
        Some((policy, retry_after)) => ApiError::RateLimited {
            policy,
            retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response(),
        None => {
            if !delay.is_zero() {
                metrics::histogram!("orderflow_rate_limit_queue_wait_seconds")
                    .record(delay.as_secs_f64());
                tokio::time::sleep(delay).await;
            }
            next.run(request).await
        }
    };
    if let (Ok(p), Ok(s)) = (
        HeaderValue::from_str(&policies.join(", ")),
        HeaderValue::from_str(&states.join(", ")),
    ) {
        response.headers_mut().insert("ratelimit-policy", p);
        response.headers_mut().insert("ratelimit", s);
    }
    response
}

/// The verified caller of a request, if it carries a valid bearer token.
async fn caller(state: &AppState, headers: &axum::http::HeaderMap) -> Option<Principal> {
    let token = bearer_token(headers.get(header::AUTHORIZATION)?)?.to_owned();
    state.auth.authenticate(&token).await.ok()
}

/// `GET /metrics`: Prometheus text. Gauges that are cheaper to read than to
/// keep up to date (lag, DLQ size) are refreshed at scrape time.
pub async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    match state.operations.consumer_lag().await {
        Ok(lags) => {
            let mut per_group: std::collections::BTreeMap<String, i64> = Default::default();
            for lag in &lags {
                metrics::gauge!("orderflow_consumer_lag", "group" => lag.group.clone(), "topic" => lag.topic.clone(), "partition" => lag.partition.to_string())
                    .set(lag.lag as f64);
                *per_group.entry(lag.group.clone()).or_default() += lag.lag;
            }
            for (group, lag) in per_group {
                metrics::gauge!("orderflow_consumer_group_lag", "group" => group).set(lag as f64);
            }
        }
        Err(error) => tracing::warn!(%error, "could not read consumer lag for /metrics"),
    }
    match state.store.count_dead_letters().await {
        Ok(count) => metrics::gauge!("orderflow_dead_letters").set(count as f64),
        Err(error) => tracing::warn!(%error, "could not count dead letters for /metrics"),
    }
    let body = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
