//! Where the CPU went during a phase, from `/proc`: the service instances, every `postgres`
//! process, RabbitMQ's `beam.smp`, the bench itself, and the machine as a whole (including
//! iowait); plus the bench database's commits, the WAL written and the share of `operation_runs`
//! updates that were HOT (heap-only: no index entry written), from Postgres.
//!
//! Per-process times are summed over the processes alive at the end of the phase (a process that
//! exited during the phase is not counted). Postgres is the server the bench database is on (its
//! postmaster and the postmaster's children), so a second server on the machine is left out;
//! other users of the same server (tests running concurrently) are counted too, so these figures
//! read as "the server during the phase", not as an exact attribution.

use std::collections::HashMap;
use std::time::Instant;

use sqlx::PgPool;

/// A point-in-time reading.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    ticks: HashMap<u32, (Group, u64)>,
    machine_busy: u64,
    machine_iowait: u64,
    machine_total: u64,
    commits: i64,
    wal_lsn: String,
    run_updates: RunUpdates,
}

/// `operation_runs` updates so far: all of them, and the HOT ones.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
struct RunUpdates {
    updates: i64,
    hot: i64,
}

impl RunUpdates {
    async fn read(pool: &PgPool) -> Self {
        sqlx::query_as(
            "SELECT coalesce(sum(n_tup_upd), 0)::bigint AS updates,
                    coalesce(sum(n_tup_hot_upd), 0)::bigint AS hot
             FROM pg_stat_user_tables WHERE relname = 'operation_runs'",
        )
        .fetch_one(pool)
        .await
        .unwrap_or_default()
    }

    /// HOT updates ÷ updates since `before` (`None` when there were none).
    fn hot_ratio_since(self, before: Self) -> Option<f64> {
        let updates = self.updates - before.updates;
        (updates > 0).then(|| (self.hot - before.hot) as f64 / updates as f64)
    }
}

/// The process groups reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// The `oprun serve` instances.
    Oprun,
    /// Every process named `postgres`.
    Postgres,
    /// `beam.smp` (RabbitMQ).
    Rabbitmq,
    /// This process.
    Bench,
}

/// CPU used during a phase, in cores (CPU seconds per second of wall time).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// The service instances.
    pub oprun: f64,
    /// Postgres.
    pub postgres: f64,
    /// RabbitMQ.
    pub rabbitmq: f64,
    /// The bench.
    pub bench: f64,
    /// Everything on the machine (not idle, not iowait).
    pub machine: f64,
    /// Idle waiting for I/O.
    pub iowait: f64,
    /// Cores of the machine.
    pub cores: usize,
    /// Bench-database commits per second (Postgres statistics lag up to about a second).
    pub commits_per_s: f64,
    /// WAL written per second, whole server, in MiB.
    pub wal_mb_per_s: f64,
    /// HOT updates ÷ updates of `operation_runs` during the phase (`None`: no update). An update
    /// that changes no indexed column and finds room on its page writes no index entry.
    pub hot_ratio: Option<f64>,
}

/// Reads the clock-tick counters of the groups and the machine, and the database counters.
pub async fn snapshot(oprun_pids: &[u32], pool: &PgPool) -> Snapshot {
    let (commits, wal_lsn): (i64, String) = sqlx::query_as(
        "SELECT coalesce((SELECT xact_commit FROM pg_stat_database
                          WHERE datname = current_database()), 0),
                pg_current_wal_lsn()::text",
    )
    .fetch_one(pool)
    .await
    .unwrap_or((0, "0/0".into()));
    let run_updates = RunUpdates::read(pool).await;
    let postmaster = postmaster_pid(pool).await;
    let mut ticks = HashMap::new();
    let me = std::process::id();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((comm, ppid, t)) = process_ticks(pid) else {
                continue;
            };
            let group = if oprun_pids.contains(&pid) {
                Group::Oprun
            } else if pid == me {
                Group::Bench
            } else if comm == "postgres"
                && postmaster.is_none_or(|root| pid == root || ppid == root)
            {
                Group::Postgres
            } else if comm == "beam.smp" {
                Group::Rabbitmq
            } else {
                continue;
            };
            ticks.insert(pid, (group, t));
        }
    }
    let (machine_busy, machine_iowait, machine_total) = machine_ticks().unwrap_or_default();
    Snapshot {
        at: Instant::now(),
        ticks,
        machine_busy,
        machine_iowait,
        machine_total,
        commits,
        wal_lsn,
        run_updates,
    }
}

/// Replaces `usage.commits_per_s` and `usage.hot_ratio` with counts taken after the phase's
/// backends had time to report: a busy backend flushes its statistics at most once a second, so
/// the counts read at the end of a phase miss up to a second of work. Waits about 1.2 s.
pub async fn recount_commits(usage: &mut Usage, a: &Snapshot, b: &Snapshot, pool: &PgPool) {
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let late: Option<i64> = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .ok();
    if let Some(late) = late {
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        usage.commits_per_s = (late - a.commits) as f64 / secs;
    }
    usage.hot_ratio = RunUpdates::read(pool).await.hot_ratio_since(a.run_updates);
}

/// The usage between two snapshots.
pub fn between(a: &Snapshot, b: &Snapshot) -> Usage {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let hz = clock_ticks_per_second();
    let mut per_group: HashMap<Group, u64> = HashMap::new();
    for (pid, (group, t)) in &b.ticks {
        let before = a.ticks.get(pid).map_or(0, |(_, t)| *t);
        *per_group.entry(*group).or_default() += t.saturating_sub(before);
    }
    let cores_of = |g| per_group.get(&g).copied().unwrap_or(0) as f64 / hz / secs;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = b.machine_total.saturating_sub(a.machine_total).max(1) as f64;
    let share = |x: u64, y: u64| x.saturating_sub(y) as f64 / total * cores as f64;
    Usage {
        oprun: cores_of(Group::Oprun),
        postgres: cores_of(Group::Postgres),
        rabbitmq: cores_of(Group::Rabbitmq),
        bench: cores_of(Group::Bench),
        machine: share(b.machine_busy, a.machine_busy),
        iowait: share(b.machine_iowait, a.machine_iowait),
        cores,
        commits_per_s: (b.commits - a.commits) as f64 / secs,
        wal_mb_per_s: lsn_bytes(&b.wal_lsn).saturating_sub(lsn_bytes(&a.wal_lsn)) as f64
            / (1024.0 * 1024.0)
            / secs,
        hot_ratio: b.run_updates.hot_ratio_since(a.run_updates),
    }
}

/// The postmaster of the server `pool` is connected to: the parent of one of its backends, when
/// the server runs on this machine (else `None`, and every `postgres` process counts).
async fn postmaster_pid(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let (comm, ppid, _) = process_ticks(u32::try_from(backend).ok()?)?;
    (comm == "postgres").then_some(ppid)
}

/// `comm`, the parent's pid and utime + stime of a process.
fn process_ticks(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold spaces and parentheses, so split at the last `)`.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // After the comm: state is field 3 of stat(5), utime 14 and stime 15.
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, ppid, utime + stime))
}

/// (busy, iowait, total) ticks of the machine from the `cpu` line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is included in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    let idle = get(3);
    let iowait = get(4);
    Some((total - idle - iowait, iowait, total))
}

/// `USER_HZ`: 100 on every Linux this runs on (no libc among the dependencies to ask).
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// `16/B374D848` → bytes.
fn lsn_bytes(lsn: &str) -> u64 {
    let Some((hi, lo)) = lsn.split_once('/') else {
        return 0;
    };
    match (u64::from_str_radix(hi, 16), u64::from_str_radix(lo, 16)) {
        (Ok(hi), Ok(lo)) => (hi << 32) | lo,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_as_byte_positions() {
        assert_eq!(lsn_bytes("0/10"), 16);
        assert_eq!(lsn_bytes("1/0"), 1 << 32);
        assert_eq!(lsn_bytes("garbage"), 0);
    }

    #[test]
    fn this_process_has_cpu_ticks() {
        let (comm, ppid, _) = process_ticks(std::process::id()).unwrap();
        assert!(!comm.is_empty());
        assert!(ppid > 0);
    }
}
