//! The output: a table for people, then one JSON line for machines (always the last line).

use serde_json::{json, Value};

use super::baseline::BaselineResult;
use super::baseline_pg::PgBaselineResult;
use super::driver::DriveResult;
use super::kinds::Kinds;
use super::percentiles::Percentiles;
use super::server::Server;
use super::stages::StageFigures;
use super::usage::Usage;

/// A measured service phase.
#[derive(Debug)]
pub struct Phase {
    /// What the driver measured.
    pub drive: DriveResult,
    /// Its latency percentiles.
    pub latency: Percentiles,
    /// CPU and database during the phase.
    pub usage: Usage,
    /// The rate asked for (steady only).
    pub target_rate: Option<f64>,
    /// Publish → the start of the transaction that applied the command (the event's `time`).
    pub to_transaction: Percentiles,
    /// The start of that transaction → the event at the subscriber.
    pub from_transaction: Percentiles,
    /// The service's own stages during the phase (steady only), by stage name.
    pub stages: std::collections::BTreeMap<String, StageFigures>,
}

impl Phase {
    /// Wraps a drive result.
    pub fn new(drive: DriveResult, usage: Usage, target_rate: Option<f64>) -> Self {
        Self {
            latency: Percentiles::of(&drive.latencies.end_to_end),
            to_transaction: Percentiles::of(&drive.latencies.to_transaction),
            from_transaction: Percentiles::of(&drive.latencies.from_transaction),
            stages: Default::default(),
            drive,
            usage,
            target_rate,
        }
    }

    /// Where a command's time went, `(name, what, p50 ms, p99 ms)`, in the order of its path:
    /// the bench's own measures around the transaction's start and the service's stages. Each
    /// line is a distribution of its own (percentiles do not add up); `queue_wait` is derived,
    /// percentile by percentile: publish → transaction start less the batch window.
    pub fn breakdown(&self) -> Vec<(&'static str, &'static str, f64, f64)> {
        let stage = |name: &str| self.stages.get(name).map(|f| (f.p50_ms, f.p99_ms));
        let mut out = vec![(
            "end_to_end",
            "end to end: publish → event at the subscriber (bench)",
            self.latency.p50,
            self.latency.p99,
        )];
        if self.drive.latencies.to_transaction.is_empty() {
            return out;
        }
        out.push((
            "to_transaction",
            "publish → transaction start (bench, the event's time)",
            self.to_transaction.p50,
            self.to_transaction.p99,
        ));
        if let Some((w50, w99)) = stage("batch_window") {
            out.push((
                "queue_wait",
                "  queue wait (derived: the line above − batch window)",
                (self.to_transaction.p50 - w50).max(0.0),
                (self.to_transaction.p99 - w99).max(0.0),
            ));
        }
        for (name, what) in [
            ("batch_window", "  batch window (service)"),
            (
                "transaction",
                "lock and transaction: start → COMMIT sent (service)",
            ),
            ("commit", "commit (service)"),
            (
                "relay_pickup",
                "relay pick-up: commit → relay reads the event (service)",
            ),
            (
                "relay_publish",
                "event publish and confirm: read → round confirmed (service)",
            ),
        ] {
            if let Some((p50, p99)) = stage(name) {
                out.push((name, what, p50, p99));
            }
        }
        out.push((
            "from_transaction",
            "transaction start → event at the subscriber (bench)",
            self.from_transaction.p50,
            self.from_transaction.p99,
        ));
        if let Some((p50, p99)) = stage("settle") {
            out.push((
                "settle",
                "settle: replies confirmed, then ack (service; not on the event's path)",
                p50,
                p99,
            ));
        }
        out
    }
}

/// The service workload again, on a database preloaded with history.
#[derive(Debug)]
pub struct Loaded {
    /// What was preloaded.
    pub preloaded: super::preload::Preloaded,
    /// The phase on the loaded database.
    pub phase: Phase,
}

/// Everything one `oprun-lab bench` measured.
#[derive(Debug)]
pub struct Report {
    /// Service instances.
    pub instances: usize,
    /// Prefetch of the service and the baseline consumer.
    pub prefetch: u16,
    /// In-flight bound of the baseline and the service phase.
    pub in_flight: u64,
    /// The baseline.
    pub baseline: BaselineResult,
    /// CPU during the baseline.
    pub baseline_usage: Usage,
    /// The baseline that does the service's Postgres work, with its CPU, or why it failed.
    pub pg_baseline: Result<(PgBaselineResult, Usage), String>,
    /// As fast as possible.
    pub service: Phase,
    /// At a fixed rate, or why it did not finish (e.g. the broker restarted under it).
    pub steady: Result<Phase, String>,
    /// Peak resident memory per instance, MiB.
    pub peak_rss_mb: Vec<f64>,
    /// Messages in the dead-letter queue at the end.
    pub dead_lettered: u32,
    /// The kinds phase (`--kind-runs`), or why it did not finish.
    pub kinds: Option<Result<Kinds, String>>,
    /// The loaded phase (`--preload-runs`).
    pub loaded: Option<Loaded>,
    /// The PostgreSQL server measured.
    pub server: Option<Server>,
}

/// The figures of a second server's report carried into the JSON line, prefixed with its label.
const SECOND_SERVER_KEYS: [&str; 11] = [
    "baseline_msgs_per_s",
    "commands_per_s",
    "ratio",
    "ratio_pg",
    "p99_ms",
    "steady_rate",
    "steady_p99_ms",
    "pg_cpu_ms_per_command",
    "progress_hot_ratio",
    "baseline_pg_commands_per_s",
    "postgres_autovacuum",
];

impl Report {
    /// Largest peak RSS over the instances.
    pub fn peak_rss(&self) -> f64 {
        self.peak_rss_mb.iter().copied().fold(0.0, f64::max)
    }

    /// commands_per_s / baseline_msgs_per_s.
    pub fn ratio(&self) -> f64 {
        self.service.drive.rate() / self.baseline.rate().max(1e-9)
    }

    /// commands_per_s / the Postgres baseline's commands per second.
    pub fn ratio_pg(&self) -> Option<f64> {
        let (pg, _) = self.pg_baseline.as_ref().ok()?;
        Some(self.service.drive.rate() / pg.rate().max(1e-9))
    }

    /// loaded_commands_per_s / commands_per_s (same workload, loaded database ÷ empty one).
    pub fn loaded_ratio(&self) -> Option<f64> {
        let loaded = self.loaded.as_ref()?;
        Some(loaded.phase.drive.rate() / self.service.drive.rate().max(1e-9))
    }

    /// The human table and notes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if let Some(server) = &self.server {
            out.push('\n');
            out.push_str(&server.line());
        }
        let line = |out: &mut String, cols: [String; 9]| {
            out.push_str(&format!(
                "{:<22} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8]
            ));
        };
        let s = |x: &str| x.to_owned();
        line(
            &mut out,
            [
                s("phase"),
                s("messages"),
                s("seconds"),
                s("per_s"),
                s("p50_ms"),
                s("p95_ms"),
                s("p99_ms"),
                s("max_ms"),
                s("rss_mb"),
            ],
        );
        let b = &self.baseline;
        let dash = || s("-");
        // A baseline's row: its rate, no latencies.
        let rate_row =
            |out: &mut String, name: &str, n: u64, secs: Option<f64>, rate: Option<f64>| {
                let mut cols = [(); 9].map(|_| dash());
                cols[0] = name.to_owned();
                if let (Some(secs), Some(rate)) = (secs, rate) {
                    cols[1] = n.to_string();
                    cols[2] = format!("{secs:.2}");
                    cols[3] = format!("{rate:.0}");
                }
                line(out, cols);
            };
        let (publish, all) = (b.publish_elapsed.as_secs_f64(), b.elapsed.as_secs_f64());
        rate_row(
            &mut out,
            "baseline publish only",
            b.messages,
            Some(publish),
            Some(b.publish_rate()),
        );
        rate_row(&mut out, "baseline", b.messages, Some(all), Some(b.rate()));
        match &self.pg_baseline {
            Ok((pg, _)) => rate_row(
                &mut out,
                "baseline postgres",
                pg.commands,
                Some(pg.elapsed.as_secs_f64()),
                Some(pg.rate()),
            ),
            Err(_) => rate_row(&mut out, "baseline postgres (failed)", 0, None, None),
        }
        for (name, p) in [
            (format!("service x{}", self.instances), Some(&self.service)),
            (
                self.steady.as_ref().map_or(s("steady (failed)"), |p| {
                    format!("steady @{:.0}/s", p_rate(p))
                }),
                self.steady.as_ref().ok(),
            ),
            (
                self.loaded.as_ref().map_or(s("loaded"), |l| {
                    format!("loaded +{}k runs", l.preloaded.runs / 1000)
                }),
                self.loaded.as_ref().map(|l| &l.phase),
            ),
        ] {
            if name.starts_with("loaded") && p.is_none() {
                continue;
            }
            let Some(p) = p else {
                line(
                    &mut out,
                    [
                        name,
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                    ],
                );
                continue;
            };
            line(
                &mut out,
                [
                    name,
                    p.drive.commands.to_string(),
                    format!("{:.2}", p.drive.elapsed.as_secs_f64()),
                    format!("{:.0}", p.drive.rate()),
                    format!("{:.1}", p.latency.p50),
                    format!("{:.1}", p.latency.p95),
                    format!("{:.1}", p.latency.p99),
                    format!("{:.1}", p.latency.max),
                    format!("{:.1}", self.peak_rss()),
                ],
            );
        }
        out.push('\n');
        if let (Some(l), Some(ratio)) = (&self.loaded, self.loaded_ratio()) {
            let p = &l.preloaded;
            out.push_str(&format!(
                "loaded ÷ empty: {ratio:.2} (preloaded {} runs, {} active, {} events, {} inbox rows in {:.0} s)\n",
                p.runs, p.active, p.events, p.inbox, p.seconds
            ));
        }
        match &self.pg_baseline {
            Ok((pg, _)) => out.push_str(&format!(
                "ratio service/baseline postgres (ratio_pg): {:.2}   ({} transactions, {} events of {:.0} B on average)\n",
                self.ratio_pg().unwrap_or(0.0),
                pg.batches,
                pg.events,
                pg.event_bytes
            )),
            Err(e) => out.push_str(&format!("baseline postgres: did not finish: {e}\n")),
        }
        out.push_str(&format!(
            "ratio service/baseline: {:.2}   peak RSS per instance (VmHWM, MiB): {}\n",
            self.ratio(),
            self.peak_rss_mb
                .iter()
                .map(|m| format!("{m:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.push_str(&format!(
            "baseline: {} B messages, prefetch {}, in-flight bound {}; service: prefetch {}, in-flight bound {}\n",
            b.bytes, self.prefetch, self.in_flight, self.prefetch, self.in_flight
        ));
        if let Err(e) = &self.steady {
            out.push_str(&format!("steady: did not finish: {e}\n"));
        }
        for (name, p) in [
            ("service", Some(&self.service)),
            ("steady", self.steady.as_ref().ok()),
        ] {
            let Some(p) = p else { continue };
            let c = p.drive.counts;
            out.push_str(&format!(
                "{name}: {} replies ({} created, {} deduplicated, {} extra runs, {} refused), {} events, {} latency samples, {} commands without event",
                c.replies, c.created, c.deduplicated, c.extra_runs, c.rejected, c.events,
                p.drive.latencies.end_to_end.len(), c.no_event
            ));
            if p.target_rate.is_some() {
                out.push_str(&format!(
                    ", max publish lag {:.1} ms",
                    p.drive.max_publish_lag.as_secs_f64() * 1e3
                ));
            }
            out.push('\n');
        }
        out.push_str("cpu (cores of ");
        out.push_str(&self.service.usage.cores.to_string());
        out.push_str(
            "):   oprun  postgres  rabbitmq  bench  other  machine  iowait  commits/s  wal_MiB/s\n",
        );
        for (name, u) in [
            ("baseline", Some(&self.baseline_usage)),
            (
                "baseline postgres",
                self.pg_baseline.as_ref().ok().map(|(_, u)| u),
            ),
            ("service", Some(&self.service.usage)),
            ("steady", self.steady.as_ref().ok().map(|p| &p.usage)),
        ] {
            let Some(u) = u else { continue };
            out.push_str(&format!(
                "  {name:<18} {:>5.2} {:>9.2} {:>9.2} {:>6.2} {:>6.2} {:>8.2} {:>7.2} {:>10.0} {:>10.1}\n",
                u.oprun,
                u.postgres,
                u.rabbitmq,
                u.bench,
                (u.machine - u.oprun - u.postgres - u.rabbitmq - u.bench).max(0.0),
                u.machine,
                u.iowait,
                u.commits_per_s,
                u.wal_mb_per_s
            ));
        }
        if let Ok(p) = &self.steady {
            let lines = p.breakdown();
            if lines.len() > 1 {
                out.push_str(&format!(
                    "steady latency, where it goes ({} commands; each line its own distribution):\n{:<76} {:>8} {:>8}\n",
                    p.drive.commands, "stage", "p50_ms", "p99_ms"
                ));
                for (_, what, p50, p99) in lines {
                    out.push_str(&format!("{what:<76} {p50:>8.1} {p99:>8.1}\n"));
                }
            }
        }
        match &self.kinds {
            Some(Ok(k)) => {
                out.push_str(&kinds_table(k));
                out.push_str(&writes_table(k));
            }
            Some(Err(e)) => out.push_str(&format!("kinds: did not finish: {e}\n")),
            None => {}
        }
        out.push_str(&format!(
            "note: the service phase keeps {} commands in flight, so its latencies are mostly queueing \
             (about in-flight / rate); the steady phase is the latency measurement\n",
            self.in_flight
        ));
        let nacks = b.nacks
            + self.pg_baseline.as_ref().map_or(0, |(pg, _)| pg.nacks)
            + self.service.drive.nacks
            + self.steady.as_ref().map_or(0, |p| p.drive.nacks);
        if nacks > 0 || self.dead_lettered > 0 {
            out.push_str(&format!(
                "WARNING: {nacks} publishes nacked, {} commands dead-lettered\n",
                self.dead_lettered
            ));
        }
        out
    }

    /// The closing JSON line: the documented keys first, in the documented order, then extras.
    /// (`serde_json` here sorts object keys, so the line is written field by field.)
    #[cfg(test)]
    pub fn json_line(&self) -> String {
        Self::json_lines(std::slice::from_ref(self))
    }

    /// The closing JSON line of one run on several servers: the first report's fields, then
    /// the main figures of each other one prefixed with its server's label (`machine_ratio`, …).
    pub fn json_lines(reports: &[Report]) -> String {
        let mut fields: Vec<(String, Value)> = Vec::new();
        for (i, report) in reports.iter().enumerate() {
            let own = report.json_fields();
            if i == 0 {
                fields.extend(own.into_iter().map(|(k, v)| (k.to_owned(), v)));
                continue;
            }
            let label = report.server.as_ref().map_or("other", |s| s.target.label());
            fields.push((format!("{label}_postgres"), json!(label)));
            fields.extend(
                own.into_iter()
                    .filter(|(k, _)| SECOND_SERVER_KEYS.contains(k))
                    .map(|(k, v)| (format!("{label}_{k}"), v)),
            );
        }
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// The JSON fields: the documented keys first, in the documented order, then extras.
    fn json_fields(&self) -> Vec<(&'static str, Value)> {
        let r = |x: f64, digits: i32| {
            let f = 10f64.powi(digits);
            json!((x * f).round() / f)
        };
        let steady = self.steady.as_ref().ok();
        let or_null = |p: Option<&Phase>, f: &dyn Fn(&Phase) -> Value| p.map_or(Value::Null, f);
        let fields: Vec<(&str, Value)> = vec![
            ("baseline_msgs_per_s", r(self.baseline.rate(), 1)),
            ("commands_per_s", r(self.service.drive.rate(), 1)),
            ("ratio", r(self.ratio(), 3)),
            ("p50_ms", r(self.service.latency.p50, 2)),
            ("p99_ms", r(self.service.latency.p99, 2)),
            ("steady_rate", or_null(steady, &|p| r(p_rate(p), 1))),
            ("steady_p99_ms", or_null(steady, &|p| r(p.latency.p99, 2))),
            ("peak_rss_mb", r(self.peak_rss(), 1)),
            ("commands", json!(self.service.drive.commands)),
            ("instances", json!(self.instances)),
            ("p95_ms", r(self.service.latency.p95, 2)),
            (
                "steady_commands",
                or_null(steady, &|p| json!(p.drive.commands)),
            ),
            (
                "steady_achieved_per_s",
                or_null(steady, &|p| r(p.drive.rate(), 1)),
            ),
            ("steady_p50_ms", or_null(steady, &|p| r(p.latency.p50, 2))),
            ("steady_p95_ms", or_null(steady, &|p| r(p.latency.p95, 2))),
            ("dead_lettered", json!(self.dead_lettered)),
            ("ratio_pg", self.ratio_pg().map_or(Value::Null, |x| r(x, 3))),
            (
                "baseline_pg_commands_per_s",
                self.pg_baseline
                    .as_ref()
                    .map_or(Value::Null, |(pg, _)| r(pg.rate(), 1)),
            ),
            (
                "baseline_pg_cpu_ms_per_command",
                self.pg_baseline.as_ref().map_or(Value::Null, |(pg, u)| {
                    r(u.postgres * 1000.0 / pg.rate().max(1e-9), 3)
                }),
            ),
            (
                "pg_cpu_ms_per_command",
                r(
                    self.service.usage.postgres * 1000.0 / self.service.drive.rate().max(1e-9),
                    3,
                ),
            ),
            (
                "hot_ratio",
                self.service
                    .usage
                    .hot_ratio
                    .map_or(Value::Null, |x| r(x, 3)),
            ),
            (
                "steady_hot_ratio",
                or_null(steady, &|p| {
                    p.usage.hot_ratio.map_or(Value::Null, |x| r(x, 3))
                }),
            ),
        ];
        let mut fields = fields;
        if let Some(p) = steady {
            let lines = p.breakdown();
            if lines.len() > 1 {
                let breakdown: serde_json::Map<String, Value> = lines
                    .into_iter()
                    .map(|(name, _, p50, p99)| (name.to_owned(), json!([r(p50, 2), r(p99, 2)])))
                    .collect();
                fields.push(("steady_breakdown_ms", Value::Object(breakdown)));
            }
        }
        let kinds = self.kinds.as_ref().and_then(|k| k.as_ref().ok());
        fields.push((
            "progress_hot_ratio",
            kinds
                .and_then(Kinds::progress_hot_ratio)
                .map_or(Value::Null, |x| r(x, 3)),
        ));
        if let Some(k) = kinds {
            fields.push(("writes_per_command", writes_json(k)));
        }
        if let Some(loaded) = &self.loaded {
            let p = &loaded.preloaded;
            fields.extend([
                ("loaded_commands_per_s", r(loaded.phase.drive.rate(), 1)),
                ("loaded_ratio", r(self.loaded_ratio().unwrap_or(0.0), 3)),
                ("loaded_p99_ms", r(loaded.phase.latency.p99, 2)),
                ("preload_runs", json!(p.runs)),
                ("preload_active", json!(p.active)),
                ("preload_events", json!(p.events)),
                ("preload_inbox", json!(p.inbox)),
                ("preload_seconds", r(p.seconds, 1)),
            ]);
        }
        if let Some(server) = &self.server {
            fields.push(("postgres", json!(server.target.label())));
            fields.push(("postgres_autovacuum", json!(server.autovacuum)));
        }
        fields
    }
}

/// The kinds phase: one line per kind.
fn kinds_table(k: &Kinds) -> String {
    let mut out =
        format!(
        "kinds ({} runs, {} increments each; one kind at a time, one command per run per batch):\n\
         {:<12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9}\n",
        k.runs, k.rounds, "kind", "commands", "per_s", "p50_ms", "p99_ms", "rows/cmd", "index/cmd",
        "wal_B/cmd", "runs_hot"
    );
    for s in &k.steps {
        let (rows, index, wal, hot) = match &s.writes {
            Some(w) => (
                format!("{:.2}", s.per_command(w.row_writes())),
                format!("{:.2}", s.per_command(w.index_entries())),
                format!("{:.0}", s.per_command(w.wal_bytes())),
                w.hot_ratio("operation_runs")
                    .map_or("-".to_owned(), |h| format!("{h:.3}")),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<12} {:>8} {:>8.0} {:>8.1} {:>8.1} {:>10} {:>10} {:>10} {:>9}\n",
            s.kind.name(),
            s.commands,
            s.rate(),
            s.latency.p50,
            s.latency.p99,
            rows,
            index,
            wal,
            hot
        ));
    }
    out
}

/// The kinds phase's writes per command, one line per relation written (tables: row writes,
/// HOT updates included; indexes: entries added), one column per kind.
fn writes_table(k: &Kinds) -> String {
    let mut names: Vec<(bool, String)> = Vec::new();
    for s in &k.steps {
        for r in s.writes.iter().flat_map(|w| &w.relations) {
            if !names.contains(&(r.index, r.name.clone())) {
                names.push((r.index, r.name.clone()));
            }
        }
    }
    if names.is_empty() {
        return String::new();
    }
    names.sort();
    let mut out = format!(
        "writes per command, from the WAL (tables: rows inserted, updated or deleted; indexes: entries added):\n{:<48}",
        "relation"
    );
    for s in &k.steps {
        out.push_str(&format!(" {:>10}", s.kind.name()));
    }
    out.push('\n');
    for (index, name) in names {
        let mut cells = String::new();
        let mut any = false;
        for s in &k.steps {
            let n = s.writes.as_ref().map_or(0, |w| w.of(&name, index));
            any |= n > 0;
            cells.push_str(&format!(" {:>10.2}", s.per_command(n)));
        }
        if any {
            let shown = if index { format!("  {name}") } else { name };
            out.push_str(&format!("{shown:<48}{cells}\n"));
        }
    }
    out
}

/// The kinds phase's writes per command in the JSON line: per kind, rows, index entries, WAL
/// bytes and every relation's count.
fn writes_json(k: &Kinds) -> Value {
    let per_kind: serde_json::Map<String, Value> = k
        .steps
        .iter()
        .filter_map(|s| {
            let w = s.writes.as_ref()?;
            let round = |x: f64| (x * 100.0).round() / 100.0;
            let relations: serde_json::Map<String, Value> = w
                .relations
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        json!(round(s.per_command(w.of(&r.name, r.index)))),
                    )
                })
                .filter(|(_, v)| v.as_f64().is_some_and(|x| x > 0.0))
                .collect();
            Some((
                s.kind.name().to_owned(),
                json!({
                    "rows": round(s.per_command(w.row_writes())),
                    "index_entries": round(s.per_command(w.index_entries())),
                    "wal_bytes": s.per_command(w.wal_bytes()).round(),
                    "relations": relations,
                }),
            ))
        })
        .collect();
    Value::Object(per_kind)
}

fn p_rate(p: &Phase) -> f64 {
    p.target_rate.unwrap_or_else(|| p.drive.rate())
}

#[cfg(test)]
mod json_tests {
    use super::*;
    use crate::bench::tracker::Counts;
    use std::time::Duration;

    fn phase(rate_commands: u64) -> Phase {
        let drive = DriveResult {
            commands: rate_commands,
            elapsed: Duration::from_secs(1),
            latencies: crate::bench::tracker::Latencies {
                end_to_end: vec![Duration::from_millis(3)],
                ..Default::default()
            },
            counts: Counts::default(),
            max_publish_lag: Duration::ZERO,
            nacks: 0,
        };
        Phase::new(drive, Usage::default(), None)
    }

    #[test]
    fn the_json_line_starts_with_the_documented_keys_in_order() {
        let report = Report {
            instances: 1,
            prefetch: 500,
            in_flight: 2000,
            baseline: BaselineResult {
                messages: 100,
                bytes: 180,
                publish_elapsed: Duration::from_millis(50),
                elapsed: Duration::from_millis(100),
                nacks: 0,
            },
            baseline_usage: Usage::default(),
            pg_baseline: Err("not run".into()),
            service: phase(600),
            steady: Ok(phase(300)),
            peak_rss_mb: vec![20.0, 30.5],
            dead_lettered: 0,
            kinds: None,
            loaded: None,
            server: None,
        };
        let line = report.json_line();
        assert!(
            line.starts_with(r#"{"baseline_msgs_per_s":1000.0,"commands_per_s":600.0,"ratio":0.6,"p50_ms":3.0,"p99_ms":3.0,"steady_rate":300.0,"steady_p99_ms":3.0,"peak_rss_mb":30.5,"#),
            "{line}"
        );
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["instances"], 1);
    }
}
