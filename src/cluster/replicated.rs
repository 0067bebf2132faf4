//! Replication of engine operations: [`ReplicatedEngine`] on rank 0 and [`apply`] on the
//! other ranks.
//!
//! Every rank's engine must see the same operations in the same order: with a sharded
//! model each forward is a collective, so a rank that skipped or reordered one would
//! deadlock the ring or compute garbage. Rank 0 therefore sends each operation **before**
//! running it (the followers start the same forward at the same time), and everything that
//! decides an operation's outcome travels with it: the request, the sampling seed (drawn
//! here when the client gave none, instead of from each rank's clock), the expected
//! sequence id. Sampling is deterministic given identical logits, so tokens never travel.

use std::ops::Deref;
use std::time::Duration;

use crate::constrain::Constrainer;
use crate::engine::{Engine, SeqId, SequenceRequest, TokenEvent};
use crate::model::ModelError;

use super::protocol::Op;
use super::{ClusterError, Leader};

/// What the model thread drives: an [`Engine`], replicated to the other ranks when there
/// are any. Single-rank it is the engine and nothing else.
pub struct ReplicatedEngine {
    engine: Engine,
    leader: Option<Leader>,
    /// The id the engine will give the next sequence (it counts up from 0, on every rank).
    next_seq: SeqId,
}

impl ReplicatedEngine {
    /// Sends the engine's configuration to the followers first.
    pub fn new(engine: Engine, leader: Option<Leader>) -> Self {
        if let Some(leader) = &leader {
            // A failed write is a lost rank, which the leader reports on its own.
            let _ = leader.broadcast(&Op::Configure {
                config: engine.config(),
            });
        }
        ReplicatedEngine {
            engine,
            leader,
            next_seq: 0,
        }
    }

    pub fn has_work(&self) -> bool {
        self.engine.has_work()
    }

    pub fn status(&self) -> crate::engine::EngineStatus {
        self.engine.status()
    }

    /// `Engine::add`, replicated.
    pub fn add(&mut self, mut req: SequenceRequest) -> Result<SeqId, ClusterError> {
        let Some(leader) = &self.leader else {
            return Ok(self.engine.add(req)?);
        };
        if req.params.seed.is_none() {
            req.params.seed = Some(clock_seed());
        }
        leader.broadcast(&Op::Add {
            seq: self.next_seq,
            request: Box::new(req.clone()),
        })?;
        let seq = self.engine.add(req).map_err(|e| self.explain(e))?;
        if seq != self.next_seq {
            return Err(ClusterError::Diverged(format!(
                "the engine assigned sequence id {seq}, the followers were told {}",
                self.next_seq
            )));
        }
        self.next_seq = seq + 1;
        Ok(seq)
    }

    /// Enables constrained requests. Local configuration, not an operation: followers
    /// build their own from the same tokenizer ([`follower`](super::follower)).
    pub fn set_constrainer(&mut self, constrainer: Constrainer) {
        self.engine.set_constrainer(constrainer);
    }

    /// `Engine::step`, replicated.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>, ClusterError> {
        if let Some(leader) = &self.leader {
            leader.broadcast(&Op::Step)?;
        }
        self.engine.step().map_err(|e| self.explain(e))
    }

    /// A forward that fails on a multi-rank run is most often a peer that died mid
    /// collective ("[ring] connection to a peer was lost"); the control plane notices the
    /// same death at the same moment, and its error names the rank. Wait briefly for it.
    fn explain(&self, e: ModelError) -> ClusterError {
        let lost = self
            .leader
            .as_ref()
            .and_then(|l| l.wait_for_failure(CONFIRM_LOSS));
        lost.unwrap_or(e.into())
    }

    /// `Engine::cancel`, replicated. A lost rank is already being handled by the leader.
    pub fn cancel(&mut self, seq: SeqId) {
        if let Some(leader) = &self.leader {
            let _ = leader.broadcast(&Op::Cancel { seq });
        }
        self.engine.cancel(seq);
    }
}

/// Read access to the engine (its model, its settings); mutation goes through the
/// replicated methods only.
impl Deref for ReplicatedEngine {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for ReplicatedEngine {
    fn drop(&mut self) {
        if let Some(leader) = &self.leader {
            leader.shutdown();
        }
    }
}

/// How long a failed forward waits for the control plane to report a lost rank.
const CONFIRM_LOSS: Duration = Duration::from_secs(1);

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What [`apply`] did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// A sequence was added (prefilled) under this id.
    Added(SeqId),
    /// Rank 0 refused the same request (invalid); nothing changed.
    Refused,
    /// One step ran; its tokens (which rank 0 reports, not this rank).
    Stepped(Vec<TokenEvent>),
    Cancelled(SeqId),
    /// Rank 0 is stopping normally.
    Shutdown,
    /// The engine took rank 0's settings.
    Configured,
}

/// Runs one operation on a follower's engine. An error means this rank can no longer
/// follow (it must report it and exit).
pub fn apply(engine: &mut Engine, op: Op) -> Result<Applied, ClusterError> {
    Ok(match op {
        Op::Add { seq, request } => match engine.add(*request) {
            Ok(got) if got == seq => Applied::Added(seq),
            Ok(got) => {
                return Err(ClusterError::Diverged(format!(
                    "rank 0 expected sequence id {seq}, this rank's engine assigned {got}"
                )))
            }
            // Request validation is deterministic and runs before any forward: rank 0
            // refused the same request and told its client.
            Err(ModelError::Request(_)) => Applied::Refused,
            Err(e) => return Err(e.into()),
        },
        // The engine drops finished sequences itself, as rank 0's does.
        Op::Step => Applied::Stepped(engine.step()?),
        Op::Cancel { seq } => {
            engine.cancel(seq);
            Applied::Cancelled(seq)
        }
        Op::Shutdown => Applied::Shutdown,
        Op::Configure { config } => {
            engine.configure(config);
            Applied::Configured
        }
    })
}
