//! The server's errors: [`ApiError`] (what a request gets back, as an OpenAI-shaped JSON body
//! `{"error":{"message","type","param","code"}}` with a matching HTTP status) and
//! [`ServeError`] (why `kooka serve` could not start).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::chat::TemplateError;
use crate::model::ModelError;

/// A failed request. The `Display` text is the `message` clients see.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a field of the wrong type or out of range, an unsupported option.
    #[error("{message}")]
    BadRequest {
        message: String,
        /// The offending request field, when there is one.
        param: Option<String>,
        /// A machine-readable reason (`context_length_exceeded`, ...).
        code: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist or is not served here")]
    ModelNotFound(String),
    #[error("No route for {0}")]
    RouteNotFound(String),
    #[error("Method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error(
        "Missing or wrong API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`"
    )]
    Unauthorized,
    /// Refused by the edge (`Host` or `Origin` not allowed).
    #[error("{0}")]
    Forbidden(String),
    /// The client closed its connection before the reply was ready (nobody reads this).
    #[error("The client closed the connection")]
    ClientClosed,
    /// The body did not arrive in time (`--body-timeout`).
    #[error("The request body did not arrive within {0} s (--body-timeout)")]
    BodyTimeout(u64),
    #[error("The request body is larger than the limit of {0} bytes (--max-body-bytes)")]
    PayloadTooLarge(usize),
    /// The model thread is gone (it failed or the server is shutting down).
    #[error("The model is not available: {0}")]
    Unavailable(String),
    /// The server is at capacity (429 with `Retry-After`).
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("Internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 about request field `param`.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// A 400 not tied to one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// Seconds a client should wait before trying again, for the statuses that say so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Unavailable(_) => Some(5),
            ApiError::Overloaded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } | ApiError::PayloadTooLarge(_) => "invalid_request_error",
            ApiError::ModelNotFound(_)
            | ApiError::RouteNotFound(_)
            | ApiError::MethodNotAllowed(_) => "invalid_request_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::BodyTimeout(_) | ApiError::ClientClosed => "invalid_request_error",
            ApiError::Unavailable(_) | ApiError::Internal(_) => "server_error",
            ApiError::Overloaded { .. } => "rate_limit_error",
        }
    }

    pub(crate) fn param(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { param, .. } => param.as_deref(),
            ApiError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::BadRequest { code, .. } => *code,
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::RouteNotFound(_) => Some("not_found"),
            ApiError::MethodNotAllowed(_) => Some("method_not_allowed"),
            ApiError::Unauthorized => Some("invalid_api_key"),
            ApiError::Forbidden(_) => Some("forbidden"),
            ApiError::BodyTimeout(_) => Some("request_timeout"),
            ApiError::ClientClosed => Some("client_closed_request"),
            ApiError::PayloadTooLarge(_) => Some("payload_too_large"),
            ApiError::Unavailable(_) => Some("unavailable"),
            ApiError::Overloaded { .. } => Some("server_overloaded"),
            ApiError::Internal(_) => None,
        }
    }

    /// Anthropic's error type for this error.
    fn anthropic_kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } | ApiError::MethodNotAllowed(_) => "invalid_request_error",
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => "not_found_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::BodyTimeout(_) | ApiError::ClientClosed => "invalid_request_error",
            ApiError::PayloadTooLarge(_) => "request_too_large",
            ApiError::Overloaded { .. } => "rate_limit_error",
            ApiError::Unavailable(_) => "overloaded_error",
            ApiError::Internal(_) => "api_error",
        }
    }

    /// The body in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`
    /// (also the data of an in-stream `error` event).
    pub fn anthropic_body(&self) -> serde_json::Value {
        json!({
            "type": "error",
            "error": {"type": self.anthropic_kind(), "message": self.to_string()},
        })
    }

    /// The response for the Anthropic routes (`/v1/messages...`), status and headers as
    /// [`ResponseError::error_response`] gives them.
    pub fn anthropic_response(&self) -> HttpResponse {
        let mut response = self.error_response();
        let body = actix_web::body::BoxBody::new(self.anthropic_body().to_string());
        response.headers_mut().insert(
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderValue::from_static("application/json"),
        );
        response.set_body(body)
    }

    /// This error for a request to `path`: Anthropic-shaped under `/v1/messages`, OpenAI-shaped
    /// elsewhere.
    pub fn response_for(&self, path: &str) -> HttpResponse {
        if path.starts_with("/v1/messages") {
            self.anthropic_response()
        } else {
            self.error_response()
        }
    }

    /// The JSON body (also used for errors sent inside an SSE stream).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.to_string(),
            "type": self.kind(),
            "param": self.param(),
            "code": self.code(),
        }})
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // nginx's "client closed request": logged, never received.
            ApiError::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(retry) = self.retry_after() {
            response.insert_header(("Retry-After", retry.to_string()));
        }
        match self {
            ApiError::Unauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            ApiError::BodyTimeout(_) => {
                response.force_close();
            }
            _ => {}
        }
        response.json(self.body())
    }
}

impl From<crate::runtime::RuntimeError> for ApiError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        use crate::runtime::RuntimeError as R;
        match e {
            R::BadRequest { message, param } => ApiError::BadRequest {
                message,
                param: param.map(str::to_string),
                code: None,
            },
            R::Overloaded {
                message,
                retry_after_secs,
            } => ApiError::Overloaded {
                message,
                retry_after_secs,
            },
            R::Unavailable(m) => ApiError::Unavailable(m),
            R::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading the model: {0}")]
    Model(#[from] ModelError),
    #[error("compiling the chat template: {0}")]
    Template(#[from] TemplateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the MLX thread exited before the model was loaded")]
    ModelThreadDied,
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_openai_shaped() {
        let e = ApiError::ModelNotFound("gpt-x".into());
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        let body = e.body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let e = ApiError::field("temperature", "must be a number");
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["param"], "temperature");
        assert!(e.body()["error"]["code"].is_null());
        assert_eq!(
            ApiError::PayloadTooLarge(8).status_code(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
