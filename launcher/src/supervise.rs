//! Supervision: waits for the ranks, tears them all down when one fails or when the
//! launcher gets SIGINT / SIGTERM / SIGHUP, and decides the launcher's exit code.
//!
//! - A rank exiting non-zero (or killed: 128+signal) starts a teardown; the launcher then
//!   exits with that rank's code. Ranks that exit 0 leave the others running.
//! - A signal to the launcher stops rank 0 first (SIGHUP is sent on as SIGTERM): `kooka
//!   serve` there drains its requests and tells the other ranks to exit, so a deliberate stop
//!   never looks like a lost rank. When rank 0 has exited, or after `--drain-timeout`, the
//!   signal goes to the ranks still running. The launcher exits 0 if every rank exited 0,
//!   else with 128+signal. A second signal skips the waits (drain, then grace period).
//! - Teardown: the signal to every local rank's process group and, as a line on the ssh
//!   channel, to every remote rank's; after `--grace-period`, SIGKILL (for remote ranks the
//!   `KILL` line, then the channel is closed); 5 s later any ssh client still there is killed.
//!
//! Signals are blocked in every launcher thread and taken by one `sigwait` thread, so they
//! arrive as ordinary events; children get an empty mask back before `exec`.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ExitStatus};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::spawn::{signal_group, Spawned};

/// How long ssh clients get to exit after the remote `KILL` before they are killed.
const SSH_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long output threads may still run once every rank has exited.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

enum Event {
    /// `child` is the exited, not yet reaped process (Linux), reaped by the supervisor.
    Exited {
        rank: usize,
        code: i32,
        child: Option<Child>,
    },
    Signal(i32),
}

/// Waits until `child` has exited; returns its exit code (128+signal when killed) and, on
/// Linux, the child itself not yet reaped: until it is, the zombie keeps its process group
/// id reserved, so signalling the group can never hit an unrelated process. (Elsewhere,
/// e.g. macOS, whose `waitid` is unreliable, it is reaped here.)
#[cfg(target_os = "linux")]
fn wait_exit(child: Child) -> (i32, Option<Child>) {
    let pid = child.id();
    loop {
        // SAFETY: waitid on our own child with a zeroed, writable siginfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            // SAFETY: filled in by a successful waitid for a child event.
            let status = unsafe { info.si_status() };
            return (
                if info.si_code == libc::CLD_EXITED {
                    status
                } else {
                    128 + status
                },
                Some(child),
            );
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return (1, Some(child));
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn wait_exit(mut child: Child) -> (i32, Option<Child>) {
    (child.wait().map(exit_code).unwrap_or(1), None)
}

/// Exit code for a process status: its code, or 128+signal when a signal killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "INT",
        libc::SIGHUP => "HUP",
        libc::SIGKILL => "KILL",
        _ => "TERM",
    }
}

struct Slot {
    rank: usize,
    host: String,
    /// Process group of the local rank or of its ssh client; 0 if it never started.
    pgid: i32,
    remote: bool,
    channel: Option<ChildStdin>,
    exited: Option<i32>,
}

enum Phase {
    Running,
    /// A signal went to rank 0 only; the others follow when it exits or at the deadline.
    Draining {
        sig: i32,
        until: Instant,
    },
    Terminating(Instant),
    Killing(Instant),
    Abandoned,
}

/// Owns the ranks of one run until they have all exited.
pub struct Supervisor {
    slots: Vec<Slot>,
    pumps: Vec<JoinHandle<()>>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    grace: Duration,
    drain: Duration,
    verbose: bool,
}

impl Supervisor {
    /// Blocks SIGINT/SIGTERM/SIGHUP and starts the thread that turns them into events.
    /// Call before any other thread is started, so that every thread inherits the mask.
    pub fn new(grace: Duration, drain: Duration, verbose: bool) -> Supervisor {
        let (tx, rx) = channel();
        // SAFETY: sigset manipulation and pthread_sigmask on the calling thread.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        };
        let signals = tx.clone();
        std::thread::spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised sigset.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0
                && signals.send(Event::Signal(sig)).is_err()
            {
                return;
            }
        });
        Supervisor {
            slots: Vec::new(),
            pumps: Vec::new(),
            tx,
            rx,
            grace,
            drain,
            verbose,
        }
    }

    /// Takes over a started rank: a thread waits for it and reports its exit.
    pub fn add(&mut self, rank: usize, host: &str, remote: bool, spawned: Spawned) {
        let Spawned {
            child,
            pid,
            stdin,
            pumps,
        } = spawned;
        self.pumps.extend(pumps);
        self.slots.push(Slot {
            rank,
            host: host.to_string(),
            pgid: pid,
            remote,
            channel: stdin,
            exited: None,
        });
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let (code, child) = wait_exit(child);
            let _ = tx.send(Event::Exited { rank, code, child });
        });
    }

    /// Records a rank that could not be started; it counts as failed with `code`.
    pub fn add_failed(&mut self, rank: usize, host: &str, code: i32) {
        self.slots.push(Slot {
            rank,
            host: host.to_string(),
            pgid: 0,
            remote: false,
            channel: None,
            exited: None,
        });
        let _ = self.tx.send(Event::Exited {
            rank,
            code,
            child: None,
        });
    }

    /// Supervises until every rank has exited; returns the launcher's exit code.
    pub fn run(mut self) -> i32 {
        let mut phase = Phase::Running;
        let mut result: Option<i32> = None;
        let mut signalled = false;
        while self.slots.iter().any(|s| s.exited.is_none()) {
            let deadline = match phase {
                Phase::Terminating(t) | Phase::Killing(t) => Some(t),
                Phase::Draining { until, .. } => Some(until),
                Phase::Running | Phase::Abandoned => None,
            };
            let event = match deadline {
                Some(t) => self
                    .rx
                    .recv_timeout(t.saturating_duration_since(Instant::now())),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Ok(Event::Exited { rank, code, child }) => {
                    let slot = self
                        .slots
                        .iter_mut()
                        .find(|s| s.rank == rank)
                        .expect("known rank");
                    slot.exited = Some(code);
                    slot.channel = None;
                    let running = matches!(phase, Phase::Running);
                    if let Some(mut child) = child {
                        if code != 0 || !running {
                            // What a failed or stopped rank left in its group goes with it
                            // (the unreaped leader still holds the group id).
                            signal_group(slot.pgid, libc::SIGKILL);
                        }
                        let _ = child.wait();
                    }
                    if code != 0 && running {
                        eprintln!("kooka launch: rank {rank} ({}) exited with code {code}; stopping the other ranks", slot.host);
                        result = Some(code);
                        phase = self.terminate(libc::SIGTERM);
                    } else if self.verbose {
                        eprintln!(
                            "kooka launch: rank {rank} ({}) exited with code {code}",
                            slot.host
                        );
                    }
                    // Rank 0 has stopped: now the others.
                    if let Phase::Draining { sig, .. } = phase {
                        if rank == 0 {
                            phase = self.terminate(sig);
                        }
                    }
                }
                Ok(Event::Signal(sig)) => match phase {
                    Phase::Running => {
                        eprintln!(
                            "kooka launch: got SIG{}; stopping rank 0, then the others",
                            signal_name(sig)
                        );
                        result = Some(128 + sig);
                        signalled = true;
                        let forward = if sig == libc::SIGHUP {
                            libc::SIGTERM
                        } else {
                            sig
                        };
                        phase = self.stop_rank0(forward);
                    }
                    Phase::Draining { sig: forward, .. } => phase = self.terminate(forward),
                    Phase::Terminating(_) => phase = self.kill(),
                    Phase::Killing(_) | Phase::Abandoned => {}
                },
                Err(RecvTimeoutError::Timeout) => {
                    phase = match phase {
                        Phase::Draining { sig, .. } => {
                            eprintln!("kooka launch: rank 0 still running after --drain-timeout; stopping every rank");
                            self.terminate(sig)
                        }
                        Phase::Terminating(_) => {
                            eprintln!("kooka launch: ranks still running after the grace period; killing them");
                            self.kill()
                        }
                        _ => {
                            self.abandon();
                            Phase::Abandoned
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let until = Instant::now() + DRAIN_WAIT;
        while self.pumps.iter().any(|p| !p.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A stop asked for by a signal that every rank carried out cleanly is a success.
        if signalled && self.slots.iter().all(|s| s.exited == Some(0)) {
            return 0;
        }
        result.unwrap_or(0)
    }

    /// Sends `sig` to rank 0 only (all ranks when there is no rank 0 running).
    fn stop_rank0(&mut self, sig: i32) -> Phase {
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.rank == 0 && s.exited.is_none())
        else {
            return self.terminate(sig);
        };
        if slot.remote {
            if let Some(ch) = slot.channel.as_mut() {
                let _ = writeln!(ch, "{}", signal_name(sig)).and_then(|_| ch.flush());
            }
        } else {
            signal_group(slot.pgid, sig);
        }
        Phase::Draining {
            sig,
            until: Instant::now() + self.drain,
        }
    }

    /// Sends `sig` to every rank still running.
    fn terminate(&mut self, sig: i32) -> Phase {
        for slot in self.slots.iter_mut().filter(|s| s.exited.is_none()) {
            if slot.remote {
                if let Some(ch) = slot.channel.as_mut() {
                    let _ = writeln!(ch, "{}", signal_name(sig)).and_then(|_| ch.flush());
                }
            } else {
                signal_group(slot.pgid, sig);
            }
        }
        Phase::Terminating(Instant::now() + self.grace)
    }

    fn kill(&mut self) -> Phase {
        for slot in self.slots.iter_mut().filter(|s| s.exited.is_none()) {
            if slot.remote {
                if let Some(mut ch) = slot.channel.take() {
                    let _ = writeln!(ch, "KILL").and_then(|_| ch.flush());
                }
            } else {
                signal_group(slot.pgid, libc::SIGKILL);
            }
        }
        Phase::Killing(Instant::now() + SSH_EXIT_WAIT)
    }

    fn abandon(&mut self) {
        for slot in self.slots.iter().filter(|s| s.exited.is_none()) {
            eprintln!(
                "kooka launch: rank {} ({}): ssh did not exit; killing it",
                slot.rank, slot.host
            );
            signal_group(slot.pgid, libc::SIGKILL);
        }
    }
}
