//! The scrape-time metrics of a multi-rank run's followers, read from the cluster status of
//! the scrape in progress: the control plane's round trip to each rank (rank 0's heartbeat
//! `Ping` and the follower's `Pong`) and each rank's engine steps as it last reported them.
//! Rank 0's own steps are the `engine_step_duration` histogram.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::Rank;
use crate::cluster::RankStatus;

/// Encodes the follower timings [`Metrics::render`](super::Metrics::render) stored.
#[derive(Debug)]
pub(super) struct RankCollector(pub Arc<Mutex<Vec<RankStatus>>>);

/// One metric family, a sample per rank that has a value.
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    (name, help, unit, kind): (&str, &str, Option<&Unit>, MetricType),
    samples: impl Iterator<Item = (u32, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = e.encode_descriptor(name, help, unit, kind)?;
    for (rank, m) in samples {
        m.encode(metric.encode_family(&Rank { rank })?)?;
    }
    Ok(())
}

impl Collector for RankCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ranks = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let seconds = Unit::Seconds;
        let e = &mut e;
        let followers = || ranks.iter().filter(|r| r.rank > 0);
        family(
            e,
            (
                "control_rtt",
                "Last control-plane round trip from rank 0 to the rank and back (heartbeat ping)",
                Some(&seconds),
                MetricType::Gauge,
            ),
            followers().filter_map(|r| {
                let us = r.control_rtt_us?;
                Some((r.rank as u32, ConstGauge::new(us as f64 / 1e6)))
            }),
        )?;
        family(
            e,
            (
                "rank_steps",
                "Engine steps a follower rank has run (as of its last heartbeat answer)",
                None,
                MetricType::Counter,
            ),
            followers().filter_map(|r| Some((r.rank as u32, ConstCounter::new(r.steps?.count)))),
        )?;
        family(
            e,
            (
                "rank_step_time",
                "Time a follower rank has spent in engine steps (as of its last heartbeat answer)",
                Some(&seconds),
                MetricType::Counter,
            ),
            followers().filter_map(|r| {
                let s = r.steps?;
                Some((r.rank as u32, ConstCounter::new(s.total_us as f64 / 1e6)))
            }),
        )?;
        family(
            e,
            (
                "rank_last_step",
                "A follower rank's last engine step",
                Some(&seconds),
                MetricType::Gauge,
            ),
            followers().filter_map(|r| {
                let s = r.steps?;
                Some((r.rank as u32, ConstGauge::new(s.last_us as f64 / 1e6)))
            }),
        )?;
        Ok(())
    }
}
