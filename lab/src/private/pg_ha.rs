//! A PostgreSQL HA pair of the lab's own: pg_auto_failover (`pg_autoctl`, Debian's
//! `postgresql-15-auto-failover`) with its monitor and two data nodes, synchronous replication
//! (both nodes in the write quorum) and automatic failover (decision 0093).
//!
//! Everything lives in one folder (default `$TMPDIR/oprun-pg-ha`): `ports` (monitor, node1,
//! node2), the three data directories `monitor`, `node1`, `node2`, their `pg_autoctl run` logs,
//! and `pg_autoctl`'s own configuration, state and pid files (`XDG_*` pointed into the folder),
//! so that `down` removes every trace. Servers listen on 127.0.0.1 only, on their own ports
//! (default 5881..5883), never the machine's 5432. Run as root, `pg_autoctl` (which refuses
//! root) and the servers run as the `postgres` user.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{running_as_root, tool};
use crate::LabError;

/// The monitor's port of `scripts/pg-ha up`; the nodes take the next two.
pub const DEFAULT_PORT: u16 = 5881;
/// The data nodes, in the order of the connection URL.
pub const NODES: [&str; 2] = ["node1", "node2"];
/// How long the pair may take to reach primary + secondary (about 25 s here).
const UP_DEADLINE: Duration = Duration::from_secs(180);
/// How long `down` waits for a `pg_autoctl` to stop before SIGKILLing it.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The monitor's health checks (milliseconds, retries): every second, one retry after half a
/// second, a node unhealthy after 5 s without a report; and the wait before a standby is
/// promoted in place of a primary that does not answer, 8 s (default 30 s), which must stay
/// above the nodes' [`NETWORK_PARTITION_TIMEOUT_S`]: a primary cut off from the monitor stops
/// itself before its standby is promoted, so there are never two primaries.
const MONITOR_SETTINGS: [(&str, u32); 6] = [
    ("health_check_period", 1000),
    ("health_check_timeout", 1000),
    ("health_check_max_retries", 1),
    ("health_check_retry_delay", 500),
    ("node_considered_unhealthy_timeout", 5000),
    ("primary_demote_timeout", 8000),
];
/// Seconds a node's keeper waits, cut off from the monitor and its standby, before it stops its
/// primary (`timeout.network_partition_timeout`, default 20 s); below the monitor's
/// `primary_demote_timeout`.
const NETWORK_PARTITION_TIMEOUT_S: u32 = 5;

/// The folder of `scripts/pg-ha up`: `oprun-pg-ha` under the system's temporary directory.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("oprun-pg-ha")
}

/// One node as the monitor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// `node1`, `node2`.
    pub name: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The state it reports (`primary`, `secondary`, `wait_primary`, `catchingup`, …).
    pub reported: String,
    /// The state the monitor assigned it.
    pub assigned: String,
}

impl NodeState {
    /// Reported and assigned primary.
    pub fn is_primary(&self) -> bool {
        self.reported == "primary" && self.assigned == "primary"
    }

    /// Reported and assigned a state that takes writes: `single` (no standby yet),
    /// `wait_primary` (its standby is away or catching up) or `primary`.
    pub fn is_writable(&self) -> bool {
        self.reported == self.assigned
            && matches!(
                self.reported.as_str(),
                "single" | "wait_primary" | "primary"
            )
    }
}

/// The monitor and two data nodes in a folder.
#[derive(Debug)]
pub struct PgHaPair {
    dir: PathBuf,
    /// Monitor, node1, node2.
    ports: [u16; 3],
    user: Option<&'static str>,
}

impl PgHaPair {
    /// Brings the pair in `dir` up: creates it (ports from `first_port`) if the folder holds
    /// none, starts whichever `pg_autoctl run` is not running, waits for a primary and a
    /// secondary. Idempotent.
    pub async fn up(dir: &Path, first_port: u16) -> Result<Self, LabError> {
        let pair = match Self::open(dir)? {
            Some(pair) => pair,
            None => {
                let port = |i: u16| {
                    first_port
                        .checked_add(i)
                        .ok_or_else(|| LabError::Invalid(format!("--base-port {first_port}")))
                };
                let pair = Self {
                    dir: dir.to_owned(),
                    ports: [port(0)?, port(1)?, port(2)?],
                    user: running_as_root().then_some("postgres"),
                };
                for folder in ["config", "share", "run"] {
                    std::fs::create_dir_all(dir.join(folder))?;
                }
                std::fs::write(
                    dir.join("ports"),
                    format!("{} {} {}\n", pair.ports[0], pair.ports[1], pair.ports[2]),
                )?;
                if let Some(user) = pair.user {
                    tool::run(None, &[], "chown", &["-R", user, &pair.path("")])
                        .await
                        .map_err(LabError::Failed)?;
                }
                pair
            }
        };
        pair.start_all().await?;
        Ok(pair)
    }

    /// The pair described in `dir`, if there is one (running or not).
    pub fn open(dir: &Path) -> Result<Option<Self>, LabError> {
        let Ok(listing) = std::fs::read_to_string(dir.join("ports")) else {
            return Ok(None);
        };
        let bad = || LabError::Failed(format!("{}/ports: bad line {listing:?}", dir.display()));
        let ports: Vec<u16> = listing
            .split_whitespace()
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let ports: [u16; 3] = ports.try_into().map_err(|_| bad())?;
        Ok(Some(Self {
            dir: dir.to_owned(),
            ports,
            user: running_as_root().then_some("postgres"),
        }))
    }

    /// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/DATABASE?target_session_attrs=read-write`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
            self.ports[1], self.ports[2]
        )
    }

    /// The monitor's URL (the `pg_auto_failover` database).
    fn monitor_url(&self) -> String {
        format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.ports[0]
        )
    }

    async fn start_all(&self) -> Result<(), LabError> {
        let started = Instant::now();
        if !self.created("monitor") {
            eprintln!("pg-ha: creating the monitor on 127.0.0.1:{}", self.ports[0]);
            self.autoctl(&[
                "create",
                "monitor",
                "--pgctl",
                &pg_ctl()?,
                "--pgdata",
                &self.path("monitor"),
                "--pgport",
                &self.ports[0].to_string(),
                "--hostname",
                "127.0.0.1",
                "--auth",
                "trust",
                "--no-ssl",
            ])
            .await?;
        }
        self.run_unless_running("monitor").await?;
        self.wait_for(|_| true, "the monitor to answer").await?;
        self.tune_monitor().await?;
        for (i, node) in NODES.iter().enumerate() {
            if !self.created(node) {
                let port = self.ports[i + 1];
                eprintln!("pg-ha: creating {node} on 127.0.0.1:{port}");
                self.autoctl(&[
                    "create",
                    "postgres",
                    "--pgctl",
                    &pg_ctl()?,
                    "--pgdata",
                    &self.path(node),
                    "--pgport",
                    &port.to_string(),
                    "--hostname",
                    "127.0.0.1",
                    "--listen",
                    "127.0.0.1",
                    "--name",
                    node,
                    "--dbname",
                    "postgres",
                    "--auth",
                    "trust",
                    "--no-ssl",
                    "--monitor",
                    &self.monitor_url(),
                    // Both nodes in the write quorum: the primary's commits wait for the
                    // standby (synchronous_standby_names = 'ANY 1 (…)').
                    "--replication-quorum",
                    "true",
                    "--candidate-priority",
                    "50",
                ])
                .await?;
                self.autoctl(&[
                    "config",
                    "set",
                    "--pgdata",
                    &self.path(node),
                    "timeout.network_partition_timeout",
                    &NETWORK_PARTITION_TIMEOUT_S.to_string(),
                ])
                .await?;
            }
            self.run_unless_running(node).await?;
            // The second node copies the first (pg_basebackup): the first must be writable
            // (`single` while alone).
            let ready = |nodes: &[NodeState]| nodes.iter().any(NodeState::is_writable);
            self.wait_for(ready, "a primary").await?;
        }
        self.wait_for(pair_ready, "a primary and a secondary")
            .await?;
        eprintln!(
            "pg-ha: primary and secondary up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Shorter health checks than pg_auto_failover's defaults (a check every 5 s, a node
    /// unhealthy after 20 s), so that the loss of the primary is acted on within seconds on one
    /// machine (measured in decision 0093). Applied on every `up`; the monitor reloads them.
    async fn tune_monitor(&self) -> Result<(), LabError> {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.ports[0]
        );
        let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&url).await?;
        for (name, value) in MONITOR_SETTINGS {
            sqlx::query(&format!("ALTER SYSTEM SET pgautofailover.{name} = {value}"))
                .execute(&mut conn)
                .await?;
        }
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut conn)
            .await?;
        sqlx::Connection::close(conn).await?;
        Ok(())
    }

    fn created(&self, name: &str) -> bool {
        self.dir.join(name).join("PG_VERSION").exists()
    }

    /// Starts `pg_autoctl run` for `name` (detached, its output in `name.log`) unless it runs.
    async fn run_unless_running(&self, name: &str) -> Result<(), LabError> {
        if self.is_running(name).await {
            return Ok(());
        }
        eprintln!("pg-ha: starting {name}");
        tool::spawn_detached(
            self.user,
            &self.env(),
            "pg_autoctl",
            &["run", "--pgdata", &self.path(name)],
            &self.dir.join(format!("{name}.log")),
        )
        .map_err(LabError::Failed)
    }

    /// Whether the `pg_autoctl` of `name` runs (`pg_autoctl status`).
    pub async fn is_running(&self, name: &str) -> bool {
        self.autoctl(&["status", "--pgdata", &self.path(name)])
            .await
            .is_ok()
    }

    /// Waits until the monitor's state satisfies `ready`.
    async fn wait_for(
        &self,
        ready: impl Fn(&[NodeState]) -> bool,
        what: &str,
    ) -> Result<Vec<NodeState>, LabError> {
        let deadline = Instant::now() + UP_DEADLINE;
        loop {
            let last = match self.nodes().await {
                Ok(nodes) if ready(&nodes) => return Ok(nodes),
                Ok(nodes) => format!("{nodes:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(LabError::Failed(format!(
                    "pg-ha: no {what} within {UP_DEADLINE:?}; last: {last} (logs in {})",
                    self.dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The data nodes as the monitor reports them (`pg_autoctl show state --json`).
    pub async fn nodes(&self) -> Result<Vec<NodeState>, LabError> {
        let json = self
            .autoctl(&["show", "state", "--json", "--pgdata", &self.path("monitor")])
            .await?;
        parse_state(&json)
    }

    /// The node the monitor reports writable, if one is.
    pub async fn primary(&self) -> Result<Option<NodeState>, LabError> {
        Ok(self.nodes().await?.into_iter().find(NodeState::is_writable))
    }

    /// A planned switch (`pg_autoctl perform failover`): the secondary is promoted, the
    /// primary rejoins as its standby. Returns once a primary and a secondary are back, with
    /// the new primary.
    pub async fn failover(&self) -> Result<NodeState, LabError> {
        self.autoctl(&["perform", "failover", "--pgdata", &self.path("monitor")])
            .await?;
        let nodes = self
            .wait_for(pair_ready, "a primary and a secondary after the failover")
            .await?;
        nodes
            .into_iter()
            .find(NodeState::is_primary)
            .ok_or_else(|| LabError::Failed("no primary after the failover".into()))
    }

    /// One line per node (name, address, reported and assigned state) and `primary: NAME
    /// 127.0.0.1:PORT` (or `primary: none`).
    pub async fn status(&self) -> Result<String, LabError> {
        let nodes = self.nodes().await?;
        let mut lines: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    "{} 127.0.0.1:{} reported={} assigned={}",
                    n.name, n.port, n.reported, n.assigned
                )
            })
            .collect();
        lines.push(match nodes.iter().find(|n| n.is_writable()) {
            Some(p) => format!("primary: {} 127.0.0.1:{}", p.name, p.port),
            None => "primary: none".to_owned(),
        });
        Ok(lines.join("\n"))
    }

    /// A pair of the caller's own in a new temporary folder, on free ports (a chaos run's):
    /// created and up; removed with everything in it when dropped.
    pub async fn up_temporary() -> Result<TemporaryPair, LabError> {
        let dir = std::env::temp_dir().join(format!(
            "oprun-pg-ha-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ));
        let first_port = free_run_of_ports(3)?;
        // Removed on every path out, the half-built pair too.
        let pair = TemporaryPair(Self {
            dir: dir.clone(),
            ports: [first_port, first_port + 1, first_port + 2],
            user: running_as_root().then_some("postgres"),
        });
        Self::up(&dir, first_port).await?;
        Ok(pair)
    }

    /// SIGKILLs node `name` as a crashed machine would lose it, every process at once: its
    /// `pg_autoctl`'s process group and its PostgreSQL's (the postmaster leads a group of its
    /// own with all its backends: a backend or WAL sender that outlived a killed postmaster
    /// would go on sending WAL, which a crashed machine does not).
    pub async fn kill_node(&self, name: &str) -> Result<(), LabError> {
        let [postmaster, autoctl] = self.pid_files(name);
        let targets: Vec<String> = [read_pid(&postmaster), read_pid(&autoctl)]
            .into_iter()
            .flatten()
            .filter_map(process_group)
            .map(|group| format!("-{group}"))
            .collect();
        if targets.is_empty() {
            return Err(LabError::Failed(format!("pg-ha: {name}: nothing runs")));
        }
        let mut args = vec!["-KILL", "--"];
        args.extend(targets.iter().map(String::as_str));
        let _ = tool::run(None, &[], "kill", &args).await;
        Ok(())
    }

    /// Stops (SIGSTOP) the primary `primary`'s WAL sender, as a standby falling behind on a
    /// slow network: the WAL stays on the primary, unsent (stopping the standby's receiver
    /// instead would not do: what was sent waits in its socket and arrives all the same). Its
    /// pid, to kill it with its node ([`Self::kill_stalled`]). With synchronous replication the primary's
    /// commits then wait; without, they go on and only the primary has them.
    pub async fn stall_sender(&self, primary: &NodeState) -> Result<u32, LabError> {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            primary.port
        );
        let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&url).await?;
        let pid: Option<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_replication ORDER BY pid LIMIT 1")
                .fetch_optional(&mut conn)
                .await?;
        sqlx::Connection::close(conn).await?;
        let pid = pid
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| LabError::Failed(format!("{}: no WAL sender", primary.name)))?;
        tool::run(None, &[], "kill", &["-STOP", &pid.to_string()])
            .await
            .map_err(LabError::Failed)?;
        Ok(pid)
    }

    /// SIGKILLs the WAL sender stopped by [`Self::stall_sender`] with its node (measured: one
    /// continued instead, even right after its node's groups were SIGKILLed, still sent its
    /// WAL to the standby, and nothing was lost).
    pub async fn kill_stalled(&self, pid: u32) {
        let _ = tool::run(None, &[], "kill", &["-KILL", &pid.to_string()]).await;
    }

    /// Starts node `name`'s `pg_autoctl run` again (it rejoins as a standby).
    pub async fn restart_node(&self, name: &str) -> Result<(), LabError> {
        self.run_unless_running(name).await
    }

    /// Waits until the monitor reports a writable node other than `old` (the standby promoted);
    /// that node.
    pub async fn wait_for_new_primary(&self, old: &str) -> Result<NodeState, LabError> {
        let promoted = |nodes: &[NodeState]| nodes.iter().any(|n| n.name != old && n.is_writable());
        let nodes = self.wait_for(promoted, "a new primary").await?;
        Ok(nodes
            .into_iter()
            .find(|n| n.name != old && n.is_writable())
            .expect("just waited for it"))
    }

    /// Waits until a primary and a secondary are settled again.
    pub async fn wait_until_paired(&self) -> Result<(), LabError> {
        self.wait_for(pair_ready, "a primary and a secondary")
            .await?;
        Ok(())
    }

    /// Takes both nodes out of the write quorum (`pg_autoctl set node replication-quorum
    /// false`): the primary then commits without waiting for its standby — asynchronous
    /// replication.
    pub async fn replicate_asynchronously(&self) -> Result<(), LabError> {
        for node in NODES {
            self.autoctl(&[
                "set",
                "node",
                "replication-quorum",
                "false",
                "--pgdata",
                &self.path(node),
            ])
            .await?;
        }
        self.wait_until_paired().await
    }

    /// The `synchronous_standby_names` the primary runs with now (`''`: asynchronous).
    pub async fn synchronous_standby_names(&self) -> Result<String, LabError> {
        let url = self.url("postgres");
        let pool = operation_runs::store::connect_lazy(&url, 1)?;
        let names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok(names)
    }

    /// Stops the data nodes and the monitor, then removes the folder.
    pub async fn down(self) -> Result<(), LabError> {
        for name in NODES.iter().chain(&["monitor"]) {
            self.stop(name).await;
        }
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }

    /// `pg_autoctl stop --fast` for `name`, then waits for its processes to go; SIGKILLs
    /// them when they outlive [`STOP_DEADLINE`].
    async fn stop(&self, name: &str) {
        if !self.created(name) {
            return;
        }
        let pgdata = self.path(name);
        let pid_files = self.pid_files(name);
        let _ = self.autoctl(&["stop", "--fast", "--pgdata", &pgdata]).await;
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if pid_files.iter().all(|f| !running_pid(f)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for file in &pid_files {
            if let Some(pid) = read_pid(file) {
                eprintln!("pg-ha: {name}: SIGKILL {pid} (did not stop)");
                let _ = tool::run(None, &[], "kill", &["-KILL", &pid.to_string()]).await;
            }
        }
    }

    /// The postmaster's and the `pg_autoctl`'s pid files of `name`.
    fn pid_files(&self, name: &str) -> [PathBuf; 2] {
        [
            self.dir.join(name).join("postmaster.pid"),
            self.dir
                .join("run/pg_autoctl")
                .join(self.path(name).trim_start_matches('/'))
                .join("pg_autoctl.pid"),
        ]
    }

    /// `pg_autoctl args…` as the servers' user, with the folder's `XDG_*`.
    async fn autoctl(&self, args: &[&str]) -> Result<String, LabError> {
        tool::run(self.user, &self.env(), "pg_autoctl", args)
            .await
            .map_err(LabError::Failed)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("XDG_CONFIG_HOME", self.path("config")),
            ("XDG_DATA_HOME", self.path("share")),
            ("XDG_RUNTIME_DIR", self.path("run")),
            // pg_autoctl's backups and the servers' HOME stay in the folder too.
            ("HOME", self.path("")),
        ];
        // Which server `pg_autoctl` finds for its monitor extension and tools.
        env.extend(pg_config().map(|p| ("PG_CONFIG", p)));
        env
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

/// A pair in a temporary folder: every process of it SIGKILLed and the folder removed when
/// dropped, whatever happened (a chaos run's, like its private PostgreSQL).
#[derive(Debug)]
pub struct TemporaryPair(PgHaPair);

impl std::ops::Deref for TemporaryPair {
    type Target = PgHaPair;
    fn deref(&self) -> &PgHaPair {
        &self.0
    }
}

impl Drop for TemporaryPair {
    fn drop(&mut self) {
        for name in NODES.iter().chain(&["monitor"]) {
            for file in self.0.pid_files(name) {
                let Some(pid) = read_pid(&file).filter(|_| running_pid(&file)) else {
                    continue;
                };
                let target = match process_group(pid) {
                    Some(group) => format!("-{group}"),
                    None => pid.to_string(),
                };
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &target])
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0.dir);
    }
}

/// The first of `n` consecutive ports free now on 127.0.0.1.
fn free_run_of_ports(n: u16) -> Result<u16, LabError> {
    for _ in 0..50 {
        let first = super::free_port()?;
        let Some(last) = first.checked_add(n - 1) else {
            continue;
        };
        let held: Result<Vec<_>, _> = (first..=last)
            .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return Ok(first);
        }
    }
    Err(LabError::Failed(format!("no {n} consecutive free ports")))
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

/// A primary and a synchronous secondary, both settled.
fn pair_ready(nodes: &[NodeState]) -> bool {
    nodes.len() == 2
        && nodes.iter().any(NodeState::is_primary)
        && nodes
            .iter()
            .any(|n| n.reported == "secondary" && n.assigned == "secondary")
}

/// `pg_ctl` of the newest installed server.
fn pg_ctl() -> Result<String, LabError> {
    Ok(super::database::newest_server_bin()?
        .join("pg_ctl")
        .to_string_lossy()
        .into_owned())
}

fn pg_config() -> Option<String> {
    let bin = super::database::newest_server_bin().ok()?.join("pg_config");
    bin.exists().then(|| bin.to_string_lossy().into_owned())
}

fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether the first line of `file` names a live process.
fn running_pid(file: &Path) -> bool {
    read_pid(file).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The data nodes of `pg_autoctl show state --json`.
fn parse_state(json: &str) -> Result<Vec<NodeState>, LabError> {
    let bad = || LabError::Failed(format!("pg_autoctl show state: unexpected {json:?}"));
    let value: serde_json::Value = serde_json::from_str(json.trim()).map_err(|_| bad())?;
    value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|node| {
            let text = |key: &str| node.get(key).and_then(|v| v.as_str()).map(str::to_owned);
            Some(NodeState {
                name: text("nodename")?,
                port: u16::try_from(node.get("nodeport")?.as_u64()?).ok()?,
                reported: text("current_group_state")?,
                assigned: text("assigned_group_state")?,
            })
        })
        .map(|n| n.ok_or_else(bad))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitors_state_is_read_from_its_json() {
        let json = r#"[{"health":1,"node_id":1,"nodehost":"127.0.0.1","nodename":"node1",
            "nodeport":5882,"current_group_state":"primary","assigned_group_state":"primary"},
            {"nodename":"node2","nodeport":5883,"current_group_state":"catchingup",
            "assigned_group_state":"secondary"}]"#;
        let nodes = parse_state(json).unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(nodes[0].is_primary());
        assert!(!nodes[1].is_primary());
        assert_eq!(
            (nodes[1].port, nodes[1].reported.as_str()),
            (5883, "catchingup")
        );
        assert!(parse_state("[{}]").is_err());
        assert!(parse_state("no").is_err());
    }
}
