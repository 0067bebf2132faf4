//! Rank 0's guard between the handlers and a cluster's failure handling.
//!
//! A lost rank must fail the requests in flight even when the model actor is stuck inside an
//! MLX collective that will never return, so their event channels cannot be reached only
//! through that actor. [`FailureRelay`] keeps a clone of each live request's event sender
//! (registered as the request is submitted) and, when the cluster fails, sends each one an
//! [`Event::Error`] naming the lost rank. Once the run has failed, new submissions get that
//! error at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use super::protocol::{Event, RequestId, RuntimeError};
use crate::cluster::Leader;

type InFlight = Arc<Mutex<HashMap<RequestId, UnboundedSender<Event>>>>;

pub(super) struct FailureRelay {
    leader: Leader,
    live: InFlight,
}

impl FailureRelay {
    pub fn new(leader: &Leader) -> Self {
        let live: InFlight = Arc::default();
        {
            let live = live.clone();
            leader.on_failure(move |message| {
                let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
                for (_, events) in live.drain() {
                    let _ = events.send(Event::Error(RuntimeError::Unavailable(message.into())));
                }
            });
        }
        FailureRelay {
            leader: leader.clone(),
            live,
        }
    }

    /// Registers a request about to be submitted, or refuses it when the run has failed.
    pub fn register(
        &self,
        id: RequestId,
        events: &UnboundedSender<Event>,
    ) -> Result<(), RuntimeError> {
        if let Some(e) = self.leader.failure() {
            return Err(RuntimeError::Unavailable(e.to_string()));
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // A request whose handler is gone is finished (or cancelled).
        live.retain(|_, events| !events.is_closed());
        live.insert(id, events.clone());
        Ok(())
    }
}
