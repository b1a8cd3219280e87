//! Configuration: one typed struct per concern, read from flags with environment fallbacks and
//! visible defaults. Nothing else in the crate reads the environment. URLs may carry
//! credentials, so their `Debug` form is redacted and `--help` never prints environment values.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the database and the broker are, and which topology namespace to use.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Postgres URL; `?sslmode=require` (or `verify-full`, with `sslrootcert=`) enables TLS.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres:postgres@localhost:5432/operation_runs",
        global = true
    )]
    pub database_url: String,

    /// AMQP URL; `amqps://` enables TLS (rustls, system roots). The nodes of a cluster: repeat
    /// the flag or separate the URLs with commas (the environment variable takes the comma form;
    /// a comma in a password is `%2C`), at most 16; the first that answers is used, the next
    /// when a connection fails (10 s connect timeout per URL), and after a lost connection the
    /// next node is tried first. Every command and the `Producer`/`Worker` libraries take it.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@localhost:5672/%2f",
        value_delimiter = ',',
        global = true
    )]
    pub amqp_url: Vec<String>,

    /// Replicas of each quorum queue the service declares (`x-quorum-initial-group-size`,
    /// 1..=7). Default: the number of `--amqp-url` nodes, at most 3, when more than one is
    /// given; with one URL the argument is left out and RabbitMQ places a replica on every
    /// cluster node. It only matters when a queue is created: an existing queue keeps its
    /// members (and its declared size is adopted, see docs/operations.md, "A RabbitMQ cluster").
    #[arg(
        long,
        env = "OPRUN_QUORUM_INITIAL_GROUP_SIZE",
        value_parser = clap::value_parser!(u16).range(1..=7),
        global = true
    )]
    pub quorum_initial_group_size: Option<u16>,

    /// Prefix of every exchange and queue name.
    #[arg(
        long,
        env = "OPRUN_NAMESPACE",
        default_value = "operation_runs",
        global = true
    )]
    pub namespace: String,
}

/// The default of `--quorum-initial-group-size` is the node count up to this: three replicas
/// survive the loss of one node, and more replicas cost every write another round trip.
pub const DEFAULT_MAX_QUORUM_GROUP_SIZE: u16 = 3;

impl Config {
    /// The broker's URLs (every `--amqp-url`, commas split). Errors on an empty or oversized
    /// list or a URL of another scheme.
    pub fn amqp_urls(
        &self,
    ) -> Result<crate::broker::connection::AmqpUrls, crate::broker::BrokerError> {
        crate::broker::connection::AmqpUrls::parse(&self.amqp_url)
    }

    /// The URLs as one comma-separated string (for `AMQP_URL` of a child process, or any API
    /// taking one `&str`), passwords included.
    pub fn amqp_url_list(&self) -> String {
        self.amqp_url.join(",")
    }

    /// The `x-quorum-initial-group-size` to declare: the setting, else the number of URLs (at
    /// most [`DEFAULT_MAX_QUORUM_GROUP_SIZE`]) when there are several, else none.
    pub fn quorum_group_size(&self) -> Option<u16> {
        self.quorum_initial_group_size.or_else(|| {
            let nodes = self
                .amqp_urls()
                .map_or(1, |urls| urls.len().min(u16::MAX as usize) as u16);
            (nodes > 1).then(|| nodes.min(DEFAULT_MAX_QUORUM_GROUP_SIZE))
        })
    }

    /// The topology of the namespace, with the quorum group size of [`Config::quorum_group_size`].
    pub fn topology(&self) -> Result<crate::broker::Topology, crate::broker::BrokerError> {
        Ok(crate::broker::Topology::new(&self.namespace)?
            .with_quorum_group_size(self.quorum_group_size()))
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amqp: Vec<String> = self.amqp_url.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("amqp_url", &amqp)
            .field("namespace", &self.namespace)
            .field("quorum_initial_group_size", &self.quorum_initial_group_size)
            .finish()
    }
}

/// Settings of `oprun serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeSettings {
    /// Unacked commands the broker may send ahead.
    #[arg(long, env = "OPRUN_PREFETCH", default_value_t = 500)]
    pub prefetch: u16,

    /// Most commands applied in one database transaction.
    #[arg(long, env = "OPRUN_BATCH_SIZE", default_value_t = 200)]
    pub batch_size: usize,

    /// Concurrent transactions a batch is split into (by run and identity, so one run's commands
    /// stay in order); each takes a database connection.
    #[arg(long, env = "OPRUN_LANES", default_value_t = 4)]
    pub lanes: usize,

    /// How long a batch waits for more commands after its first, in milliseconds.
    #[arg(long, env = "OPRUN_BATCH_WINDOW_MS", default_value_t = 5)]
    pub batch_window_ms: u64,

    /// Address of /healthz, /readyz and /metrics (`off` to disable).
    #[arg(long, env = "OPRUN_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub metrics_addr: String,

    /// Milliseconds an HTTP client may take to send a request's headers (every listener).
    #[arg(long, env = "OPRUN_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// Milliseconds after which an HTTP connection with no traffic either way is closed.
    #[arg(long, env = "OPRUN_HTTP_IDLE_TIMEOUT_MS", default_value_t = 20_000)]
    pub http_idle_timeout_ms: u64,

    /// Most HTTP connections open at once, per listener; at the cap the listener stops accepting.
    #[arg(long, env = "OPRUN_HTTP_MAX_CONNECTIONS", default_value_t = 512)]
    pub http_max_connections: usize,

    /// A run with no change for longer than its expected duration × this factor is reaped.
    #[arg(long, env = "OPRUN_STALE_FACTOR", default_value_t = 3.0)]
    pub stale_factor: f64,

    /// Seconds between two reaper rounds (0 disables the reaper).
    #[arg(long, env = "OPRUN_REAPER_INTERVAL_SECS", default_value_t = 30)]
    pub reaper_interval_secs: u64,

    /// Milliseconds the relay waits between polls when idle (commits wake it at once).
    #[arg(long, env = "OPRUN_RELAY_IDLE_MS", default_value_t = 250)]
    pub relay_idle_ms: u64,

    /// Milliseconds between two polls of the metrics gauges read from the broker and the
    /// database (DLQ depth, active runs per type); 0 disables them.
    #[arg(long, env = "OPRUN_METRICS_POLL_MS", default_value_t = 15_000)]
    pub metrics_poll_ms: u64,

    /// Most outbox rows one relay round publishes.
    #[arg(long, env = "OPRUN_RELAY_BATCH", default_value_t = 500)]
    pub relay_batch: i64,

    /// Database connections in the pool.
    #[arg(long, env = "OPRUN_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,

    /// Database connections of the run viewer's own pool (1 to 100), apart from
    /// `--db-connections`, its sessions named `oprun-viewer`: the viewer's reads never take a
    /// connection the pipeline needs.
    #[arg(long, env = "OPRUN_VIEWER_DB_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub viewer_db_connections: u32,

    /// Seconds to finish in-flight work and flush the outbox after SIGTERM/SIGINT.
    #[arg(long, env = "OPRUN_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// The run viewer (HTTP API and pages).
    #[command(flatten)]
    pub viewer: ViewerSettings,

    /// Bounds of the viewer's live streams.
    #[command(flatten)]
    pub live: LiveSettings,

    /// Hand each new run's job to executors on `N.jobs` (dispatchOrFail).
    #[arg(long, env = "OPRUN_HAND_OFF_JOBS", default_value_t = true, action = clap::ArgAction::Set)]
    pub hand_off_jobs: bool,

    /// Publishes of one job (1 to 100) the broker may nack (an executor queue refusing it) before its run
    /// is failed with `dispatch.rejected`. Retries wait `--job-retry-base-ms`, doubling, at
    /// most 60 s: with the defaults a run fails about two minutes after its first refusal.
    #[arg(long, env = "OPRUN_JOB_PUBLISH_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_publish_attempts: u32,

    /// First delay, in milliseconds, before a nacked job is published again (doubles per
    /// attempt, capped at 60 s).
    #[arg(long, env = "OPRUN_JOB_RETRY_BASE_MS", default_value_t = 1000)]
    pub job_retry_base_ms: u64,

    /// Queues replies may be sent to, besides RabbitMQ direct reply-to: a glob where `*` is any
    /// run of characters and `{namespace}` is the namespace. Any other `reply_to` gets no reply.
    #[arg(
        long,
        env = "OPRUN_REPLY_QUEUE_PATTERN",
        default_value = DEFAULT_REPLY_QUEUE_PATTERN
    )]
    pub reply_queue_pattern: String,
    /// Most queued or running runs one tenant may have; a dispatch that would create one more is
    /// refused with `tenant_quota_exceeded` (a deduplicated dispatch is not). 0 = unlimited.
    #[arg(long, env = "OPRUN_MAX_ACTIVE_RUNS_PER_TENANT", default_value_t = 1000)]
    pub max_active_runs_per_tenant: u64,

    /// How long history is kept, and how the background pruner works.
    #[command(flatten)]
    pub retention: RetentionSettings,
}

/// The default `--reply-queue-pattern`: `N.reply.*`.
pub const DEFAULT_REPLY_QUEUE_PATTERN: &str = "{namespace}.reply.*";

impl ServeSettings {
    /// The batch window.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }

    /// The health/metrics address, or `None` when disabled.
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>, String> {
        if self.metrics_addr == "off" {
            return Ok(None);
        }
        self.metrics_addr
            .parse()
            .map(Some)
            .map_err(|e| format!("--metrics-addr {:?}: {e}", self.metrics_addr))
    }

    /// The bounds of the viewer's live streams; an error unless both caps are below
    /// `--http-max-connections` (else one token, or one run's readers, could hold every
    /// connection of the listener).
    pub fn live_limits(&self) -> Result<crate::http::live::LiveLimits, String> {
        let limits = self.live.live_limits();
        let connections = self.http_limits().max_connections;
        for (flag, cap) in [
            ("--live-streams-per-token", limits.per_token),
            ("--live-streams-per-run", limits.per_run),
        ] {
            if cap >= connections {
                return Err(format!(
                    "{flag} {cap} must be below --http-max-connections {connections}"
                ));
            }
        }
        Ok(limits)
    }

    /// The bounds of every HTTP listener.
    pub fn http_limits(&self) -> crate::http::server::HttpLimits {
        crate::http::server::HttpLimits {
            header_read_timeout: Duration::from_millis(self.http_header_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.http_idle_timeout_ms.max(1)),
            max_connections: self.http_max_connections.max(1),
        }
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            prefetch: 500,
            batch_size: 200,
            lanes: 4,
            batch_window_ms: 5,
            metrics_addr: "off".into(),
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 20_000,
            http_max_connections: 512,
            stale_factor: 3.0,
            reaper_interval_secs: 30,
            relay_idle_ms: 250,
            metrics_poll_ms: 15_000,
            relay_batch: 500,
            db_connections: 8,
            viewer_db_connections: 4,
            shutdown_timeout_secs: 30,
            hand_off_jobs: true,
            job_publish_attempts: 8,
            job_retry_base_ms: 1000,
            reply_queue_pattern: DEFAULT_REPLY_QUEUE_PATTERN.into(),
            max_active_runs_per_tenant: 1000,
            retention: RetentionSettings::default(),
            live: LiveSettings::default(),
            viewer: ViewerSettings {
                http_addr: "off".into(),
                api_secret: None,
            },
        }
    }
}

/// The default log filter: `info`, without lapin's log line per returned (unroutable) message and
/// Postgres notices below warnings.
pub const DEFAULT_LOG_FILTER: &str =
    "info,lapin::returned_messages=error,sqlx::postgres::notice=warn";

/// How the binary logs (to stderr), and where it exports its spans (every command).
#[derive(Clone, clap::Args)]
pub struct LogSettings {
    /// Log filter, in tracing's `EnvFilter` syntax (e.g. `debug` or `info,operation_runs=debug`).
    #[arg(id = "log_filter", long = "log", env = "OPRUN_LOG", default_value = DEFAULT_LOG_FILTER, global = true)]
    pub filter: String,
    /// `text` for people, `json` for one JSON object per line.
    #[arg(id = "log_format", long = "log-format", env = "OPRUN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub format: String,
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`): spans are POSTed as protobuf
    /// to `<URL>/v1/traces`; credentials in the URL are sent as HTTP basic auth. Unset: no export.
    #[arg(
        id = "otlp_endpoint",
        long = "otlp-endpoint",
        env = "OPRUN_OTLP_ENDPOINT",
        hide_env_values = true,
        global = true
    )]
    pub otlp_endpoint: Option<String>,
}

impl LogSettings {
    /// The OTLP collector to export spans to; `None` (no export) when unset or empty.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .filter(|url| !url.trim().is_empty())
    }
}

impl fmt::Debug for LogSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSettings")
            .field("filter", &self.filter)
            .field("format", &self.format)
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_deref().map(redact_url),
            )
            .finish()
    }
}

/// Passwords of the namespace's least-privilege users (`oprun topology users`). Environment only
/// in practice (a flag would show in `ps`); the values are never printed by `--help` or `Debug`.
#[derive(Clone, Default, clap::Args)]
pub struct UserPasswords {
    /// Password of `N.producer`.
    #[arg(long, env = "OPRUN_PRODUCER_PASSWORD", hide_env_values = true)]
    pub producer_password: Option<String>,
    /// Password of `N.service`.
    #[arg(long, env = "OPRUN_SERVICE_PASSWORD", hide_env_values = true)]
    pub service_password: Option<String>,
    /// Password of `N.subscriber`.
    #[arg(long, env = "OPRUN_SUBSCRIBER_PASSWORD", hide_env_values = true)]
    pub subscriber_password: Option<String>,
}

impl UserPasswords {
    /// The password configured through `env` (one of the three variables), if set and not empty.
    pub fn by_env(&self, env: &str) -> Option<&str> {
        let value = match env {
            "OPRUN_PRODUCER_PASSWORD" => &self.producer_password,
            "OPRUN_SERVICE_PASSWORD" => &self.service_password,
            "OPRUN_SUBSCRIBER_PASSWORD" => &self.subscriber_password,
            _ => &None,
        };
        value.as_deref().filter(|p| !p.is_empty())
    }
}

impl fmt::Debug for UserPasswords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |p: &Option<String>| p.as_ref().map(|_| "***");
        f.debug_struct("UserPasswords")
            .field("producer_password", &shown(&self.producer_password))
            .field("service_password", &shown(&self.service_password))
            .field("subscriber_password", &shown(&self.subscriber_password))
            .finish()
    }
}

/// Where the run viewer listens and how its tokens are signed (`serve` and `token`).
#[derive(Clone, clap::Args)]
pub struct ViewerSettings {
    /// Address of the run viewer (JSON API and pages; `off` to disable).
    #[arg(long, env = "OPRUN_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,

    /// HS256 secret of the viewer's tokens (at least 32 bytes); when absent, a random one is
    /// created once and kept in the database.
    // A secret may start with '-': taken as the value, never echoed back as an unknown flag.
    #[arg(
        long,
        env = "OPRUN_API_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub api_secret: Option<String>,
}

impl ViewerSettings {
    /// The viewer's address, or `None` when disabled.
    pub fn socket(&self) -> Result<Option<SocketAddr>, String> {
        if self.http_addr == "off" {
            return Ok(None);
        }
        self.http_addr
            .parse()
            .map(Some)
            .map_err(|e| format!("--http-addr {:?}: {e}", self.http_addr))
    }
}

impl fmt::Debug for ViewerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewerSettings")
            .field("http_addr", &self.http_addr)
            .field("api_secret", &self.api_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The default `--live-streams-per-token`.
pub const DEFAULT_LIVE_STREAMS_PER_TOKEN: u32 = 8;

/// The default `--live-streams-per-run`.
pub const DEFAULT_LIVE_STREAMS_PER_RUN: u32 = 32;

/// The default `--live-stream-lifetime`.
pub const DEFAULT_LIVE_STREAM_LIFETIME: &str = "15m";

/// Bounds of the viewer's live streams (`GET /v1/runs/{id}/live`), well below
/// `--http-max-connections` so that no token and no run can take every connection.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveSettings {
    /// Most live streams open at once per token: per `sub` and workspace, or per token when it
    /// has no `sub`. One more is answered 429 `too_many_streams` (`Retry-After: 5`). Must be below
    /// `--http-max-connections` (serve refuses to start otherwise).
    #[arg(long, env = "OPRUN_LIVE_STREAMS_PER_TOKEN", default_value_t = DEFAULT_LIVE_STREAMS_PER_TOKEN, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub live_streams_per_token: u32,

    /// Most live streams open at once on one run, whoever opens them. One more is answered 429
    /// `too_many_streams`. Must be below `--http-max-connections`.
    #[arg(long, env = "OPRUN_LIVE_STREAMS_PER_RUN", default_value_t = DEFAULT_LIVE_STREAMS_PER_RUN, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub live_streams_per_run: u32,

    /// Longest a live stream stays open (at least 1s); then it ends, and the client reconnects
    /// with `Last-Event-ID`, missing nothing. A stream also ends at its token's `exp` plus the
    /// 5 s leeway.
    #[arg(long, env = "OPRUN_LIVE_STREAM_LIFETIME", default_value = DEFAULT_LIVE_STREAM_LIFETIME, value_parser = parse_stream_lifetime)]
    pub live_stream_lifetime: Duration,
}

impl LiveSettings {
    /// The bounds the viewer enforces.
    pub fn live_limits(&self) -> crate::http::live::LiveLimits {
        crate::http::live::LiveLimits {
            per_token: self.live_streams_per_token as usize,
            per_run: self.live_streams_per_run as usize,
            lifetime: self.live_stream_lifetime,
        }
    }
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            live_streams_per_token: DEFAULT_LIVE_STREAMS_PER_TOKEN,
            live_streams_per_run: DEFAULT_LIVE_STREAMS_PER_RUN,
            live_stream_lifetime: parse_stream_lifetime(DEFAULT_LIVE_STREAM_LIFETIME)
                .expect("the default lifetime parses"),
        }
    }
}

/// A live stream's lifetime: a [`parse_duration`] of at least a second (a shorter one would
/// have clients reconnecting all the time).
fn parse_stream_lifetime(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{text:?}: a live stream lives at least 1s"));
    }
    Ok(d)
}

/// The default `--inbox-retention`: how long a command id is remembered.
pub const DEFAULT_INBOX_RETENTION: &str = "14d";

/// How long history is kept (`serve`'s background pruner and `oprun prune`). Durations are a
/// number and a unit: `ms`, `s`, `m`, `h`, `d` (`14d`, `30m`, `90s`).
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionSettings {
    /// How long an applied command's inbox row is kept: a redelivery (or DLQ replay) of the
    /// command within it has no second effect; after it, it would be applied again. `serve`
    /// records it in the database at start; `dlq replay` uses the recorded value unless given,
    /// refuses older letters without `--force`, and without either refuses to run.
    #[arg(long, env = "OPRUN_INBOX_RETENTION", default_value = DEFAULT_INBOX_RETENTION, value_parser = parse_duration)]
    pub inbox_retention: Duration,

    /// How long a published event is kept. An unpublished one always stays, and so does every
    /// run's last event, which numbers the run's next one (late counts included); it goes
    /// with its run under `--run-retention`.
    #[arg(long, env = "OPRUN_EVENT_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub event_retention: Duration,

    /// How long a published job is kept (an unpublished one always stays).
    #[arg(long, env = "OPRUN_JOB_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub job_retention: Duration,

    /// How long a completed run is kept, with its events and job, after it completed. Unset:
    /// runs are kept for ever (they are the history). A run with an unpublished event or job,
    /// or whose identity is held for ever (dedupe window `forever`), is kept.
    #[arg(long, env = "OPRUN_RUN_RETENTION", value_parser = parse_duration)]
    pub run_retention: Option<Duration>,

    /// Most rows one pruning statement deletes (1 to 100,000), each in a short transaction of
    /// its own.
    #[arg(long, env = "OPRUN_PRUNE_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub prune_batch: i64,

    /// Pause between two pruning statements, so that pruning never competes with the pipeline
    /// for long.
    #[arg(long, env = "OPRUN_PRUNE_PAUSE", default_value = "50ms", value_parser = parse_duration)]
    pub prune_pause: Duration,

    /// Time between two pruning passes of `serve` (`0s` disables the background pruner).
    #[arg(long, env = "OPRUN_PRUNE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub prune_interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            inbox_retention: Duration::from_secs(14 * DAY),
            event_retention: Duration::from_secs(30 * DAY),
            job_retention: Duration::from_secs(7 * DAY),
            run_retention: None,
            prune_batch: 1000,
            prune_pause: Duration::from_millis(50),
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// Parses a duration written as a whole number and a unit: `ms`, `s`, `m`, `h` or `d`
/// (`14d`, `30m`, `250ms`). At most 100 years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: missing unit (ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number before the unit"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (ms, s, m, h or d)"
            ))
        }
    };
    const MAX_MS: u64 = 100 * 365 * 86_400_000;
    match n.checked_mul(unit_ms) {
        Some(ms) if ms <= MAX_MS => Ok(Duration::from_millis(ms)),
        _ => Err(format!("{text:?}: longer than 100 years")),
    }
}

/// Replaces the password of a URL with `***` (for logs and Debug).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "14", "d", "1.5h", "-1d", "3w", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_live_stream_lifetime_is_a_duration_of_at_least_a_second() {
        assert_eq!(
            LiveSettings::default().live_stream_lifetime,
            Duration::from_secs(900)
        );
        assert_eq!(parse_stream_lifetime("1s"), Ok(Duration::from_secs(1)));
        for bad in ["0s", "999ms", "15"] {
            assert!(parse_stream_lifetime(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn live_stream_caps_must_be_below_the_connection_cap() {
        let mut settings = ServeSettings::default();
        let limits = settings.live_limits().unwrap();
        assert_eq!((limits.per_token, limits.per_run), (8, 32));
        settings.http_max_connections = 32;
        assert!(settings
            .live_limits()
            .unwrap_err()
            .contains("--live-streams-per-run"));
        settings.http_max_connections = 8;
        assert!(settings
            .live_limits()
            .unwrap_err()
            .contains("--live-streams-per-token"));
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let c = Config {
            database_url: "postgres://app:s3cret@db/x?sslmode=require".into(),
            amqp_url: vec![
                "amqps://svc:hunter2@mq:5671/%2f".into(),
                "amqps://svc:swordfish@mq2:5671/%2f".into(),
            ],
            namespace: "n".into(),
            quorum_initial_group_size: None,
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
        assert!(shown.contains("app:***@db"), "{shown}");
        assert!(shown.contains("svc:***@mq2"), "{shown}");
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Config {
        use clap::Parser;
        let mut all = vec!["oprun"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().config
    }

    #[test]
    fn amqp_url_may_be_repeated_or_comma_separated() {
        let c = parse(&[
            "--amqp-url",
            "amqp://n1/%2f,amqp://n2/%2f",
            "--amqp-url",
            "amqp://n3/%2f",
        ]);
        assert_eq!(
            c.amqp_urls().unwrap().as_slice(),
            ["amqp://n1/%2f", "amqp://n2/%2f", "amqp://n3/%2f"]
        );
        assert_eq!(
            c.amqp_url_list(),
            "amqp://n1/%2f,amqp://n2/%2f,amqp://n3/%2f"
        );
    }

    #[test]
    fn the_quorum_group_size_defaults_to_the_node_count_at_most_three() {
        let one = parse(&["--amqp-url", "amqp://n1/%2f"]);
        assert_eq!(one.quorum_group_size(), None);
        let two = parse(&["--amqp-url", "amqp://n1/%2f,amqp://n2/%2f"]);
        assert_eq!(two.quorum_group_size(), Some(2));
        let five = parse(&[
            "--amqp-url",
            "amqp://a/,amqp://b/,amqp://c/,amqp://d/,amqp://e/",
        ]);
        assert_eq!(five.quorum_group_size(), Some(3));
        let set = parse(&[
            "--amqp-url",
            "amqp://a/,amqp://b/",
            "--quorum-initial-group-size",
            "5",
        ]);
        assert_eq!(set.quorum_group_size(), Some(5));
        assert_eq!(set.topology().unwrap().quorum_group_size(), Some(5));
        use clap::Parser;
        assert!(Cli::try_parse_from(["oprun", "--quorum-initial-group-size", "0"]).is_err());
        assert!(Cli::try_parse_from(["oprun", "--quorum-initial-group-size", "8"]).is_err());
    }

    #[test]
    fn the_otlp_endpoint_password_never_reaches_debug_output() {
        let log = LogSettings {
            filter: "info".into(),
            format: "text".into(),
            otlp_endpoint: Some("http://otel:t0ken@collector:4318".into()),
        };
        let shown = format!("{log:?}");
        assert!(!shown.contains("t0ken"), "{shown}");
        assert!(shown.contains("otel:***@collector:4318"), "{shown}");
    }
}
