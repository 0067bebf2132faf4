//! What stands between the socket and the handlers: the `Host` check (`--allowed-hosts`,
//! against DNS rebinding), CORS and the `Origin` check (`--allowed-origins`), the optional API
//! keys (`--api-key`, `--api-key-file`; as `Authorization: Bearer KEY` or `x-api-key: KEY`, on
//! every route but `/health`, `/openapi.json` and preflights: `/metrics` needs the key too,
//! since it tells load and usage), and the 405 for a known path with the wrong method.
//!
//! Without an API key a local server is open to whatever reaches it, so by default it only
//! answers browsers on loopback pages (`Origin`) and requests addressed to a loopback name or
//! an IP address (`Host`): a web page elsewhere cannot call it, and a domain rebound to
//! 127.0.0.1 is refused. With a key, both default to any.

use std::net::IpAddr;

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;

/// Which values of a header (`Host` or `Origin`) are let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Any,
    /// Loopback names and addresses (and, for `Host`, any IP address) only.
    Local,
    /// These, besides [`Allowed::Local`]'s.
    Listed(Vec<String>),
}

impl Allowed {
    /// A flag's value: absent gives `default`; `*` anywhere gives [`Allowed::Any`].
    pub fn from_flag(values: Option<&[String]>, default: Allowed) -> Allowed {
        let Some(values) = values else {
            return default;
        };
        let values: Vec<String> = values
            .iter()
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect();
        if values.iter().any(|v| v == "*") {
            Allowed::Any
        } else {
            Allowed::Listed(values)
        }
    }
}

/// The edge settings, shared by every worker.
#[derive(Debug, Clone)]
pub struct Edge {
    api_keys: Vec<String>,
    origins: Allowed,
    hosts: Allowed,
}

impl Edge {
    /// `origins` / `hosts`: the flags as given (`None`: not given).
    pub fn new(
        api_keys: Vec<String>,
        origins: Option<&[String]>,
        hosts: Option<&[String]>,
    ) -> Self {
        let api_keys: Vec<String> = api_keys.into_iter().filter(|k| !k.is_empty()).collect();
        let default = match api_keys.is_empty() {
            true => Allowed::Local,
            false => Allowed::Any,
        };
        Edge {
            origins: Allowed::from_flag(origins, default.clone()),
            hosts: Allowed::from_flag(hosts, default),
            api_keys,
        }
    }

    /// CORS headers for the allowed origins (`*`: any origin, no credentials). Requests from
    /// other origins are refused by [`guard`], not here, so that they get a JSON error.
    pub fn cors(&self) -> Cors {
        let cors = Cors::default()
            .allow_any_method()
            .allow_any_header()
            .expose_any_header()
            .max_age(3600);
        if self.origins == Allowed::Any {
            return cors.allow_any_origin();
        }
        let origins = self.origins.clone();
        cors.allowed_origin_fn(move |origin, _| {
            origin.to_str().is_ok_and(|o| origin_allowed(&origins, o))
        })
    }

    /// Whether `req` carries one of the keys (always true without keys).
    fn admits(&self, req: &ServiceRequest) -> bool {
        if self.api_keys.is_empty() {
            return true;
        }
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let bearer = header("authorization").and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        let given: Vec<&str> = [bearer, header("x-api-key")]
            .into_iter()
            .flatten()
            .map(str::trim)
            .collect();
        // Every key is compared (no early exit), so timing says nothing about which matched.
        self.api_keys.iter().fold(false, |ok, key| {
            given.iter().fold(ok, |ok, g| {
                ok | constant_time_eq(g.as_bytes(), key.as_bytes())
            })
        })
    }

    /// Why `req` must be refused before it reaches a handler, if it must.
    fn refusal(&self, req: &ServiceRequest) -> Option<ApiError> {
        let header = |name| req.headers().get(name).map(|v| v.to_str().unwrap_or("?"));
        if let Some(host) = header("host").filter(|h| !host_allowed(&self.hosts, h)) {
            return Some(ApiError::Forbidden(format!(
                "Host `{host}` is not allowed: without an API key this server answers only \
                 requests addressed to a loopback name or an IP address (protection against DNS \
                 rebinding); start it with --allowed-hosts {} (or --api-key) to serve this name",
                host_name(host)
            )));
        }
        if let Some(origin) = header("origin").filter(|o| !origin_allowed(&self.origins, o)) {
            return Some(ApiError::Forbidden(format!(
                "Origin `{origin}` is not allowed: without an API key this server answers only \
                 pages served from loopback addresses; start it with --allowed-origins {origin} \
                 (or --api-key) to let that page call it"
            )));
        }
        let public =
            matches!(req.path(), "/health" | "/openapi.json") || req.method() == Method::OPTIONS;
        if !public && !self.admits(req) {
            return Some(ApiError::Unauthorized);
        }
        None
    }
}

/// `host[:port]` or `[v6]:port` without the port.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A `Host` header against the policy. IP addresses always pass: a DNS rebinding attack
/// needs a name the attacker controls, and clients on the network address the server by IP.
fn host_allowed(policy: &Allowed, host: &str) -> bool {
    let name = host_name(host).to_ascii_lowercase();
    let local = is_loopback_name(&name) || name.parse::<IpAddr>().is_ok();
    match policy {
        Allowed::Any => true,
        Allowed::Local => local,
        Allowed::Listed(names) => {
            local
                || names.iter().any(|n| {
                    let n = host_name(n);
                    match n.strip_prefix('.') {
                        // `.example.com`: the name and its subdomains.
                        Some(domain) => name == domain || name.ends_with(n),
                        None => name == n,
                    }
                })
        }
    }
}

/// An `Origin` header against the policy: loopback pages, or the listed origins exactly.
fn origin_allowed(policy: &Allowed, origin: &str) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let local = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| is_loopback_name(host_name(rest)));
    match policy {
        Allowed::Any => true,
        Allowed::Local => local,
        Allowed::Listed(origins) => {
            local || origins.iter().any(|o| o.trim_end_matches('/') == origin)
        }
    }
}

/// Compares without an early exit, so response timing does not leak the key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses requests for a host or origin that is not allowed (403) and requests without an
/// API key (401, except the public routes and CORS preflights).
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refusal = req
        .app_data::<web::Data<Edge>>()
        .and_then(|edge| edge.refusal(&req));
    match refusal {
        None => Ok(next.call(req).await?.map_into_boxed_body()),
        Some(e) => {
            let response = e.response_for(req.path());
            Ok(req.into_response(response))
        }
    }
}

/// A known path asked with a method it does not serve (with the `Allow` header RFC 9110
/// asks for).
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let path = req.path();
    let allow = match path {
        "/health" => "GET, HEAD",
        p if p == "/openapi.json" || p == "/metrics" || p.starts_with("/v1/models") => "GET",
        _ => "POST",
    };
    let mut response =
        ApiError::MethodNotAllowed(format!("{} {path}", req.method())).response_for(path);
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    response
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

    #[test]
    fn hosts_default_to_loopback_names_and_addresses() {
        let local = Allowed::Local;
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:1",
            "app.localhost:3000",
            "127.0.0.1:8080",
            "[::1]:8080",
            "192.168.1.20:8080",
            "[fe80::1]",
        ] {
            assert!(host_allowed(&local, ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "mymac.local",
        ] {
            assert!(!host_allowed(&local, bad), "{bad}");
        }
        let listed = Allowed::from_flag(
            Some(&["mymac.local".into(), ".corp.example".into()]),
            Allowed::Local,
        );
        assert!(host_allowed(&listed, "mymac.local:8080"));
        assert!(host_allowed(&listed, "gpu.corp.example"));
        assert!(host_allowed(&listed, "corp.example"));
        assert!(!host_allowed(&listed, "evilcorp.example"));
        assert!(host_allowed(
            &Allowed::from_flag(Some(&["*".into()]), Allowed::Local),
            "x.y"
        ));
    }

    #[test]
    fn origins_default_to_loopback_pages() {
        let local = Allowed::Local;
        for ok in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://[::1]:5173/",
        ] {
            assert!(origin_allowed(&local, ok), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "null",
            "http://192.168.1.2:3000",
            "file://",
        ] {
            assert!(!origin_allowed(&local, bad), "{bad}");
        }
        let listed = Allowed::from_flag(Some(&["https://ui.example".into()]), Allowed::Local);
        assert!(origin_allowed(&listed, "https://UI.example"));
        assert!(!origin_allowed(&listed, "https://ui.example.evil"));
    }

    #[test]
    fn a_key_opens_both_by_default() {
        let edge = Edge::new(vec!["k".into()], None, None);
        assert_eq!((edge.hosts, edge.origins), (Allowed::Any, Allowed::Any));
        let edge = Edge::new(vec![], None, None);
        assert_eq!((edge.hosts, edge.origins), (Allowed::Local, Allowed::Local));
    }
}
