//! A deadline for blocking MLX calls that cannot be cancelled.
//!
//! MLX's ring backend waits without limit for a neighbour that never starts (its accept has
//! no timeout), as does NCCL's bootstrap for a rank that never comes, and a thread blocked inside MLX cannot be interrupted. A [`Watchdog`] armed
//! around such a call ends the process with a clear message and exit code 1 when the
//! deadline passes, which is what a supervisor (`kooka launch`, mlx.launch) needs to tear
//! the other ranks down.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

pub struct Watchdog {
    disarm: Sender<()>,
}

impl Watchdog {
    /// Starts the countdown; `what` names the step in the message.
    pub fn arm(timeout: Duration, what: impl Into<String>) -> Self {
        let what = what.into();
        let (disarm, disarmed) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("kooka-watchdog".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = disarmed.recv_timeout(timeout) {
                    let rank = std::env::var("MLX_RANK").unwrap_or_else(|_| "0".into());
                    eprintln!(
                        "kooka: error: rank {rank}: {what} did not finish within {}s; \
                         are all ranks started and reachable (MLX_HOSTFILE's addresses; NCCL_HOST_IP:NCCL_PORT)?",
                        timeout.as_secs()
                    );
                    std::process::exit(1);
                }
            })
            .expect("spawning the watchdog thread");
        Watchdog { disarm }
    }

    /// Stops the countdown (dropping the watchdog does the same).
    pub fn disarm(self) {
        let _ = self.disarm.send(());
    }
}
