//! Request spans and metrics (with the W3C trace context that the order's
//! events carry on), the `/metrics` endpoint, the problem fallback, the
//! rate-limit middleware, and the request's time-out, body-size limit and
//! panic guard: one middleware around the whole router.

use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use orderflow_core::per_core::PerCore;
use orderflow_core::services::auth::Principal;
use orderflow_domain::events::TraceParent;

use crate::AppState;
use crate::extract::{bearer_token, resolve_client_ip};
use crate::limits::{ListValue, Scope, group_of, push_list_item};
use crate::problem::{ApiError, PROBLEM_JSON, problem_response, status_problem};

/// The span, metrics and trace context of every request.
///
/// - The outermost layer, so it sees every answer as sent (a time-out, a
///   caught panic's 500); an answer of 500 or more is logged at `error`.
/// - Metrics by route template (never the raw path, so ids do not explode
///   the label set), method, status and status class (`2xx`…), a latency
///   histogram (100 µs to 10 s buckets, see the binary's telemetry) and the
///   in-flight gauge.
/// - The `http.request` span, named `METHOD /route` for trace back ends. It
///   continues the caller's W3C `traceparent` when one came and is valid,
///   else it starts a trace. This layer runs outside the router, so the
///   route template comes from inside it: `note_route`, the one layer on
///   each route, hands it back here for the metrics and the log lines, and
///   gives it to an exported span.
/// - This span's own context goes into the request's extensions
///   ([`RequestTrace`](crate::extract::RequestTrace)), so what the handler
///   writes into the order's events (the `traceparent` of the envelope)
///   makes every consumer's span a child of this request: one trace from
///   `POST /orders` through every group.
/// - Fields only a trace back end reads (`otel.*`, the route, the status
///   code) are recorded only when spans are exported; the log lines say the
///   route and status themselves.
/// - The request id: a proxy's `X-Request-Id` is kept (one id from nginx's
///   access log to this process's trace), else one is made (a UUID); the
///   answer carries it either way.
/// - An error answer that is not a problem document yet becomes one
///   (`problem_fallback`).
/// - The rate limits ([`admit`]): a refused request is answered 429 here.
/// - The body-size limit (`HttpLimits::max_body_bytes`, 413,
///   [`within_body_limit`]) and the panic guard (500, [`answer_of`]) around
///   the router.
/// - The request time-out: a request not answered within the limit
///   (`HttpLimits::request_timeout`) is dropped and answered 408
///   ([`within`]); a rate-limit queue's wait counts.
///
/// One middleware for all of it, written as a service ([`TrackRequests`]),
/// not with `from_fn`: a `from_fn` layer boxes the stack inside it anew
/// (a boxed clone of the service) and three futures per request.
async fn track_requests<S>(
    state: AppState,
    mut request: Request,
    inner: S,
) -> Result<Response, std::convert::Infallible>
where
    S: tower::Service<Request, Error = std::convert::Infallible>,
    S::Response: IntoResponse,
{
    // The client's, or a new one; it goes into the request's span and back
    // in the answer (nothing downstream reads it from the request).
    let request_id = match request.headers().get(&REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let mut text = uuid::Uuid::encode_buffer();
            HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
                .expect("a UUID is a valid header value")
        }
    };
    // The router fills it in (`note_route`); this layer runs outside it.
    let matched = MatchedRoute::default();
    request.extensions_mut().insert(matched.clone());
    let method = request.method().clone();
    let incoming = request
        .headers()
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let exporting = orderflow_core::trace::exporting();
    // Without export the context does not depend on the span, so the trace
    // id goes in with the other fields: a field recorded later is formatted
    // and appended to the span's text once more.
    let before_span = (!exporting).then(|| trace::continue_trace(&tracing::Span::none(), incoming));
    // Text fields go in as `Display` (`%`): the log layer writes a `&str`
    // through `Debug`, quoting and escaping it character by character.
    let span = tracing::info_span!(
        "http.request",
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        trace_id = before_span.map(|c| tracing::field::display(c.trace_id_hex())),
        http.request_id = %String::from_utf8_lossy(request_id.as_bytes()),
    );
    let context = match before_span {
        Some(context) => context,
        None => {
            // Named "METHOD /route" once the router matched a route.
            span.record("otel.kind", "server");
            let context = trace::continue_trace(&span, incoming);
            span.record("trace_id", tracing::field::display(context.trace_id_hex()));
            context
        }
    };
    // What the handler writes into the order's events (the `traceparent` of
    // the envelope), read with `extract::RequestTrace`.
    request.extensions_mut().insert(context);

    // Tokio's clock: the time-out's deadline is counted from it too.
    let started = tokio::time::Instant::now();
    let in_flight = InFlight::enter();
    let shared = &state;
    let admitted = async move {
        match admit(shared, &mut request).await {
            Admission::Refused(refusal) => refusal,
            Admission::Through(headers) => {
                let mut response =
                    match within_body_limit(request, shared.http_limits.max_body_bytes) {
                        Ok(request) => answer_of(inner, request).await,
                        Err(refused) => refused.into_response(),
                    };
                headers.mark(&mut response);
                response
            }
        }
    };
    let deadline = started + state.http_limits.request_timeout;
    let answered = InSpan::new(&span, Within::new(deadline, admitted)).await;
    let mut response =
        problem_fallback(answered.unwrap_or_else(|| StatusCode::REQUEST_TIMEOUT.into_response()));
    drop(in_flight);
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), request_id);
    let status = response.status();
    let route = match matched.0.get() {
        Some(route) => route.as_str(),
        None => {
            if exporting {
                trace::route_exported_span(&span, &method, "unmatched");
            }
            "unmatched"
        }
    };
    if exporting {
        span.record("http.response.status_code", status.as_u16());
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The request span is the lines' explicit parent: not entered again,
    // and a line nobody logs (debug at the default level) costs nothing
    // beyond its callsite's cached "never".
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        tracing::error!(
            parent: &span,
            http.route = route,
            status = status.as_u16(),
            latency_ms = elapsed * 1e3,
            "request failed"
        );
    } else {
        // Every answer, with `RUST_LOG=orderflow_api=debug`; the request
        // span names the method and path.
        tracing::debug!(
            parent: &span,
            http.route = route,
            status = status.as_u16(),
            latency_ms = elapsed * 1e3,
            "request answered"
        );
    }
    RouteMetrics::record(&method, route, status.as_u16(), elapsed);
    Ok(response)
}

/// The layer that wraps the whole router in [`TrackRequests`]: the
/// outermost one, so it sees every answer as sent.
#[derive(Clone)]
pub struct TrackRequestsLayer(pub AppState);

impl<S> tower::Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> TrackRequests<S> {
        TrackRequests {
            state: self.0.clone(),
            inner,
        }
    }
}

/// `track_requests` around `inner`: every request's span, metrics, request
/// id, rate limits, time-out, body limit and panic guard.
#[derive(Clone)]
pub struct TrackRequests<S> {
    state: AppState,
    inner: S,
}

impl<S> tower::Service<Request> for TrackRequests<S>
where
    S: tower::Service<Request, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's, asked for each request
        // (`oneshot`) once the request is admitted.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (state, inner) = (self.state.clone(), self.inner.clone());
        Box::pin(track_requests(state, request, inner))
    }
}

pin_project_lite::pin_project! {
    /// `future`, polled inside `span`: what `tracing::Instrument` does, minus
    /// entering the span once more to drop the future. An answered request's
    /// future has nothing left to drop, and entering and leaving a span costs
    /// every layer's filter a look-up (two each, per request). A request the
    /// client abandons is dropped outside the span: its future's destructors
    /// log nothing.
    ///
    /// A struct, not an `async fn`: an `async fn` that pins the future it
    /// was given keeps room for it twice (the argument and the pinned
    /// local), and this wrapper and [`Within`] as `async fn`s made every
    /// request's future four times the size of what they wrap, moved whole
    /// into its box on every request.
    struct InSpan<'a, F> {
        span: &'a tracing::Span,
        #[pin]
        future: F,
    }
}

impl<'a, F: std::future::Future> InSpan<'a, F> {
    fn new(span: &'a tracing::Span, future: F) -> Self {
        Self { span, future }
    }
}

impl<F: std::future::Future> std::future::Future for InSpan<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        this.future.poll(cx)
    }
}

pin_project_lite::pin_project! {
    /// `future`'s output, or `None` when it is not ready by `deadline`.
    ///
    /// Most answers are ready at their first poll (a read from the cache, a
    /// refusal): those never arm a timer. A time-out polling its timer first
    /// (tower-http's) registers one in the runtime's timer wheel and takes it
    /// out again on every request. (A struct for the reason [`InSpan`] is.)
    struct Within<F> {
        #[pin]
        future: F,
        deadline: tokio::time::Instant,
        // Armed when the first poll finds the answer not ready.
        #[pin]
        alarm: Option<tokio::time::Sleep>,
    }
}

impl<F: std::future::Future> Within<F> {
    fn new(deadline: tokio::time::Instant, future: F) -> Self {
        Self {
            future,
            deadline,
            alarm: None,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<F::Output>> {
        let mut this = self.project();
        if let std::task::Poll::Ready(output) = this.future.poll(cx) {
            return std::task::Poll::Ready(Some(output));
        }
        if this.alarm.is_none() {
            this.alarm
                .set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        let alarm = this.alarm.as_pin_mut().expect("armed above");
        alarm.poll(cx).map(|()| None)
    }
}

/// `request` with its body held to `max_bytes`, or 413 to answer when
/// its `Content-Length` says more: what tower-http's `RequestBodyLimit` did
/// as a layer of its own. A body read past the limit fails with
/// `LengthLimitError`, which axum's body extractors answer 413.
///
/// An empty body (every `GET`) is passed as it is: nothing to hold, and
/// wrapping it cost every request an allocation (the limited body boxed
/// back into axum's) and a layer's future.
fn within_body_limit(request: Request, max_bytes: usize) -> Result<Request, StatusCode> {
    use axum::body::HttpBody as _;
    if request.body().is_end_stream() {
        return Ok(request);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    let limit = match declared {
        Some(length) if length > max_bytes => {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        Some(length) => length.min(max_bytes),
        None => max_bytes,
    };
    Ok(request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit))))
}

/// `inner`'s answer to `request`; a panic on the way (in the router, an
/// extractor, a handler) is logged and answered 500, not the connection
/// dropped. What tower-http's `CatchPanic` did as a layer of its own.
///
/// A combinator, not an `async fn`: an `async fn` would keep room for
/// `inner` and `request` beside the future they are moved into.
fn answer_of<S>(inner: S, request: Request) -> impl std::future::Future<Output = Response>
where
    S: tower::Service<Request, Error = std::convert::Infallible>,
    S::Response: IntoResponse,
{
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(inner.oneshot(request))
        .catch_unwind()
        .map(|answered| match answered {
            Ok(Ok(answer)) => answer.into_response(),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(a panic without a message)");
                tracing::error!(panic = message, "the request's handler panicked");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        })
}

/// The route template the router matched for a request: a slot
/// `track_requests` puts in the request, which `note_route` fills in inside
/// the router.
#[derive(Clone, Default)]
struct MatchedRoute(std::sync::Arc<std::sync::OnceLock<MatchedPath>>);

/// The one layer on every route (`Router::route_layer`): tells
/// `track_requests`, which runs outside the router, which route template
/// matched, and gives an exported request span its route (that span is the
/// current span here: the router is called inside it).
pub fn note_route(request: Request) -> Request {
    let Some(route) = request.extensions().get::<MatchedPath>() else {
        return request;
    };
    // Looked up only for export: without it the span needs nothing here.
    if orderflow_core::trace::exporting() {
        trace::route_exported_span(&tracing::Span::current(), request.method(), route.as_str());
    }
    if let Some(slot) = request.extensions().get::<MatchedRoute>() {
        let _ = slot.0.set(route.clone());
    }
    request
}

/// The metric handles of one (method, route, status).
struct RouteHandles {
    method: Method,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Metric handles made once per (method, route, status) and thread, not
/// per request: the `metrics` macros allocate the label strings and look
/// the key up in the registry at every call, twice per request here.
///
/// Each thread keeps its own handles (clones of the same registry entries),
/// so finding them takes no lock and moves no shared reference count: one
/// map behind a lock for all threads cost a read lock and four reference
/// counts per request, memory every core serving requests wrote.
struct RouteMetrics;

impl RouteMetrics {
    /// Counts one answer of `route` with `status` that took `elapsed` seconds.
    fn record(method: &Method, route: &str, status: u16, elapsed: f64) {
        thread_local! {
            /// Route template → the handles of its methods and statuses (a handful).
            static HANDLES: std::cell::RefCell<std::collections::HashMap<String, Vec<RouteHandles>>> =
                std::cell::RefCell::default();
        }
        HANDLES.with_borrow_mut(|known| {
            let of_route = match known.get_mut(route) {
                Some(of_route) => of_route,
                None => known.entry(route.to_owned()).or_default(),
            };
            let position = of_route
                .iter()
                .position(|h| h.status == status && h.method == *method)
                .unwrap_or_else(|| {
                    of_route.push(Self::handles(method, route, status));
                    of_route.len() - 1
                });
            let handles = &of_route[position];
            handles.requests.increment(1);
            handles.duration.record(elapsed);
        });
    }

    fn handles(method: &Method, route: &str, status: u16) -> RouteHandles {
        let class = match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        RouteHandles {
            method: method.clone(),
            status,
            requests: metrics::counter!("orderflow_http_requests_total", "method" => method.to_string(), "route" => route.to_owned(), "status" => status.to_string(), "status_class" => class),
            duration: metrics::histogram!("orderflow_http_request_duration_seconds", "method" => method.to_string(), "route" => route.to_owned()),
        }
    }
}

/// The requests this process is answering, counted per core
/// ([`PerCore`]) and summed into `orderflow_http_requests_in_flight` when
/// the metrics are read ([`metrics_endpoint`]): one gauge that every request
/// raised and lowered was two writes per request to memory both cores
/// took turns at. A request may end on another core than it began on, so
/// a shard alone can read below zero; the sum is exact.
fn requests_in_flight() -> &'static PerCore<AtomicI64> {
    static IN_FLIGHT: std::sync::OnceLock<PerCore<AtomicI64>> = std::sync::OnceLock::new();
    IN_FLIGHT.get_or_init(PerCore::default)
}

/// The requests in flight now, summed over the cores.
fn requests_in_flight_now() -> i64 {
    requests_in_flight()
        .shards()
        .map(|shard| shard.load(Ordering::Relaxed))
        .sum()
}

/// Sets `orderflow_http_requests_in_flight` to the requests in flight now.
fn export_requests_in_flight() {
    metrics::gauge!("orderflow_http_requests_in_flight").set(requests_in_flight_now() as f64);
}

/// One request in `orderflow_http_requests_in_flight`; leaving (also by a
/// dropped future: a client that hung up, a timeout) takes it out again.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        requests_in_flight().own().fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        requests_in_flight().own().fetch_sub(1, Ordering::Relaxed);
    }
}

/// W3C trace context for `tracing` spans, with or without OpenTelemetry.
pub mod trace {
    use opentelemetry::trace::TraceContextExt as _;
    use orderflow_domain::events::TraceParent;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    /// Gives the exported span of a request its route once the router
    /// matched it: the `http.route` attribute, and the name "METHOD /route".
    /// That span is started already (its context went into the request for
    /// the handler), so the name is set on it: `otel.name` recorded now
    /// would be ignored. Only for an exported span: its callers check.
    ///
    /// The log span does not get the route: the log lines of a request name its method
    /// and path (the span's fields) and `track_requests` names the route in
    /// the lines it writes; recording the route into every request's log
    /// span cost a product read 4% of its CPU.
    pub fn route_exported_span(span: &tracing::Span, method: &axum::http::Method, route: &str) {
        span.record("http.route", route);
        span.context()
            .span()
            .update_name(format!("{method} {route}"));
    }

    /// Makes `span` continue `parent` (or start a trace) and returns the
    /// context to hand on: this span's trace id and span id.
    ///
    /// With the OpenTelemetry layer installed (OTLP export on), the ids are
    /// the exported span's. Without it there is no span to export, but the
    /// trace id still travels: the caller's, or a fresh random one, with a
    /// fresh span id, so log lines and events of one order share a trace id
    /// either way.
    pub fn continue_trace(span: &tracing::Span, parent: Option<TraceParent>) -> TraceParent {
        if let Some(parent) = &parent {
            orderflow_core::trace::join_remote_parent(span, parent);
        }
        let otel = span.context();
        let ids = otel.span().span_context().clone();
        if ids.is_valid() {
            return TraceParent {
                trace_id: u128::from_be_bytes(ids.trace_id().to_bytes()),
                parent_id: u64::from_be_bytes(ids.span_id().to_bytes()),
                flags: ids.trace_flags().to_u8(),
            };
        }
        // The thread's generator, not `Uuid::new_v4` (a `getrandom` system
        // call each: 3% of a product read's CPU).
        TraceParent {
            trace_id: parent.map_or_else(|| rand::random::<u128>().max(1), |p| p.trace_id),
            parent_id: rand::random::<u64>().max(1),
            flags: parent.map_or(1, |p| p.flags),
        }
    }
}

/// The header that names a request from the proxy's access log to this
/// process's trace.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's W3C trace context.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The rate-limit headers of the IETF draft (named once: a header named by
/// a `&str` is parsed on every insert).
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Turns any error response that is not already a problem (axum's 404/405,
/// the body limit's 413, the time-out's 408, a panic's 500) into one, so
/// clients see one format.
fn problem_fallback(response: Response) -> Response {
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    // A problem document already, or a page's own error page (the browser
    // front answers people, in HTML).
    let answered = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(PROBLEM_JSON.as_bytes())
                || v.as_bytes().starts_with(b"text/html")
        });
    if answered {
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

/// Resolves the request's client IP ([`resolve_client_ip`]), then applies
/// every rate-limit policy of the request (the per-IP auth or
/// general policy, and its route group's policy, per IP or per user) and sets
/// the `RateLimit-Policy` / `RateLimit` headers (IETF draft) on the answer,
/// one list item per policy.
///
/// A refused request is answered 429 with `Retry-After` (the longest wait
/// any refusing policy asks for). An allowed request that a leaky bucket
/// queued waits here for its turn before it reaches the handler; the queue
/// is bounded by the policy, so the wait is too.
///
/// Called by [`track_requests`], not a layer of its own: a `from_fn` layer
/// clones the rest of the stack and boxes two more futures per request.
async fn admit(state: &AppState, request: &mut Request) -> Admission {
    let Some(ip) = resolve_client_ip(state, request) else {
        return Admission::Through(RateHeaders(None));
    };
    let plan = state
        .rate_limits
        .plan(group_of(request.method(), request.uri().path()));
    if plan.checks.is_empty() {
        return Admission::Through(RateHeaders(None));
    }
    let ip_key = ip_key(ip);

    // The `RateLimit` list, written as the checks go; `RateLimit-Policy`
    // is the plan's, the same for every request of the group.
    let mut states = ListValue::new();
    let mut refused: Option<(&str, std::time::Duration)> = None;
    let mut delay = std::time::Duration::ZERO;
    for check in &plan.checks {
        let key = match check.scope {
            Scope::Ip => std::borrow::Cow::Borrowed(ip_key.as_str()),
            // Boxed: verifying a token is a large future that only
            // per-user policies (orders) need; inline, every request's
            // future kept room for it.
            Scope::User => match Box::pin(caller(state, request.headers())).await {
                Some(principal) => {
                    let key = format!("user:{}", principal.user_id);
                    // The handler's `Caller` reuses it: one verification per request.
                    request.extensions_mut().insert(principal);
                    std::borrow::Cow::Owned(key)
                }
                None => std::borrow::Cow::Borrowed(ip_key.as_str()),
            },
        };
        let policy = &check.policy;
        let decision = match state.limiter.check_now(policy, &key) {
            Some(decision) => decision,
            None => state.limiter.check(policy, &key).await,
        };
        push_list_item(
            &mut states,
            &policy.name,
            [
                ("r", u64::from(decision.remaining)),
                ("t", decision.reset_after.as_secs_f64().ceil() as u64),
            ],
        );
        if decision.allowed {
            delay = delay.max(decision.delay);
        } else {
            metrics::counter!("orderflow_rate_limited_total", "policy" => policy.name.clone())
                .increment(1);
            if refused.is_none_or(|(_, wait)| decision.retry_after > wait) {
                refused = Some((&policy.name, decision.retry_after));
            }
        }
    }
    let headers = RateHeaders(
        plan.policy_header
            .clone()
            .zip(HeaderValue::from_bytes(&states).ok()),
    );
    match refused {
        Some((policy, retry_after)) => {
            let mut refusal = ApiError::RateLimited {
                policy: policy.to_owned(),
                retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            }
            .into_response();
            headers.mark(&mut refusal);
            Admission::Refused(refusal)
        }
        None => {
            if !delay.is_zero() {
                metrics::histogram!("orderflow_rate_limit_queue_wait_seconds")
                    .record(delay.as_secs_f64());
                tokio::time::sleep(delay).await;
            }
            Admission::Through(headers)
        }
    }
}

/// What the rate limits decided for one request.
enum Admission {
    /// Let through, with the headers its answer carries.
    Through(RateHeaders),
    /// Refused: the 429 to send, its headers set.
    Refused(Response),
}

/// The `RateLimit-Policy` and `RateLimit` values of a request, when a
/// policy applied to it.
struct RateHeaders(Option<(HeaderValue, HeaderValue)>);

impl RateHeaders {
    /// Sets them on the request's answer.
    fn mark(self, response: &mut Response) {
        if let Some((policies, states)) = self.0 {
            response
                .headers_mut()
                .insert(RATELIMIT_POLICY.clone(), policies);
            response.headers_mut().insert(RATELIMIT.clone(), states);
        }
    }
}

/// The verified caller of a request, if it carries a valid bearer token.
async fn caller(state: &AppState, headers: &axum::http::HeaderMap) -> Option<Principal> {
    let token = bearer_token(headers.get(header::AUTHORIZATION)?)?.to_owned();
    state.auth.authenticate(&token).await.ok()
}

/// `GET /metrics`: Prometheus text. Gauges that are cheaper to read than to
/// keep up to date (lag, DLQ size) are refreshed at scrape time, so a scrape
/// right after an incident shows it.
pub async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    state.operations.export_gauges().await;
    export_requests_in_flight();
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

/// The rate limits' key of a client address: `ip:` and the address as
/// text. An IPv4 address's four octets are written with `itoa`; through
/// `Display` they were five nested `core::fmt` calls on every request.
fn ip_key(ip: std::net::IpAddr) -> String {
    // Sized for the longest IPv6 text: no growth on the way.
    let mut key = String::with_capacity(48);
    key.push_str("ip:");
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    key.push('.');
                }
                key.push_str(digits.format(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(key, "{v6}");
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::Response;

    use super::{InFlight, Within, answer_of, ip_key, requests_in_flight_now, within_body_limit};

    const MAX_BODY: usize = 16;

    fn post(body: &'static str, content_length: Option<usize>) -> Request {
        let mut request = Request::post("/").body(Body::from(body)).unwrap();
        if let Some(length) = content_length {
            request
                .headers_mut()
                .insert(axum::http::header::CONTENT_LENGTH, length.into());
        }
        request
    }

    /// What a handler reading the whole body gets.
    async fn read(request: Request) -> Result<axum::body::Bytes, StatusCode> {
        use axum::extract::FromRequest as _;
        axum::body::Bytes::from_request(request, &())
            .await
            .map_err(|rejection| axum::response::IntoResponse::into_response(rejection).status())
    }

    /// A declared length over the limit is refused before anything reads
    /// the body; a body that says nothing and runs over fails its reader with
    /// 413; a body within the limit, and an empty one, come through whole.
    #[tokio::test]
    async fn a_body_is_held_to_the_limit() {
        let refused = within_body_limit(post("x", Some(MAX_BODY + 1)), MAX_BODY)
            .expect_err("a declared length over the limit");
        assert_eq!(refused, StatusCode::PAYLOAD_TOO_LARGE);

        let undeclared = within_body_limit(post("seventeen bytes!!", None), MAX_BODY)
            .expect("nothing declared: read and held");
        assert_eq!(read(undeclared).await, Err(StatusCode::PAYLOAD_TOO_LARGE));

        let within = within_body_limit(post("sixteen bytes!!!", Some(16)), MAX_BODY).unwrap();
        assert_eq!(read(within).await.unwrap(), "sixteen bytes!!!");
        let empty = within_body_limit(post("", None), MAX_BODY).unwrap();
        assert_eq!(read(empty).await.unwrap(), "");
    }

    /// A panicking service is answered 500; one that answers is passed on.
    #[tokio::test]
    async fn a_panic_is_answered_500() {
        let panics = tower::service_fn(|_: Request| async {
            if true {
                panic!("a handler's bug");
            }
            Ok::<Response, std::convert::Infallible>(Response::new(Body::empty()))
        });
        let answer = answer_of(panics, post("", None)).await;
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);

        let answers = tower::service_fn(|_: Request| async {
            Ok::<_, std::convert::Infallible>(StatusCode::CREATED)
        });
        assert_eq!(
            answer_of(answers, post("", None)).await.status(),
            StatusCode::CREATED
        );
    }

    /// The key is the address as `Display` writes it, for both families.
    #[test]
    fn an_address_key_is_its_usual_text() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "203.0.113.9",
            "::1",
            "2001:db8::42",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(ip_key(ip), format!("ip:{ip}"));
            assert_eq!(ip_key(ip), format!("ip:{text}"));
        }
    }

    /// A request counts from its start to its end, also when it ends on
    /// another thread than it began on (no test of this crate answers
    /// requests, so nothing else moves the count meanwhile).
    #[test]
    fn a_request_in_flight_counts_until_it_ends_on_any_thread() {
        let before = requests_in_flight_now();
        let requests = [InFlight::enter(), InFlight::enter()];
        assert_eq!(requests_in_flight_now(), before + 2);
        std::thread::spawn(move || drop(requests))
            .join()
            .expect("the other thread ends the requests");
        assert_eq!(requests_in_flight_now(), before);
    }

    const LIMIT: Duration = Duration::from_secs(30);

    /// `future`, given `LIMIT` from now.
    fn within<F: std::future::Future>(limit: Duration, future: F) -> Within<F> {
        Within::new(tokio::time::Instant::now() + limit, future)
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ready_at_once_or_in_time_is_kept() {
        assert_eq!(within(LIMIT, async { 7 }).await, Some(7));
        let later = async {
            tokio::time::sleep(LIMIT - Duration::from_millis(1)).await;
            8
        };
        assert_eq!(within(LIMIT, later).await, Some(8));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_not_ready_within_the_limit_is_dropped() {
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(within(LIMIT, never).await, None);
        assert_eq!(started.elapsed(), LIMIT, "given up at the limit, not later");
    }

    /// The deadline is the request's, counted from when it came in, not
    /// from the first poll.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_start_not_the_first_poll() {
        let started = tokio::time::Instant::now();
        let never = within(LIMIT, std::future::pending::<()>());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(never.await, None);
        assert_eq!(started.elapsed(), LIMIT);
    }
}
