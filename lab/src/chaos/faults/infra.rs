//! The broker and the database a chaos run breaks: private instances of its own
//! ([`crate::private`]), never the machine's services. Restarts go through them; both are stopped
//! and removed when the run ends (the `Infra` is dropped), whatever happened.
//!
//! With `--cluster` the broker is a three-node cluster: the one `scripts/cluster up` started if
//! it runs (left running afterwards, every node back up), else one of the run's own. Its fault
//! is a SIGKILL of the node leading the commands queue, restarted after a pause.
//!
//! With `--db-failover` the database is a pg_auto_failover pair of the run's own (a monitor and
//! two nodes in a temporary folder, on free ports); its fault is a SIGKILL of the primary node,
//! the standby promoted by the monitor, the killed node started again as the new standby.

use std::time::Duration;

use crate::cluster::SHIPPED_BROKER_SETTINGS;
use crate::private::cluster::default_dir;
use crate::private::pg_ha::{PgHaPair, TemporaryPair};
use crate::private::{PrivateBroker, PrivateCluster, PrivateDatabase};
use crate::LabError;

/// How long the primary's WAL sender is stopped before the primary is killed.
const SENDER_STALL: Duration = Duration::from_secs(2);

/// The database of a run.
#[derive(Debug)]
enum Database {
    /// One PostgreSQL, restarted.
    Single(PrivateDatabase),
    /// A primary and a standby under pg_auto_failover, the primary killed.
    Pair(TemporaryPair),
}

/// One failover of the pair: the node killed, the node promoted, how long it took.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The primary SIGKILLed.
    pub killed: String,
    /// The standby the monitor promoted.
    pub promoted: String,
    /// From the SIGKILL to the new primary reported writable.
    pub to_new_primary: Duration,
    /// From the SIGKILL to the killed node back as a synchronous standby.
    pub to_paired: Duration,
}

/// The broker of a run.
#[derive(Debug)]
enum Broker {
    /// One node.
    Single(PrivateBroker),
    /// Three nodes.
    Cluster(PrivateCluster),
}

/// A private RabbitMQ node (or cluster) and PostgreSQL cluster, for one run.
#[derive(Debug)]
pub struct Infra {
    broker: Broker,
    database: Database,
}

impl Infra {
    /// Starts both (about twenty seconds for the broker).
    pub async fn start() -> Result<Self, LabError> {
        let (broker, database) = tokio::join!(
            PrivateBroker::start(SHIPPED_BROKER_SETTINGS),
            PrivateDatabase::start()
        );
        Ok(Self {
            broker: Broker::Single(broker?),
            database: Database::Single(database?),
        })
    }

    /// Starts the broker and a pg_auto_failover pair (`asynchronous`: its nodes out of the write
    /// quorum), about thirty seconds.
    pub async fn start_with_pair(asynchronous: bool) -> Result<Self, LabError> {
        let (broker, pair) = tokio::join!(
            PrivateBroker::start(SHIPPED_BROKER_SETTINGS),
            PgHaPair::up_temporary()
        );
        let pair = pair?;
        if asynchronous {
            pair.replicate_asynchronously().await?;
        }
        eprintln!(
            "chaos: database: a pg_auto_failover pair, synchronous_standby_names = {:?}",
            pair.synchronous_standby_names().await?
        );
        Ok(Self {
            broker: Broker::Single(broker?),
            database: Database::Pair(pair),
        })
    }

    /// Uses the cluster of `scripts/cluster up` when all its nodes run, else starts one of the
    /// run's own; starts the database.
    pub async fn start_cluster() -> Result<Self, LabError> {
        let existing = match PrivateCluster::open(&default_dir())? {
            Some(cluster) if all_running(&cluster).await => {
                eprintln!(
                    "chaos: using the cluster of scripts/cluster up ({})",
                    cluster.dir().display()
                );
                Some(cluster)
            }
            _ => None,
        };
        let cluster = async {
            match existing {
                Some(cluster) => Ok(cluster),
                None => {
                    eprintln!("chaos: no cluster of scripts/cluster up runs: starting three nodes of the run's own");
                    PrivateCluster::start_temporary(SHIPPED_BROKER_SETTINGS).await
                }
            }
        };
        let (cluster, database) = tokio::join!(cluster, PrivateDatabase::start());
        Ok(Self {
            broker: Broker::Cluster(cluster?),
            database: Database::Single(database?),
        })
    }

    /// True when the broker is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.broker, Broker::Cluster(_))
    }

    /// The broker's URLs (one per node).
    pub fn amqp_urls(&self) -> Vec<String> {
        match &self.broker {
            Broker::Single(b) => vec![b.amqp_url()],
            Broker::Cluster(c) => c.amqp_urls(),
        }
    }

    /// The private server's URL of database `name` (the pair's: both nodes, read-write).
    pub fn database_url(&self, name: &str) -> String {
        match &self.database {
            Database::Single(d) => d.url(name),
            Database::Pair(p) => p.url(name),
        }
    }

    /// True when the database is a pair that fails over.
    pub fn is_pair(&self) -> bool {
        matches!(self.database, Database::Pair(_))
    }

    /// SIGKILLs the pair's primary, waits for the monitor to promote the standby, starts the
    /// killed node again and waits until it is the new standby, in sync. Only for a pair.
    pub async fn fail_over_database(&self) -> Result<Failover, String> {
        let Database::Pair(pair) = &self.database else {
            return Err("the database is a single server: nothing to fail over to".into());
        };
        let failed = |e: LabError| e.to_string();
        let nodes = pair.nodes().await.map_err(failed)?;
        let primary = nodes
            .iter()
            .find(|n| n.is_writable())
            .cloned()
            .ok_or("no primary to kill")?;
        // The standby falls behind first, as on a slow network: a synchronous primary's commits
        // wait for it (none is acknowledged that the standby lacks); an asynchronous one's go on,
        // and are lost with the primary.
        let stalled = pair.stall_sender(&primary).await.map_err(failed)?;
        eprintln!(
            "chaos: {}'s WAL sender stopped for {} ms; then SIGKILL {} (127.0.0.1:{})",
            primary.name,
            SENDER_STALL.as_millis(),
            primary.name,
            primary.port
        );
        tokio::time::sleep(SENDER_STALL).await;
        let killed_at = std::time::Instant::now();
        let killed = pair.kill_node(&primary.name).await;
        pair.kill_stalled(stalled).await;
        killed.map_err(failed)?;
        let promoted = pair
            .wait_for_new_primary(&primary.name)
            .await
            .map_err(failed)?;
        let to_new_primary = killed_at.elapsed();
        eprintln!(
            "chaos: {} promoted after {:.1} s; starting {} again",
            promoted.name,
            to_new_primary.as_secs_f64(),
            primary.name
        );
        pair.restart_node(&primary.name).await.map_err(failed)?;
        pair.wait_until_paired().await.map_err(failed)?;
        let to_paired = killed_at.elapsed();
        eprintln!(
            "chaos: {} is the standby again after {:.1} s",
            primary.name,
            to_paired.as_secs_f64()
        );
        Ok(Failover {
            killed: primary.name,
            promoted: promoted.name,
            to_new_primary,
            to_paired,
        })
    }

    /// One node: `rabbitmqctl stop_app`, `down_for`, `start_app`, `await_startup`. A cluster:
    /// every node's app in turn (the cluster stays available throughout).
    pub async fn restart_broker(&self, down_for: Duration) -> Result<(), String> {
        let restarted = match &self.broker {
            Broker::Single(b) => b.restart_app(down_for).await,
            Broker::Cluster(c) => {
                async {
                    for node in c.nodes() {
                        node.restart_app(down_for).await?;
                    }
                    Ok(())
                }
                .await
            }
        };
        restarted.map_err(|e| e.to_string())
    }

    /// SIGKILLs the node leading quorum queue `queue`, waits `down_for`, starts it again and
    /// waits until it runs; the killed node's name. Only for a cluster.
    pub async fn kill_leader(&self, queue: &str, down_for: Duration) -> Result<String, String> {
        let Broker::Cluster(cluster) = &self.broker else {
            return Err("the broker is a single node: nothing to fail over to".into());
        };
        let leader = cluster.leader_of(queue).await.map_err(|e| e.to_string())?;
        let node = &cluster.nodes()[leader];
        eprintln!("chaos: {queue} is led by {}: SIGKILL", node.name());
        node.kill().await.map_err(|e| e.to_string())?;
        tokio::time::sleep(down_for).await;
        node.launch().await.map_err(|e| e.to_string())?;
        match cluster.leader_of(queue).await {
            Ok(now) => eprintln!(
                "chaos: {} is back; {queue} is led by {}",
                node.name(),
                cluster.nodes()[now].name()
            ),
            Err(e) => eprintln!("chaos: {} is back; leader unknown: {e}", node.name()),
        }
        Ok(node.name().to_owned())
    }

    /// Stops PostgreSQL (fast: sessions are cut), `down_for`, starts it again.
    pub async fn restart_database(&self, down_for: Duration) -> Result<(), String> {
        let Database::Single(database) = &self.database else {
            return Err("the pair is failed over, not restarted".into());
        };
        database.restart(down_for).await.map_err(|e| e.to_string())
    }

    /// Checks that the broker runs (a restart that failed half-way is finished here; a killed
    /// cluster node is started again).
    pub async fn ensure_up(&self) -> Result<(), String> {
        match &self.broker {
            Broker::Single(b) => {
                if b.await_startup().await.is_err() {
                    self.restart_broker(Duration::ZERO).await?;
                }
            }
            Broker::Cluster(c) => {
                for node in c.nodes() {
                    if !node.is_running().await {
                        eprintln!("chaos: {} is not running: starting it", node.name());
                        node.launch().await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Restarts the broker app if it has lost `rabbit_fifo_dlx_sup`, the supervisor of quorum
    /// queues' at-least-once dead-lettering; true when it had to (on any node of a cluster).
    ///
    /// RabbitMQ 3.10 loses it for good when such a queue is deleted while the app starts (its
    /// workers crash, the supervisor reaches its restart limit and stops): from then on every
    /// declaration of such a queue (`N.commands`) fails with `INTERNAL_ERROR` until the app
    /// restarts. A broker restart of this run can be what sets it off. `None` when the broker
    /// cannot be asked.
    pub async fn heal_broker(&self) -> Option<Result<bool, String>> {
        const PROBE: [&str; 2] = ["eval", "is_pid(whereis(rabbit_fifo_dlx_sup))."];
        match &self.broker {
            Broker::Single(b) => {
                let alive = b.ctl(&PROBE).await.ok()?;
                if alive.trim() == "true" {
                    return Some(Ok(false));
                }
                eprintln!(
                    "chaos: RabbitMQ has lost rabbit_fifo_dlx_sup (quorum queues with at-least-once \
                     dead-lettering cannot be declared): restarting its app"
                );
                Some(self.restart_broker(Duration::ZERO).await.map(|()| true))
            }
            Broker::Cluster(c) => {
                let mut healed = false;
                for node in c.nodes() {
                    let alive = node.ctl(&PROBE).await.ok()?;
                    if alive.trim() != "true" {
                        eprintln!(
                            "chaos: {} has lost rabbit_fifo_dlx_sup: restarting its app",
                            node.name()
                        );
                        if let Err(e) = node.restart_app(Duration::ZERO).await {
                            return Some(Err(e.to_string()));
                        }
                        healed = true;
                    }
                }
                Some(Ok(healed))
            }
        }
    }

    /// The broker's `max_message_size` in bytes, `None` when it cannot be asked.
    pub async fn max_message_size(&self) -> Option<u64> {
        const ASK: [&str; 2] = ["eval", "application:get_env(rabbit, max_message_size)."];
        let answer = match &self.broker {
            Broker::Single(b) => b.ctl(&ASK).await.ok()?,
            Broker::Cluster(c) => c.ctl_any(&ASK).await.ok()?,
        };
        parse_env_integer(&answer)
    }
}

/// True when every node of `cluster` runs.
async fn all_running(cluster: &PrivateCluster) -> bool {
    for node in cluster.nodes() {
        if !node.is_running().await {
            return false;
        }
    }
    true
}

/// The integer of an Erlang `{ok,N}` answer.
fn parse_env_integer(answer: &str) -> Option<u64> {
    answer
        .trim()
        .strip_prefix("{ok,")?
        .strip_suffix('}')?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brokers_answer_for_max_message_size_is_read() {
        assert_eq!(parse_env_integer("{ok,134217728}\n"), Some(134_217_728));
        assert_eq!(parse_env_integer("undefined\n"), None);
    }

    #[test]
    fn the_private_broker_runs_with_the_shipped_message_size_limit() {
        assert!(SHIPPED_BROKER_SETTINGS
            .lines()
            .any(|l| l.trim_start().starts_with("max_message_size")));
    }
}
