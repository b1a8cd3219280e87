//! The broker and the database a chaos run breaks: private instances of its own
//! ([`crate::private`]), never the machine's services. Restarts go through them; both are stopped
//! and removed when the run ends (the `Infra` is dropped), whatever happened.

use std::time::Duration;

use crate::private::{PrivateBroker, PrivateDatabase};
use crate::LabError;

/// The shipped broker settings (`topology/rabbitmq.conf`): the private node runs with them, so
/// the run meets the broker the product documents.
const SHIPPED_BROKER_SETTINGS: &str = include_str!("../../../topology/rabbitmq.conf");

/// A private RabbitMQ node and PostgreSQL cluster, for one run.
#[derive(Debug)]
pub struct Infra {
    broker: PrivateBroker,
    database: PrivateDatabase,
}

impl Infra {
    /// Starts both (about twenty seconds for the broker).
    pub async fn start() -> Result<Self, LabError> {
        let (broker, database) = tokio::join!(
            PrivateBroker::start(SHIPPED_BROKER_SETTINGS),
            PrivateDatabase::start()
        );
        Ok(Self {
            broker: broker?,
            database: database?,
        })
    }

    /// The private broker's URL.
    pub fn amqp_url(&self) -> String {
        self.broker.amqp_url()
    }

    /// The private server's URL of database `name`.
    pub fn database_url(&self, name: &str) -> String {
        self.database.url(name)
    }

    /// `rabbitmqctl stop_app`, `down_for`, `start_app`, `await_startup`.
    pub async fn restart_broker(&self, down_for: Duration) -> Result<(), String> {
        self.broker
            .restart_app(down_for)
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops PostgreSQL (fast: sessions are cut), `down_for`, starts it again.
    pub async fn restart_database(&self, down_for: Duration) -> Result<(), String> {
        self.database
            .restart(down_for)
            .await
            .map_err(|e| e.to_string())
    }

    /// Checks that the broker runs (a restart that failed half-way is finished here).
    pub async fn ensure_up(&self) -> Result<(), String> {
        if self.broker.await_startup().await.is_err() {
            self.restart_broker(Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Restarts the broker app if it has lost `rabbit_fifo_dlx_sup`, the supervisor of quorum
    /// queues' at-least-once dead-lettering; true when it had to.
    ///
    /// RabbitMQ 3.10 loses it for good when such a queue is deleted while the app starts (its
    /// workers crash, the supervisor reaches its restart limit and stops): from then on every
    /// declaration of such a queue (`N.commands`) fails with `INTERNAL_ERROR` until the app
    /// restarts. A broker restart of this run can be what sets it off. `None` when the broker
    /// cannot be asked.
    pub async fn heal_broker(&self) -> Option<Result<bool, String>> {
        let alive = self
            .broker
            .ctl(&["eval", "is_pid(whereis(rabbit_fifo_dlx_sup))."])
            .await
            .ok()?;
        if alive.trim() == "true" {
            return Some(Ok(false));
        }
        eprintln!(
            "chaos: RabbitMQ has lost rabbit_fifo_dlx_sup (quorum queues with at-least-once \
             dead-lettering cannot be declared): restarting its app"
        );
        Some(self.restart_broker(Duration::ZERO).await.map(|()| true))
    }

    /// The broker's `max_message_size` in bytes, `None` when it cannot be asked.
    pub async fn max_message_size(&self) -> Option<u64> {
        let answer = self
            .broker
            .ctl(&["eval", "application:get_env(rabbit, max_message_size)."])
            .await
            .ok()?;
        parse_env_integer(&answer)
    }
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
