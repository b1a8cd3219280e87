//! `oprun dlq list|replay`: what is in the dead-letter queue, and putting it back.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use super::output::{print_rows, Format};
use super::CliError;
use crate::broker::connection::connect;
use crate::broker::dlq::{DeadLetter, DeadLetterQueue};
use crate::broker::Topology;
use crate::config::{parse_duration, Config, DEFAULT_INBOX_RETENTION};

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
        /// Also replay letters older than the inbox retention (or of unknown age). Their command
        /// id may have been pruned from the inbox, so a command that was applied before it was
        /// dead-lettered would be applied a second time.
        #[arg(long)]
        force: bool,
        /// The service's inbox retention (`--inbox-retention` of `serve`): letters older than
        /// this are refused without `--force`.
        #[arg(long, env = "OPRUN_INBOX_RETENTION", default_value = DEFAULT_INBOX_RETENTION, value_parser = parse_duration)]
        inbox_retention: Duration,
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
                force,
                inbox_retention,
            } => {
                let filter = ReplayFilter {
                    limit: limit.unwrap_or(usize::MAX),
                    code: code.as_deref(),
                    kind: kind.as_deref(),
                    max_age: (!force).then_some(inbox_retention),
                };
                replay(&dlq, &filter, dry_run).await
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
    refused: usize,
    failed: usize,
}

/// Which letters a replay takes.
struct ReplayFilter<'a> {
    limit: usize,
    code: Option<&'a str>,
    kind: Option<&'a str>,
    /// The inbox retention, unless `--force`: older letters (and those of unknown age) are
    /// refused.
    max_age: Option<Duration>,
}

/// Why a letter may not be replayed without `--force`, if it may not.
fn too_old(letter: &DeadLetter, now: chrono::DateTime<Utc>, max_age: Duration) -> Option<String> {
    let keep = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    match letter.failed_at {
        None => Some(
            "its age is unknown (no x-oprun-failed-at or x-death time): its command id may be \
             gone from the inbox, so a replay could apply it twice; --force replays it anyway"
                .to_owned(),
        ),
        Some(at) if now - at > keep => Some(format!(
            "it was dead-lettered {} s ago, longer than the inbox retention of {} s: its command \
             id may be gone from the inbox, so a replay could apply it twice; --force replays it \
             anyway",
            (now - at).num_seconds(),
            max_age.as_secs()
        )),
        Some(_) => None,
    }
}

async fn replay(
    dlq: &DeadLetterQueue,
    filter: &ReplayFilter<'_>,
    dry_run: bool,
) -> Result<(), CliError> {
    let now = Utc::now();
    let progress = std::io::stderr().is_terminal();
    let mut summary = ReplaySummary::default();
    // Letters that do not match stay unacked until the end, so `take` moves past them; closing
    // the channel returns them to the queue.
    let mut held: Vec<DeadLetter> = Vec::new();
    while summary.replayed < filter.limit {
        let Some(letter) = dlq.take().await? else {
            break;
        };
        let matches = filter.code.is_none_or(|c| letter.code == c)
            && filter
                .kind
                .is_none_or(|k| letter.kind.as_deref() == Some(k));
        let refusal = filter.max_age.and_then(|max| too_old(&letter, now, max));
        if !matches {
            summary.skipped += 1;
        } else if let Some(reason) = refusal {
            println!(
                "{}",
                json!({"refused": letter.summary(now), "reason": reason})
            );
            summary.refused += 1;
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
                "\rreplayed {}  skipped {}  refused {}  failed {}",
                summary.replayed, summary.skipped, summary.refused, summary.failed
            );
            let _ = std::io::stderr().flush();
        }
        held.push(letter);
    }
    if progress {
        eprintln!();
    }
    let line: Value = json!({
        "replayed": summary.replayed, "skipped": summary.skipped, "refused": summary.refused,
        "failed": summary.failed, "dry_run": dry_run,
    });
    println!("{line}");
    Ok(())
}
