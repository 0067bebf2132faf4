//! HTTP plumbing every route shares: bounded body reading, noticing a client that leaves
//! before its non-streamed reply, the 404/405 fallbacks, `/health`, `/metrics`, and the SSE
//! helpers (frames, keepalive comments).

use std::any::Any;
use std::future::Future;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::Extensions;
use futures_util::future::{select, Either};
use tracing::{info, trace};

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use super::error::ApiError;
use super::openai::Usage;
use super::request_log;
use super::AppState;
use crate::runtime::{Event, Finish, Job, TokenLogprob};

/// How long an SSE stream stays silent (a long prefill) before a `: keepalive` comment.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `{"status", "busy", "runtime": {...}}`: 200 with `ok` (as the servers kooka replaces
/// answer; `busy` is true while requests wait to start); 503 with `stuck` once one engine step has run longer than `--health-stuck-secs`, and with
/// `draining` once the server is stopping, and with `unavailable` once the model thread has
/// ended (a fault: no request can run). On rank 0 of a multi-rank run also `parallel` and
/// `ranks` (rank, host, shard, state), and 503 with `unavailable` until every rank is ready
/// or once one is lost.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let runtime = state.runtime.status();
    let snapshot = state.cluster.as_ref().map(|c| c.snapshot());
    let (mut response, status) = if state.runtime.is_draining() {
        (HttpResponse::ServiceUnavailable(), "draining")
    } else if !state.runtime.is_alive() || snapshot.as_ref().is_some_and(|s| !s.healthy()) {
        (HttpResponse::ServiceUnavailable(), "unavailable")
    } else if runtime.step_ms > state.stuck_step.as_millis() as u64 {
        (HttpResponse::ServiceUnavailable(), "stuck")
    } else {
        (HttpResponse::Ok(), "ok")
    };
    let busy = runtime.waiting > 0;
    let Some(snapshot) = snapshot else {
        return response.json(json!({"status": status, "busy": busy, "runtime": runtime}));
    };
    response.json(json!({
        "status": status,
        "busy": busy,
        "parallel": snapshot.parallel,
        "ranks": snapshot.ranks,
        "runtime": runtime,
    }))
}

/// `GET /metrics`: the Prometheus text exposition of [`crate::metrics`] (behind the API key
/// when one is set, as the inference routes are).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let ranks = state
        .cluster
        .as_ref()
        .map(|c| c.snapshot().ranks)
        .unwrap_or_default();
    let text = state.metrics.render(&state.runtime.status(), ranks);
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text)
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::RouteNotFound(format!("{} {}", req.method(), req.path())).response_for(req.path())
}

/// Reads the body up to `--max-body-bytes` (a declared or actual larger body is a 413)
/// within `--body-timeout` (else 408).
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    let within = state.body_timeout;
    let body = match actix_web::rt::time::timeout(
        within,
        read_limited(req, payload, state.max_body_bytes),
    )
    .await
    {
        Ok(body) => body,
        Err(_) => Err(ApiError::BodyTimeout(within.as_secs())),
    };
    if let Ok(body) = &body {
        // Request text only ever at trace (prompts are the users' data).
        trace!(body = %String::from_utf8_lossy(body), "request body");
    }
    body
}

async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("Reading the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// How often a non-streamed request checks that its client is still connected.
const CLIENT_POLL: Duration = Duration::from_millis(250);

/// A duplicate of a connection's socket, kept in its extensions (`HttpServer::on_connect`):
/// actix does not drop a handler whose client closed the connection until the reply is
/// written, so a non-streamed request looks at the socket itself.
#[derive(Clone)]
pub struct ClientSocket(Arc<socket2::Socket>);

impl ClientSocket {
    /// `HttpServer::on_connect`'s callback: keeps a duplicate of TCP connections' sockets.
    pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            if let Ok(socket) = socket2::SockRef::from(tcp).try_clone() {
                ext.insert(ClientSocket(Arc::new(socket)));
            }
        }
    }

    /// The peer has closed or reset the connection. (The socket is non-blocking: nothing to
    /// read is `WouldBlock`, a pipelined next request is data, a close reads 0 bytes.)
    fn closed(&self) -> bool {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match self.0.peek(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }
}

/// Awaits a non-streamed reply, abandoning it if the client's connection closes first:
/// the reply's [`Job`] is dropped with it, which cancels the request.
pub async fn unless_client_leaves<F>(req: &HttpRequest, reply: F) -> Result<HttpResponse, ApiError>
where
    F: Future<Output = Result<HttpResponse, ApiError>>,
{
    let Some(socket) = req.conn_data::<ClientSocket>().cloned() else {
        return reply.await;
    };
    let watch = async move {
        loop {
            actix_web::rt::time::sleep(CLIENT_POLL).await;
            if socket.closed() {
                return;
            }
        }
    };
    match select(std::pin::pin!(reply), std::pin::pin!(watch)).await {
        Either::Left((reply, _)) => reply,
        Either::Right(((), _)) => {
            info!(
                path = req.path(),
                "client closed the connection before its reply"
            );
            Err(ApiError::ClientClosed)
        }
    }
}

/// One `data:` frame.
pub fn sse_data(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// One named Anthropic-style frame (`event:` + `data:`).
pub fn sse_event(name: &str, json: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// A comment line: ignored by SSE clients, keeps proxies and client timeouts at bay.
pub fn sse_keepalive() -> Bytes {
    Bytes::from_static(b": keepalive\n\n")
}

/// One step of a job's reply, as every wire format reads it: the runtime's typed errors and
/// a vanished model side are already [`ApiError`]s.
pub enum JobItem {
    Text(String),
    Logprobs(TokenLogprob),
    Done(Outcome),
    Failed(ApiError),
    /// [`KEEPALIVE`] passed in silence (streams send a keepalive).
    Idle,
}

/// How a job ended.
pub struct Outcome {
    pub finish: Finish,
    pub usage: Usage,
    /// The stop string that ended the completion, if one did.
    pub stop_sequence: Option<String>,
}

/// The job's next item; with `keepalive`, [`JobItem::Idle`] after [`KEEPALIVE`] of silence.
pub async fn next_item(job: &mut Job, keepalive: bool) -> JobItem {
    let event = if keepalive {
        match actix_web::rt::time::timeout(KEEPALIVE, job.events.recv()).await {
            Ok(e) => e,
            Err(_) => return JobItem::Idle,
        }
    } else {
        job.events.recv().await
    };
    match event {
        Some(Event::Text(t)) => {
            trace!(text = %t, "reply text");
            JobItem::Text(t)
        }
        Some(Event::Logprobs(lp)) => JobItem::Logprobs(lp),
        Some(Event::Done {
            finish,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            stop_sequence,
            ttft,
        }) => {
            request_log::record(request_log::Generated {
                prompt_tokens,
                cached_tokens,
                completion_tokens,
                ttft,
            });
            JobItem::Done(Outcome {
                finish,
                usage: Usage::new(prompt_tokens, completion_tokens, cached_tokens),
                stop_sequence,
            })
        }
        Some(Event::Error(e)) => JobItem::Failed(e.into()),
        None => JobItem::Failed(ApiError::Unavailable("the model side has stopped".into())),
    }
}

/// The response head every SSE route uses.
pub fn sse_response<S>(stream: S) -> HttpResponse
where
    S: futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + 'static,
{
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}
