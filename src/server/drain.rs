//! A graceful stop on SIGTERM or SIGINT: new connections and new requests are refused (503),
//! requests in flight get `--shutdown-grace` seconds to finish, then whatever is still running
//! ends with an error (streams with an error event and their normal end, non-streamed
//! requests with a 503), and the server returns so the process exits 0. A second signal
//! skips the rest of the grace period.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::rt::signal::unix::{signal, SignalKind};
use actix_web::web;
use tracing::{info, warn};

use super::AppState;

/// How long the HTTP server waits for connections once the requests in flight have been
/// ended: the time their last bytes need to go out.
pub const FLUSH: Duration = Duration::from_secs(10);

/// Waits for SIGTERM or SIGINT, then stops `server` as the module says.
pub async fn on_signal(server: ServerHandle, state: web::Data<AppState>, grace: Duration) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot listen for SIGTERM/SIGINT: the server stops without draining");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let status = state.runtime.status();
    info!(
        signal = name,
        grace_secs = grace.as_secs(),
        running = status.running,
        waiting = status.waiting,
        "stopping: new requests are refused, requests in flight may finish"
    );
    state.runtime.begin_drain();
    let stopped = server.stop(true);
    tokio::pin!(stopped);
    let cut = tokio::select! {
        _ = &mut stopped => false,
        _ = actix_web::rt::time::sleep(grace) => true,
        _ = term.recv() => true,
        _ = int.recv() => true,
    };
    if cut {
        info!("ending the requests still in flight");
        state.runtime.fail_all("the server is shutting down");
        stopped.await;
    }
    info!("stopped");
}
