//! The HTTP layer's one error type and its rendering as problem+json.
//!
//! Core errors carry their own [`Problem`] mapping (`CoreError::problem`), so
//! the status codes and `type` slugs live in one place; this module adds the
//! errors only HTTP has (bad JSON, missing token, rate limited) and renders
//! them all. 5xx details are logged here and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_core::CoreError;
use orderflow_core::error::{Problem, slug};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The body is not the JSON the route expects (syntax, types, missing fields).
    #[error("{0}")]
    BadJson(String),
    /// The body crosses a hostile-input limit (JSON depth, string length).
    #[error("{0}")]
    InputLimit(String),
    /// The query string does not parse.
    #[error("{0}")]
    BadQuery(String),
    /// The request is over a rate limit.
    #[error("rate limit exceeded for {policy}; retry after {retry_after_secs} s")]
    RateLimited {
        policy: String,
        retry_after_secs: u64,
    },
    /// Any other status produced by the stack (404 route, 405, 413, 408...).
    #[error("{detail}")]
    Status { status: StatusCode, detail: String },
}

impl ApiError {
    pub fn problem(&self) -> Problem {
        match self {
            ApiError::Core(e) => e.problem(),
            ApiError::BadJson(detail) => Problem {
                slug: slug::MALFORMED_BODY,
                title: "Body is not valid JSON for this route",
                status: 422,
                detail: detail.clone(),
                field: None,
            },
            ApiError::InputLimit(detail) => Problem {
                slug: slug::INPUT_LIMIT,
                title: "Input is over a limit",
                status: 422,
                detail: detail.clone(),
                field: None,
            },
            ApiError::BadQuery(detail) => Problem {
                slug: slug::MALFORMED_QUERY,
                title: "Query string is not valid",
                status: 400,
                detail: detail.clone(),
                field: None,
            },
            ApiError::RateLimited { .. } => Problem {
                slug: slug::RATE_LIMITED,
                title: "Too many requests",
                status: 429,
                detail: self.to_string(),
                field: None,
            },
            ApiError::Status { status, detail } => status_problem(*status, detail.clone()),
        }
    }
}

/// A problem for a bare status code (used for errors the middleware produces).
pub fn status_problem(status: StatusCode, detail: String) -> Problem {
    let (slug, title) = match status {
        StatusCode::NOT_FOUND => (slug::NOT_FOUND, "Not found"),
        StatusCode::METHOD_NOT_ALLOWED => (slug::METHOD_NOT_ALLOWED, "Method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => (slug::PAYLOAD_TOO_LARGE, "Request body is too large"),
        StatusCode::REQUEST_TIMEOUT => (slug::REQUEST_TIMEOUT, "Request took too long"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (slug::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")
        }
        StatusCode::BAD_REQUEST => (slug::BAD_REQUEST, "Bad request"),
        StatusCode::UNAUTHORIZED => (slug::UNAUTHORIZED, "Authentication required"),
        StatusCode::SERVICE_UNAVAILABLE => (slug::UNAVAILABLE, "Service unavailable"),
        s if s.is_server_error() => (slug::INTERNAL, "Internal error"),
        _ => (slug::HTTP_ERROR, "Request failed"),
    };
    Problem {
        slug,
        title,
        status: status.as_u16(),
        detail,
        field: None,
    }
}

/// Renders a problem document with the right status and content type.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(problem.to_json())).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        if problem.status >= 500 {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = problem_response(&problem);
        let retry_after_secs = match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Core(error) => error
                .retry_after()
                .map(|wait| wait.as_secs_f64().ceil().max(1.0) as u64),
            _ => None,
        };
        if let Some(secs) = retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if problem.status == 401 {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<orderflow_domain::ValidationError> for ApiError {
    fn from(error: orderflow_domain::ValidationError) -> Self {
        ApiError::Core(error.into())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
