//! Configuration: one typed struct per concern, read from flags with environment fallbacks and
//! visible defaults, written once in the clap attributes (there is no `Default` beside them).
//! Nothing else in the crate reads the environment. Every time is a `Duration` written with its
//! unit (`5ms`, `30s`). Passwords, tokens and URLs that may carry credentials are secrets
//! ([`crate::secret`]): their `Debug` form hides them and `--help` never prints environment values.

use std::net::SocketAddr;
use std::time::Duration;

use crate::secret::{ExposeSecret, SecretString, SecretUrl};

pub use crate::secret::redact_url;

/// Where the database and the broker are, and which topology namespace to use.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Postgres URL; `?sslmode=require` (or `verify-full`, with `sslrootcert=`) enables TLS.
    /// Several hosts in libpq's form (`postgres://u:p@h1:5432,h2:5432/db`) follow the primary:
    /// connections go to the first host that accepts writes, the next when it fails or only
    /// reads (`target_session_attrs=read-write`, the default with several hosts; `any` takes
    /// the first that answers; decision 0094).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres:postgres@localhost:5432/operation_runs",
        global = true
    )]
    pub database_url: SecretUrl,

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
    pub amqp_url: Vec<SecretUrl>,

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
        let urls: Vec<&str> = self.amqp_url.iter().map(SecretUrl::expose_secret).collect();
        urls.join(",")
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

/// Settings of `oprun serve`, grouped by the part of the service that takes them. Built by
/// parsing flags (with their environment fallbacks): the clap attributes below are the only
/// defaults there are; [`ServeSettings::from_flags`] gives the same values to code and tests.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeSettings {
    /// How commands are taken from the queue and applied (the consumer and its batches).
    #[command(flatten)]
    pub batch: BatchSettings,

    /// The probes and metrics endpoint.
    #[command(flatten)]
    pub metrics: MetricsSettings,

    /// Bounds of every HTTP listener.
    #[command(flatten)]
    pub http: HttpSettings,

    /// The reaper of stale runs.
    #[command(flatten)]
    pub reaper: ReaperSettings,

    /// The outbox relay.
    #[command(flatten)]
    pub outbox: OutboxSettings,

    /// Database connections in the pool.
    #[arg(long, env = "OPRUN_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,

    /// Database connections of the run viewer's own pool (1 to 100), apart from
    /// `--db-connections`, its sessions named `oprun-viewer`: the viewer's reads never take a
    /// connection the pipeline needs.
    #[arg(long, env = "OPRUN_VIEWER_DB_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub viewer_db_connections: u32,

    /// Time to finish in-flight work and flush the outbox after SIGTERM/SIGINT.
    #[arg(long, env = "OPRUN_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// The run viewer (HTTP API and pages).
    #[command(flatten)]
    pub viewer: ViewerSettings,

    /// Bounds of the viewer's live streams.
    #[command(flatten)]
    pub live: LiveSettings,

    /// Jobs handed to executors.
    #[command(flatten)]
    pub jobs: JobSettings,

    /// Queues replies may be sent to, besides RabbitMQ direct reply-to: a glob where `*` is any
    /// run of characters and `{namespace}` is the namespace. Any other `reply_to` gets no reply.
    #[arg(
        long,
        env = "OPRUN_REPLY_QUEUE_PATTERN",
        default_value = DEFAULT_REPLY_QUEUE_PATTERN
    )]
    pub reply_queue_pattern: String,
    /// Dead-letter a refused command even when the refusal was answered to its producer (it had
    /// a `reply_to` the service may reply to, and the broker confirmed the reply reached a
    /// queue). Without it such a refusal is acked and counted in
    /// `oprun_refusals_answered_total`, not dead-lettered: the DLQ holds what nobody was told
    /// about (`database_rejected` is always dead-lettered).
    #[arg(
        long,
        env = "OPRUN_DEAD_LETTER_ANSWERED_REFUSALS",
        default_value_t = false
    )]
    pub dead_letter_answered_refusals: bool,
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
    /// The settings `oprun serve` takes from `flags` (without the program and subcommand names),
    /// every other one at its default. The environment is not read: the same flags give the
    /// same settings wherever this runs.
    pub fn from_flags(flags: &[&str]) -> Result<Self, clap::Error> {
        use clap::{Args, FromArgMatches};
        let command =
            WithOldNames::<Self>::augment_args(clap::Command::new("serve").no_binary_name(true))
                .mut_args(|arg| arg.env(None::<&str>));
        let matches = command.try_get_matches_from(flags)?;
        Ok(WithOldNames::<Self>::from_arg_matches(&matches)?.0)
    }

    /// The settings of `oprun serve` with no flag given (every default).
    pub fn defaults() -> Self {
        Self::from_flags(&[]).expect("the defaults parse")
    }

    /// The bounds of the viewer's live streams; an error unless both caps are below
    /// `--http-max-connections` (else one token, or one run's readers, could hold every
    /// connection of the listener).
    pub fn live_limits(&self) -> Result<crate::http::streams::LiveLimits, String> {
        let limits = self.live.live_limits();
        let connections = self.http.limits().max_connections;
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
}

impl OldNames for ServeSettings {
    const OLD_NAMES: &'static [OldName<Self>] = &[
        OldName {
            flag: "batch-window-ms",
            env: Some("OPRUN_BATCH_WINDOW_MS"),
            new: "batch_window",
            unit: Unit::Milliseconds,
            set: |s, d| s.batch.batch_window = d,
        },
        OldName {
            flag: "http-header-timeout-ms",
            env: Some("OPRUN_HTTP_HEADER_TIMEOUT_MS"),
            new: "http_header_timeout",
            unit: Unit::Milliseconds,
            set: |s, d| s.http.http_header_timeout = d,
        },
        OldName {
            flag: "http-idle-timeout-ms",
            env: Some("OPRUN_HTTP_IDLE_TIMEOUT_MS"),
            new: "http_idle_timeout",
            unit: Unit::Milliseconds,
            set: |s, d| s.http.http_idle_timeout = d,
        },
        OldName {
            flag: "reaper-interval-secs",
            env: Some("OPRUN_REAPER_INTERVAL_SECS"),
            new: "reaper_interval",
            unit: Unit::Seconds,
            set: |s, d| s.reaper.reaper_interval = d,
        },
        OldName {
            flag: "relay-idle-ms",
            env: Some("OPRUN_RELAY_IDLE_MS"),
            new: "relay_idle",
            unit: Unit::Milliseconds,
            set: |s, d| s.outbox.relay_idle = d,
        },
        OldName {
            flag: "metrics-poll-ms",
            env: Some("OPRUN_METRICS_POLL_MS"),
            new: "metrics_poll",
            unit: Unit::Milliseconds,
            set: |s, d| s.metrics.metrics_poll = d,
        },
        OldName {
            flag: "shutdown-timeout-secs",
            env: Some("OPRUN_SHUTDOWN_TIMEOUT_SECS"),
            new: "shutdown_timeout",
            unit: Unit::Seconds,
            set: |s, d| s.shutdown_timeout = d,
        },
        OldName {
            flag: "job-retry-base-ms",
            env: Some("OPRUN_JOB_RETRY_BASE_MS"),
            new: "job_retry_base",
            unit: Unit::Milliseconds,
            set: |s, d| s.jobs.job_retry_base = d,
        },
    ];
}

/// How the service takes commands from the queue and applies them.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchSettings {
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

    /// How long a batch waits for more commands after its first.
    #[arg(long, env = "OPRUN_BATCH_WINDOW", default_value = "5ms", value_parser = parse_duration)]
    pub batch_window: Duration,
}

/// The probes and metrics endpoint, and the gauges it reads from outside the process.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsSettings {
    /// Address of /healthz, /readyz and /metrics (`off` to disable).
    #[arg(long, env = "OPRUN_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub metrics_addr: String,

    /// Time between two polls of the metrics gauges read from the broker and the database (DLQ
    /// depth, active runs and the longest-idle running run per type); `0s` disables them.
    #[arg(long, env = "OPRUN_METRICS_POLL", default_value = "15s", value_parser = parse_duration)]
    pub metrics_poll: Duration,
}

impl MetricsSettings {
    /// The health/metrics address, or `None` when disabled.
    pub fn socket(&self) -> Result<Option<SocketAddr>, String> {
        if self.metrics_addr == "off" {
            return Ok(None);
        }
        self.metrics_addr
            .parse()
            .map(Some)
            .map_err(|e| format!("--metrics-addr {:?}: {e}", self.metrics_addr))
    }
}

/// Bounds of every HTTP listener (the probes and the viewer).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpSettings {
    /// Time an HTTP client may take to send a request's headers (every listener).
    #[arg(long, env = "OPRUN_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// Time after which an HTTP connection with no traffic either way is closed.
    #[arg(long, env = "OPRUN_HTTP_IDLE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Most HTTP connections open at once, per listener; at the cap the listener stops accepting.
    #[arg(long, env = "OPRUN_HTTP_MAX_CONNECTIONS", default_value_t = 512)]
    pub http_max_connections: usize,
}

impl HttpSettings {
    /// The bounds every HTTP listener enforces (a zero timeout or cap counts as the least one).
    pub fn limits(&self) -> crate::http::server::HttpLimits {
        const LEAST: Duration = Duration::from_millis(1);
        crate::http::server::HttpLimits {
            header_read_timeout: self.http_header_timeout.max(LEAST),
            idle_timeout: self.http_idle_timeout.max(LEAST),
            max_connections: self.http_max_connections.max(1),
        }
    }
}

/// The reaper, which fails runs that stopped changing.
#[derive(Debug, Clone, clap::Args)]
pub struct ReaperSettings {
    /// A run with no change for longer than its expected duration × this factor is reaped.
    #[arg(long, env = "OPRUN_STALE_FACTOR", default_value_t = 3.0)]
    pub stale_factor: f64,

    /// Time between two reaper rounds (`0s` disables the reaper).
    #[arg(long, env = "OPRUN_REAPER_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub reaper_interval: Duration,
}

/// The outbox relay, which publishes recorded events and jobs.
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxSettings {
    /// Time the relay waits between polls when idle (commits wake it at once).
    #[arg(long, env = "OPRUN_RELAY_IDLE", default_value = "250ms", value_parser = parse_duration)]
    pub relay_idle: Duration,

    /// Most outbox rows one relay round publishes.
    #[arg(long, env = "OPRUN_RELAY_BATCH", default_value_t = 500)]
    pub relay_batch: i64,
}

/// Jobs: whether new runs are handed to executors, and how refused publishes are retried.
#[derive(Debug, Clone, clap::Args)]
pub struct JobSettings {
    /// Hand each new run's job to executors on `N.jobs` (dispatchOrFail).
    #[arg(long, env = "OPRUN_HAND_OFF_JOBS", default_value_t = true, action = clap::ArgAction::Set)]
    pub hand_off_jobs: bool,

    /// Publishes of one job (1 to 100) the broker may nack (an executor queue refusing it) before its run
    /// is failed with `dispatch.rejected`. Retries wait `--job-retry-base`, doubling, at
    /// most 60 s: with the defaults a run fails about two minutes after its first refusal.
    #[arg(long, env = "OPRUN_JOB_PUBLISH_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_publish_attempts: u32,

    /// First delay before a nacked job is published again (doubles per attempt, capped at 60 s).
    #[arg(long, env = "OPRUN_JOB_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub job_retry_base: Duration,
}

/// A time setting's name from before it took a unit (`--batch-window-ms 5` for
/// `--batch-window 5ms`): still accepted, hidden from `--help` and the settings table, and
/// refused together with the new name.
pub struct OldName<S> {
    /// The old flag, without `--`.
    pub flag: &'static str,
    /// The old environment variable, if there was one.
    pub env: Option<&'static str>,
    /// The id of the argument it stands for.
    pub new: &'static str,
    /// What the old flag's number counted.
    pub unit: Unit,
    /// Puts the old flag's value where the new one goes.
    pub set: fn(&mut S, Duration),
}

/// The unit of an old time flag's number.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// `--batch-window-ms 5`
    Milliseconds,
    /// `--reaper-interval-secs 30`
    Seconds,
}

impl Unit {
    fn of(self, n: u64) -> Duration {
        match self {
            Unit::Milliseconds => Duration::from_millis(n),
            Unit::Seconds => Duration::from_secs(n),
        }
    }

    fn value_name(self) -> &'static str {
        match self {
            Unit::Milliseconds => "MILLISECONDS",
            Unit::Seconds => "SECONDS",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Milliseconds => "milliseconds",
            Unit::Seconds => "seconds",
        }
    }
}

/// Settings with time flags that were renamed.
pub trait OldNames: Sized + 'static {
    /// The old names, each with the setting it stands for.
    const OLD_NAMES: &'static [OldName<Self>];
}

/// Settings `S` parsed under their names and under their [`OldNames`]: what the CLI takes.
#[derive(Debug, Clone)]
pub struct WithOldNames<S>(pub S);

impl<S: OldNames + clap::Args> clap::Args for WithOldNames<S> {
    fn augment_args(command: clap::Command) -> clap::Command {
        S::OLD_NAMES
            .iter()
            .fold(S::augment_args(command), |command, old| {
                command.arg(
                    clap::Arg::new(old.flag)
                        .long(old.flag)
                        .env(old.env)
                        .hide(true)
                        .hide_env_values(true)
                        .value_name(old.unit.value_name())
                        .value_parser(clap::value_parser!(u64))
                        .conflicts_with(old.new)
                        .help(format!(
                            "Old name of the setting `{}`, in {}",
                            old.new,
                            old.unit.name()
                        )),
                )
            })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl<S: OldNames + clap::FromArgMatches> clap::FromArgMatches for WithOldNames<S> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut settings = S::from_arg_matches(matches)?;
        for old in S::OLD_NAMES {
            if let Some(&n) = matches.get_one::<u64>(old.flag) {
                (old.set)(&mut settings, old.unit.of(n));
            }
        }
        Ok(Self(settings))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The default log filter: `info`, without lapin's log line per returned (unroutable) message and
/// Postgres notices below warnings.
pub const DEFAULT_LOG_FILTER: &str =
    "info,lapin::returned_messages=error,sqlx::postgres::notice=warn";

/// How the binary logs (to stderr), and where it exports its spans (every command).
#[derive(Debug, Clone, clap::Args)]
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
    pub otlp_endpoint: Option<SecretUrl>,
}

impl LogSettings {
    /// The OTLP collector to export spans to; `None` (no export) when unset or empty.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_ref()
            .map(SecretUrl::expose_secret)
            .filter(|url| !url.trim().is_empty())
    }
}

/// Passwords of the namespace's least-privilege users (`oprun topology users`). Environment only
/// in practice (a flag would show in `ps`); the values are never printed by `--help` or `Debug`.
#[derive(Debug, Clone, clap::Args)]
pub struct UserPasswords {
    /// Password of `N.producer`.
    #[arg(long, env = "OPRUN_PRODUCER_PASSWORD", hide_env_values = true)]
    pub producer_password: Option<SecretString>,
    /// Password of `N.service`.
    #[arg(long, env = "OPRUN_SERVICE_PASSWORD", hide_env_values = true)]
    pub service_password: Option<SecretString>,
    /// Password of `N.subscriber`.
    #[arg(long, env = "OPRUN_SUBSCRIBER_PASSWORD", hide_env_values = true)]
    pub subscriber_password: Option<SecretString>,
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
        value
            .as_ref()
            .map(|p| p.expose_secret())
            .filter(|p| !p.is_empty())
    }
}

/// Where the run viewer listens and how its tokens are signed (`serve` and `token`).
#[derive(Debug, Clone, clap::Args)]
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
    pub api_secret: Option<SecretString>,
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

    /// The configured `--api-secret`, if any.
    pub fn api_secret(&self) -> Option<&str> {
        self.api_secret.as_ref().map(|s| s.expose_secret())
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

    /// Origins (`https://platform.example.com`, comma-separated) whose pages may read the live
    /// stream `GET /v1/runs/{id}/live` across origins (`Access-Control-Allow-Origin` for them
    /// alone, on that route alone, without credentials), as the Laravel package's progress
    /// component does with a run-scoped `?token=`. Empty (the default): no cross-origin read.
    #[arg(long, env = "OPRUN_VIEWER_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = crate::http::cors::parse_origin)]
    pub viewer_allowed_origins: Vec<String>,
}

impl LiveSettings {
    /// The bounds the viewer enforces.
    pub fn live_limits(&self) -> crate::http::streams::LiveLimits {
        crate::http::streams::LiveLimits {
            per_token: self.live_streams_per_token as usize,
            per_run: self.live_streams_per_run as usize,
            lifetime: self.live_stream_lifetime,
        }
    }

    /// The origins whose pages may read the live stream.
    pub fn allowed_origins(&self) -> crate::http::cors::AllowedOrigins {
        crate::http::cors::AllowedOrigins::new(
            self.viewer_allowed_origins.iter().map(String::as_str),
        )
        .expect("each origin was checked when parsed")
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
            ServeSettings::defaults().live.live_stream_lifetime,
            Duration::from_secs(900)
        );
        assert_eq!(parse_stream_lifetime("1s"), Ok(Duration::from_secs(1)));
        for bad in ["0s", "999ms", "15"] {
            assert!(parse_stream_lifetime(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn live_stream_caps_must_be_below_the_connection_cap() {
        let mut settings = ServeSettings::defaults();
        let limits = settings.live_limits().unwrap();
        assert_eq!((limits.per_token, limits.per_run), (8, 32));
        settings.http.http_max_connections = 32;
        assert!(settings
            .live_limits()
            .unwrap_err()
            .contains("--live-streams-per-run"));
        settings.http.http_max_connections = 8;
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

    #[test]
    fn the_api_secret_and_the_user_passwords_never_reach_debug_output() {
        #[derive(Debug, clap::Parser)]
        struct Secrets {
            #[command(flatten)]
            viewer: ViewerSettings,
            #[command(flatten)]
            passwords: UserPasswords,
        }
        use clap::Parser;
        let parsed = Secrets::try_parse_from([
            "oprun",
            "--api-secret",
            "-viewer-secret-of-at-least-32-bytes",
            "--producer-password",
            "pr0ducer",
            "--service-password",
            "serv1ce",
            "--subscriber-password",
            "subscr1ber",
        ])
        .unwrap();
        let shown = format!("{parsed:?}");
        for secret in ["viewer-secret", "pr0ducer", "serv1ce", "subscr1ber"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(
            parsed.viewer.api_secret(),
            Some("-viewer-secret-of-at-least-32-bytes")
        );
        assert_eq!(
            parsed.passwords.by_env("OPRUN_SERVICE_PASSWORD"),
            Some("serv1ce")
        );
        let settings = ServeSettings::from_flags(&["--api-secret", "t0p-secret"]).unwrap();
        assert!(!format!("{settings:?}").contains("t0p-secret"));
    }

    #[test]
    fn every_default_is_the_one_the_command_line_declares() {
        let s = ServeSettings::defaults();
        assert_eq!(s.metrics.metrics_addr, "127.0.0.1:9187");
        assert_eq!(s.viewer.http_addr, "127.0.0.1:8080");
        assert_eq!(s.batch.batch_window, Duration::from_millis(5));
        assert_eq!(s.http.http_header_timeout, Duration::from_secs(10));
        assert_eq!(s.http.http_idle_timeout, Duration::from_secs(20));
        assert_eq!(s.reaper.reaper_interval, Duration::from_secs(30));
        assert_eq!(s.outbox.relay_idle, Duration::from_millis(250));
        assert_eq!(s.metrics.metrics_poll, Duration::from_secs(15));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.jobs.job_retry_base, Duration::from_secs(1));
        assert_eq!(
            s.retention.inbox_retention,
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(s.retention.prune_interval, Duration::from_secs(60));
        let http = s.http.limits();
        assert_eq!(
            (
                http.header_read_timeout,
                http.idle_timeout,
                http.max_connections
            ),
            (Duration::from_secs(10), Duration::from_secs(20), 512)
        );
    }

    #[test]
    fn time_settings_take_a_unit() {
        let s = ServeSettings::from_flags(&[
            "--batch-window",
            "20ms",
            "--reaper-interval",
            "0s",
            "--shutdown-timeout",
            "2m",
        ])
        .unwrap();
        assert_eq!(s.batch.batch_window, Duration::from_millis(20));
        assert_eq!(s.reaper.reaper_interval, Duration::ZERO);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(120));
        let no_unit = ServeSettings::from_flags(&["--batch-window", "5"]).unwrap_err();
        assert!(no_unit.to_string().contains("missing unit"), "{no_unit}");
    }

    #[test]
    fn the_old_time_flags_still_parse_to_the_same_duration() {
        for (old, number, new, text) in [
            ("--batch-window-ms", "7", "--batch-window", "7ms"),
            (
                "--http-header-timeout-ms",
                "1500",
                "--http-header-timeout",
                "1500ms",
            ),
            (
                "--http-idle-timeout-ms",
                "3000",
                "--http-idle-timeout",
                "3s",
            ),
            ("--reaper-interval-secs", "0", "--reaper-interval", "0s"),
            ("--relay-idle-ms", "50", "--relay-idle", "50ms"),
            ("--metrics-poll-ms", "100", "--metrics-poll", "100ms"),
            ("--shutdown-timeout-secs", "5", "--shutdown-timeout", "5s"),
            ("--job-retry-base-ms", "50", "--job-retry-base", "50ms"),
        ] {
            let by_old = ServeSettings::from_flags(&[old, number]).unwrap();
            let by_new = ServeSettings::from_flags(&[new, text]).unwrap();
            assert_eq!(
                format!("{by_old:?}"),
                format!("{by_new:?}"),
                "{old} {number}"
            );
            assert_ne!(
                format!("{by_old:?}"),
                format!("{:?}", ServeSettings::defaults()),
                "{old} {number} changed nothing"
            );
        }
    }

    #[test]
    fn an_old_time_flag_and_its_new_name_together_are_refused() {
        let both = ServeSettings::from_flags(&["--batch-window", "5ms", "--batch-window-ms", "5"])
            .unwrap_err();
        let message = both.to_string();
        assert!(
            message.contains("--batch-window") && message.contains("--batch-window-ms"),
            "{message}"
        );
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
