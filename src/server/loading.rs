//! While the model loads (minutes for a large one, longer on several ranks), the port already
//! answers: `/health` is a 503 with `{"status": "loading"}` and every other route a 503
//! saying so, with `Retry-After`, instead of refused connections. A small server of its own
//! on a copy of the listener; it stops once the real one can take over the same socket.

use std::net::TcpListener;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;

/// Seconds a client is asked to wait before trying again.
const RETRY_AFTER_SECS: u64 = 5;

/// The loading server; [`LoadingServer::stop`] (or dropping it) ends it.
pub struct LoadingServer {
    handle: Option<ServerHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts answering on (a copy of) `listener` for `model` while it loads.
pub fn start(listener: &TcpListener, model: &str) -> std::io::Result<LoadingServer> {
    let listener = listener.try_clone()?;
    let model = model.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("kooka-loading".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(model.clone()))
                        .default_service(web::to(answer))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0)
                .listen(listener);
                match server {
                    Ok(server) => {
                        let server = server.run();
                        let _ = tx.send(Ok(server.handle()));
                        let _ = server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    let handle = rx.recv().map_err(std::io::Error::other)??;
    Ok(LoadingServer {
        handle: Some(handle),
        thread: Some(thread),
    })
}

impl LoadingServer {
    /// Stops answering (connections it holds are closed); the listener stays bound.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(handle) = self.handle.take() {
            futures_util::FutureExt::now_or_never(std::pin::pin!(handle.stop(false)));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LoadingServer {
    fn drop(&mut self) {
        self.shut();
    }
}

async fn answer(req: HttpRequest, model: web::Data<String>) -> HttpResponse {
    let mut response = HttpResponse::ServiceUnavailable();
    response.insert_header(("Retry-After", RETRY_AFTER_SECS.to_string()));
    if req.path() == "/health" {
        return response.json(json!({"status": "loading", "model": model.as_str()}));
    }
    let message = format!(
        "the model {} is still loading; try again shortly",
        model.as_str()
    );
    if req.path().starts_with("/v1/messages") {
        // Anthropic's shape on its routes, as every other error there.
        return response.json(json!({
            "type": "error",
            "error": {"type": "overloaded_error", "message": message},
        }));
    }
    response.json(json!({"error": {
        "message": message,
        "type": "service_unavailable",
        "param": null,
        "code": "model_loading",
    }}))
}
