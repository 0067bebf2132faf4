//! The control plane's messages: what rank 0 and the other ranks say to each other, as plain
//! serde types. The bytes on the wire are [`codec`](super::codec)'s business.
//!
//! A connection starts with a [`PREAMBLE`] from both sides (magic + [`PROTOCOL_VERSION`],
//! checked before any frame is decoded, so two kooka builds with different codecs still
//! fail with a clear message), then the follower's [`Hello`] and rank 0's `Welcome` or
//! `Reject`. After that rank 0 sends [`Op`]s in execution order and heartbeats; a follower
//! sends `Ready` once its shard is loaded, heartbeats, and `Failed` if it has to stop.
//!
//! Engine requests travel as the engine's own [`SequenceRequest`] (plain serde data; a field
//! that cannot cross the wire fails to compile there).

use serde::{Deserialize, Serialize};

use crate::engine::{EngineConfig, SeqId, SequenceRequest};

/// Bump on any change to [`Message`] or the framing.
pub const PROTOCOL_VERSION: u32 = 6;

/// `KOOKA-CP` then the version, big-endian: 12 bytes each side sends first.
pub const MAGIC: [u8; 8] = *b"KOOKA-CP";

/// The 12 bytes that open every control connection.
pub fn preamble() -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p
}

/// Checks the peer's preamble; the error says what the peer is.
pub fn check_preamble(p: &[u8; 12]) -> Result<(), String> {
    if p[..8] != MAGIC {
        return Err("the peer is not a kooka control plane (bad magic)".into());
    }
    let version = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "the peer speaks control protocol v{version}, this kooka speaks v{PROTOCOL_VERSION}; \
             run the same kooka build on every rank"
        ));
    }
    Ok(())
}

/// How the model is split over the ranks; every rank must be started with the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParallelSpec {
    /// Contiguous layer ranges per rank; `split` = layers per rank (None = even).
    Pipeline { split: Option<Vec<usize>> },
    /// Heads and MLP columns/rows sharded over all ranks.
    Tensor,
}

impl std::fmt::Display for ParallelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParallelSpec::Pipeline { split: None } => write!(f, "pipeline (even split)"),
            ParallelSpec::Pipeline { split: Some(s) } => {
                let s: Vec<String> = s.iter().map(|n| n.to_string()).collect();
                write!(f, "pipeline (split {})", s.join(","))
            }
            ParallelSpec::Tensor => write!(f, "tensor"),
        }
    }
}

/// A follower introduces itself; rank 0 checks every field against its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub rank: usize,
    pub world_size: usize,
    /// The model folder's name.
    pub model_id: String,
    /// FNV-1a of `config.json`: same name, different model is caught too.
    pub model_fingerprint: u64,
    pub parallel: ParallelSpec,
    /// For logs and `/health`.
    pub pid: u32,
}

/// One engine operation. Followers apply them in the order received, which is the order
/// rank 0 runs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `Engine::configure`: rank 0's scheduling settings, sent once before any other op (its
    /// budgets depend on the model it loaded), so every rank decides alike.
    Configure { config: EngineConfig },
    /// `Engine::add`; `seq` is the id rank 0 expects the engine to assign (checked).
    Add {
        seq: SeqId,
        request: Box<SequenceRequest>,
    },
    /// `Engine::step`.
    Step,
    /// `Engine::cancel`.
    Cancel { seq: SeqId },
    /// Rank 0 is stopping normally: exit 0 after the ops before this one.
    Shutdown,
}

/// A rank's engine steps so far: a follower's, reported in every `Pong`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTimes {
    pub count: u64,
    /// All steps together, in microseconds.
    pub total_us: u64,
    /// The last step, in microseconds.
    pub last_us: u64,
}

/// Everything that crosses a control connection after the preamble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// follower -> rank 0, first frame.
    Hello(Hello),
    /// rank 0 -> follower: accepted.
    Welcome,
    /// rank 0 -> follower: refused; the follower exits with this reason.
    Reject { reason: String },
    /// follower -> rank 0: shard loaded (`shard` describes it for `/health`).
    Ready { shard: String },
    /// rank 0 -> follower: the next operation.
    Op(Op),
    /// follower -> rank 0, every heartbeat interval, so a silent follower is noticed.
    Heartbeat,
    /// rank 0 -> follower, every heartbeat interval (its heartbeat): answered at once with a
    /// [`Message::Pong`] carrying `sent_us` back, so rank 0 measures the round trip.
    Ping { sent_us: u64 },
    /// follower -> rank 0: the answer to a `Ping`, with this rank's engine step times.
    Pong { sent_us: u64, steps: StepTimes },
    /// follower -> rank 0: this rank hit an error and is exiting.
    Failed { reason: String },
    /// rank 0 -> follower: the run is over because of a failure elsewhere; exit non-zero.
    Abort { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constrain::Grammar;
    use crate::engine::sampling::SamplingParams;

    #[test]
    fn preamble_checks_magic_and_version() {
        assert!(check_preamble(&preamble()).is_ok());
        let mut other = preamble();
        other[11] ^= 1;
        let err = check_preamble(&other).unwrap_err();
        assert!(err.contains("same kooka build"), "{err}");
        let mut http = [0u8; 12];
        http.copy_from_slice(b"GET / HTTP/1");
        assert!(check_preamble(&http).unwrap_err().contains("bad magic"));
    }

    #[test]
    fn a_request_survives_the_wire_types() {
        let req = SequenceRequest {
            prompt: vec![1, 2, 3],
            params: SamplingParams {
                temperature: 0.7,
                top_k: 40,
                logit_bias: vec![(5, -1.5)],
                seed: Some(9),
                repetition_penalty: Some(1.1),
                ..Default::default()
            },
            max_tokens: 17,
            stop_ids: vec![2],
            return_prompt_logits: true,
            constraint: Some(Grammar::json_object()),
            checkpoints: vec![2],
        };
        let msg = Message::Op(Op::Add {
            seq: 0,
            request: Box::new(req.clone()),
        });
        let bytes = crate::cluster::codec::encode(&msg).unwrap();
        let Message::Op(Op::Add { request: back, .. }) =
            crate::cluster::codec::read_message(&mut bytes.as_slice()).unwrap()
        else {
            panic!("not an Add");
        };
        assert_eq!(back.prompt, req.prompt);
        assert_eq!(back.params, req.params);
        assert_eq!(
            (back.max_tokens, &back.stop_ids, back.return_prompt_logits),
            (17, &vec![2], true)
        );
        assert_eq!(back.constraint, req.constraint);
    }
}
