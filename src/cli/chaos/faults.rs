//! The faults: a seeded plan placed along the workload (by the share of commands processed),
//! injected one after the other, and the [`Infra`] guard that brings the broker and the
//! database back up whatever happens to the run (error, panic, Ctrl-C).
//!
//! The plan: a second instance joins early (during the dispatches) and is SIGKILLed later; the
//! primary is SIGKILLed three times, once in each third of the workload, and restarted after
//! a short pause; RabbitMQ (`stop_app`/`start_app`) and PostgreSQL are each restarted once,
//! down for one to four seconds. Faults are spread over 4%..85% of the workload, so each
//! lands on a service with work in hand.

use std::fmt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::fleet::{Fleet, Role};
use super::progress::Progress;

/// How long one `rabbitmqctl` or `pg_ctlcluster` call may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the fleet is checked for instances that died on their own.
const WATCH: Duration = Duration::from_millis(250);

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the primary, restart it after the pause.
    KillPrimary,
    /// Start a second instance beside the primary.
    StartSecond,
    /// SIGKILL the second instance.
    KillSecond,
    /// `rabbitmqctl stop_app`, the pause, `start_app`.
    RestartBroker,
    /// Stop PostgreSQL, the pause, start it.
    RestartDatabase,
}

impl Fault {
    /// True for the faults that SIGKILL an instance.
    pub fn is_kill(self) -> bool {
        matches!(self, Fault::KillPrimary | Fault::KillSecond)
    }
}

/// A fault and where it strikes.
#[derive(Debug, Clone, Copy)]
pub struct PlannedFault {
    /// The share of good commands processed when it strikes.
    pub at: f64,
    /// The fault.
    pub fault: Fault,
    /// Downtime (restarts) or delay before the restart (kills).
    pub pause: Duration,
}

impl fmt::Display for PlannedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.pause.as_millis();
        match self.fault {
            Fault::KillPrimary => write!(f, "SIGKILL the primary, restart it after {ms} ms"),
            Fault::StartSecond => write!(f, "start a second instance"),
            Fault::KillSecond => write!(f, "SIGKILL the second instance"),
            Fault::RestartBroker => write!(f, "restart RabbitMQ (down {ms} ms)"),
            Fault::RestartDatabase => write!(f, "restart PostgreSQL (down {ms} ms)"),
        }
    }
}

/// The fault plan drawn from `rng`, in the order the faults strike.
pub fn plan(rng: &mut StdRng) -> Vec<PlannedFault> {
    let mut pause =
        |min_ms: u64, max_ms: u64| Duration::from_millis(rng.random_range(min_ms..=max_ms));
    let pauses = [
        pause(0, 1500),
        pause(0, 1500),
        pause(0, 1500),
        pause(1000, 4000),
        pause(1000, 4000),
    ];
    let mut faults = vec![
        (0.04..0.10, Fault::StartSecond, Duration::ZERO),
        (0.30..0.45, Fault::KillSecond, Duration::ZERO),
        (0.10..0.33, Fault::KillPrimary, pauses[0]),
        (0.36..0.60, Fault::KillPrimary, pauses[1]),
        (0.62..0.85, Fault::KillPrimary, pauses[2]),
        (0.20..0.80, Fault::RestartBroker, pauses[3]),
        (0.20..0.80, Fault::RestartDatabase, pauses[4]),
    ]
    .into_iter()
    .map(|(range, fault, pause)| PlannedFault {
        at: rng.random_range(range),
        fault,
        pause,
    })
    .collect::<Vec<_>>();
    faults.sort_by(|a, b| a.at.total_cmp(&b.at));
    faults
}

/// What the injection did so far.
#[derive(Debug, Default)]
pub struct FaultLog {
    /// Faults of the plan carried out (or attempted).
    pub injected: usize,
    /// RabbitMQ restarts that completed.
    pub broker_restarts: u32,
    /// PostgreSQL restarts that completed.
    pub db_restarts: u32,
    /// Faults that could not be injected, instances that died on their own.
    pub problems: Vec<String>,
}

/// Injects `plan` as `progress` reaches each fault, and keeps the primary running (restarting
/// it, and noting it, if it dies on its own) until `stop`.
pub async fn inject(
    plan: Vec<PlannedFault>,
    fleet: Arc<tokio::sync::Mutex<Fleet>>,
    infra: Arc<Infra>,
    progress: Progress,
    log: Arc<Mutex<FaultLog>>,
    stop: CancellationToken,
) {
    let total = plan.len();
    for (n, planned) in plan.into_iter().enumerate() {
        while progress.fraction() < planned.at {
            watch(&fleet, &log).await;
            tokio::select! {
                _ = tokio::time::sleep(WATCH) => {}
                _ = stop.cancelled() => return,
            }
        }
        eprintln!(
            "chaos: fault {}/{total} at {:.0}% processed: {planned}",
            n + 1,
            progress.fraction() * 100.0
        );
        let result = strike(planned, &fleet, &infra).await;
        let mut entry = log.lock().expect("not poisoned");
        entry.injected += 1;
        match (result, planned.fault) {
            (Ok(()), Fault::RestartBroker) => entry.broker_restarts += 1,
            (Ok(()), Fault::RestartDatabase) => entry.db_restarts += 1,
            (Ok(()), _) => {}
            (Err(e), _) => {
                eprintln!("chaos: fault {}/{total} failed: {e}", n + 1);
                entry
                    .problems
                    .push(format!("fault \"{planned}\" failed: {e}"));
            }
        }
    }
    loop {
        watch(&fleet, &log).await;
        tokio::select! {
            _ = tokio::time::sleep(WATCH) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn strike(
    planned: PlannedFault,
    fleet: &tokio::sync::Mutex<Fleet>,
    infra: &Infra,
) -> Result<(), String> {
    match planned.fault {
        Fault::KillPrimary => {
            let killed = fleet.lock().await.kill(Role::Primary).await;
            if killed.is_none() {
                return Err("no primary was running".into());
            }
            tokio::time::sleep(planned.pause).await;
            fleet
                .lock()
                .await
                .start(Role::Primary)
                .map(drop)
                .map_err(|e| format!("cannot restart the primary: {e}"))
        }
        Fault::StartSecond => fleet
            .lock()
            .await
            .start(Role::Second)
            .map(drop)
            .map_err(|e| format!("cannot start a second instance: {e}")),
        Fault::KillSecond => match fleet.lock().await.kill(Role::Second).await {
            Some(_) => Ok(()),
            None => Err("no second instance was running".into()),
        },
        Fault::RestartBroker => infra.restart_broker(planned.pause).await,
        Fault::RestartDatabase => infra.restart_database(planned.pause).await,
    }
}

/// Notes instances that died on their own and restarts the primary.
async fn watch(fleet: &tokio::sync::Mutex<Fleet>, log: &Mutex<FaultLog>) {
    let mut fleet = fleet.lock().await;
    for role in fleet.reap() {
        let exit = fleet.unexpected_exits.last().cloned().unwrap_or_default();
        eprintln!("chaos: {exit}");
        if role == Role::Primary {
            if let Err(e) = fleet.start(Role::Primary) {
                let mut log = log.lock().expect("not poisoned");
                log.problems
                    .push(format!("cannot restart the primary after it exited: {e}"));
            }
        }
    }
}

/// The local RabbitMQ and PostgreSQL, as far as restarting them goes. Whichever it took down
/// and has not seen back up, it starts again when dropped, so no run leaves them down.
#[derive(Debug)]
pub struct Infra {
    pg_version: String,
    broker_down: AtomicBool,
    database_down: AtomicBool,
}

impl Infra {
    /// The local services; the PostgreSQL version is read from `/etc/postgresql`.
    pub fn detect() -> Self {
        let pg_version = std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .max()
            })
            .unwrap_or_else(|| "15".to_owned());
        Self {
            pg_version,
            broker_down: AtomicBool::new(false),
            database_down: AtomicBool::new(false),
        }
    }

    /// `rabbitmqctl stop_app`, `down_for`, `start_app`, `await_startup`.
    pub async fn restart_broker(&self, down_for: Duration) -> Result<(), String> {
        self.broker_down.store(true, Ordering::SeqCst);
        run_tool("rabbitmqctl", &["stop_app"]).await?;
        tokio::time::sleep(down_for).await;
        self.start_broker().await
    }

    /// Stops PostgreSQL (fast: sessions are cut), `down_for`, starts it and waits until it
    /// accepts connections.
    pub async fn restart_database(&self, down_for: Duration) -> Result<(), String> {
        self.database_down.store(true, Ordering::SeqCst);
        run_tool("pg_ctlcluster", &self.pg_args("stop")).await?;
        tokio::time::sleep(down_for).await;
        self.start_database().await
    }

    /// Starts whatever this run took down and checks that both accept connections.
    pub async fn ensure_up(&self) -> Result<(), String> {
        if self.broker_down.load(Ordering::SeqCst) {
            self.start_broker().await?;
        }
        if self.database_down.load(Ordering::SeqCst) {
            self.start_database().await?;
        }
        run_tool("rabbitmqctl", &["await_startup", "--timeout", "60"]).await?;
        run_tool("pg_isready", &["-q", "-h", "127.0.0.1", "-t", "60"]).await
    }

    async fn start_broker(&self) -> Result<(), String> {
        run_tool("rabbitmqctl", &["start_app"]).await?;
        run_tool("rabbitmqctl", &["await_startup", "--timeout", "60"]).await?;
        self.broker_down.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn start_database(&self) -> Result<(), String> {
        run_tool("pg_ctlcluster", &self.pg_args("start")).await?;
        run_tool("pg_isready", &["-q", "-h", "127.0.0.1", "-t", "60"]).await?;
        self.database_down.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn pg_args<'a>(&'a self, action: &'a str) -> [&'a str; 4] {
        [
            "--skip-systemctl-redirect",
            &self.pg_version,
            "main",
            action,
        ]
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        // Last resort (an error or a panic skipped `ensure_up`): blocking is fine on the way out.
        let run = |program: &str, args: &[&str]| {
            let status = std::process::Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .status();
            eprintln!("chaos: cleanup: {program} {}: {status:?}", args.join(" "));
        };
        if self.broker_down.load(Ordering::SeqCst) {
            run("rabbitmqctl", &["start_app"]);
            run("rabbitmqctl", &["await_startup", "--timeout", "60"]);
        }
        if self.database_down.load(Ordering::SeqCst) {
            run("pg_ctlcluster", &self.pg_args("start"));
        }
    }
}

/// Runs an administration tool; its output only matters when it fails.
async fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let what = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TOOL_TIMEOUT, output).await {
        Err(_) => Err(format!("{what}: no answer within {TOOL_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{what}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_plan_has_three_primary_kills_a_second_instance_and_both_restarts_in_order() {
        for seed in 0..50 {
            let plan = plan(&mut StdRng::seed_from_u64(seed));
            let count = |f: Fault| plan.iter().filter(|p| p.fault == f).count();
            assert_eq!(count(Fault::KillPrimary), 3);
            assert_eq!(count(Fault::RestartBroker), 1);
            assert_eq!(count(Fault::RestartDatabase), 1);
            let at = |f: Fault| plan.iter().position(|p| p.fault == f).unwrap();
            assert!(at(Fault::StartSecond) < at(Fault::KillSecond));
            assert!(plan.windows(2).all(|w| w[0].at <= w[1].at));
            assert!(plan.iter().all(|p| (0.04..0.85).contains(&p.at)));
        }
    }
}
