//! [`Group`]: a rank's handle on an MLX distributed group, with `Result`s instead of aborts.
//!
//! The collective methods return lazy arrays, like every MLX op: the communication happens
//! when they are evaluated (`mlx_rs::transforms::eval`), which is also where a lost ring peer
//! surfaces (as an `Exception`: "[ring] connection to a peer was lost"). NCCL has no timeout:
//! a lost peer leaves the GPU stream waiting, and only the control plane's heartbeats (which
//! end the process) notice it.

use std::ffi::CString;
use std::marker::PhantomData;

use mlx_rs::{Array, Dtype, Stream};
use mlx_sys as sys;

use super::error_capture::call;
use super::{DistError, Result, Topology};

/// The communication backends kooka knows how to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// TCP ring between the hosts of `MLX_HOSTFILE` (what `mlx.launch --backend ring` sets
    /// up). Communicates from the CPU, whatever the default device is.
    Ring,
    /// NVIDIA's collectives between GPUs (`mlx.launch --backend nccl`), only in MLX's CUDA
    /// build. Communicates on a GPU stream; has no `send` / `recv`.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether point-to-point `send` / `recv` exist (MLX 0.32's NCCL backend has neither).
    pub fn has_send_recv(self) -> bool {
        self == Backend::Ring
    }
}

/// One rank's view of a distributed group. `!Send`: it lives on the model thread.
pub struct Group {
    raw: sys::mlx_distributed_group,
    backend: Backend,
    rank: usize,
    size: usize,
    /// Streams and groups belong to the thread that made them.
    _not_send: PhantomData<*const ()>,
}

impl Group {
    /// Joins `topology`'s group with its backend. Ring initialisation blocks until the
    /// neighbours are connected (MLX retries for about 30 s); NCCL's until every rank has
    /// fetched the unique id from rank 0.
    pub fn init(topology: &Topology) -> Result<Self> {
        let backend = topology.backend();
        let name = CString::new(backend.name()).expect("backend names have no NUL");
        // SAFETY: a valid C string; the call only reads it.
        if !unsafe { sys::mlx_distributed_is_available(name.as_ptr()) } {
            return Err(DistError::Unavailable(backend.name()));
        }
        if backend == Backend::Nccl && topology.size() > 1 {
            one_visible_gpu()?;
        }
        let strict = !matches!(topology, Topology::Single);
        // SAFETY: mlx-c allocates the group into `raw`; freed in Drop.
        let mut raw = unsafe { sys::mlx_distributed_group_new() };
        call(|| unsafe { sys::mlx_distributed_init(&mut raw, strict, name.as_ptr()) }).map_err(
            |message| DistError::Init {
                backend: backend.name(),
                message,
            },
        )?;
        if raw.ctx.is_null() {
            return Err(DistError::Init {
                backend: backend.name(),
                message: "MLX returned no group".into(),
            });
        }
        // SAFETY: `raw` is an initialised group.
        let (rank, size) = unsafe {
            (
                sys::mlx_distributed_group_rank(raw),
                sys::mlx_distributed_group_size(raw),
            )
        };
        let group = Group {
            raw,
            backend,
            rank: rank.max(0) as usize,
            size: size.max(1) as usize,
            _not_send: PhantomData,
        };
        if strict && (group.rank != topology.rank() || group.size != topology.size()) {
            return Err(DistError::Init {
                backend: backend.name(),
                message: format!(
                    "MLX joined as rank {} of {}, but the environment says rank {} of {}",
                    group.rank,
                    group.size,
                    topology.rank(),
                    topology.size()
                ),
            });
        }
        Ok(group)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Element-wise sum of `x` over all ranks.
    pub fn all_sum(&self, x: &Array) -> Result<Array> {
        self.op("all_sum", |res, s| unsafe {
            sys::mlx_distributed_all_sum(res, x.as_ptr(), self.raw, s)
        })
    }

    /// Concatenation of every rank's `x` along the first axis, in rank order.
    pub fn all_gather(&self, x: &Array) -> Result<Array> {
        self.op("all_gather", |res, s| unsafe {
            sys::mlx_distributed_all_gather(res, x.as_ptr(), self.raw, s)
        })
    }

    /// Element-wise maximum of `x` over all ranks.
    pub fn all_max(&self, x: &Array) -> Result<Array> {
        self.op("all_max", |res, s| unsafe {
            sys::mlx_distributed_all_max(res, x.as_ptr(), self.raw, s)
        })
    }

    /// Sends `x` to rank `dst` (a ring neighbour). Evaluate the returned array to send.
    pub fn send(&self, x: &Array, dst: usize) -> Result<Array> {
        let dst = self.peer("send", dst)?;
        self.op("send", |res, s| unsafe {
            sys::mlx_distributed_send(res, x.as_ptr(), dst, self.raw, s)
        })
    }

    /// Receives an array of `shape` and `dtype` from rank `src` (a ring neighbour).
    pub fn recv(&self, shape: &[i32], dtype: Dtype, src: usize) -> Result<Array> {
        let src = self.peer("recv", src)?;
        self.op("recv", |res, s| unsafe {
            sys::mlx_distributed_recv(
                res,
                shape.as_ptr(),
                shape.len(),
                dtype as sys::mlx_dtype,
                src,
                self.raw,
                s,
            )
        })
    }

    /// Receives an array shaped like `like` from rank `src`.
    pub fn recv_like(&self, like: &Array, src: usize) -> Result<Array> {
        let src = self.peer("recv_like", src)?;
        self.op("recv_like", |res, s| unsafe {
            sys::mlx_distributed_recv_like(res, like.as_ptr(), src, self.raw, s)
        })
    }

    fn peer(&self, op: &'static str, peer: usize) -> Result<i32> {
        if !self.backend.has_send_recv() {
            return Err(DistError::NoPointToPoint {
                op,
                backend: self.backend.name(),
            });
        }
        if peer >= self.size || peer == self.rank {
            return Err(DistError::InvalidPeer {
                op,
                rank: self.rank,
                peer,
                size: self.size,
            });
        }
        Ok(peer as i32)
    }

    /// Runs one collective on the stream its backend communicates on: the ring from the
    /// CPU whatever the default device is, NCCL on this thread's GPU stream (the one the
    /// model's ops use; a CPU stream would fail when evaluated).
    fn op(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut sys::mlx_array, sys::mlx_stream) -> i32,
    ) -> Result<Array> {
        let stream = match self.backend {
            Backend::Ring => Stream::cpu(),
            Backend::Nccl => Stream::gpu(),
        };
        // SAFETY: a fresh empty array handle that mlx-c fills in; on failure we free it.
        let mut res = unsafe { sys::mlx_array_new() };
        match call(|| f(&mut res, stream.as_ptr())) {
            // SAFETY: on success `res` holds a valid array whose ownership moves to `Array`.
            Ok(()) => Ok(unsafe { Array::from_ptr(res) }),
            Err(message) => {
                unsafe { sys::mlx_array_free(res) };
                Err(DistError::Op { op, message })
            }
        }
    }
}

/// MLX's NCCL group talks from GPU `rank % count` while MLX computes on GPU 0, so a rank
/// that sees several GPUs would hand NCCL buffers of another device: refused up front.
fn one_visible_gpu() -> Result<()> {
    let mut count = 0i32;
    // SAFETY: writes one int; the call has no other effect.
    call(|| unsafe { sys::mlx_device_count(&mut count, sys::mlx_device_type__MLX_GPU) }).map_err(
        |message| DistError::Init {
            backend: "nccl",
            message: format!("counting GPUs: {message}"),
        },
    )?;
    if count > 1 {
        return Err(DistError::Init {
            backend: "nccl",
            message: format!(
                "this rank sees {count} GPUs; under nccl each rank must see exactly one: set \
                 CUDA_VISIBLE_DEVICES per rank (kooka launch --backend nccl and mlx.launch do)"
            ),
        });
    }
    Ok(())
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: `raw` came from mlx_distributed_init and is freed once.
        unsafe { sys::mlx_distributed_group_free(self.raw) };
    }
}
