//! Which PostgreSQL the bench measures, and what its settings are.
//!
//! By default the bench starts a private cluster of its own ([`crate::private::PrivateDatabase`]:
//! `initdb` of the installed server, in a temporary folder, on the same disk), whose settings are
//! PostgreSQL's defaults, autovacuum on: what a deployment runs. The machine's own server (the
//! global `--database-url`) may be configured otherwise (this machine's runs with autovacuum
//! off); `--postgres machine` measures it instead, `--postgres both` measures both, one after the
//! other, each figure labelled.

use sqlx::PgPool;

/// The servers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PostgresChoice {
    /// A private cluster with PostgreSQL's defaults (autovacuum on).
    Private,
    /// The server of `--database-url`.
    Machine,
    /// The private cluster, then the machine's server.
    Both,
}

impl PostgresChoice {
    /// The servers, in the order they are measured.
    pub fn targets(self) -> &'static [Target] {
        match self {
            Self::Private => &[Target::Private],
            Self::Machine => &[Target::Machine],
            Self::Both => &[Target::Private, Target::Machine],
        }
    }
}

/// One server the bench runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The private cluster.
    Private,
    /// The machine's server.
    Machine,
}

impl Target {
    /// The label in the output (`postgres` in the JSON line).
    pub fn label(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Machine => "machine",
        }
    }
}

/// Settings that say nothing about performance (locale, paths, logging, names), left out of the
/// description.
const IRRELEVANT: [&str; 21] = [
    "application_name",
    "client_encoding",
    "cluster_name",
    "config_file",
    "data_directory",
    "DateStyle",
    "default_text_search_config",
    "dynamic_shared_memory_type",
    "external_pid_file",
    "hba_file",
    "ident_file",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "listen_addresses",
    "log_timezone",
    "port",
    "ssl_cert_file",
    "ssl_key_file",
    "unix_socket_directories",
];

/// A server as measured.
#[derive(Debug, Clone)]
pub struct Server {
    /// Which one.
    pub target: Target,
    /// `server_version`.
    pub version: String,
    /// Whether autovacuum runs.
    pub autovacuum: bool,
    /// Settings not at PostgreSQL's built-in defaults (set in its configuration or on its
    /// command line), as `name=value`.
    pub settings: Vec<String>,
}

impl Server {
    /// Reads the description of the server `pool` is on.
    pub async fn describe(target: Target, pool: &PgPool) -> Self {
        let version = sqlx::query_scalar("SHOW server_version")
            .fetch_one(pool)
            .await
            .unwrap_or_else(|_| "?".to_owned());
        let autovacuum = operation_runs::store::retention::autovacuum_on(pool)
            .await
            .unwrap_or(false);
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, current_setting(name) FROM pg_settings
             WHERE source NOT IN ('default', 'override', 'client', 'session')
               AND setting IS DISTINCT FROM boot_val
             ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        Self {
            target,
            version,
            autovacuum,
            settings: settings
                .into_iter()
                .filter(|(name, _)| !IRRELEVANT.contains(&name.as_str()))
                .filter(|(name, _)| name != "TimeZone")
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
        }
    }

    /// One line for the table: which server, its version, autovacuum, what differs from the
    /// defaults.
    pub fn line(&self) -> String {
        let what = match self.target {
            Target::Private => {
                "private cluster started by the bench (initdb, PostgreSQL's defaults)"
            }
            Target::Machine => "the machine's own server (--database-url)",
        };
        format!(
            "postgres: {} — {what}, PostgreSQL {}, autovacuum {}; not at the built-in defaults: {}\n",
            self.target.label(),
            self.version,
            if self.autovacuum { "on" } else { "off" },
            if self.settings.is_empty() {
                "nothing".to_owned()
            } else {
                self.settings.join(" ")
            }
        )
    }
}
