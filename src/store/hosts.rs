//! Several hosts in one database URL, libpq's multi-host form
//! (`postgres://u:p@h1:p1,h2:p2/db?target_session_attrs=read-write`): the service follows the
//! primary of an HA pair (decision 0094).
//!
//! sqlx connects to one host, so the host list is split here into one set of connect options
//! per host. A pool on several hosts ([`HostList::pool`]) has a watcher task that finds the
//! first host answering as a primary (trying the hosts in order, the next when one fails or
//! only reads) and points the pool's connect options at it; every new connection checks it
//! accepts writes (else it is closed and the watcher asked to look again), and every pooled
//! connection older than the last switch is closed instead of handed out, so the pool
//! reconnects to the new primary. The watcher keeps one connection to the primary and asks it
//! [`WATCH_INTERVAL`] apart whether it still accepts writes; a lost connection or a demotion
//! sends it looking again. A URL with one host and no `target_session_attrs` is the plain sqlx
//! pool it always was.
//!
//! Passwords: a host list entry holds no credentials (they are in the user part, split off
//! first), so errors and logs name hosts only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;

use crate::secret::Authority;
use crate::store::StoreError;

/// How often the watcher asks the primary whether it still accepts writes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long connecting to one host, or one check, may take before the next host is tried.
pub const HOST_TIMEOUT: Duration = Duration::from_secs(3);
/// The pause before trying the whole list again when no host answers as wanted.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Port of a host given without one (libpq's default).
const DEFAULT_PORT: u16 = 5432;

/// True when the server accepts writes: not a standby in recovery, not read-only.
pub const ACCEPTS_WRITES: &str =
    "SELECT NOT pg_is_in_recovery() AND NOT current_setting('transaction_read_only')::bool";

/// The hosts of a database URL, in order, with what a connection must find there.
#[derive(Clone)]
pub struct HostList {
    /// One single-host URL per host (password included: never printed).
    urls: Vec<String>,
    /// `host:port` per host, for logs and errors.
    names: Vec<String>,
    /// Only a server that accepts writes is taken (`target_session_attrs=read-write`).
    read_write: bool,
}

impl std::fmt::Debug for HostList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostList")
            .field("hosts", &self.names)
            .field("read_write", &self.read_write)
            .finish()
    }
}

/// Splits `url`'s host list. Several hosts default to `target_session_attrs=read-write` (the
/// service writes; libpq's own default is `any`); one host to `any`. `read-write` and `primary`
/// mean the same here (not in recovery, not read-only); `any` takes the first host that
/// answers. Other values are refused.
pub fn parse(url: &str) -> Result<HostList, StoreError> {
    let bad = |why: String| StoreError::Database(sqlx::Error::Configuration(why.into()));
    let Authority {
        scheme,
        user,
        hosts,
        tail,
    } = Authority::split(url)
        .ok_or_else(|| bad("database URL: no scheme (postgres://…)".into()))?;
    let user = user.map(|u| format!("{u}@")).unwrap_or_default();
    let mut entries = Vec::new();
    for entry in hosts.split(',') {
        entries.push(parse_host(entry).map_err(bad)?);
    }
    // A fragment means nothing to a database URL.
    let tail = tail.split('#').next().unwrap_or("");
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let mut attrs = None;
    let mut kept = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => attrs = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    let read_write = match attrs.as_deref() {
        None => entries.len() > 1,
        Some("read-write" | "primary") => true,
        Some("any") => false,
        Some(other) => {
            return Err(bad(format!(
                "database URL: target_session_attrs={other} is not supported (read-write, \
                 primary or any)"
            )))
        }
    };
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let names: Vec<String> = entries.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    let urls = names
        .iter()
        .map(|name| format!("{scheme}://{user}{name}{path}{query}"))
        .collect();
    Ok(HostList {
        urls,
        names,
        read_write,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn parse_host(entry: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("database URL: unclosed '[' in host {entry:?}"))?;
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (entry.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("database URL: an empty host in the host list".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("database URL: bad port {p:?} of host {host}"))?,
    };
    Ok((host, port))
}

impl HostList {
    /// `host:port` of each host, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether only a server accepting writes is taken.
    pub fn read_write(&self) -> bool {
        self.read_write
    }

    /// One host, any server: nothing to choose, sqlx's own pool as it is.
    fn is_plain(&self) -> bool {
        self.urls.len() == 1 && !self.read_write
    }

    /// The connect options of each host, in order.
    fn options(&self) -> Result<Vec<PgConnectOptions>, StoreError> {
        self.urls
            .iter()
            .map(|u| u.parse::<PgConnectOptions>().map_err(StoreError::from))
            .collect()
    }

    /// The single-host URL of the first host that answers as wanted (the only one when the
    /// list is plain, unasked): what a one-shot connection (migrating, creating the database)
    /// uses. A host whose database does not exist yet is asked on `postgres`.
    pub async fn primary_url(&self) -> Result<String, StoreError> {
        if self.is_plain() {
            return Ok(self.urls[0].clone());
        }
        let options = self.options()?;
        let (index, conn) = find(&options, &self.names, self.read_write, true).await?;
        let _ = conn.close().await;
        Ok(self.urls[index].clone())
    }

    /// A lazy pool of `pool` on these hosts, each host's options passed through `adjust`
    /// (an application name, …). On several hosts, or with `read-write`, the pool follows
    /// the primary (see the module's documentation); its watcher stops when the pool is
    /// closed. Must be called within a Tokio runtime.
    pub fn pool(
        &self,
        pool: PgPoolOptions,
        adjust: impl Fn(PgConnectOptions) -> PgConnectOptions,
    ) -> Result<PgPool, StoreError> {
        let options: Vec<PgConnectOptions> = self.options()?.into_iter().map(adjust).collect();
        if self.is_plain() {
            return Ok(pool.connect_lazy_with(options[0].clone()));
        }
        let follow = Arc::new(Follow::default());
        let read_write = self.read_write;
        let on_connect = follow.clone();
        let on_acquire = follow.clone();
        let on_release = follow.clone();
        let pool = pool
            .after_connect(move |conn, _meta| {
                let follow = on_connect.clone();
                Box::pin(async move {
                    if read_write && !accepts_writes(conn).await? {
                        follow.look_again.notify_one();
                        return Err(sqlx::Error::Io(std::io::Error::other(
                            "the server does not accept writes (a standby, or read-only)",
                        )));
                    }
                    Ok(())
                })
            })
            .before_acquire(move |_conn, meta| {
                let keep = !on_acquire.predates_switch(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .after_release(move |_conn, meta| {
                let keep = !on_release.predates_switch(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .connect_lazy_with(options[0].clone());
        tokio::spawn(watch(
            pool.clone(),
            options,
            self.names.clone(),
            read_write,
            follow,
        ));
        Ok(pool)
    }
}

/// What a following pool's hooks share with its watcher.
struct Follow {
    /// Its clock's start.
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last time the primary was lost or changed (0: never).
    switched: AtomicU64,
    /// Wakes the watcher before its next check (a new connection found no primary).
    look_again: Notify,
}

impl Default for Follow {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            switched: AtomicU64::new(0),
            look_again: Notify::new(),
        }
    }
}

impl Follow {
    fn mark_switch(&self) {
        let now = self.epoch.elapsed().as_nanos().max(1) as u64;
        self.switched.store(now, Ordering::Relaxed);
    }

    /// True when the connection was opened before the last switch: it may be on a lost or
    /// demoted server, so it is closed rather than used (SQLSTATE 25006 or a broken pipe next).
    fn predates_switch(&self, age: Duration) -> bool {
        let switched = self.switched.load(Ordering::Relaxed);
        if switched == 0 {
            return false;
        }
        let opened = self.epoch.elapsed().saturating_sub(age);
        opened.as_nanos() < u128::from(switched)
    }
}

/// Whether the server of `conn` accepts writes.
async fn accepts_writes(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(ACCEPTS_WRITES).fetch_one(conn).await
}

/// Whether the server of `conn` answers as wanted, within [`HOST_TIMEOUT`].
async fn answers(conn: &mut PgConnection, read_write: bool) -> bool {
    let check = async {
        if read_write {
            accepts_writes(conn).await
        } else {
            sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .map(|_| true)
        }
    };
    matches!(
        tokio::time::timeout(HOST_TIMEOUT, check).await,
        Ok(Ok(true))
    )
}

/// The first host, in order, that answers as wanted, with a connection to it. When none does:
/// the last connection error, or [`StoreError::NoPrimary`] when they answered read-only.
/// `missing_database_on_postgres`: a server that says the database does not exist is asked
/// on its `postgres` database instead (for migrating, which creates it).
async fn find(
    options: &[PgConnectOptions],
    names: &[String],
    read_write: bool,
    missing_database_on_postgres: bool,
) -> Result<(usize, PgConnection), StoreError> {
    let mut last = None;
    for (index, host) in options.iter().enumerate() {
        let mut connected = connect(host).await;
        if missing_database_on_postgres {
            if let Err(sqlx::Error::Database(e)) = &connected {
                if e.code().as_deref() == Some("3D000") {
                    connected = connect(&host.clone().database("postgres")).await;
                }
            }
        }
        match connected {
            Ok(mut conn) => {
                if answers(&mut conn, read_write).await {
                    return Ok((index, conn));
                }
                let _ = conn.close().await;
            }
            Err(e) => {
                tracing::debug!(host = %names[index], error = %e, "database host did not answer");
                last = Some(e);
            }
        }
    }
    Err(match last {
        Some(e) if !read_write => StoreError::from(e),
        _ => StoreError::NoPrimary(names.join(",")),
    })
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(HOST_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(connected) => connected,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// The watcher of a following pool: finds the primary, points the pool at it, watches it,
/// and looks again when it is lost or demoted; until the pool is closed.
async fn watch(
    pool: PgPool,
    options: Vec<PgConnectOptions>,
    names: Vec<String>,
    read_write: bool,
    follow: Arc<Follow>,
) {
    let mut current = 0;
    let mut reported_none = false;
    loop {
        let found = tokio::select! {
            _ = pool.close_event() => return,
            found = find(&options, &names, read_write, false) => found,
        };
        let mut conn = match found {
            Ok((index, conn)) => {
                if index != current {
                    pool.set_connect_options(options[index].clone());
                    follow.mark_switch();
                    tracing::warn!(
                        host = %names[index],
                        previous = %names[current],
                        "database: following the primary to another host"
                    );
                    current = index;
                } else if reported_none {
                    tracing::warn!(host = %names[index], "database: the primary answers again");
                }
                reported_none = false;
                conn
            }
            Err(e) => {
                if !reported_none {
                    tracing::warn!(error = %e, "database: no host answers as a primary");
                    reported_none = true;
                }
                tokio::select! {
                    _ = pool.close_event() => return,
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = pool.close_event() => {
                    let _ = conn.close().await;
                    return;
                }
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = follow.look_again.notified() => {}
            }
            if !answers(&mut conn, read_write).await {
                break;
            }
        }
        // Lost or demoted: connections opened until now may be on it.
        follow.mark_switch();
        tracing::warn!(host = %names[current], "database: the primary stopped answering as one");
        let _ = conn.close_hard().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hosts_are_split_into_one_url_each_and_default_to_read_write() {
        let list =
            parse("postgres://app:s3cret@db1:5433,db2,[::1]:6000/runs?sslmode=require").unwrap();
        assert_eq!(list.names(), ["db1:5433", "db2:5432", "[::1]:6000"]);
        assert!(list.read_write());
        assert_eq!(
            list.urls,
            [
                "postgres://app:s3cret@db1:5433/runs?sslmode=require",
                "postgres://app:s3cret@db2:5432/runs?sslmode=require",
                "postgres://app:s3cret@[::1]:6000/runs?sslmode=require",
            ]
        );
        list.options().unwrap();
    }

    #[test]
    fn target_session_attrs_is_read_and_left_out_of_each_url() {
        let list =
            parse("postgres://u@h1:1,h2:2/db?target_session_attrs=any&application_name=x").unwrap();
        assert!(!list.read_write());
        assert_eq!(list.urls[1], "postgres://u@h2:2/db?application_name=x");
        let one = parse("postgres://u@h1/db?target_session_attrs=read-write").unwrap();
        assert!(one.read_write() && !one.is_plain());
        assert_eq!(one.urls, ["postgres://u@h1:5432/db"]);
        assert!(parse("postgres://u@h1/db?target_session_attrs=primary")
            .unwrap()
            .read_write());
    }

    #[test]
    fn one_host_without_attributes_is_the_plain_pool() {
        let list = parse("postgres://postgres:pw@localhost:5432/operation_runs").unwrap();
        assert!(list.is_plain());
        assert!(parse("postgres://localhost").unwrap().is_plain());
    }

    #[test]
    fn a_bad_host_list_is_refused_without_showing_the_password() {
        for url in [
            "postgres://u:hunter2@h1:5432,/db",
            "postgres://u:hunter2@h1:x/db",
            "postgres://u:hunter2@[::1/db",
            "postgres://u:hunter2@h1,h2/db?target_session_attrs=standby",
            "u:hunter2@h1",
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[test]
    fn a_password_with_at_and_comma_stays_in_the_user_part() {
        let list = parse("postgres://u:p%40w%2Cx@h1:1,h2:2/db").unwrap();
        assert_eq!(list.names(), ["h1:1", "h2:2"]);
        assert_eq!(list.urls[0], "postgres://u:p%40w%2Cx@h1:1/db");
        assert!(!format!("{list:?}").contains("p%40w"));
    }

    #[test]
    fn a_connection_opened_before_the_switch_is_closed() {
        let follow = Follow::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!follow.predates_switch(Duration::from_millis(10)));
        follow.mark_switch();
        assert!(follow.predates_switch(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!follow.predates_switch(Duration::from_millis(10)));
    }
}
