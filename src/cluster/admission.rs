//! Who may join rank 0's control plane: the accept loop and the handshake (preamble,
//! `Hello` checked against rank 0's own config, then `Welcome`, or `Reject` with the reason).
//! Runs on the leader's `kooka-ctl-accept` thread for the whole run.

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use tracing::{error, warn};

use super::codec::{read_message, write_message, FrameError};
use super::protocol::Message;
use super::{net, ClusterConfig};

/// What one accepted connection turned out to be.
pub(super) type Joined = Result<(usize, TcpStream), String>;

/// Accepts until the process ends. Ranks are accepted once; a follower whose `Hello` does
/// not match ends startup with the reason (it gets the same reason and exits).
pub(super) fn accept_loop(
    listener: TcpListener,
    config: &ClusterConfig,
    joined: mpsc::Sender<Joined>,
) {
    let mut taken = vec![false; config.world_size()];
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!("control plane: accept failed: {e}");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let outcome = handshake(&mut stream, config, &taken);
        match outcome {
            Ok(rank) => {
                taken[rank] = true;
                let _ = joined.send(Ok((rank, stream)));
            }
            Err(Refusal::Garbage(e)) => {
                warn!(%peer, "control plane: dropped a connection that is not a kooka rank: {e}");
            }
            Err(Refusal::Mismatch(reason)) => {
                reject(&mut stream, &reason);
                error!(%peer, "control plane: refused a rank: {reason}");
                let _ = joined.send(Err(reason));
            }
            Err(Refusal::Duplicate(reason)) => {
                reject(&mut stream, &reason);
                warn!(%peer, "control plane: {reason}");
            }
        }
    }
}

/// Tells a refused rank why (it prints the reason and exits).
fn reject(stream: &mut TcpStream, reason: &str) {
    let reason = reason.to_string();
    let _ = write_message(stream, &Message::Reject { reason });
}

enum Refusal {
    Garbage(String),
    Mismatch(String),
    Duplicate(String),
}

fn handshake(
    stream: &mut TcpStream,
    config: &ClusterConfig,
    taken: &[bool],
) -> Result<usize, Refusal> {
    let garbage = |e: &dyn std::fmt::Display| Refusal::Garbage(e.to_string());
    // A stranger that connects and says nothing must not stall the accept loop.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    net::exchange_preamble(stream).map_err(|e| garbage(&e))?;
    let hello = match read_message(stream) {
        Ok(Message::Hello(h)) => h,
        Ok(other) => return Err(garbage(&format!("expected Hello, got {other:?}"))),
        Err(e) => return Err(garbage(&e as &FrameError)),
    };
    config.check_hello(&hello).map_err(Refusal::Mismatch)?;
    if taken[hello.rank] {
        return Err(Refusal::Duplicate(format!(
            "rank {} connected again (pid {}) but is already part of the run",
            hello.rank, hello.pid
        )));
    }
    write_message(stream, &Message::Welcome).map_err(|e| garbage(&e))?;
    Ok(hello.rank)
}
