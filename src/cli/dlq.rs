//! `oprun dlq list|replay`: what is in the dead-letter queue, and putting it back.

use std::io::{IsTerminal, Write};

use chrono::Utc;
use serde_json::{json, Value};

use super::output::{print_rows, Format};
use super::CliError;
use crate::broker::connection::connect;
use crate::broker::dlq::{DeadLetter, DeadLetterQueue};
use crate::broker::Topology;
use crate::config::Config;

/// `oprun dlq …`
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters (code, message, kind, age, command id) without removing them.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Republish matching dead letters to the commands exchange, each acked only after the broker
    /// confirms its republish.
    Replay {
        /// At most this many replays.
        #[arg(long)]
        limit: Option<usize>,
        /// Only letters with this error code.
        #[arg(long)]
        code: Option<String>,
        /// Only letters of this command kind.
        #[arg(long)]
        kind: Option<String>,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

const LIST_COLUMNS: [&str; 6] = [
    "code",
    "kind",
    "command_id",
    "age_seconds",
    "replays",
    "message",
];

impl DlqCommand {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let topology = Topology::new(&config.namespace)?;
        let connection = connect(&config.amqp_url_list(), "oprun dlq").await?;
        let dlq = DeadLetterQueue::open(&connection, topology).await?;
        let result = match self {
            DlqCommand::List { limit, format } => list(&dlq, limit, format).await,
            DlqCommand::Replay {
                limit,
                code,
                kind,
                dry_run,
            } => {
                replay(
                    &dlq,
                    limit.unwrap_or(usize::MAX),
                    code.as_deref(),
                    kind.as_deref(),
                    dry_run,
                )
                .await
            }
        };
        dlq.release().await;
        let _ = connection.close(200, "done".into()).await;
        result
    }
}

async fn list(dlq: &DeadLetterQueue, limit: usize, format: Format) -> Result<(), CliError> {
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut held = Vec::new();
    while rows.len() < limit {
        let Some(letter) = dlq.take().await? else {
            break;
        };
        rows.push(letter.summary(now));
        held.push(letter);
    }
    print_rows(format, &rows, &LIST_COLUMNS)?;
    Ok(())
}

/// Counts of a replay.
#[derive(Debug, Default)]
struct ReplaySummary {
    replayed: usize,
    skipped: usize,
    failed: usize,
}

async fn replay(
    dlq: &DeadLetterQueue,
    limit: usize,
    code: Option<&str>,
    kind: Option<&str>,
    dry_run: bool,
) -> Result<(), CliError> {
    let now = Utc::now();
    let progress = std::io::stderr().is_terminal();
    let mut summary = ReplaySummary::default();
    // Letters that do not match stay unacked until the end, so `take` moves past them; closing
    // the channel returns them to the queue.
    let mut held: Vec<DeadLetter> = Vec::new();
    while summary.replayed < limit {
        let Some(letter) = dlq.take().await? else {
            break;
        };
        let matches = code.is_none_or(|c| letter.code == c)
            && kind.is_none_or(|k| letter.kind.as_deref() == Some(k));
        if !matches {
            summary.skipped += 1;
        } else if dry_run {
            println!("{}", json!({"would_replay": letter.summary(now)}));
            summary.replayed += 1;
        } else if dlq.replay(&letter).await? {
            summary.replayed += 1;
        } else {
            summary.failed += 1;
        }
        if progress {
            eprint!(
                "\rreplayed {}  skipped {}  failed {}",
                summary.replayed, summary.skipped, summary.failed
            );
            let _ = std::io::stderr().flush();
        }
        held.push(letter);
    }
    if progress {
        eprintln!();
    }
    let line: Value = json!({
        "replayed": summary.replayed, "skipped": summary.skipped, "failed": summary.failed, "dry_run": dry_run,
    });
    println!("{line}");
    Ok(())
}
