//! Length-prefixed binary frames: a `u32` big-endian length, then the [`Message`] encoded
//! with postcard (compact, serde-based, maintained; chosen over bincode, which is
//! unmaintained and whose 3.0.0 release does not compile). Only this file knows the codec,
//! so swapping it is a change here plus a [`PROTOCOL_VERSION`](super::protocol::PROTOCOL_VERSION)
//! bump.
//!
//! Frames come from the network: a length over [`MAX_FRAME`] or bytes that do not decode
//! are errors, never panics or unbounded allocations.

use std::io::{self, Read, Write};

use super::protocol::Message;

/// The largest frame accepted: a 131072-token prompt is about 0.7 MB, so this is generous
/// and still bounds what a bad peer can make us allocate.
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("cannot encode a frame: {0}")]
    Encode(String),
}

impl FrameError {
    /// The peer closed the connection (EOF / reset) rather than sending garbage.
    pub fn is_closed(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ))
    }

    /// A read deadline passed (the socket's read timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ))
    }
}

/// The bytes of one frame (length prefix included), so a broadcast encodes once.
pub fn encode(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

pub fn write_message(w: &mut impl Write, msg: &Message) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

pub fn read_message(r: &mut impl Read) -> Result<Message, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::{Hello, Op, ParallelSpec};
    use crate::engine::SequenceRequest;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                rank: 1,
                world_size: 2,
                model_id: "SmolLM2".into(),
                model_fingerprint: 0xdead_beef,
                parallel: ParallelSpec::Pipeline {
                    split: Some(vec![10, 20]),
                },
                pid: 42,
            }),
            Message::Welcome,
            Message::Reject {
                reason: "no".into(),
            },
            Message::Ready {
                shard: "layers 0..15".into(),
            },
            Message::Op(Op::Add {
                seq: 3,
                request: Box::new(SequenceRequest {
                    prompt: vec![1, 2, 70000],
                    max_tokens: 5,
                    ..Default::default()
                }),
            }),
            Message::Op(Op::Step),
            Message::Op(Op::Cancel { seq: 3 }),
            Message::Op(Op::Shutdown),
            Message::Heartbeat,
            Message::Ping { sent_us: 12_345 },
            Message::Pong {
                sent_us: 12_345,
                steps: crate::cluster::protocol::StepTimes {
                    count: 3,
                    total_us: 9_000,
                    last_us: 2_500,
                },
            },
            Message::Failed {
                reason: "oom".into(),
            },
            Message::Abort {
                reason: "rank 2 lost".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_one_stream() {
        let mut wire = Vec::new();
        for m in samples() {
            write_message(&mut wire, &m).unwrap();
        }
        let mut r = wire.as_slice();
        for m in samples() {
            assert_eq!(read_message(&mut r).unwrap(), m);
        }
        let end = read_message(&mut r).unwrap_err();
        assert!(end.is_closed(), "{end}");
    }

    #[test]
    fn a_step_is_a_few_bytes() {
        assert!(encode(&Message::Op(Op::Step)).unwrap().len() <= 8);
    }

    #[test]
    fn bad_frames_are_errors() {
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_message(&mut huge.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_message(&mut garbage.as_slice()),
            Err(FrameError::Decode(_))
        ));
        let truncated = [0, 0, 0, 9, 1];
        assert!(read_message(&mut truncated.as_slice())
            .unwrap_err()
            .is_closed());
    }
}
