//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, `openapi.json` beside this
//! file. It is written by hand: the request parsers read untrusted `serde_json::Value`s field
//! by field (`request/`, `anthropic/parse.rs`, `responses/parse.rs`, `completions.rs`), so
//! there are no types to derive it from. A change to a parser or to `routes()` changes it too;
//! the tests below hold its paths and methods to what `routes()` registers.

use actix_web::{web, HttpResponse};

/// The document as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The `/openapi.json` resource (GET; other methods get a 405, as on every route).
pub fn resource() -> actix_web::Resource {
    web::resource("/openapi.json")
        .route(web::get().to(document))
        .default_service(web::to(super::edge::method_not_allowed))
}

async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use actix_web::http::{Method, StatusCode};
    use actix_web::test as actix_test;
    use actix_web::{App, HttpRequest};
    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("src/server/openapi.json is not valid JSON")
    }

    /// `{id:.+}` (actix's pattern) is `{id}` in OpenAPI.
    fn openapi_path(pattern: &str) -> String {
        let mut out = String::new();
        let mut in_regex = false;
        for c in pattern.chars() {
            match c {
                ':' if out.ends_with(|c: char| c.is_alphanumeric()) && out.contains('{') => {
                    in_regex = true
                }
                '}' => {
                    in_regex = false;
                    out.push(c)
                }
                _ if in_regex => {}
                _ => out.push(c),
            }
        }
        out
    }

    /// The app `run` serves, minus the state and the edge middleware. Its fallback answers
    /// with the app's resource map: actix offers no public list of the resources registered,
    /// but the map's `Debug` names each one as `Single("PATTERN")`.
    macro_rules! app {
        () => {
            actix_test::init_service(App::new().configure(crate::server::routes).default_service(
                web::to(|req: HttpRequest| async move {
                    HttpResponse::NotFound().body(format!("{:?}", req.resource_map()))
                }),
            ))
            .await
        };
    }

    /// The paths `routes()` registers, in OpenAPI's spelling.
    async fn registered_paths() -> BTreeSet<String> {
        let app = app!();
        let req = actix_test::TestRequest::get()
            .uri("/no/such/route")
            .to_request();
        let map =
            String::from_utf8(actix_test::call_and_read_body(&app, req).await.to_vec()).unwrap();
        let paths: BTreeSet<String> = map
            .split("Single(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .filter(|p| !p.is_empty())
            .map(openapi_path)
            .collect();
        assert!(
            paths.contains("/health") && paths.contains("/v1/models/{id}"),
            "could not read the routes from the resource map (actix changed its Debug?): {paths:?}"
        );
        paths
    }

    #[test]
    fn is_openapi_3_1_with_unique_operation_ids_and_resolvable_refs() {
        let doc = doc();
        let version = doc["openapi"].as_str().unwrap_or("");
        assert!(version.starts_with("3.1."), "openapi is {version:?}");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(ids.insert(id.to_string()), "operationId {id} twice");
                assert!(
                    op["responses"]["200"].is_object(),
                    "{method} {path}: no 200"
                );
            }
        }
        // Every `$ref` points at something in the document.
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50);
        for r in all {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r}"));
            assert!(doc.pointer(pointer).is_some(), "$ref {r} points at nothing");
        }
    }

    #[actix_web::test]
    async fn paths_are_the_routes() {
        let documented: BTreeSet<String> = doc()["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(documented, registered_paths().await);
    }

    /// Each path answers the methods the document gives it, and 405 to the others.
    #[actix_web::test]
    async fn methods_are_the_routes() {
        let doc = doc();
        let app = app!();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let uri = path.replace("{id}", "ORG/NAME");
            for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
                let documented = item.get(method.as_str().to_lowercase()).is_some();
                let req = actix_test::TestRequest::default()
                    .method(method.clone())
                    .uri(&uri)
                    .to_request();
                let status = actix_test::call_service(&app, req).await.status();
                // Without the app state a handler answers 500; only the routing matters here.
                let routed =
                    status != StatusCode::METHOD_NOT_ALLOWED && status != StatusCode::NOT_FOUND;
                assert_eq!(routed, documented, "{method} {path}: {status}");
            }
        }
    }

    #[actix_web::test]
    async fn serves_the_document() {
        let app = actix_test::init_service(App::new().service(resource())).await;
        let req = actix_test::TestRequest::get()
            .uri("/openapi.json")
            .to_request();
        let resp = actix_test::call_service(&app, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/json"
        );
        let body = actix_test::read_body(resp).await;
        assert_eq!(body, DOCUMENT.as_bytes());
    }
}
