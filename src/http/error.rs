//! The viewer API's error answer: `{"error": {"code": "...", "message": "..."}}` with a status,
//! and the extractors whose rejections are that answer (axum's own answer in plain text).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::auth::AuthError;

/// An error answer of the JSON API.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code (docs/viewer.md).
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Extra members of the `error` object (e.g. `legacy` for `legacy_unmapped`).
    pub extra: Option<(&'static str, Value)>,
}

impl ApiError {
    /// An error without extra members.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    /// 404 `not_found`: absent, or outside the token's scope (the two look the same).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 403 `forbidden`: the token may read this but not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 413 `body_too_large`: a request body past its documented bound.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body must be at most {limit} bytes"),
        )
    }

    /// 400 `invalid_parameter`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    /// 429 `too_many_streams`: the token or the run has as many live streams open as it may.
    pub fn too_many_streams(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message)
    }

    /// 404 `not_found` for a route that does not exist.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 405 `method_not_allowed` (axum adds the `Allow` header).
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }

    /// The answer to an extractor's rejection: 400 `invalid_parameter` for what the client
    /// sent, 500 `internal_error` for a route that extracts what it does not have.
    fn rejected(status: StatusCode, text: String) -> Self {
        if status.is_client_error() {
            Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", text)
        } else {
            tracing::error!(%status, text, "viewer extractor failed");
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request could not be handled",
            )
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::rejected(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::rejected(r.status(), r.body_text())
    }
}

/// axum's [`Path`], rejected with an [`ApiError`] (a run id that is not UTF-8, say).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// axum's [`Query`], rejected with an [`ApiError`].
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Missing => "missing_token",
            AuthError::Invalid(_) | AuthError::NotYetValid { .. } => "invalid_token",
            AuthError::Expired => "expired_token",
        };
        Self::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "viewer database read failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database could not be read; retry",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some((key, value)) = self.extra {
            error[key] = value;
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}
