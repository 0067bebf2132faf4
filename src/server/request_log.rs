//! Every HTTP request's id, span, log line and HTTP metrics (the outermost middleware).
//!
//! The id is the client's `x-request-id` when it sent a sane one (printable ASCII, at most
//! 128 characters), else a fresh one; it comes back as `x-request-id` on every response,
//! the middleware's own refusals (401, 403, 404, preflights) included. The handler, and a
//! streamed body while it is written, run inside the `request` span (`id`, `method`,
//! `route`), so their logs carry the id. When the response's last byte is written (or the
//! client goes away) one `info` line, `request finished`, reports the id, route, status,
//! model and token counts (generations), time to first token and duration as separate
//! fields (JSON fields with `--log-format json`). Request and reply text is logged only at
//! `trace`.
//!
//! A generation's counts reach the line through a task-local slot that [`record`] fills
//! (`http::next_item` calls it on the job's end), so no handler has to pass them along.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, ACCESS_CONTROL_EXPOSE_HEADERS};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage;
use tracing::{info_span, Instrument, Span};

use super::AppState;
use crate::metrics::{Metrics, Route, RouteStatus};

/// The request and response header that carries the id.
pub const HEADER: &str = "x-request-id";
/// Longer client ids are replaced by a fresh one.
const MAX_CLIENT_ID: usize = 128;
/// The status logged and counted when the client left before its response was written
/// (nginx's "client closed request").
const CLIENT_CLOSED: u16 = 499;

/// A request's id, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// What a request's generation reported, for its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generated {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// From submission to the first token (see [`crate::runtime::Event::Done`]).
    pub ttft: Duration,
}

type Slot = Arc<Mutex<Option<Generated>>>;

tokio::task_local! {
    static GENERATED: Slot;
}

/// Notes the request's generation for its log line (no-op outside a request).
pub fn record(generated: Generated) {
    let _ = GENERATED.try_with(|slot| *lock(slot) = Some(generated));
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Generated>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client's id if it is sane: 1 to [`MAX_CLIENT_ID`] printable ASCII characters, not
/// only spaces (nothing that could break a log line).
pub fn client_id(value: Option<&HeaderValue>) -> Option<String> {
    let v = value?.to_str().ok()?;
    let sane = !v.trim().is_empty()
        && v.len() <= MAX_CLIENT_ID
        && v.bytes().all(|b| (0x20..0x7f).contains(&b));
    sane.then(|| v.to_string())
}

/// A fresh id: 16 hex digits, unique within the process (a bijective mix of a counter and a
/// per-process random seed) and unlikely to repeat across restarts.
pub fn fresh_id() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", splitmix64(seed.wrapping_add(n)))
}

/// SplitMix64's finalizer: a bijection on `u64`, so distinct counters give distinct ids.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Gives each request its id and span, and its response the `x-request-id` header; the
/// log line and the HTTP metrics follow when the response body is done ([`Finish`]).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<Logged>, actix_web::Error> {
    let id = client_id(req.headers().get(HEADER)).unwrap_or_else(fresh_id);
    // Before routing the resource map still knows the pattern: refusals by the edge guard
    // are counted under their route too.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = info_span!("request", id = %id, method = %req.method(), route = %route);
    req.extensions_mut().insert(RequestId(id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let mut finish = Finish {
        started: Instant::now(),
        method: req.method().to_string(),
        id: id.clone(),
        route,
        status: None,
        model: state.as_ref().map(|s| s.model_id.clone()),
        metrics: state.map(|s| s.metrics.clone()),
        span: span.clone(),
        slot: Slot::default(),
    };
    if let Some(m) = &finish.metrics {
        m.http.in_flight.inc();
    }
    let res = GENERATED
        .scope(finish.slot.clone(), next.call(req))
        .instrument(span)
        .await;
    // Handlers' and the guard's errors are responses by now; an `Err` (a middleware's own
    // failure) is turned into one by actix past this point, without the header.
    let mut res = match res {
        Ok(res) => res.map_into_boxed_body(),
        Err(e) => {
            finish.status = Some(e.as_response_error().status_code().as_u16());
            return Err(e);
        }
    };
    let headers = res.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static(HEADER), value);
    }
    // CORS (`expose_any_header`) listed the headers before this one was added.
    if let Some(exposed) = headers.get(ACCESS_CONTROL_EXPOSE_HEADERS) {
        let exposed = exposed.to_str().unwrap_or("");
        if !exposed.is_empty() && !exposed.to_ascii_lowercase().contains(HEADER) {
            if let Ok(v) = HeaderValue::from_str(&format!("{exposed}, {HEADER}")) {
                headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
            }
        }
    }
    finish.status = Some(res.status().as_u16());
    Ok(res.map_body(|_, body| Logged { body, finish }))
}

/// A response body that runs inside its request's span and slot, and logs the request
/// when it is dropped (written out, or abandoned by the client).
pub struct Logged {
    body: BoxBody,
    finish: Finish,
}

impl MessageBody for Logged {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let _entered = this.finish.span.enter();
        let body = &mut this.body;
        GENERATED.sync_scope(this.finish.slot.clone(), || Pin::new(body).poll_next(cx))
    }
}

/// A request in flight: counted while it lives, logged and counted as done when dropped
/// (also when the handler itself is dropped because the client left).
struct Finish {
    started: Instant,
    id: String,
    method: String,
    route: String,
    /// `None`: no response was made (the client left first).
    status: Option<u16>,
    model: Option<String>,
    metrics: Option<Arc<Metrics>>,
    span: Span,
    slot: Slot,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Drop for Finish {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        if let Some(m) = &self.metrics {
            m.http.in_flight.dec();
            let route = self.route.clone();
            m.http
                .duration
                .get_or_create(&Route {
                    route: route.clone(),
                })
                .observe(took.as_secs_f64());
            m.http
                .requests
                .get_or_create(&RouteStatus { route, status })
                .inc();
        }
        let generated = *lock(&self.slot);
        let _entered = self.span.enter();
        // Probes (load balancers, Prometheus) poll every few seconds: their successes at debug.
        let probe = matches!(self.route.as_str(), "/health" | "/metrics") && status < 400;
        macro_rules! finished {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    id = %self.id,
                    method = %self.method,
                    route = %self.route,
                    status,
                    model = generated.and(self.model.as_deref()),
                    prompt_tokens = generated.map(|g| g.prompt_tokens as u64),
                    cached_tokens = generated.map(|g| g.cached_tokens as u64),
                    completion_tokens = generated.map(|g| g.completion_tokens as u64),
                    ttft_ms = generated.map(|g| millis(g.ttft)),
                    duration_ms = millis(took),
                    "request finished"
                )
            };
        }
        if probe {
            finished!(tracing::Level::DEBUG);
        } else {
            finished!(tracing::Level::INFO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_client_ids_are_kept() {
        let id = |s: &str| client_id(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(id("abc-123_X.y:z").as_deref(), Some("abc-123_X.y:z"));
        assert_eq!(id(&"a".repeat(128)).map(|s| s.len()), Some(128));
        assert_eq!(id(&"a".repeat(129)), None);
        assert_eq!(id("   "), None);
        assert_eq!(id("tab\there"), None);
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert_eq!(client_id(Some(&latin1)), None);
        assert_eq!(client_id(None), None);
    }

    #[test]
    fn fresh_ids_are_distinct_hex() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| fresh_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn record_fills_the_slot_of_its_scope_only() {
        record(Generated::default()); // outside any request: ignored
        let slot = Slot::default();
        let g = Generated {
            prompt_tokens: 3,
            cached_tokens: 1,
            completion_tokens: 2,
            ttft: Duration::from_millis(5),
        };
        GENERATED.sync_scope(slot.clone(), || record(g));
        assert_eq!(*lock(&slot), Some(g));
    }
}
