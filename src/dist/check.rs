//! `kooka dist-check`: proves a distributed group works end to end, on every rank.
//!
//! Each rank joins the group from the environment, then checks `all_sum`, `all_gather` and
//! (where the backend has them: not NCCL) a `send`/`recv` around the ring against values it
//! can compute itself, and prints one JSON line. Any mismatch or MLX error is an `Err`
//! (non-zero exit).

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context};
use mlx_rs::{transforms::eval, Array, Dtype};

use super::{Backend, Group, Topology, Watchdog};

/// What one rank saw.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub backend: &'static str,
    pub rank: usize,
    pub size: usize,
    pub all_sum: Vec<f32>,
    pub all_gather: Vec<f32>,
    /// `(from rank, values)` received around the ring; absent on a one-rank group.
    pub received: Option<(usize, Vec<f32>)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        write!(f, "{line}")
    }
}

pub fn run(
    backend: Option<Backend>,
    expect_size: Option<usize>,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let watchdog = Watchdog::arm(timeout, "dist-check");
    let topology = Topology::from_env(backend)?;
    topology.apply_process_defaults();
    let group = Group::init(&topology).context("joining the distributed group")?;
    let (rank, size) = (group.rank(), group.size());
    if let Some(expected) = expect_size {
        if size != expected {
            bail!("rank {rank}: group has {size} rank(s), expected {expected}");
        }
    }

    // all_sum of (rank + 1) everywhere is 1 + 2 + ... + size.
    let mine = Array::from_slice(&[(rank + 1) as f32; 4], &[4]);
    let summed = group.all_sum(&mine)?;
    // all_gather of [rank] is [0, 1, ..., size - 1].
    let gathered = group.all_gather(&Array::from_slice(&[rank as f32], &[1]))?;
    eval([&summed, &gathered]).context("evaluating all_sum / all_gather")?;
    let all_sum = summed.as_slice::<f32>().to_vec();
    let all_gather = gathered.as_slice::<f32>().to_vec();

    let expected_sum = (size * (size + 1) / 2) as f32;
    if all_sum.iter().any(|&v| v != expected_sum) {
        bail!("rank {rank}: all_sum gave {all_sum:?}, expected {expected_sum} everywhere");
    }
    let expected_gather: Vec<f32> = (0..size).map(|r| r as f32).collect();
    if all_gather != expected_gather {
        bail!("rank {rank}: all_gather gave {all_gather:?}, expected {expected_gather:?}");
    }

    let received = if size > 1 && group.backend().has_send_recv() {
        Some(ring_exchange(&group)?)
    } else {
        None
    };
    watchdog.disarm();
    Ok(Report {
        backend: group.backend().name(),
        rank,
        size,
        all_sum,
        all_gather,
        received,
    })
}

/// Every rank sends `[10 * rank, 10 * rank + 1]` to the next rank and receives from the
/// previous one. A stream runs its ops in order and `recv` blocks, so even ranks send first
/// and odd ranks receive first (otherwise two neighbours could both sit in `recv`).
fn ring_exchange(group: &Group) -> anyhow::Result<(usize, Vec<f32>)> {
    let (rank, size) = (group.rank(), group.size());
    let next = (rank + 1) % size;
    let prev = (rank + size - 1) % size;
    let payload = Array::from_slice(&[10.0 * rank as f32, 10.0 * rank as f32 + 1.0], &[2]);
    let sent = group.send(&payload, next)?;
    let got = group.recv(&[2], Dtype::Float32, prev)?;
    if rank % 2 == 0 {
        eval([&sent]).context("evaluating send")?;
        eval([&got]).context("evaluating recv")?;
    } else {
        eval([&got]).context("evaluating recv")?;
        eval([&sent]).context("evaluating send")?;
    }
    let values = got.as_slice::<f32>().to_vec();
    let expected = vec![10.0 * prev as f32, 10.0 * prev as f32 + 1.0];
    if values != expected {
        bail!("rank {rank}: received {values:?} from rank {prev}, expected {expected:?}");
    }
    Ok((prev, values))
}
