//! `oprun events replay`: re-send stored events, in order, for a subscriber that missed them.

use chrono::{DateTime, Utc};

use super::{pool, CliError};
use crate::broker::connection::connect;
use crate::broker::publisher::ConfirmPublisher;
use crate::broker::Topology;
use crate::config::Config;
use crate::service::relay::publish_events;
use crate::store::events;

/// `oprun events …`
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Republish stored events (with their original ids, so subscribers can dedupe).
    Replay {
        /// Every event of this run, in sequence order.
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        run: Option<i64>,
        /// Every event recorded since this RFC 3339 time, in recording order.
        #[arg(long)]
        since: Option<String>,
        /// Send to this queue (through the default exchange) instead of the events exchange.
        #[arg(long)]
        to_queue: Option<String>,
    },
}

const PAGE: i64 = 500;

impl EventsCommand {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let EventsCommand::Replay {
            run,
            since,
            to_queue,
        } = self;
        let topology = Topology::new(&config.namespace)?;
        let pool = pool(config)?;
        let connection = connect(&config.amqp_url_list(), "oprun events").await?;
        let publisher = ConfirmPublisher::open(&connection).await?;
        let (exchange, routing_key) = match &to_queue {
            Some(q) => (String::new(), q.clone()),
            None => (topology.events_exchange(), String::new()),
        };
        let mut sent = 0usize;
        if let Some(run_id) = run {
            let history = events::for_run(&pool, run_id).await?;
            if history.is_empty() {
                return Err(CliError::NotFound(format!("run {run_id} has no events")));
            }
            publish_events(&publisher, &exchange, &routing_key, &history).await?;
            sent = history.len();
        } else if let Some(since) = since {
            let since: DateTime<Utc> = DateTime::parse_from_rfc3339(&since)
                .map_err(|e| CliError::Invalid(format!("--since {since:?} is not RFC 3339: {e}")))?
                .with_timezone(&Utc);
            let mut after = 0;
            loop {
                let page = events::since(&pool, since, after, PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.position;
                publish_events(&publisher, &exchange, &routing_key, &page).await?;
                sent += page.len();
            }
        }
        let _ = connection.close(200, "done".into()).await;
        println!("{}", serde_json::json!({"replayed_events": sent}));
        Ok(())
    }
}
