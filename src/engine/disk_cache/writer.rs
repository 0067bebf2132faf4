//! The thread that writes block files, so that decoding never waits on the disk. It gets
//! host bytes (never MLX arrays), cuts them into blocks, writes each to a temporary file and
//! renames it into place (a reader sees a whole file or none), and reports every block back.
//! The queue is bounded in bytes: [`Writer::send`] refuses work past the bound.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use super::block::{file_name, Block, BlockHeader, HostLayer, Key};

/// A sequence's positions `[from, from + len)` for every layer, to be cut into `blocks`.
pub struct Segment {
    pub from: usize,
    /// The tokens of the positions from `from` on.
    pub tokens: Vec<u32>,
    /// Keys and values of those positions; recurrent layers' states after the last one.
    pub layers: Vec<HostLayer>,
    /// Each block to write: `(parent, start, end)`, absolute positions.
    pub blocks: Vec<(Key, usize, usize)>,
    /// States were given (a checkpoint at the segment's end).
    pub has_state: bool,
    pub bytes: u64,
}

/// Bytes queued by every writer of the process and not yet written (see [`finish_writes`]).
static QUEUED: AtomicU64 = AtomicU64::new(0);

/// Waits until every writer of the process has written what it queued, up to `timeout`: for
/// a server about to exit (its model thread may still be dropping).
pub fn finish_writes(timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while QUEUED.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub enum Job {
    Write(Segment),
    /// Files used again: their modification time is the LRU order after a restart.
    Touch(Vec<Key>),
}

/// What became of a block.
pub enum Written {
    Ok {
        key: Key,
        header: BlockHeader,
        bytes: u64,
    },
    Failed {
        key: Key,
        error: String,
    },
}

pub struct Writer {
    /// `None` once dropping.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub done: mpsc::Receiver<Written>,
    queued: Arc<AtomicU64>,
    max_queued: u64,
}

impl Writer {
    pub fn spawn(folder: PathBuf, model: String, max_queued: u64) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let queued = Arc::new(AtomicU64::new(0));
        let counter = queued.clone();
        let thread = std::thread::Builder::new()
            .name("kooka-cache-writer".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Write(seg) => {
                            let bytes = seg.bytes;
                            for w in write_segment(&folder, &model, seg) {
                                if done_tx.send(w).is_err() {
                                    return;
                                }
                            }
                            counter.fetch_sub(bytes, Ordering::SeqCst);
                            QUEUED.fetch_sub(bytes, Ordering::SeqCst);
                        }
                        Job::Touch(keys) => {
                            let now = std::time::SystemTime::now();
                            for k in keys {
                                if let Ok(f) = std::fs::File::options()
                                    .write(true)
                                    .open(folder.join(file_name(k)))
                                {
                                    let _ = f.set_modified(now);
                                }
                            }
                        }
                    }
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
            done,
            queued,
            max_queued,
        })
    }

    /// Queues `seg`; false (and nothing queued) when the writer is that far behind.
    pub fn send(&self, seg: Segment) -> bool {
        let bytes = seg.bytes;
        let before = self.queued.fetch_add(bytes, Ordering::SeqCst);
        if before > 0 && before + bytes > self.max_queued {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
            return false;
        }
        QUEUED.fetch_add(bytes, Ordering::SeqCst);
        if self
            .jobs
            .as_ref()
            .is_none_or(|j| j.send(Job::Write(seg)).is_err())
        {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
            QUEUED.fetch_sub(bytes, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn touch(&self, keys: Vec<Key>) {
        if let Some(j) = &self.jobs {
            let _ = j.send(Job::Touch(keys));
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::SeqCst)
    }
}

/// A server shutting down finishes the writes it queued (for at most 30 s).
impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn write_segment(folder: &std::path::Path, model: &str, seg: Segment) -> Vec<Written> {
    let end_of_segment = seg.from + seg.tokens.len();
    let mut out = Vec::with_capacity(seg.blocks.len());
    for &(parent, start, end) in &seg.blocks {
        let last = end == end_of_segment;
        let (a, b) = (start - seg.from, end - seg.from);
        let layers = seg
            .layers
            .iter()
            .map(|l| match l {
                HostLayer::Kv(k, v) => HostLayer::Kv(k.positions(a, b), v.positions(a, b)),
                HostLayer::State(s) if last && seg.has_state => HostLayer::State(s.clone()),
                HostLayer::State(_) => HostLayer::State(Vec::new()),
                HostLayer::Stateless => HostLayer::Stateless,
            })
            .collect();
        let block = Block {
            parent,
            start,
            tokens: seg.tokens[a..b].to_vec(),
            has_state: last && seg.has_state,
            layers,
        };
        let key = block.key();
        let result = block
            .encode(model)
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_atomically(folder, key, &bytes).map_err(|e| e.to_string()));
        out.push(match result {
            Ok(bytes) => Written::Ok {
                key,
                header: BlockHeader {
                    parent,
                    start,
                    tokens: block.tokens,
                    has_state: block.has_state,
                },
                bytes,
            },
            Err(error) => Written::Failed { key, error },
        });
    }
    out
}

/// Writes `bytes` as the block file of `key`: a temporary file, then a rename.
fn write_atomically(folder: &std::path::Path, key: Key, bytes: &[u8]) -> std::io::Result<u64> {
    let path = folder.join(file_name(key));
    let tmp = folder.join(format!("{}.{}.tmp", file_name(key), std::process::id()));
    std::fs::write(&tmp, bytes)?;
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(bytes.len() as u64)
}
