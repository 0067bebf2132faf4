//! What stands between the socket and the handlers: CORS (`--allowed-origins`), the optional
//! API key (`--api-key`, as `Authorization: Bearer KEY` or `x-api-key: KEY`, on every route
//! but `/health` and preflights), and the 405 for a known path with the wrong method.

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;

/// The edge settings, shared by every worker.
#[derive(Debug, Clone)]
pub struct Edge {
    api_key: Option<String>,
    origins: Vec<String>,
}

impl Edge {
    pub fn new(api_key: Option<String>, origins: Vec<String>) -> Self {
        Edge {
            api_key: api_key.filter(|k| !k.is_empty()),
            origins,
        }
    }

    /// CORS for the configured origins (`*`: any origin, no credentials).
    pub fn cors(&self) -> Cors {
        let cors = Cors::default()
            .allow_any_method()
            .allow_any_header()
            .expose_any_header()
            .max_age(3600);
        if self.origins.iter().any(|o| o == "*") {
            return cors.allow_any_origin();
        }
        self.origins
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin))
    }

    /// Whether `req` carries the key (always true without one).
    fn admits(&self, req: &ServiceRequest) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let bearer = header("authorization").and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        [bearer, header("x-api-key")]
            .into_iter()
            .flatten()
            .any(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
    }
}

/// Compares without an early exit, so response timing does not leak the key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses requests without the API key (401), except `/health` and CORS preflights.
pub async fn require_api_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let public = req.path() == "/health" || req.method() == Method::OPTIONS;
    let admitted = public
        || req
            .app_data::<web::Data<Edge>>()
            .is_none_or(|edge| edge.admits(&req));
    if admitted {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let response = ApiError::Unauthorized.response_for(req.path());
    Ok(req.into_response(response))
}

/// A known path asked with a method it does not serve.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::MethodNotAllowed(format!("{} {}", req.method(), req.path())).response_for(req.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
