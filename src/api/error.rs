//! Every API error is rendered here, in one shape:
//! `{"error": {"code": "...", "message": "..."}}`.

use crate::supervisor;
use crate::wire::{ErrorBody, ErrorDetail};
use salvo::http::StatusCode;
use salvo::oapi::{self, Components, EndpointOutRegister, Operation, ToSchema};
use salvo::prelude::*;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 for an address that sent too many wrong keys.
    pub fn too_many_failures(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        ApiError {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many wrong API keys from this address; try again in {secs} s"),
            )
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The body for a bare status code (unknown route, wrong method, ...).
    pub fn from_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        let message = status.canonical_reason().unwrap_or("error").to_string();
        Self::new(status, code, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<supervisor::Error> for ApiError {
    fn from(e: supervisor::Error) -> Self {
        match e {
            supervisor::Error::NotFound(id) => ApiError::not_found(format!("no agent named {id:?}")),
            supervisor::Error::ShuttingDown => ApiError::unavailable("the daemon is shutting down"),
            supervisor::Error::Busy => ApiError::unavailable("the supervisor is busy; try again"),
            supervisor::Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ supervisor::Error::NotStored(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_not_stored",
                format!("{e}; it is done, kept and retried, and /health shows it until it is stored"),
            ),
        }
    }
}

impl Scribe for ApiError {
    fn render(self, res: &mut Response) {
        res.status_code(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                salvo::http::header::WWW_AUTHENTICATE,
                salvo::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(
                salvo::http::header::RETRY_AFTER,
                salvo::http::HeaderValue::from(secs),
            );
        }
        res.render(Json(self.body()));
    }
}

impl EndpointOutRegister for ApiError {
    fn register(components: &mut Components, operation: &mut Operation) {
        for (code, what) in [
            ("400", "Malformed request"),
            ("401", "Missing or wrong API key"),
            ("403", "The key's role lacks the right (forbidden)"),
            (
                "429",
                "Too many wrong keys from this address (too_many_failures; see Retry-After)",
            ),
            ("404", "Unknown agent"),
            ("409", "Overtaken by a later request for the opposite (conflict)"),
            (
                "503",
                "The daemon is shutting down or at capacity, or the desired state could not be stored (state_not_stored)",
            ),
        ] {
            operation.responses.insert(
                code,
                oapi::Response::new(what).add_content("application/json", ErrorBody::to_schema(components)),
            );
        }
    }
}

/// Gives every error response without a body the JSON error shape.
#[handler]
pub async fn catcher(res: &mut Response, ctrl: &mut FlowCtrl) {
    if let Some(status) = res.status_code
        && (status.is_client_error() || status.is_server_error())
    {
        ApiError::from_status(status).render(res);
        ctrl.skip_rest();
    }
}
