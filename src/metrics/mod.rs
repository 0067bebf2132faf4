//! `kooka serve`'s Prometheus metrics (`GET /metrics`), built with `prometheus-client` and
//! served in the Prometheus text format (0.0.4). Every name starts with `kooka_` and carries
//! its unit (`_seconds`, `_bytes`, `_tokens`); counters end in `_total`.
//!
//! Three kinds of source feed one registry:
//! - [`HttpMetrics`]: requests by route pattern and status, in-flight requests, request
//!   duration; recorded by the HTTP middleware (`server/request_log.rs`).
//! - [`GenerationMetrics`]: time to first token, inter-token latency, end-to-end latency,
//!   prompt / cached / generated tokens, engine step time; recorded by the runtime's worker
//!   on the MLX thread (the metrics are atomics: only numbers cross threads).
//! - `status.rs`: gauges and the prefix cache's counters read at scrape time from the
//!   [`RuntimeStatus`] snapshot the worker publishes after every round (the same one
//!   `/health` reports, MLX memory included).
//! - `ranks.rs`: a multi-rank run's follower timings (control-plane round trip, engine
//!   steps), read at scrape time from the cluster status.

mod ranks;
mod status;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::RankStatus;
use crate::runtime::RuntimeStatus;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of `kooka_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The matched route pattern (`/v1/models/{id:.+}`), `unmatched` for unknown paths:
    /// never the raw path, so that the series stay few.
    pub route: String,
    pub status: u16,
}

/// Labels of `kooka_http_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: String,
}

/// Labels of `kooka_engine_step_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rank {
    pub rank: u32,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_duration() -> Histogram {
    // 1 ms .. ~4.4 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

fn step_duration() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// What the HTTP middleware records.
#[derive(Debug)]
pub struct HttpMetrics {
    pub requests: Family<RouteStatus, Counter>,
    pub in_flight: Gauge,
    pub duration: HistogramFamily<Route>,
}

/// What the runtime's worker records (per request and per engine step).
#[derive(Debug)]
pub struct GenerationMetrics {
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_latency: Histogram,
    pub prompt_tokens: Counter,
    pub cached_prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub step_duration: HistogramFamily<Rank>,
}

impl GenerationMetrics {
    /// One engine step of this process (rank 0 serves HTTP, so only its steps are here).
    pub fn observe_step(&self, took: Duration) {
        self.step_duration
            .get_or_create(&Rank { rank: 0 })
            .observe(took.as_secs_f64());
    }
}

/// Every metric of the server and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The runtime snapshot of the scrape in progress (read by `status.rs`'s collector).
    status: Arc<Mutex<RuntimeStatus>>,
    /// The ranks of the scrape in progress (empty on one rank; read by `ranks.rs`).
    ranks: Arc<Mutex<Vec<RankStatus>>>,
    /// One scrape at a time: the snapshot above belongs to it.
    scrape: Mutex<()>,
    pub http: HttpMetrics,
    pub generation: GenerationMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let http = HttpMetrics {
            requests: Family::default(),
            in_flight: Gauge::default(),
            duration: Family::new_with_constructor(http_duration),
        };
        let generation = GenerationMetrics {
            // 1 ms .. ~65 s.
            time_to_first_token: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 ms .. ~8 s.
            inter_token_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            // 10 ms .. ~5.5 min.
            e2e_latency: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            prompt_tokens: Counter::default(),
            cached_prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            step_duration: Family::new_with_constructor(step_duration),
        };
        let status = Arc::new(Mutex::new(RuntimeStatus::default()));
        let mut registry = Registry::with_prefix("kooka");
        let tokens = || Unit::Other("tokens".into());
        registry.register(
            "http_requests",
            "HTTP requests answered, by matched route pattern and status code",
            http.requests.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served (streams count until their last byte)",
            http.in_flight.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request duration, until the response's last byte, by matched route pattern",
            Unit::Seconds,
            http.duration.clone(),
        );
        registry.register_with_unit(
            "time_to_first_token",
            "Time from a generation's submission (queueing included) to its first token",
            Unit::Seconds,
            generation.time_to_first_token.clone(),
        );
        registry.register_with_unit(
            "inter_token_latency",
            "Time between consecutive tokens of one generation",
            Unit::Seconds,
            generation.inter_token_latency.clone(),
        );
        registry.register_with_unit(
            "e2e_request_latency",
            "Time from a generation's submission to its last token (finished generations)",
            Unit::Seconds,
            generation.e2e_latency.clone(),
        );
        registry.register_with_unit(
            "prompt",
            "Prompt tokens of the generations started",
            tokens(),
            generation.prompt_tokens.clone(),
        );
        registry.register_with_unit(
            "prompt_cached",
            "Prompt tokens read from the prefix cache instead of prefilled",
            tokens(),
            generation.cached_prompt_tokens.clone(),
        );
        registry.register_with_unit(
            "generation",
            "Tokens generated (an end-of-sequence token included, as usage counts it)",
            tokens(),
            generation.generation_tokens.clone(),
        );
        registry.register_with_unit(
            "engine_step_duration",
            "Duration of one engine step (prefill chunk and/or decode of the batch), by rank",
            Unit::Seconds,
            generation.step_duration.clone(),
        );
        registry.register_collector(Box::new(status::StatusCollector(status.clone())));
        let ranks = Arc::new(Mutex::new(Vec::new()));
        registry.register_collector(Box::new(ranks::RankCollector(ranks.clone())));
        Metrics {
            registry,
            status,
            ranks,
            scrape: Mutex::new(()),
            http,
            generation,
        }
    }

    /// The exposition text, with the gauges read from `status` and, in a multi-rank run,
    /// the followers' timings from `ranks`.
    pub fn render(&self, status: &RuntimeStatus, ranks: Vec<RankStatus>) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = *status;
        *self.ranks.lock().unwrap_or_else(|e| e.into_inner()) = ranks;
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("encoding the metrics: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NAME{labels} VALUE` lines as (name with labels, value).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("a sample line");
                (k.to_string(), v.parse().expect("a number"))
            })
            .collect()
    }

    fn value(text: &str, key: &str) -> f64 {
        samples(text)
            .into_iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{key} missing in:\n{text}"))
            .1
    }

    #[test]
    fn names_carry_prefix_unit_and_total() {
        let m = Metrics::new();
        m.http
            .requests
            .get_or_create(&RouteStatus {
                route: "/health".into(),
                status: 200,
            })
            .inc();
        m.generation.prompt_tokens.inc_by(7);
        m.generation.time_to_first_token.observe(0.003);
        let status = RuntimeStatus {
            waiting: 2,
            running: 1,
            kv_budget_tokens: 1000,
            ..Default::default()
        };
        let text = m.render(&status, Vec::new());
        assert_eq!(
            value(
                &text,
                r#"kooka_http_requests_total{route="/health",status="200"}"#
            ),
            1.0
        );
        assert_eq!(value(&text, "kooka_prompt_tokens_total"), 7.0);
        assert_eq!(value(&text, "kooka_time_to_first_token_seconds_count"), 1.0);
        // 0.003 s falls in the 4 ms bucket, not in the 2 ms one.
        assert_eq!(
            value(
                &text,
                r#"kooka_time_to_first_token_seconds_bucket{le="0.002"}"#
            ),
            0.0
        );
        assert_eq!(
            value(
                &text,
                r#"kooka_time_to_first_token_seconds_bucket{le="0.004"}"#
            ),
            1.0
        );
        assert_eq!(value(&text, "kooka_requests_waiting"), 2.0);
        assert_eq!(value(&text, "kooka_requests_running"), 1.0);
        assert_eq!(value(&text, "kooka_kv_budget_tokens"), 1000.0);
        assert!(
            text.contains("# TYPE kooka_prefix_cache_hits_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }
}
