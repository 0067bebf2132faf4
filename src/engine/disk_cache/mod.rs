//! The disk tier under the prefix cache (`serve --prompt-cache-dir`): keys and values (and
//! recurrent states at checkpoints) of past sequences, kept in block files that outlive the
//! process, so that a restarted server, or one whose memory tier evicted a conversation,
//! resumes it from disk instead of prefilling it again.
//!
//! - Layout: `DIR/<model fingerprint>/rank<r>/<key>.safetensors`. The fingerprint covers
//!   the weights, the compute dtype, the backend and the split over ranks
//!   ([`identity::fingerprint`]); each rank keeps its own shard's layers under the same keys.
//! - A sequence is cut into blocks of [`DiskCacheConfig::block_tokens`] positions keyed by a
//!   hash chained over every token before them, plus a tail block ([`index`]); a sequence
//!   that grows by one turn writes only its new blocks.
//! - Every sequence the memory tier takes in is offered here too; the new blocks are copied
//!   to host memory on the MLX thread and written by a writer thread ([`writer`]), which
//!   drops work when it is behind rather than stall decoding.
//! - A lookup the disk serves further than memory reads the chain back ([`read`]: on one
//!   rank on a thread of its own while the batch decodes) and turns each file into arrays
//!   through MLX's own loading ([`load`]).
//! - On start the index is rebuilt from the files' headers; a file that is torn, corrupt,
//!   of another model or of another format is a miss and is deleted. Least recently used
//!   blocks go when the folder passes its byte budget.
//! - One process owns a rank folder (an exclusive `flock` on its `lock` file); another
//!   server on the same folder only reads it.
//! - With several ranks, every lookup agrees on one length through an `all_sum`, so that
//!   ranks whose folders differ still resume at the same position.

mod block;
pub mod identity;
mod index;
mod load;
mod read;
mod writer;

pub use index::Resume;
pub use read::{PendingRead, ReadOutcome};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use mlx_rs::Array;

use crate::dist::Group;
use crate::model::cache::LayerRow;
use crate::model::{ModelError, Result};
use block::{file_name, HostArray, HostLayer, Key};
use index::Index;
pub use writer::finish_writes;
use writer::{Segment, Writer, Written};

/// Where and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCacheConfig {
    pub dir: PathBuf,
    /// The folder's budget; least recently used blocks go beyond it.
    pub budget_bytes: u64,
    /// Positions per block.
    pub block_tokens: usize,
}

/// An upper bound of a block file's header (tokens and tensor entries), for the budget
/// before the file exists.
const HEADER_BYTES: u64 = 32 << 10;

/// Positions per block by default: a 20k-token conversation is ~80 files.
pub const DEFAULT_BLOCK_TOKENS: usize = 256;

/// Counters for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskCacheStats {
    pub blocks: usize,
    pub bytes: u64,
    pub budget_bytes: u64,
    pub hits: u64,
    pub hit_tokens: u64,
    pub misses: u64,
    pub blocks_written: u64,
    pub bytes_written: u64,
    /// Writes skipped because the writer was behind.
    pub writes_dropped: u64,
    pub evictions: u64,
    /// Files found torn, corrupt or of another model (each deleted).
    pub corrupt: u64,
    /// This server only reads the folder (another process owns it).
    pub read_only: bool,
}

pub struct DiskCache {
    folder: PathBuf,
    /// Written into and checked against every file.
    model: String,
    index: Index,
    /// `None`: read only.
    writer: Option<Writer>,
    /// Held for the process's life: the folder's owner.
    _lock: Option<File>,
    budget_bytes: u64,
    stats: DiskCacheStats,
}

impl DiskCache {
    /// Opens (creating it) the folder of `model` (a fingerprint, with the rank) under
    /// `config.dir` and reads its index.
    pub fn open(config: &DiskCacheConfig, model: &str, rank: usize) -> std::io::Result<Self> {
        let folder = config.dir.join(model).join(format!("rank{rank}"));
        std::fs::create_dir_all(&folder)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(folder.join("lock"))?;
        let owner = try_lock(&lock);
        let model = format!("{model}/rank{rank}");
        let writer = match owner {
            true => Some(Writer::spawn(
                folder.clone(),
                model.clone(),
                config.budget_bytes.clamp(1 << 20, 1 << 30),
            )?),
            false => {
                tracing::warn!(
                    folder = %folder.display(),
                    "another process owns this prompt cache folder: reading it only"
                );
                None
            }
        };
        let mut cache = DiskCache {
            folder,
            model,
            index: Index::new(config.block_tokens),
            writer,
            _lock: owner.then_some(lock),
            budget_bytes: config.budget_bytes,
            stats: DiskCacheStats {
                budget_bytes: config.budget_bytes,
                read_only: !owner,
                ..Default::default()
            },
        };
        cache.rebuild()?;
        cache.evict();
        tracing::info!(
            folder = %cache.folder.display(),
            blocks = cache.index.len(),
            bytes = cache.index.bytes(),
            "prompt cache on disk"
        );
        Ok(cache)
    }

    /// Reads every block file's header; drops temporary, torn and foreign files.
    fn rebuild(&mut self) -> std::io::Result<()> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.folder)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A write cut short (by a crash, or by this server's last run).
                if self.writer.is_some() {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let Some(hex) = name.strip_suffix(".safetensors") else {
                continue;
            };
            let header = Key::from_str_radix(hex, 16)
                .ok()
                .and_then(|key| read_header_of(&path, &self.model).map(|h| (key, h)));
            match header {
                Some((key, (header, bytes)))
                    if block::chain_key(header.parent, &header.tokens) == key =>
                {
                    let mtime = entry.metadata().and_then(|m| m.modified()).ok();
                    found.push((mtime, key, header, bytes));
                }
                _ => self.drop_file(&path),
            }
        }
        // Oldest first, so that the clock orders them as their modification times do.
        found.sort_by_key(|(t, ..)| *t);
        for (i, (_, key, header, bytes)) in found.into_iter().enumerate() {
            self.index.insert(key, header, bytes, i as u64 + 1);
        }
        Ok(())
    }

    fn drop_file(&mut self, path: &Path) {
        self.stats.corrupt += 1;
        tracing::warn!(file = %path.display(), "prompt cache: unusable block file, ignored");
        if self.writer.is_some() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The longest stored prefix of `prompt` within `limit` positions.
    pub fn best(&mut self, prompt: &[u32], limit: usize, recurrent: bool) -> Option<Resume> {
        self.drain();
        self.index.best(prompt, limit, recurrent)
    }

    pub fn count_miss(&mut self) {
        self.stats.misses += 1;
    }

    /// Whether [`Self::store`] would write anything of `tokens` (`state`: with recurrent
    /// states after them).
    pub fn lacks(&mut self, tokens: &[u32], state: bool) -> bool {
        self.drain();
        self.writer.is_some() && self.index.plan(tokens, state).is_some()
    }

    /// Queues what the folder lacks of `tokens` (with `layers` after them: keys and values of
    /// at least `tokens.len()` positions, recurrent states after exactly that many).
    pub fn store(&mut self, tokens: &[u32], layers: &[LayerRow]) -> Result<()> {
        self.drain();
        if self.writer.is_none() {
            return Ok(());
        }
        let has_state = layers.iter().any(|l| matches!(l, LayerRow::State(_)));
        let Some(plan) = self.index.plan(tokens, has_state) else {
            return Ok(());
        };
        let n = tokens.len() as i32;
        let from = plan.from as i32;
        let mut host = Vec::with_capacity(layers.len());
        let mut bytes = 0u64;
        for row in layers {
            host.push(match row {
                LayerRow::Kv(k, v) => {
                    let cut = |a: &Array| -> Result<HostArray> {
                        HostArray::from_array(&crate::model::slicing::slice_axis(a, 2, from, n)?)
                    };
                    let (k, v) = (cut(k)?, cut(v)?);
                    bytes += (k.data.len() + v.data.len()) as u64;
                    HostLayer::Kv(k, v)
                }
                LayerRow::State(arrays) => {
                    let s = arrays
                        .iter()
                        .map(HostArray::from_array)
                        .collect::<Result<Vec<_>>>()?;
                    bytes += s.iter().map(|a| a.data.len() as u64).sum::<u64>();
                    HostLayer::State(s)
                }
                LayerRow::Stateless => HostLayer::Stateless,
            });
        }
        // Room first (least recently used blocks go), so that the folder stays within its
        // budget while the writer works.
        let per_block = bytes / plan.blocks.len().max(1) as u64 + HEADER_BYTES;
        let keys: Vec<(Key, u64)> = block_keys(tokens, &plan.blocks)
            .into_iter()
            .map(|k| (k, per_block))
            .collect();
        let needed: u64 = keys.iter().map(|(_, b)| b).sum();
        if !self.make_room(needed) {
            self.stats.writes_dropped += 1;
            return Ok(());
        }
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let seg = Segment {
            from: plan.from,
            tokens: tokens[plan.from..].to_vec(),
            layers: host,
            blocks: plan.blocks,
            has_state,
            bytes,
        };
        if writer.send(seg) {
            self.index.set_pending(keys);
        } else {
            self.stats.writes_dropped += 1;
            tracing::debug!(bytes, "prompt cache: writer behind, blocks not written");
        }
        Ok(())
    }

    /// Takes in what the writer finished; evicts past the budget.
    fn drain(&mut self) {
        let Some(writer) = &self.writer else {
            return;
        };
        let done: Vec<Written> = writer.done.try_iter().collect();
        for w in done {
            match w {
                Written::Ok { key, header, bytes } => {
                    self.stats.blocks_written += 1;
                    self.stats.bytes_written += bytes;
                    self.index.insert(key, header, bytes, 0);
                }
                Written::Failed { key, error } => {
                    self.index.clear_pending(key);
                    tracing::warn!("prompt cache: writing a block failed: {error}");
                }
            }
        }
        self.evict();
    }

    fn evict(&mut self) {
        self.make_room(0);
    }

    /// Deletes least recently used blocks until `more` bytes fit the budget besides what is
    /// stored and being written; false if they cannot.
    fn make_room(&mut self, more: u64) -> bool {
        if self.writer.is_none() || more > self.budget_bytes {
            return false;
        }
        while self.index.bytes() + more > self.budget_bytes {
            let Some(key) = self.index.oldest() else {
                return false;
            };
            self.index.remove(key);
            let _ = std::fs::remove_file(self.folder.join(file_name(key)));
            self.stats.evictions += 1;
        }
        true
    }

    /// Waits (up to `timeout`) until queued writes are on disk; for tests and shutdown.
    pub fn flush(&mut self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.writer.as_ref().is_some_and(|w| w.queued() > 0)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.drain();
    }

    pub fn stats(&self) -> DiskCacheStats {
        DiskCacheStats {
            blocks: self.index.len(),
            bytes: self.index.stored_bytes(),
            ..self.stats
        }
    }
}

/// The variant of [`open_for_model`] with quantized keys and values: rows of another layout,
/// kept apart.
pub fn with_kv_layout(
    variant: Option<String>,
    quant: Option<crate::model::KvQuantization>,
) -> Option<String> {
    match (variant, quant) {
        (v, None) => v,
        (v, Some(q)) => Some(format!(
            "{}kv{}g{}",
            v.map(|v| v + "-").unwrap_or_default(),
            q.bits,
            q.group_size
        )),
    }
}

/// Opens the disk tier of the model in `dir` for this rank, as `dtype` on this backend and
/// split as `shard` says (or, on one rank, with the LoRA adapter it names); a folder that
/// cannot be used is a warning and no disk tier.
pub fn open_for_model(
    config: &DiskCacheConfig,
    dir: &Path,
    dtype: crate::model::ComputeDtype,
    shard: Option<&str>,
    rank: usize,
) -> Option<DiskCache> {
    let backend = match crate::model::default_device_is_cpu() {
        true => "cpu",
        false => "gpu",
    };
    let dtype = format!("{dtype:?}");
    let settings = [dtype.as_str(), backend, shard.unwrap_or("whole")];
    let opened = identity::fingerprint(dir, &settings)
        .and_then(|model| DiskCache::open(config, &model, rank));
    match opened {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::warn!(dir = %config.dir.display(), "disk prompt cache off: {e}");
            None
        }
    }
}

/// Agrees on one resume length over every rank: the shortest any rank has (and, for a
/// recurrent model, only a length every rank has exactly, else none). Each rank passes its
/// own; all get the same answer.
pub fn agree(group: &Rc<Group>, local: usize, recurrent: bool) -> Result<usize> {
    let (rank, size) = (group.rank(), group.size());
    let mut v = vec![0f32; size];
    v[rank] = local as f32;
    let all = group
        .all_sum(&Array::from_slice(&v, &[size as i32]))
        .map_err(|e| ModelError::Shard(format!("prompt cache agreement: {e}")))?;
    let all: Vec<usize> = all.as_slice::<f32>().iter().map(|&x| x as usize).collect();
    let min = all.iter().copied().min().unwrap_or(0);
    Ok(match recurrent && all.iter().any(|&n| n != min) {
        true => 0,
        false => min,
    })
}

fn try_lock(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this process owns.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A file's header and size, if it is a whole block file of `model` (its length what the
/// header says: a torn file is not).
fn read_header_of(path: &Path, model: &str) -> Option<(block::BlockHeader, u64)> {
    use std::io::Read;
    let mut f = File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    let mut first = [0u8; 8];
    f.read_exact(&mut first).ok()?;
    let len = block::head_len(first);
    if len > 100 << 20 || len > size {
        return None;
    }
    let mut head = vec![0u8; len as usize];
    head[..8].copy_from_slice(&first);
    f.read_exact(&mut head[8..]).ok()?;
    match block::read_header(&head, model) {
        Ok((header, whole)) if whole == size => Some((header, size)),
        _ => None,
    }
}

/// The keys of `blocks` (planned from `tokens`).
fn block_keys(tokens: &[u32], blocks: &[(Key, usize, usize)]) -> Vec<Key> {
    blocks
        .iter()
        .map(|&(parent, start, end)| block::chain_key(parent, &tokens[start..end]))
        .collect()
}
