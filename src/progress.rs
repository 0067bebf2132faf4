//! Progress of long work (loading weights, converting, downloading): a bar on a terminal,
//! and plain `tracing` info lines when stderr is not one (a log file, journald, a pipe), one
//! per 10% step or every few seconds, whichever comes first, so logs show that the work moves
//! without the bar's control characters.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing::info;

/// What a count is of (how it is printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Items(&'static str),
}

/// At most this long between two log lines while work moves.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// One piece of long work, `total` units large.
pub struct Progress {
    what: String,
    unit: Unit,
    total: u64,
    done: u64,
    sink: Sink,
}

enum Sink {
    Bar(indicatif::ProgressBar),
    Log { logged_step: u64, last: Instant },
    Hidden,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new(what: impl Into<String>, total: u64, unit: Unit) -> Self {
        let sink = if std::io::stderr().is_terminal() {
            Sink::Bar(bar(total, unit))
        } else {
            Sink::Log {
                logged_step: 0,
                last: Instant::now(),
            }
        };
        Self::with_sink(what.into(), total, unit, sink)
    }

    /// Reports nothing (work too small to be worth it, or progress turned off).
    pub fn hidden() -> Self {
        Self::with_sink(String::new(), 0, Unit::Items(""), Sink::Hidden)
    }

    fn with_sink(what: String, total: u64, unit: Unit, sink: Sink) -> Self {
        if let Sink::Bar(bar) = &sink {
            bar.set_prefix(what.clone());
        }
        Progress {
            what,
            unit,
            total,
            done: 0,
            sink,
        }
    }

    /// Starts over on a new piece of work of `total` units (a download's next file).
    pub fn restart(&mut self, what: impl Into<String>, total: u64) {
        self.what = what.into();
        self.total = total;
        self.done = 0;
        match &mut self.sink {
            Sink::Bar(bar) => {
                bar.set_prefix(self.what.clone());
                bar.set_length(total);
                bar.set_position(0);
            }
            Sink::Log { logged_step, last } => {
                *logged_step = 0;
                *last = Instant::now();
            }
            Sink::Hidden => {}
        }
    }

    /// Shown after the bar (a terminal only): e.g. the tensor being converted.
    pub fn set_message(&self, message: &str) {
        if let Sink::Bar(bar) = &self.sink {
            bar.set_message(message.to_string());
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        match &mut self.sink {
            Sink::Bar(bar) => bar.inc(n),
            Sink::Log { logged_step, last } => {
                if let Some(step) = log_step(self.done, self.total, *logged_step, last.elapsed()) {
                    *logged_step = step;
                    *last = Instant::now();
                    info!(
                        "{}: {}% ({} of {})",
                        self.what,
                        percent(self.done, self.total),
                        amount(self.done, self.unit),
                        amount(self.total, self.unit)
                    );
                }
            }
            Sink::Hidden => {}
        }
    }

    /// Clears the bar; in log mode says the work is done unless the last line already did.
    pub fn finish(self) {
        match self.sink {
            Sink::Bar(bar) => bar.finish_and_clear(),
            Sink::Log { logged_step, .. } if logged_step < 10 => {
                info!("{}: done ({})", self.what, amount(self.done, self.unit))
            }
            _ => {}
        }
    }
}

fn bar(total: u64, unit: Unit) -> indicatif::ProgressBar {
    let template = match unit {
        Unit::Bytes => "{prefix} {bar:40} {bytes}/{total_bytes} ({eta}) {msg}".to_string(),
        Unit::Items(name) => format!("{{prefix}} {{bar:40}} {{pos}}/{{len}} {name} {{msg}}"),
    };
    let style = indicatif::ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::new(total).with_style(style)
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (done.min(total) as u128 * 100 / total as u128) as u64
}

/// The 10% step (1..=10) to log now, if any: a new step was reached, or `LOG_EVERY` has
/// passed since the last line.
fn log_step(done: u64, total: u64, logged_step: u64, since_last: Duration) -> Option<u64> {
    let step = percent(done, total) / 10;
    (step > logged_step || since_last >= LOG_EVERY).then_some(step.max(logged_step))
}

fn amount(n: u64, unit: Unit) -> String {
    match unit {
        Unit::Bytes if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        Unit::Bytes if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        Unit::Bytes => format!("{n} B"),
        Unit::Items(name) => format!("{n} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_ten_percent_step() {
        let quick = Duration::from_millis(10);
        let mut logged = 0;
        let mut lines = Vec::new();
        for done in (0..=1000).step_by(7).chain([1000]) {
            if let Some(step) = log_step(done, 1000, logged, quick) {
                logged = step;
                lines.push(percent(done, 1000) / 10 * 10);
            }
        }
        assert_eq!(lines, vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    }

    #[test]
    fn logs_slow_work_every_few_seconds() {
        assert_eq!(log_step(1, 1000, 0, Duration::from_millis(100)), None);
        assert_eq!(log_step(1, 1000, 0, LOG_EVERY), Some(0));
        assert_eq!(log_step(2, 0, 0, Duration::ZERO), Some(10));
    }

    #[test]
    fn amounts_read_as_people_write_them() {
        assert_eq!(amount(3 << 29, Unit::Bytes), "1.50 GiB");
        assert_eq!(amount(5 << 20, Unit::Bytes), "5.0 MiB");
        assert_eq!(amount(12, Unit::Items("tensors")), "12 tensors");
    }
}
