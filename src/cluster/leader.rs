//! Rank 0's side of the control plane.
//!
//! Threads (all plain OS threads, all blocking, none polling):
//! - `kooka-ctl-accept`: accepts control connections and runs each handshake
//!   ([`admission`](super::admission)). It lives for the whole run so a late or duplicate
//!   rank gets a clear `Reject` instead of silence.
//! - `kooka-ctl-rN`, one per follower: reads its frames (heartbeats, `Ready`, `Failed`)
//!   with a read timeout of `peer_timeout`; EOF, silence or `Failed` mark the rank lost.
//! - `kooka-ctl-beat`: sends a heartbeat to every follower each `heartbeat` interval.
//! - the model thread (`kooka-mlx`) calls [`Leader::broadcast`] through
//!   [`ReplicatedEngine`](super::ReplicatedEngine); frames to one follower are serialised
//!   by that follower's writer lock.
//!
//! A lost rank ([`Leader::fail`]): the status turns it `Lost` (so `/health` answers 503),
//! the failure hooks fail every request in flight, the other followers get `Abort`, and
//! after `exit_grace` the process exits with code 1 — also when the model thread is stuck
//! inside an MLX collective that will never finish, which is why this does not go through
//! the model thread.

use std::net::TcpStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::codec::{self, read_message};
use super::protocol::{Message, Op};
use super::status::{ClusterStatus, RankState};
use super::{admission, net, shard, ClusterConfig, ClusterError};
use crate::dist::Group;
use crate::model::{ComputeDtype, LanguageModel, ModelError};

type FailureHook = Box<dyn Fn(&str) + Send + Sync>;

/// How long a normal stop waits for the followers to close their connections.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Rank 0's handle on the other ranks; cheap to clone.
#[derive(Clone)]
pub struct Leader {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    status: Arc<ClusterStatus>,
    /// Indexed by rank; set when that rank joins (index 0, rank 0 itself, stays empty).
    peers: Vec<OnceLock<Peer>>,
    /// Set by the first failure; later ones only update the status.
    failed: AtomicBool,
    /// Set once `Shutdown` went out: EOFs from then on are the followers exiting.
    stopping: AtomicBool,
    /// The normal stop's progress, for [`Leader::shutdown`] to wait on.
    goodbye: (Mutex<Goodbye>, Condvar),
    hooks: Mutex<Vec<FailureHook>>,
    /// `Ping`s carry microseconds since this instant; their `Pong`s give the round trip.
    epoch: Instant,
}

/// How far a normal stop has got.
#[derive(Default)]
struct Goodbye {
    /// How many followers were sent `Shutdown` (set once the frames are out).
    told: Option<usize>,
    /// How many followers' connections have closed since.
    closed: usize,
}

struct Peer {
    rank: usize,
    writer: Mutex<TcpStream>,
}

impl Leader {
    /// Listens on the control address and waits (up to the startup timeout) until every
    /// other rank has connected and passed the handshake.
    pub fn start(config: ClusterConfig) -> Result<Leader, ClusterError> {
        let deadline = Instant::now() + config.startup_timeout;
        let listener = net::listen(config.listen)?;
        let status = Arc::new(ClusterStatus::new(
            &config.topology.rank_hosts(),
            config.parallel.to_string(),
        ));
        info!(
            control = %config.control,
            ranks = config.world_size(),
            parallel = %config.parallel,
            "waiting for the other ranks to connect"
        );
        let (joined_tx, joined_rx) = mpsc::channel();
        {
            let config = config.clone();
            spawn("kooka-ctl-accept", move || {
                admission::accept_loop(listener, &config, joined_tx)
            })?;
        }
        let leader = Leader {
            inner: Arc::new(Inner {
                peers: (0..config.world_size()).map(|_| OnceLock::new()).collect(),
                config,
                status,
                failed: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                goodbye: (Mutex::new(Goodbye::default()), Condvar::new()),
                hooks: Mutex::new(Vec::new()),
                epoch: Instant::now(),
            }),
        };
        // Heartbeats (and the reader of each follower) start as soon as it joins: an early
        // rank must not time out while a later one is still starting.
        let l = leader.clone();
        spawn("kooka-ctl-beat", move || l.heartbeat_loop())?;
        let (config, status) = (&leader.inner.config, &leader.inner.status);
        while leader.peers().count() + 1 < config.world_size() {
            let left = deadline.saturating_duration_since(Instant::now());
            match joined_rx.recv_timeout(left) {
                Ok(Ok((rank, stream))) => {
                    if let Ok(addr) = stream.peer_addr() {
                        status.learn_host(rank, addr.ip().to_string());
                    }
                    info!(rank, host = %status.host(rank), "rank connected");
                    leader.add_peer(rank, stream)?;
                    status.set(rank, RankState::Loading, None);
                }
                Ok(Err(reason)) => return Err(ClusterError::Startup(reason)),
                Err(_) => {
                    let missing: Vec<String> = status
                        .ranks_not(|s| *s != RankState::Connecting)
                        .into_iter()
                        .map(|(r, host)| format!("rank {r} ({host})"))
                        .collect();
                    return Err(ClusterError::Startup(format!(
                        "{} did not connect to rank 0's control plane at {} within {}s; \
                         start every rank (same launcher environment, --model and --parallel) or raise \
                         --startup-timeout-secs",
                        missing.join(", "),
                        config.control,
                        config.startup_timeout.as_secs()
                    )));
                }
            }
        }
        Ok(leader)
    }

    fn add_peer(&self, rank: usize, stream: TcpStream) -> Result<(), ClusterError> {
        let io = |source| ClusterError::Io {
            what: format!("setting up the connection to rank {rank}"),
            source,
        };
        net::configure(&stream, &self.inner.config.timing).map_err(io)?;
        let reader = stream.try_clone().map_err(io)?;
        let peer = Peer {
            rank,
            writer: Mutex::new(stream),
        };
        if self.inner.peers[rank].set(peer).is_err() {
            return Err(ClusterError::Protocol(format!("rank {rank} joined twice")));
        }
        let l = self.clone();
        spawn(&format!("kooka-ctl-r{rank}"), move || {
            l.read_loop(rank, reader)
        })
    }

    /// The followers that have joined, in rank order.
    fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.inner.peers.iter().filter_map(OnceLock::get)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub fn status(&self) -> Arc<ClusterStatus> {
        self.inner.status.clone()
    }

    /// Loads rank 0's shard (on the calling thread: the model thread) and marks rank 0 ready;
    /// returns it with what it holds (one line) and the group of every rank.
    pub fn load_model(
        &self,
        dir: &Path,
        dtype: ComputeDtype,
    ) -> Result<(Box<dyn LanguageModel>, String, Rc<Group>), ModelError> {
        let (model, shard, group) = shard::load(dir, dtype, &self.inner.config)?;
        self.inner
            .status
            .set(0, RankState::Ready, Some(shard.clone()));
        Ok((model, shard, group))
    }

    /// Blocks until every rank has loaded its shard, a rank is lost, or the startup
    /// timeout (counted from now) passes.
    pub fn wait_ready(&self) -> Result<(), ClusterError> {
        let timeout = self.inner.config.startup_timeout;
        let status = &self.inner.status;
        let all_ready = |r: &[super::RankStatus]| r.iter().all(|r| r.state == RankState::Ready);
        match status.wait_until(Instant::now() + timeout, all_ready) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let late: Vec<String> = status
                    .ranks_not(|s| *s == RankState::Ready)
                    .into_iter()
                    .map(|(r, host)| format!("rank {r} ({host})"))
                    .collect();
                Err(ClusterError::Startup(format!(
                    "{} did not finish loading within {}s (raise --startup-timeout-secs for large models)",
                    late.join(", "),
                    timeout.as_secs()
                )))
            }
            Err((rank, reason)) => Err(self.lost_error(rank, reason)),
        }
    }

    /// Registers a function called once, with the error text, when a rank is lost.
    pub fn on_failure(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// The error for the first lost rank, if the run has failed.
    pub fn failure(&self) -> Option<ClusterError> {
        self.inner
            .status
            .lost()
            .map(|(rank, reason)| self.lost_error(rank, reason))
    }

    /// Blocks up to `within` for a rank to be lost; the error if one is (or already was).
    pub fn wait_for_failure(&self, within: Duration) -> Option<ClusterError> {
        match self
            .inner
            .status
            .wait_until(Instant::now() + within, |_| false)
        {
            Err((rank, reason)) => Some(self.lost_error(rank, reason)),
            Ok(_) => None,
        }
    }

    fn lost_error(&self, rank: usize, reason: String) -> ClusterError {
        ClusterError::RankLost {
            rank,
            host: self.inner.status.host(rank),
            reason,
        }
    }

    /// Sends `op` to every follower, in rank order. Called before rank 0 runs the same op.
    pub fn broadcast(&self, op: &Op) -> Result<(), ClusterError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let frame = codec::encode(&Message::Op(op.clone()))?;
        for peer in self.peers() {
            let sent = {
                let mut w = peer.writer.lock().unwrap_or_else(|e| e.into_inner());
                std::io::Write::write_all(&mut *w, &frame)
            };
            if let Err(e) = sent {
                let reason = format!("sending it an operation failed: {e}");
                self.fail(peer.rank, reason.clone());
                return Err(self.lost_error(peer.rank, reason));
            }
        }
        Ok(())
    }

    /// Normal stop: followers finish the ops before this and exit 0. Returns, in every
    /// thread that calls it (the HTTP side and the model thread's engine both do), once every
    /// follower has closed its connection or after [`SHUTDOWN_WAIT`]: the process must not
    /// exit before the `Shutdown` frames are out and read (an exit while frames are unsent,
    /// or with unread heartbeats in the receive buffer, which makes the kernel reset the
    /// connection, leaves the followers seeing a lost rank 0).
    pub fn shutdown(&self) {
        let inner = &self.inner;
        if inner.failed.load(Ordering::SeqCst) {
            return;
        }
        if !inner.stopping.swap(true, Ordering::SeqCst) {
            info!("stopping the other ranks");
            let frame = codec::encode(&Message::Op(Op::Shutdown)).unwrap_or_default();
            let mut told = 0;
            for peer in self.peers() {
                let mut w = peer.writer.lock().unwrap_or_else(|e| e.into_inner());
                if std::io::Write::write_all(&mut *w, &frame).is_ok() {
                    let _ = w.shutdown(std::net::Shutdown::Write);
                    told += 1;
                }
            }
            self.update_goodbye(|g| g.told = Some(told));
        }
        let (state, changed) = &inner.goodbye;
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = changed
            .wait_timeout_while(state, SHUTDOWN_WAIT, |g| {
                g.told.is_none_or(|told| g.closed < told)
            })
            .unwrap_or_else(|e| e.into_inner());
        if let Some(told) = state.told.filter(|&told| state.closed < told) {
            warn!(
                "{} of {told} ranks still connected {}s after Shutdown",
                told - state.closed,
                SHUTDOWN_WAIT.as_secs()
            );
        }
    }

    fn update_goodbye(&self, f: impl FnOnce(&mut Goodbye)) {
        let (state, changed) = &self.inner.goodbye;
        f(&mut state.lock().unwrap_or_else(|e| e.into_inner()));
        changed.notify_all();
    }

    /// Rank `rank` is gone. The first call fails the run: status, hooks, `Abort` to the
    /// others, exit(1) after the grace period.
    pub fn fail(&self, rank: usize, reason: String) {
        let inner = &self.inner;
        inner
            .status
            .set(rank, RankState::Lost(reason.clone()), None);
        if inner.stopping.load(Ordering::SeqCst) || inner.failed.swap(true, Ordering::SeqCst) {
            return;
        }
        let message = self.lost_error(rank, reason).to_string();
        let grace = inner.config.timing.exit_grace;
        error!(rank, "{message}");
        eprintln!(
            "kooka: error: {message}; failing the requests in flight and exiting in {}ms",
            grace.as_millis()
        );
        for hook in inner.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(&message);
        }
        let _ = std::thread::Builder::new()
            .name("kooka-ctl-exit".into())
            .spawn(move || {
                std::thread::sleep(grace);
                std::process::exit(1);
            });
        let l = self.clone();
        let _ = std::thread::Builder::new()
            .name("kooka-ctl-abort".into())
            .spawn(move || {
                let frame = codec::encode(&Message::Abort { reason: message }).unwrap_or_default();
                for peer in l.peers().filter(|p| p.rank != rank) {
                    let mut w = peer.writer.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = std::io::Write::write_all(&mut *w, &frame);
                }
            });
    }

    fn read_loop(&self, rank: usize, mut stream: TcpStream) {
        let timeout = self.inner.config.timing.peer_timeout;
        loop {
            let reason = match read_message(&mut stream) {
                Ok(Message::Heartbeat) => continue,
                Ok(Message::Pong { sent_us, steps }) => {
                    let now_us = self.inner.epoch.elapsed().as_micros() as u64;
                    let rtt = Duration::from_micros(now_us.saturating_sub(sent_us));
                    self.inner.status.set_timing(rank, rtt, steps);
                    continue;
                }
                Ok(Message::Ready { shard }) => {
                    info!(rank, %shard, "rank ready");
                    self.inner.status.set(rank, RankState::Ready, Some(shard));
                    continue;
                }
                Ok(Message::Failed { reason }) => format!("it failed: {reason}"),
                Ok(other) => format!("it sent an unexpected {other:?}"),
                Err(_) if self.inner.stopping.load(Ordering::SeqCst) => {
                    self.update_goodbye(|g| g.closed += 1);
                    return;
                }
                Err(e) if e.is_timeout() => format!(
                    "no heartbeat for {}s (the process is stuck or the network is down)",
                    timeout.as_secs_f32()
                ),
                Err(e) if e.is_closed() => {
                    "its control connection closed (the process exited or was killed)".into()
                }
                Err(e) => e.to_string(),
            };
            self.fail(rank, reason);
            return;
        }
    }

    fn heartbeat_loop(&self) {
        let inner = &self.inner;
        loop {
            std::thread::sleep(inner.config.timing.heartbeat);
            if inner.stopping.load(Ordering::SeqCst) || inner.failed.load(Ordering::SeqCst) {
                return;
            }
            let sent_us = inner.epoch.elapsed().as_micros() as u64;
            let frame = codec::encode(&Message::Ping { sent_us }).unwrap_or_default();
            for peer in self.peers() {
                let sent = {
                    let mut w = peer.writer.lock().unwrap_or_else(|e| e.into_inner());
                    std::io::Write::write_all(&mut *w, &frame)
                };
                if let Err(e) = sent {
                    if !inner.stopping.load(Ordering::SeqCst) {
                        self.fail(peer.rank, format!("sending it a heartbeat failed: {e}"));
                    }
                }
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ClusterError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|source| ClusterError::Io {
            what: format!("starting thread {name}"),
            source,
        })
}
