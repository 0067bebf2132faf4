//! Rank 0's glue between the HTTP side and the cluster's failure handling.
//!
//! A lost rank must fail the requests in flight even when the model thread is stuck inside
//! an MLX collective that will never return, so their event channels cannot be reached
//! only through that thread. The `kooka-relay` thread sits between the handlers and the
//! model thread: it forwards every [`Command`] unchanged, keeps a clone of each live
//! request's event sender, and on a cluster failure sends each one an [`Event::Error`]
//! naming the lost rank. Once the run has failed, new submissions get that error at once.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use super::protocol::{Command, Event, RequestId, RuntimeError};
use crate::cluster::Leader;

type InFlight = Arc<Mutex<HashMap<RequestId, UnboundedSender<Event>>>>;

/// Starts the relay in front of `model`; handlers send to the returned sender instead.
pub(super) fn relay(
    model: mpsc::Sender<Command>,
    leader: &Leader,
) -> std::io::Result<mpsc::Sender<Command>> {
    let in_flight: InFlight = Arc::default();
    {
        let in_flight = in_flight.clone();
        leader.on_failure(move |message| {
            let mut live = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for (_, events) in live.drain() {
                let _ = events.send(Event::Error(RuntimeError::Unavailable(message.to_string())));
            }
        });
    }
    let (tx, rx) = mpsc::channel::<Command>();
    let leader = leader.clone();
    std::thread::Builder::new()
        .name("kooka-relay".into())
        .spawn(move || {
            for cmd in rx {
                if let Command::Submit(s) = &cmd {
                    if let Some(e) = leader.failure() {
                        let _ = s
                            .events
                            .send(Event::Error(RuntimeError::Unavailable(e.to_string())));
                        continue;
                    }
                    let mut live = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    // A request whose handler is gone is finished (or cancelled).
                    live.retain(|_, events| !events.is_closed());
                    live.insert(s.id, s.events.clone());
                }
                if model.send(cmd).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}
