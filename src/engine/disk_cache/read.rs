//! Reading blocks back into one row per layer: the files are read and checked (model,
//! checksum) by a few threads, either at once ([`DiskCache::load`]) or on a thread of their
//! own while the engine goes on decoding ([`DiskCache::start_read`], [`PendingRead`]), so a
//! long conversation coming back from disk does not stall every running stream for the
//! read; then each file's tensors go through MLX's own loading and are joined by layer.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use mlx_rs::{transforms, Array};
use safetensors::tensor::TensorView;

use super::block::{self, file_name, HostLayer, Key};
use super::index::Resume;
use super::{load, DiskCache};
use crate::model::cache::LayerRow;
use crate::model::{ModelError, Result};

/// What reading a chain of block files gave: their bytes, or the first bad file's place in
/// the chain and why (`usize::MAX`: the reading thread itself failed).
pub type ReadOutcome = std::result::Result<Vec<Vec<u8>>, (usize, String)>;

/// A read of blocks going on on a thread of its own.
pub struct PendingRead {
    resume: Resume,
    /// Its block files, in chain order.
    paths: Vec<PathBuf>,
    started: Instant,
    rx: mpsc::Receiver<ReadOutcome>,
}

impl PendingRead {
    /// The positions the blocks hold.
    pub fn tokens(&self) -> usize {
        self.resume.tokens
    }

    /// The outcome once the read is done; `None` while it goes on (`wait`: block until done).
    pub fn poll(&self, wait: bool) -> Option<ReadOutcome> {
        let lost = || {
            Err((
                usize::MAX,
                "the prompt cache's reading thread ended".to_string(),
            ))
        };
        match wait {
            true => Some(self.rx.recv().unwrap_or_else(|_| lost())),
            false => match self.rx.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(lost()),
            },
        }
    }
}

impl DiskCache {
    fn paths(&self, resume: &Resume) -> Vec<PathBuf> {
        (resume.chain.iter())
            .map(|k| self.folder.join(file_name(*k)))
            .collect()
    }

    /// Reads the blocks of `resume` into one row per layer (keys and values concatenated,
    /// the last block's states). A bad file is a miss: it is deleted and `Ok(None)` returned.
    pub fn load(&mut self, resume: &Resume) -> Result<Option<Vec<LayerRow>>> {
        let started = Instant::now();
        let paths = self.paths(resume);
        let outcome = read_checked(&paths, &self.model);
        self.rows_read(resume, &paths, outcome, started)
    }

    /// Starts reading the blocks of `resume` on a thread of its own; [`Self::finish_read`]
    /// takes the outcome.
    pub fn start_read(&self, resume: Resume) -> PendingRead {
        let (tx, rx) = mpsc::channel();
        let (paths, model) = (self.paths(&resume), self.model.clone());
        let reading = paths.clone();
        let spawned = std::thread::Builder::new()
            .name("kooka-cache-read".into())
            .spawn(move || {
                let _ = tx.send(read_checked(&reading, &model));
            });
        if let Err(e) = spawned {
            tracing::warn!("prompt cache: no reading thread: {e}");
        }
        PendingRead {
            resume,
            paths,
            started: Instant::now(),
            rx,
        }
    }

    /// The rows of a finished [`PendingRead`], as [`Self::load`] gives them.
    pub fn finish_read(
        &mut self,
        read: PendingRead,
        outcome: ReadOutcome,
    ) -> Result<Option<Vec<LayerRow>>> {
        self.rows_read(&read.resume, &read.paths, outcome, read.started)
    }

    fn rows_read(
        &mut self,
        resume: &Resume,
        paths: &[PathBuf],
        outcome: ReadOutcome,
        started: Instant,
    ) -> Result<Option<Vec<LayerRow>>> {
        let files = match outcome {
            Ok(files) => files,
            Err((i, e)) => match resume.chain.get(i) {
                Some(&key) => return Ok(self.bad_block(key, &e)),
                None => {
                    tracing::warn!("prompt cache: {e}");
                    self.stats.misses += 1;
                    return Ok(None);
                }
            },
        };
        let read = started.elapsed();
        let bytes: usize = files.iter().map(Vec::len).sum();
        let blocks = files.len();
        let rows = match std::env::var("KOOKA_DISK_LOAD").as_deref() {
            Ok("gather") => {
                let views = files
                    .iter()
                    .map(|bytes| {
                        block::decode_views(bytes, &self.model, false).map(|(_, layers)| layers)
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| ModelError::Request(format!("prompt cache: {e}")))?;
                rows_of(&views)?
            }
            _ => self.rows_loaded(files, paths)?,
        };
        transforms::eval(rows.iter().flat_map(LayerRow::arrays))?;
        tracing::debug!(
            blocks,
            bytes,
            read_ms = read.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "prompt cache: read from disk"
        );
        self.index.touch(&resume.chain);
        if let Some(w) = &self.writer {
            w.touch(resume.chain.clone());
        }
        self.stats.hits += 1;
        self.stats.hit_tokens += resume.tokens as u64;
        Ok(Some(rows))
    }

    /// A block that cannot be read: a miss; it leaves the index and the folder.
    fn bad_block(&mut self, key: Key, error: &str) -> Option<Vec<LayerRow>> {
        let path = self.folder.join(file_name(key));
        tracing::warn!(file = %path.display(), "prompt cache: {error}");
        self.index.remove(key);
        self.drop_file(&path);
        self.stats.misses += 1;
        None
    }

    /// One row per layer from consecutive blocks' files (read and checked): each block's
    /// tensors through MLX's loading ([`load::arrays_of`]), each layer's keys and values
    /// joined along positions by MLX, the last block's states.
    fn rows_loaded(&self, files: Vec<Vec<u8>>, paths: &[PathBuf]) -> Result<Vec<LayerRow>> {
        let bad = || ModelError::Request("prompt cache blocks disagree on their layers".into());
        let kinds: Vec<HostLayer<()>> = match files.last() {
            None => return Ok(Vec::new()),
            Some(bytes) => block::decode_views(bytes, &self.model, false)
                .map_err(|e| ModelError::Request(format!("prompt cache: {e}")))?
                .1
                .into_iter()
                .map(|l| match l {
                    HostLayer::Kv(..) => HostLayer::Kv((), ()),
                    HostLayer::State(s) => HostLayer::State(vec![(); s.len()]),
                    HostLayer::Stateless => HostLayer::Stateless,
                })
                .collect(),
        };
        let mut maps = Vec::with_capacity(files.len());
        for (bytes, path) in files.into_iter().zip(paths) {
            maps.push(load::arrays_of(
                Arc::new(bytes),
                &path.display().to_string(),
            )?);
        }
        let last = maps.len() - 1;
        let mut take = |i: usize, name: &str| maps[i].remove(name).ok_or_else(bad);
        let mut rows = Vec::with_capacity(kinds.len());
        for (l, kind) in kinds.iter().enumerate() {
            rows.push(match kind {
                HostLayer::Kv(..) => {
                    let mut joined = |part: &str| -> Result<Array> {
                        let parts = (0..=last)
                            .map(|i| take(i, &format!("{l}.{part}")))
                            .collect::<Result<Vec<_>>>()?;
                        match parts.len() {
                            1 => Ok(parts.into_iter().next().ok_or_else(bad)?),
                            _ => Ok(mlx_rs::ops::concatenate(&parts, 2)?),
                        }
                    };
                    LayerRow::Kv(joined("k")?, joined("v")?)
                }
                HostLayer::State(s) => LayerRow::State(
                    (0..s.len())
                        .map(|j| take(last, &format!("{l}.s{j}")))
                        .collect::<Result<_>>()?,
                ),
                HostLayer::Stateless => LayerRow::Stateless,
            });
        }
        Ok(rows)
    }
}

/// One row per layer from consecutive blocks: each layer's keys and values gathered head by
/// head into one buffer (one copy, by several threads: plain bytes), then MLX's copy of it on
/// this thread; the last block's states.
fn rows_of(blocks: &[Vec<HostLayer<TensorView<'_>>>]) -> Result<Vec<LayerRow>> {
    let Some(last) = blocks.last() else {
        return Ok(Vec::new());
    };
    let bad = || ModelError::Request("prompt cache blocks disagree on their layers".into());
    // Every (layer, keys | values) to gather, as the blocks' parts.
    let mut jobs: Vec<Vec<&TensorView<'_>>> = Vec::new();
    for l in 0..last.len() {
        if let HostLayer::Kv(..) = &last[l] {
            let mut ks = Vec::with_capacity(blocks.len());
            let mut vs = Vec::with_capacity(blocks.len());
            for b in blocks {
                match b.get(l) {
                    Some(HostLayer::Kv(k, v)) => {
                        ks.push(k);
                        vs.push(v);
                    }
                    _ => return Err(bad()),
                }
            }
            jobs.push(ks);
            jobs.push(vs);
        }
    }
    let gathered = in_parallel(&jobs, |parts| gather(parts));
    let mut gathered = gathered.into_iter();
    let mut array = || -> Result<Array> {
        let (dtype, shape, data) = gathered.next().flatten().ok_or_else(bad)?;
        Ok(block::array_from(dtype, &shape, &data))
    };
    let view = |t: &TensorView| block::array_from(t.dtype(), t.shape(), t.data());
    (0..last.len())
        .map(|l| match &last[l] {
            HostLayer::Kv(..) => Ok(LayerRow::Kv(array()?, array()?)),
            HostLayer::State(s) => Ok(LayerRow::State(s.iter().map(view).collect())),
            HostLayer::Stateless => Ok(LayerRow::Stateless),
        })
        .collect()
}

/// Threads for reading and gathering blocks.
fn io_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
}

/// `f` over `items` on several threads (plain data only), results in order.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = io_threads().min(items.len()).max(1);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                scope.spawn(move || {
                    (t..items.len())
                        .step_by(threads)
                        .map(|i| (i, f(&items[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().unwrap_or_default() {
                out[i] = Some(r);
            }
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Reads and checks (model, checksum) every file, several at a time; the first bad one's
/// index and error otherwise.
fn read_checked(paths: &[PathBuf], model: &str) -> ReadOutcome {
    let results = in_parallel(paths, |p| {
        let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
        block::decode_views(&bytes, model, true).map_err(|e| e.to_string())?;
        Ok::<_, String>(bytes)
    });
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.map_err(|e| (i, e)))
        .collect()
}

/// Arrays `[1, H, n_i, D]` joined along positions, as bytes; `None` when their shapes disagree.
fn gather(parts: &[&TensorView<'_>]) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let first = parts.first()?;
    let (dtype, shape) = (first.dtype(), first.shape());
    let [b, h, _, d] = shape[..] else {
        return None;
    };
    let elem = dtype.bitsize() / 8;
    let row = d * elem;
    let n: usize = parts.iter().map(|p| p.shape()[2]).sum();
    if parts.iter().any(|p| {
        p.dtype() != dtype
            || p.shape().len() != 4
            || p.shape()[..2] != shape[..2]
            || p.shape()[3] != d
    }) {
        return None;
    }
    let mut data = Vec::with_capacity(b * h * n * row);
    for head in 0..b * h {
        for p in parts {
            let len = p.shape()[2] * row;
            data.extend_from_slice(&p.data()[head * len..(head + 1) * len]);
        }
    }
    Some((dtype, vec![b, h, n, d], data))
}
