//! Service metrics in Prometheus text format: counters with labels and one latency histogram.
//! Hand-written (a few dozen lines) rather than a metrics crate: the set is small and fixed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the processing latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// The metrics of one service process.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    gauges: Mutex<BTreeMap<&'static str, f64>>,
    latency: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Metric names and help texts.
const HELP: [(&str, &str, &str); 11] = [
    (
        "oprun_commands_total",
        "counter",
        "Commands consumed, by kind and result.",
    ),
    (
        "oprun_relay_published_total",
        "counter",
        "Messages the outbox relay settled, by kind (event, job, unroutable, rejected).",
    ),
    (
        "oprun_relay_nacked_total",
        "counter",
        "Publishes of the outbox relay the broker nacked, by kind (event, job).",
    ),
    (
        "oprun_replies_refused_total",
        "counter",
        "Replies not sent because reply_to is neither direct reply-to nor a reply queue.",
    ),
    (
        "oprun_dead_letter_retries_total",
        "counter",
        "Times a batch waited because a dead letter or reply could not be published.",
    ),
    (
        "oprun_reaped_runs_total",
        "counter",
        "Runs completed as failed by the stale-run reaper.",
    ),
    (
        "oprun_reconnects_total",
        "counter",
        "Reconnections to the broker.",
    ),
    (
        "oprun_outbox_backlog",
        "gauge",
        "Events recorded but not yet published.",
    ),
    (
        "oprun_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest unpublished event.",
    ),
    (
        "oprun_consumer_running",
        "gauge",
        "1 while the command consumer is running.",
    ),
    (
        "oprun_command_processing_seconds",
        "histogram",
        "Time from receiving a batch to settling it, per command.",
    ),
];

impl Metrics {
    /// Counts one command of `kind` with `result` (applied, deduplicated, stale, …, or
    /// `dead_lettered:<code>`).
    pub fn command(&self, kind: &str, result: &str) {
        self.add(
            "oprun_commands_total",
            format!("kind=\"{kind}\",result=\"{result}\""),
            1,
        );
    }

    /// Adds `n` to a counter with a preformatted label set.
    pub fn add(&self, name: &'static str, labels: String, n: u64) {
        *self
            .counters
            .lock()
            .unwrap()
            .entry((name, labels))
            .or_default() += n;
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, value: f64) {
        self.gauges.lock().unwrap().insert(name, value);
    }

    /// Records one processing latency.
    pub fn observe_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let mut h = self.latency.lock().unwrap();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The value of a counter (tests).
    pub fn counter(&self, name: &str, labels: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, l), _)| *n == name && l == labels)
            .map(|(_, v)| *v)
            .sum()
    }

    /// Everything, in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap();
        let gauges = self.gauges.lock().unwrap();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match kind {
                "counter" => {
                    for ((n, labels), v) in counters.iter().filter(|((n, _), _)| *n == name) {
                        if labels.is_empty() {
                            let _ = writeln!(out, "{n} {v}");
                        } else {
                            let _ = writeln!(out, "{n}{{{labels}}} {v}");
                        }
                    }
                }
                "gauge" => {
                    let _ = writeln!(out, "{name} {}", gauges.get(name).copied().unwrap_or(0.0));
                }
                _ => {
                    let h = self.latency.lock().unwrap();
                    for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
                    }
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_prometheus_format() {
        let m = Metrics::default();
        m.command("dispatch", "applied");
        m.command("dispatch", "applied");
        m.observe_latency(Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("oprun_commands_total{kind=\"dispatch\",result=\"applied\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("oprun_command_processing_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("oprun_command_processing_seconds_bucket{le=\"0.002\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("oprun_command_processing_seconds_count 1"),
            "{text}"
        );
    }
}
