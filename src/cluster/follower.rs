//! Ranks > 0 of `kooka serve`: no HTTP, no tokenizer; connect to rank 0's control plane,
//! load this rank's shard, then apply rank 0's operations in order until `Shutdown`.
//!
//! Threads:
//! - the calling thread is this rank's MLX thread: it loads the shard and applies ops
//!   (blocking on the op channel when idle);
//! - `kooka-ctl-read` reads rank 0's frames (read timeout `peer_timeout`) and queues the
//!   ops. Rank 0 gone (EOF, silence) or an `Abort` ends the process with code 1 right from
//!   this thread, since the MLX thread may be blocked in a collective that will never
//!   finish;
//! - `kooka-ctl-beat` sends heartbeats, from before the (possibly long) load onwards.
//!
//! Rank 0's heartbeats are `Ping`s: the reader answers each at once with a `Pong` that
//! carries this rank's step times ([`StepClock`], written by the MLX thread), which rank 0
//! turns into the round trip and per-rank step metrics.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::codec::{read_message, write_message};
use super::protocol::{Message, Op, StepTimes};
use super::replicated::{apply, Applied};
use super::{net, shard, ClusterConfig, ClusterError};
use crate::constrain::Constrainer;
use crate::engine::disk_cache::{open_for_model, with_kv_layout};
use crate::engine::{DiskCacheConfig, Engine, SeqId};
use crate::model::{ComputeDtype, KvQuantization};
use crate::tokenizer::Tokenizer;

/// Runs this rank until rank 0 shuts it down (`Ok`) or something fails (`Err`; a lost
/// rank 0 exits the process with code 1 directly).
pub fn run(
    config: &ClusterConfig,
    dir: &Path,
    dtype: ComputeDtype,
    disk_cache: Option<&DiskCacheConfig>,
    kv_quantization: Option<KvQuantization>,
) -> Result<(), ClusterError> {
    let rank = config.rank;
    let deadline = Instant::now() + config.startup_timeout;
    info!(rank, control = %config.control, "connecting to rank 0");
    let mut stream = net::connect(config.control, deadline)?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ClusterError::Io { what, source }
    };
    net::configure(&stream, &config.timing).map_err(io("configuring the control connection"))?;
    net::exchange_preamble(&mut stream)?;
    write_message(&mut stream, &Message::Hello(config.hello()))?;
    match read_message(&mut stream)? {
        Message::Welcome => {}
        Message::Reject { reason } => {
            return Err(ClusterError::Startup(format!(
                "rank 0 refused this rank: {reason}"
            )))
        }
        other => {
            return Err(ClusterError::Protocol(format!(
                "expected Welcome from rank 0, got {other:?}"
            )))
        }
    }
    info!(rank, "joined; loading the model");

    let writer = Arc::new(Mutex::new(
        stream
            .try_clone()
            .map_err(io("cloning the control connection"))?,
    ));
    let stopping = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(StepClock::default());
    let (ops_tx, ops_rx) = mpsc::channel();
    {
        let (stopping, timeout) = (stopping.clone(), config.timing.peer_timeout);
        let reader = Reader {
            rank,
            ops: ops_tx,
            writer: writer.clone(),
            clock: clock.clone(),
        };
        std::thread::Builder::new()
            .name("kooka-ctl-read".into())
            .spawn(move || read_loop(reader, stream, &stopping, timeout))
            .map_err(io("starting the control reader"))?;
    }
    {
        let (writer, stopping, every) = (writer.clone(), stopping.clone(), config.timing.heartbeat);
        std::thread::Builder::new()
            .name("kooka-ctl-beat".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let sent = write_message(&mut *lock(&writer), &Message::Heartbeat);
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = sent {
                    die(
                        rank,
                        &format!("rank 0 is gone (heartbeat not delivered: {e})"),
                    );
                }
            })
            .map_err(io("starting the heartbeat thread"))?;
    }

    let result = follow(
        config,
        (dir, dtype, disk_cache, kv_quantization),
        &writer,
        &ops_rx,
        &clock,
    );
    if let Err(e) = &result {
        let reason = e.to_string();
        error!(rank, "{reason}");
        stopping.store(true, Ordering::SeqCst);
        let _ = write_message(&mut *lock(&writer), &Message::Failed { reason });
    }
    result
}

fn follow(
    config: &ClusterConfig,
    (dir, dtype, disk_cache, kv_quantization): (
        &Path,
        ComputeDtype,
        Option<&DiskCacheConfig>,
        Option<KvQuantization>,
    ),
    writer: &Mutex<TcpStream>,
    ops: &mpsc::Receiver<Op>,
    clock: &StepClock,
) -> Result<(), ClusterError> {
    let (model, shard, group) = shard::load(dir, dtype, config)?;
    let mut engine = Engine::new(model);
    // This rank's own disk tier; with or without one it joins rank 0's lookups' agreement.
    let variant = with_kv_layout(Some(shard.clone()), kv_quantization);
    let disk =
        disk_cache.and_then(|c| open_for_model(c, dir, dtype, variant.as_deref(), config.rank));
    engine.set_disk_cache(disk, Some(group));
    // Constrained requests need a matcher on every rank (all ranks sample); it is built
    // from the model's tokenizer, as on rank 0.
    match Tokenizer::load(dir)
        .map_err(|e| e.to_string())
        .and_then(|tok| Constrainer::new(&tok).map_err(|e| e.to_string()))
    {
        Ok(constrainer) => engine.set_constrainer(constrainer),
        Err(e) => warn!(
            rank = config.rank,
            "constrained decoding unavailable on this rank: {e}"
        ),
    }
    write_message(
        &mut *lock(writer),
        &Message::Ready {
            shard: shard.clone(),
        },
    )?;
    info!(rank = config.rank, %shard, "ready; following rank 0");
    // Per live sequence: tokens generated here, logged (debug) when it ends so a test or
    // an operator can check this rank kept pace with rank 0's usage numbers.
    let mut live: HashMap<SeqId, usize> = HashMap::new();
    let mut busy = false;
    // The reader thread exits the process when rank 0 goes away, so the channel only
    // closes after a Shutdown.
    while let Ok(op) = ops.recv() {
        let started = (op == Op::Step).then(Instant::now);
        let applied = apply(&mut engine, op)?;
        if let Some(started) = started {
            clock.record(started.elapsed());
        }
        match applied {
            Applied::Added(seq) => {
                debug!(seq, "follower: sequence added");
                live.insert(seq, 0);
            }
            Applied::Refused => debug!("follower: request refused (as on rank 0)"),
            Applied::Configured => debug!("follower: engine configured by rank 0"),
            Applied::Stepped(events) => {
                for ev in events {
                    let tokens = live.entry(ev.seq).or_default();
                    *tokens += 1;
                    if ev.finish.is_some() {
                        let tokens = *tokens;
                        live.remove(&ev.seq);
                        debug!(seq = ev.seq, tokens, "follower: sequence finished");
                    }
                }
            }
            Applied::Cancelled(seq) => {
                if let Some(tokens) = live.remove(&seq) {
                    debug!(seq, tokens, "follower: sequence cancelled");
                }
            }
            Applied::Shutdown => {
                info!(rank = config.rank, "rank 0 shut the run down");
                return Ok(());
            }
        }
        let now_busy = engine.has_work();
        if busy && !now_busy {
            debug!("follower: idle");
        }
        busy = now_busy;
    }
    Ok(())
}

/// This rank's engine steps, written by the MLX thread, read by the control reader.
#[derive(Debug, Default)]
struct StepClock {
    count: AtomicU64,
    total_us: AtomicU64,
    last_us: AtomicU64,
}

impl StepClock {
    fn record(&self, took: std::time::Duration) {
        let us = took.as_micros() as u64;
        self.last_us.store(us, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> StepTimes {
        StepTimes {
            count: self.count.load(Ordering::Relaxed),
            total_us: self.total_us.load(Ordering::Relaxed),
            last_us: self.last_us.load(Ordering::Relaxed),
        }
    }
}

/// What the control reader needs besides the connection.
struct Reader {
    rank: usize,
    ops: mpsc::Sender<Op>,
    writer: Arc<Mutex<TcpStream>>,
    clock: Arc<StepClock>,
}

fn read_loop(
    reader: Reader,
    mut stream: TcpStream,
    stopping: &AtomicBool,
    timeout: std::time::Duration,
) {
    let Reader {
        rank,
        ops,
        writer,
        clock,
    } = reader;
    loop {
        match read_message(&mut stream) {
            Ok(Message::Heartbeat) => {}
            Ok(Message::Ping { sent_us }) => {
                let pong = Message::Pong {
                    sent_us,
                    steps: clock.read(),
                };
                // A failed write shows up as a lost rank 0 on the next read or heartbeat.
                let _ = write_message(&mut *lock(&writer), &pong);
            }
            Ok(Message::Op(op)) => {
                let last = op == Op::Shutdown;
                if last {
                    stopping.store(true, Ordering::SeqCst);
                }
                if ops.send(op).is_err() || last {
                    return;
                }
            }
            Ok(Message::Abort { reason }) => die(rank, &format!("rank 0 ended the run: {reason}")),
            Ok(other) => die(
                rank,
                &format!("unexpected control message from rank 0: {other:?}"),
            ),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) if e.is_timeout() => die(
                rank,
                &format!("rank 0 sent no heartbeat for {}s", timeout.as_secs_f32()),
            ),
            Err(e) if e.is_closed() => die(rank, "rank 0 is gone (its control connection closed)"),
            Err(e) => die(rank, &format!("control connection to rank 0 failed: {e}")),
        }
    }
}

fn lock(w: &Mutex<TcpStream>) -> std::sync::MutexGuard<'_, TcpStream> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends this rank now: the MLX thread may be stuck in a collective that cannot be
/// interrupted, and the launcher needs a non-zero exit to tear the run down.
fn die(rank: usize, why: &str) -> ! {
    error!(rank, "{why}");
    eprintln!("kooka: error: rank {rank}: {why}; exiting");
    std::process::exit(1);
}
