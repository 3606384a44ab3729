//! Errors and how they reach a client.
//!
//! Which type to use where:
//! - `db::DbError` for storage failures (Diesel, the pool, the blocking pool);
//! - `integrations::git::GitError` for git commands;
//! - `AppError` everywhere above those: actors answer with it and HTTP handlers
//!   return it. The stable `error` code is chosen where the error happens.
//!
//! At the HTTP edge `AppError` maps, exhaustively, to a status and the JSON body
//! `{"error": code, "message": text}`. A 5xx logs its full source chain and sends
//! no internal text.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::db::DbError;

/// The one error type above the storage and git layers.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed (bad JSON, bad query, unknown field).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The request is well-formed but its content is not acceptable.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Unauthorized { message: String },
    #[error("{message}")]
    Forbidden { message: String },
    /// 403 with its own code, for refusals a client should tell apart from a
    /// token that cannot reach the organization (e.g. `local_path_refused`).
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The thing exists but its state does not allow the request.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A remote we depend on failed (git remote, GitHub, Daytona).
    #[error("{message}")]
    BadGateway { code: &'static str, message: String },
    /// Busy, overloaded or shutting down: the client may retry.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// A bug or an environment failure; the source is logged, never sent.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        AppError::BadRequest { code, message: message.into() }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Invalid { code, message: message.into() }
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        AppError::NotFound { code, message: message.into() }
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Conflict { code, message: message.into() }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        AppError::Forbidden { message: message.into() }
    }
    pub fn denied(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Denied { code, message: message.into() }
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Unavailable { code, message: message.into() }
    }
    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        AppError::Internal(Box::new(err))
    }
    /// git is missing on the server: an environment problem an operator can fix.
    pub fn git_missing() -> Self {
        AppError::unavailable("git_missing", "git is not installed on the Kiln server (or not on its PATH): install git")
    }
    /// An internal error from plain text (a broken invariant).
    pub fn bug(message: impl Into<String>) -> Self {
        AppError::Internal(message.into().into())
    }

    /// A copy with its message passed through `redact`, when that changes it
    /// (an internal error sends no text, so it never needs one).
    pub fn redacted(&self, redact: impl Fn(&str) -> std::borrow::Cow<'_, str>) -> Option<AppError> {
        let message = match self {
            AppError::BadRequest { message, .. }
            | AppError::Invalid { message, .. }
            | AppError::Unauthorized { message }
            | AppError::Forbidden { message }
            | AppError::Denied { message, .. }
            | AppError::NotFound { message, .. }
            | AppError::Conflict { message, .. }
            | AppError::BadGateway { message, .. }
            | AppError::Unavailable { message, .. } => message,
            AppError::PayloadTooLarge { .. } | AppError::Internal(_) => return None,
        };
        let std::borrow::Cow::Owned(message) = redact(message) else { return None };
        Some(match self {
            AppError::BadRequest { code, .. } => AppError::BadRequest { code, message },
            AppError::Invalid { code, .. } => AppError::Invalid { code, message },
            AppError::Unauthorized { .. } => AppError::Unauthorized { message },
            AppError::Forbidden { .. } => AppError::Forbidden { message },
            AppError::Denied { code, .. } => AppError::Denied { code, message },
            AppError::NotFound { code, .. } => AppError::NotFound { code, message },
            AppError::Conflict { code, .. } => AppError::Conflict { code, message },
            AppError::BadGateway { code, .. } => AppError::BadGateway { code, message },
            AppError::Unavailable { code, .. } => AppError::Unavailable { code, message },
            AppError::PayloadTooLarge { .. } | AppError::Internal(_) => return None,
        })
    }

    /// The stable snake_case code sent as `error`.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest { code, .. }
            | AppError::Invalid { code, .. }
            | AppError::NotFound { code, .. }
            | AppError::Conflict { code, .. }
            | AppError::Denied { code, .. }
            | AppError::BadGateway { code, .. }
            | AppError::Unavailable { code, .. } => code,
            AppError::Unauthorized { .. } => "unauthorized",
            AppError::Forbidden { .. } => "forbidden",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::Internal(_) => "internal_error",
        }
    }
}

impl From<DbError> for AppError {
    fn from(err: DbError) -> Self {
        if err.is_busy() {
            AppError::unavailable("database_busy", "the database is busy; retry shortly")
        } else {
            AppError::internal(err)
        }
    }
}

impl From<actix::MailboxError> for AppError {
    fn from(err: actix::MailboxError) -> Self {
        match err {
            actix::MailboxError::Closed => {
                AppError::unavailable("shutting_down", "the service is shutting down; retry shortly")
            }
            actix::MailboxError::Timeout => {
                AppError::unavailable("busy", "the service is busy; retry shortly")
            }
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            AppError::Forbidden { .. } | AppError::Denied { .. } => StatusCode::FORBIDDEN,
            AppError::NotFound { .. } => StatusCode::NOT_FOUND,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            AppError::Internal(source) => {
                log::error!("internal error: {}", chain(source.as_ref()));
                "something went wrong inside Kiln; the server log has the details".to_string()
            }
            other => other.to_string(),
        };
        let mut res = HttpResponse::build(self.status_code());
        if let AppError::Unauthorized { .. } = self {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        res.json(ErrorBody { error: self.code(), message })
    }
}

/// Renders an error with all its sources, for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

pub type AppResult<T> = Result<T, AppError>;
