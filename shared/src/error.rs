//! The one error type of the request paths, mapped once to the protocol's JSON error body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::domain::FieldError;
use crate::store::StoreError;

/// Everything a request can fail with. Each variant knows its status and its stable
/// `code`; internals are logged here and never reach the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("the session is full")]
    SessionFull,
    #[error("the session has ended")]
    SessionEnded,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    InvalidField(FieldError),
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("a backing service is unavailable; try again shortly")]
    ServiceUnavailable,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SessionFull | Self::SessionEnded => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidField(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::SessionFull => "session_full",
            Self::SessionEnded => "session_ended",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InvalidField(_) => "invalid_field",
            Self::RateLimited { .. } => "rate_limited",
            Self::ServiceUnavailable => "service_unavailable",
            Self::Internal => "internal",
        }
    }
}

/// The protocol's error body: `{"error": {"code", "message"}}`, plus `field` on a 422.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_field`.
    pub code: &'static str,
    /// A human sentence; for a 422 it names the field.
    pub message: String,
    /// The offending field of a 422.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "typescript", ts(optional))]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), "request failed: {self}");
        }
        let field = match &self {
            Self::InvalidField(err) => err.field.clone(),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Self::RateLimited { retry_after_secs } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        Self::InvalidField(err)
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Missing => Self::Unauthorized("a bearer token is required"),
            AuthError::Expired => Self::Unauthorized("the token has expired"),
            AuthError::Invalid => Self::Unauthorized("the token is invalid"),
            AuthError::Signing => Self::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::SessionNotFound => Self::NotFound("no session has this id"),
            StoreError::SessionFull => Self::SessionFull,
            StoreError::SessionEnded => Self::SessionEnded,
            StoreError::UnknownMessage => Self::InvalidField(FieldError::new(
                "before",
                "before is not a message of this session",
            )),
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                Self::ServiceUnavailable
            }
            StoreError::Internal(reason) => {
                tracing::error!(%reason, "database error");
                Self::Internal
            }
        }
    }
}
