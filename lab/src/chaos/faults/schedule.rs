//! The faults: a seeded plan placed along the workload (by the share of commands processed),
//! injected one after the other while the service works. Restarting the broker and the
//! database is [`Infra`]'s business.
//!
//! The plan: a second instance joins early (during the dispatches) and is SIGKILLed later; the
//! primary is SIGKILLed three times, once in each third of the workload, and restarted after
//! a short pause; RabbitMQ (`stop_app`/`start_app`) and PostgreSQL are each restarted once,
//! down for one to four seconds. On a cluster (`--cluster`) the RabbitMQ fault is a SIGKILL of
//! the node leading the commands queue, started again after one to four seconds (at 15%..50%). Faults are spread over 4%..85% of the workload, so each
//! lands on a service with work in hand.
//!
//! The injections add, each when it is on: the dead-letter queue unbound for five to ten
//! seconds (at 25%..50%), and [`idle::CONNECTIONS`] idle connections to the primary's
//! `/metrics` address (at 20%..45%, held in the background for up to [`idle::HOLD`]).
//! Every SIGKILL and restart is logged as a [`Disruption`], to which duplicate deliveries
//! may be attributed (see [`crate::chaos::verification::deliveries`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::{Fleet, Role};
use super::idle;
use super::infra::{Failover, Infra};
use super::progress::Progress;
use super::unbinding::unbind_dead_letters;
use crate::chaos::plan::injections::{Injection, Injections};
use operation_runs::broker::Topology;

/// How long the idle-connections injection waits for a (re)started primary to listen.
const PRIMARY_LISTENS_WITHIN: Duration = Duration::from_secs(30);
/// Longest a primary's SIGKILL waits for a hold of idle connections to end.
const IDLE_HOLD_WAIT: Duration = Duration::from_secs(30);
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
    /// On a cluster: SIGKILL the node leading the commands queue, the pause, start it again.
    KillBrokerNode,
    /// Stop PostgreSQL, the pause, start it.
    RestartDatabase,
    /// With `--db-failover`: SIGKILL the pair's primary, the standby promoted, the killed node
    /// back as the standby.
    FailOverDatabase,
    /// Unbind `N.commands.dlq` from `N.dlx`, the pause, bind it again.
    UnbindDeadLetters,
    /// Open idle connections to the primary's `/metrics` address and hold them (background).
    IdleConnections,
}

impl Fault {
    /// True for the faults that SIGKILL an instance.
    pub fn is_kill(self) -> bool {
        matches!(self, Fault::KillPrimary | Fault::KillSecond)
    }

    /// The disruption it is, if duplicate deliveries may be attributed to it.
    fn disruption(self) -> Option<DisruptionKind> {
        match self {
            Fault::KillPrimary | Fault::KillSecond => Some(DisruptionKind::Kill),
            Fault::RestartBroker | Fault::KillBrokerNode => Some(DisruptionKind::BrokerRestart),
            Fault::RestartDatabase | Fault::FailOverDatabase => {
                Some(DisruptionKind::DatabaseRestart)
            }
            _ => None,
        }
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
            Fault::KillBrokerNode => write!(
                f,
                "SIGKILL the RabbitMQ node leading the commands queue (down {ms} ms)"
            ),
            Fault::RestartDatabase => write!(f, "restart PostgreSQL (down {ms} ms)"),
            Fault::FailOverDatabase => write!(
                f,
                "SIGKILL the database's primary; the standby is promoted, the killed node rejoins"
            ),
            Fault::UnbindDeadLetters => {
                write!(f, "unbind the dead-letter queue for {ms} ms")
            }
            Fault::IdleConnections => write!(
                f,
                "hold {} idle connections to the primary's /metrics for up to {} s",
                idle::CONNECTIONS,
                idle::HOLD.as_secs()
            ),
        }
    }
}

/// The fault plan drawn from `rng` (with the faults `injections` ask for), in the order the
/// faults strike. On a `cluster` the broker fault is a SIGKILL of the commands queue's leader
/// node instead of an application restart; on a database `pair` the database fault is two
/// failovers (the primary SIGKILLed, then the new one) instead of a restart.
pub fn plan(
    rng: &mut StdRng,
    injections: &Injections,
    cluster: bool,
    pair: bool,
) -> Vec<PlannedFault> {
    // A killed node takes ten to twenty seconds to boot again, during which the injector
    // waits: it strikes early enough for the faults after it to land on a working service.
    let (broker_fault, broker_range) = if cluster {
        (Fault::KillBrokerNode, 0.15..0.50)
    } else {
        (Fault::RestartBroker, 0.20..0.80)
    };
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
        (broker_range, broker_fault, pauses[3]),
    ];
    if pair {
        // Each failover stalls the service for the promotion (tens of seconds) and ends once the
        // killed node is the standby again, so the second kill finds a pair to fail over.
        faults.push((0.15..0.35, Fault::FailOverDatabase, Duration::ZERO));
        faults.push((0.45..0.70, Fault::FailOverDatabase, Duration::ZERO));
    } else {
        faults.push((0.20..0.80, Fault::RestartDatabase, pauses[4]));
    }
    if injections.has(Injection::DlqUnbind) {
        let pause = Duration::from_millis(rng.random_range(5000..=10_000));
        faults.push((0.25..0.50, Fault::UnbindDeadLetters, pause));
    }
    if injections.has(Injection::IdleConnections) {
        faults.push((0.20..0.45, Fault::IdleConnections, Duration::ZERO));
    }
    let mut faults = faults
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

/// What kind of disruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisruptionKind {
    /// A service instance SIGKILLed.
    Kill,
    /// RabbitMQ stopped and started.
    BrokerRestart,
    /// PostgreSQL stopped and started.
    DatabaseRestart,
}

/// A disruption: when it began and ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disruption {
    /// What it was.
    pub kind: DisruptionKind,
    /// When it began.
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
}

/// What the injection did so far.
#[derive(Debug, Default)]
pub struct FaultLog {
    /// Faults of the plan carried out (or attempted).
    pub injected: usize,
    /// RabbitMQ restarts that completed.
    pub broker_restarts: u32,
    /// Cluster nodes SIGKILLed (and started again).
    pub broker_node_kills: u32,
    /// PostgreSQL restarts that completed.
    pub db_restarts: u32,
    /// Failovers of the database pair that completed (the standby promoted, the old primary
    /// back as the standby).
    pub failovers: Vec<Failover>,
    /// Faults that could not be injected, instances that died on their own, what the idle
    /// connections showed.
    pub problems: Vec<String>,
    /// Every SIGKILL and restart, with its times.
    pub disruptions: Vec<Disruption>,
    /// Background injections (the idle connections) still running.
    pub background: usize,
}

/// Where the broker-side injections strike.
#[derive(Debug, Clone)]
pub struct Target {
    /// The broker.
    pub amqp_url: String,
    /// The run's namespace.
    pub topology: Topology,
}

/// Injects `plan` as `progress` reaches each fault, and keeps the primary running (restarting
/// it, and noting it, if it dies on its own) until `stop`.
pub async fn inject(
    plan: Vec<PlannedFault>,
    fleet: Arc<tokio::sync::Mutex<Fleet>>,
    infra: Arc<Infra>,
    target: Target,
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
        let began = Instant::now();
        let result = strike(planned, &fleet, &infra, &target, &log, &stop).await;
        let mut entry = log.lock().expect("not poisoned");
        entry.injected += 1;
        if let (Ok(()), Some(kind)) = (&result, planned.fault.disruption()) {
            entry.disruptions.push(Disruption {
                kind,
                start: began,
                end: Instant::now(),
            });
        }
        match (result, planned.fault) {
            (Ok(()), Fault::RestartBroker) => entry.broker_restarts += 1,
            (Ok(()), Fault::KillBrokerNode) => entry.broker_node_kills += 1,
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
    target: &Target,
    log: &Arc<Mutex<FaultLog>>,
    stop: &CancellationToken,
) -> Result<(), String> {
    match planned.fault {
        Fault::KillPrimary => {
            // Idle connections held against the primary measure how it treats them: killing it
            // during the hold would end the hold with nothing measured. The service closes them
            // within its idle timeout (20 s), which ends the hold.
            let held_until = Instant::now() + IDLE_HOLD_WAIT;
            while log.lock().expect("not poisoned").background > 0 && Instant::now() < held_until {
                tokio::time::sleep(WATCH).await;
            }
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
        Fault::KillBrokerNode => infra
            .kill_leader(&target.topology.commands_queue(), planned.pause)
            .await
            .map(drop),
        Fault::RestartDatabase => infra.restart_database(planned.pause).await,
        Fault::FailOverDatabase => {
            let failover = infra.fail_over_database().await?;
            log.lock().expect("not poisoned").failovers.push(failover);
            Ok(())
        }
        Fault::UnbindDeadLetters => {
            unbind_dead_letters(&target.amqp_url, &target.topology, planned.pause).await
        }
        Fault::IdleConnections => {
            let addr = fleet.lock().await.metrics_addr(Role::Primary);
            // A primary restarted a moment ago may still be migrating before it listens: the
            // injection is about connections it holds open, not about the ones it cannot take yet.
            let listening = Instant::now() + PRIMARY_LISTENS_WITHIN;
            while tokio::net::TcpStream::connect(addr).await.is_err() && Instant::now() < listening
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            log.lock().expect("not poisoned").background += 1;
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let report = idle::hold_idle(addr, idle::CONNECTIONS, idle::HOLD, stop).await;
                eprintln!("chaos: {report}");
                let mut log = log.lock().expect("not poisoned");
                log.problems.extend(report.problems());
                // The log may have been taken already at the end of the run.
                log.background = log.background.saturating_sub(1);
            });
            Ok(())
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_plan_has_three_primary_kills_a_second_instance_and_both_restarts_in_order() {
        for seed in 0..50 {
            let drawn = |injections: &Injections, cluster, pair| {
                plan(&mut StdRng::seed_from_u64(seed), injections, cluster, pair)
            };
            let count =
                |plan: &[PlannedFault], f: Fault| plan.iter().filter(|p| p.fault == f).count();
            let plan = drawn(&Injections::all(), false, false);
            assert_eq!(count(&plan, Fault::KillPrimary), 3);
            assert_eq!(count(&plan, Fault::RestartBroker), 1);
            assert_eq!(count(&plan, Fault::RestartDatabase), 1);
            let at = |f: Fault| plan.iter().position(|p| p.fault == f).unwrap();
            assert!(at(Fault::StartSecond) < at(Fault::KillSecond));
            assert!(plan.windows(2).all(|w| w[0].at <= w[1].at));
            assert!(plan.iter().all(|p| (0.04..0.85).contains(&p.at)));
            assert_eq!(count(&plan, Fault::UnbindDeadLetters), 1);
            assert_eq!(count(&plan, Fault::IdleConnections), 1);
            let none = drawn(&Injections::none(), false, false);
            assert_eq!(none.len(), plan.len() - 2);
            let cluster = drawn(&Injections::all(), true, false);
            assert_eq!(count(&cluster, Fault::KillBrokerNode), 1);
            assert_eq!(count(&cluster, Fault::RestartBroker), 0);
            assert_eq!(cluster.len(), plan.len());
            // On a database pair: two failovers, one after the other, instead of the restart.
            let pair = drawn(&Injections::all(), false, true);
            assert_eq!(count(&pair, Fault::FailOverDatabase), 2);
            assert_eq!(count(&pair, Fault::RestartDatabase), 0);
            assert_eq!(pair.len(), plan.len() + 1);
        }
    }
}
