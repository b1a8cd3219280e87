//! Where a command's time goes inside the service: the `oprun_stage_seconds{stage}` histograms
//! the instances expose on their metrics endpoints, read before and after a phase. The
//! difference of the two readings is the phase's histogram per stage; its percentiles are
//! interpolated linearly inside a bucket (the buckets go from 0.25 ms up, about 1.5× apart).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::LabError;

/// The histogram family read.
const FAMILY: &str = "oprun_stage_seconds_bucket";

/// Cumulative bucket counts per stage: `(upper bound in seconds, count)`, ascending, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    stages: BTreeMap<String, Vec<(f64, u64)>>,
}

impl Reading {
    /// Reads and adds up the histograms of every instance.
    pub async fn scrape(addrs: &[SocketAddr]) -> Result<Self, LabError> {
        let client = reqwest::Client::new();
        let mut reading = Reading::default();
        for addr in addrs {
            let text = client
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| LabError::Failed(format!("reading {addr}/metrics: {e}")))?
                .text()
                .await
                .map_err(|e| LabError::Failed(format!("reading {addr}/metrics: {e}")))?;
            reading.add(&parse(&text));
        }
        Ok(reading)
    }

    fn add(&mut self, other: &Reading) {
        for (stage, buckets) in &other.stages {
            let mine = self.stages.entry(stage.clone()).or_default();
            if mine.is_empty() {
                *mine = buckets.clone();
            } else {
                for ((_, n), (_, m)) in mine.iter_mut().zip(buckets) {
                    *n += m;
                }
            }
        }
    }

    /// What was observed between `before` and `self`, per stage: `(p50, p99)` in milliseconds
    /// and the number of observations; stages with none are left out.
    pub fn since(&self, before: &Reading) -> BTreeMap<String, StageFigures> {
        let mut out = BTreeMap::new();
        for (stage, after) in &self.stages {
            let earlier = before.stages.get(stage);
            let delta: Vec<(f64, u64)> = after
                .iter()
                .enumerate()
                .map(|(i, (le, n))| {
                    let was = earlier.and_then(|b| b.get(i)).map_or(0, |(_, m)| *m);
                    (*le, n.saturating_sub(was))
                })
                .collect();
            let count = delta.last().map_or(0, |(_, n)| *n);
            if count == 0 {
                continue;
            }
            out.insert(
                stage.clone(),
                StageFigures {
                    p50_ms: quantile(&delta, 0.5) * 1e3,
                    p99_ms: quantile(&delta, 0.99) * 1e3,
                    count,
                },
            );
        }
        out
    }
}

/// One stage's figures in a phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageFigures {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Observations.
    pub count: u64,
}

/// The `oprun_stage_seconds_bucket` samples of an exposition.
fn parse(text: &str) -> Reading {
    let mut stages: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(FAMILY) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let (Some(stage), Some(le)) = (label("stage"), label("le")) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        stages.entry(stage).or_default().push((le, n));
    }
    for buckets in stages.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Reading { stages }
}

/// The `q` quantile of cumulative buckets, interpolated inside its bucket (the last finite
/// bound when it falls in `+Inf`).
fn quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0, |(_, n)| *n) as f64;
    let rank = q * total;
    let mut lower = (0.0, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let inside = (n - lower.1) as f64;
            let share = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * share.clamp(0.0, 1.0);
        }
        lower = (le, n);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_difference_of_two_readings_gives_each_stages_percentiles() {
        let before = parse(
            "oprun_stage_seconds_bucket{stage=\"commit\",le=\"0.001\"} 10\n\
             oprun_stage_seconds_bucket{stage=\"commit\",le=\"0.002\"} 10\n\
             oprun_stage_seconds_bucket{stage=\"commit\",le=\"+Inf\"} 10\n",
        );
        let after = parse(
            "# HELP oprun_stage_seconds Where a command's time goes.\n\
             oprun_stage_seconds_bucket{stage=\"commit\",le=\"0.001\"} 10\n\
             oprun_stage_seconds_bucket{stage=\"commit\",le=\"0.002\"} 110\n\
             oprun_stage_seconds_bucket{stage=\"commit\",le=\"+Inf\"} 110\n\
             oprun_stage_seconds_bucket{stage=\"settle\",le=\"0.001\"} 0\n\
             oprun_stage_seconds_bucket{stage=\"settle\",le=\"+Inf\"} 0\n",
        );
        let figures = after.since(&before);
        let commit = figures["commit"];
        assert_eq!(commit.count, 100);
        assert!((commit.p50_ms - 1.5).abs() < 1e-9, "{commit:?}");
        assert!((commit.p99_ms - 1.99).abs() < 1e-9, "{commit:?}");
        assert!(
            !figures.contains_key("settle"),
            "no observation, no figures"
        );
    }

    #[test]
    fn instances_add_up() {
        let one = "oprun_stage_seconds_bucket{stage=\"commit\",le=\"0.001\"} 1\n\
                   oprun_stage_seconds_bucket{stage=\"commit\",le=\"+Inf\"} 2\n";
        let mut sum = parse(one);
        sum.add(&parse(one));
        assert_eq!(sum.stages["commit"], vec![(0.001, 2), (f64::INFINITY, 4)]);
    }
}
