//! [`ClusterStatus`]: what rank 0 knows about every rank, shared (behind an `Arc`) by the
//! control-plane threads that update it, the startup code that waits on it, and `/health`,
//! which serialises a [`ClusterStatus::snapshot`].

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use super::protocol::StepTimes;

/// One rank's lifecycle as rank 0 sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum RankState {
    /// Not connected to the control plane yet.
    Connecting,
    /// Connected and accepted; loading its shard.
    Loading,
    /// Shard loaded; executing operations.
    Ready,
    /// Gone (died, went silent, or reported a failure): the run is over.
    Lost(String),
}

/// One rank, as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankStatus {
    pub rank: usize,
    /// The host part of the rank's first `MLX_HOSTFILE` address (ring); under nccl rank 0's
    /// `NCCL_HOST_IP`, and a follower's address as seen when it connects.
    pub host: String,
    /// What the rank holds (`layers 0-14`, `tensor shard 1/2`, ...), once loaded.
    pub shard: Option<String>,
    #[serde(flatten)]
    pub state: RankState,
    /// A follower's last control-plane round trip (rank 0 -> rank -> rank 0), once measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_rtt_us: Option<u64>,
    /// A follower's engine steps so far (as of its last `Pong`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<StepTimes>,
}

/// A consistent copy of every rank's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub parallel: String,
    pub ranks: Vec<RankStatus>,
}

impl Snapshot {
    /// Every rank is loaded and none is lost.
    pub fn healthy(&self) -> bool {
        self.ranks.iter().all(|r| r.state == RankState::Ready)
    }
}

/// Shared, updated by the control plane; a condition variable wakes startup waiters.
#[derive(Debug)]
pub struct ClusterStatus {
    parallel: String,
    ranks: Mutex<Vec<RankStatus>>,
    changed: Condvar,
}

impl ClusterStatus {
    /// `hosts`: each rank's host, as far as known (see [`Topology::rank_hosts`]).
    ///
    /// [`Topology::rank_hosts`]: crate::dist::Topology::rank_hosts
    pub fn new(hosts: &[String], parallel: String) -> Self {
        let ranks = hosts
            .iter()
            .enumerate()
            .map(|(rank, host)| RankStatus {
                rank,
                host: host.clone(),
                shard: None,
                control_rtt_us: None,
                steps: None,
                state: if rank == 0 {
                    RankState::Loading
                } else {
                    RankState::Connecting
                },
            })
            .collect();
        ClusterStatus {
            parallel,
            ranks: Mutex::new(ranks),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<RankStatus>> {
        // A panic elsewhere while holding the lock leaves plain data; keep serving it.
        self.ranks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            parallel: self.parallel.clone(),
            ranks: self.lock().clone(),
        }
    }

    pub fn healthy(&self) -> bool {
        self.lock().iter().all(|r| r.state == RankState::Ready)
    }

    pub fn host(&self, rank: usize) -> String {
        self.lock()
            .get(rank)
            .map(|r| r.host.clone())
            .unwrap_or_default()
    }

    /// The first lost rank and why, if any.
    pub fn lost(&self) -> Option<(usize, String)> {
        self.lock().iter().find_map(|r| match &r.state {
            RankState::Lost(why) => Some((r.rank, why.clone())),
            _ => None,
        })
    }

    /// Moves `rank` to `state` (a lost rank stays lost) and wakes the waiters.
    pub fn set(&self, rank: usize, state: RankState, shard: Option<String>) {
        let mut ranks = self.lock();
        if let Some(r) = ranks.get_mut(rank) {
            if !matches!(r.state, RankState::Lost(_)) {
                r.state = state;
            }
            if shard.is_some() {
                r.shard = shard;
            }
        }
        drop(ranks);
        self.changed.notify_all();
    }

    /// Fills in a rank's host where the environment did not name it.
    pub fn learn_host(&self, rank: usize, host: String) {
        if let Some(r) = self.lock().get_mut(rank).filter(|r| r.host.is_empty()) {
            r.host = host;
        }
    }

    /// A follower's round trip and step times, from its answer to a `Ping`.
    pub fn set_timing(&self, rank: usize, rtt: std::time::Duration, steps: StepTimes) {
        if let Some(r) = self.lock().get_mut(rank) {
            r.control_rtt_us = Some(rtt.as_micros() as u64);
            r.steps = Some(steps);
        }
    }

    /// Blocks until `done` holds for the ranks, a rank is lost (`Err` with it), or the
    /// deadline passes (`Ok(false)`).
    pub fn wait_until(
        &self,
        deadline: Instant,
        done: impl Fn(&[RankStatus]) -> bool,
    ) -> Result<bool, (usize, String)> {
        let mut ranks = self.lock();
        loop {
            if let Some(lost) = ranks.iter().find_map(|r| match &r.state {
                RankState::Lost(why) => Some((r.rank, why.clone())),
                _ => None,
            }) {
                return Err(lost);
            }
            if done(&ranks) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            ranks = self
                .changed
                .wait_timeout(ranks, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ranks whose state `accept` refuses (rank and host), for "rank 2 (10.0.0.3) did not ..."
    /// messages.
    pub fn ranks_not(&self, accept: impl Fn(&RankState) -> bool) -> Vec<(usize, String)> {
        self.lock()
            .iter()
            .filter(|r| !accept(&r.state))
            .map(|r| (r.rank, r.host.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn hosts() -> Vec<String> {
        vec!["10.0.0.1".into(), "10.0.0.2".into()]
    }

    #[test]
    fn healthy_only_when_every_rank_is_ready() {
        let s = ClusterStatus::new(&hosts(), "tensor".into());
        assert!(!s.healthy());
        s.set(0, RankState::Ready, Some("tensor shard 0/2".into()));
        s.set(1, RankState::Ready, Some("tensor shard 1/2".into()));
        assert!(s.healthy());
        s.set(1, RankState::Lost("connection closed".into()), None);
        s.set(1, RankState::Ready, None);
        let snap = s.snapshot();
        assert!(!snap.healthy());
        assert_eq!(snap.ranks[1].host, "10.0.0.2");
        assert_eq!(s.lost(), Some((1, "connection closed".into())));
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["ranks"][1]["state"], "lost");
        assert_eq!(json["ranks"][1]["reason"], "connection closed");
        assert_eq!(json["ranks"][0]["shard"], "tensor shard 0/2");
    }

    #[test]
    fn waiters_wake_on_change_and_on_loss() {
        let s = Arc::new(ClusterStatus::new(&hosts(), "pipeline".into()));
        let far = Instant::now() + Duration::from_secs(30);
        let t = {
            let s = s.clone();
            std::thread::spawn(move || {
                s.wait_until(far, |r| r.iter().all(|r| r.state == RankState::Ready))
            })
        };
        s.set(0, RankState::Ready, None);
        s.set(1, RankState::Ready, None);
        assert_eq!(t.join().unwrap(), Ok(true));

        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(s.wait_until(soon, |_| false), Ok(false));
        s.set(1, RankState::Lost("silent for 3s".into()), None);
        assert_eq!(
            s.wait_until(far, |_| false),
            Err((1, "silent for 3s".into()))
        );
    }
}
