//! `oprun dlq list|replay`: what is in the dead-letter queue, and putting it back.
//!
//! Both first move what `N.commands.dlq` holds into the `dead_letters` table (each letter taken
//! once, acked only after its row is committed; with the database down nothing is taken), then
//! read the table: listing changes nothing, and a letter keeps its delivery count, its place
//! and its age however often it is looked at.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;

use super::output::{print_rows, Format};
use super::CliError;
use crate::broker::connection::connect;
use crate::broker::dlq::{DeadLetterQueue, Republish};
use crate::broker::Topology;
use crate::config::{parse_duration, Config};
use crate::store::dead_letters::{self, NewDeadLetter, StoredDeadLetter};
use crate::store::settings;

/// Letters taken from the queue per transaction.
const INGEST_BATCH: usize = 100;
/// Stored letters read per page.
const PAGE: i64 = 200;

/// `oprun dlq …`
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters (code, message, kind, age, command id) without changing them.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Republish matching dead letters to the commands exchange, each removed only after the
    /// broker confirms its republish.
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
        /// The service's inbox retention: letters older than this are refused without
        /// `--force`. By default the `--inbox-retention` that `serve` recorded in the database at
        /// its last start; without one (no `serve` has started on this database) it must be
        /// given, or `--force`.
        #[arg(long, env = "OPRUN_INBOX_RETENTION", value_parser = parse_duration)]
        inbox_retention: Option<Duration>,
    },
}

const LIST_COLUMNS: [&str; 7] = [
    "id",
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
        let pool = super::pool(config)?;
        // The database first: when it is down, no letter is taken (and returned).
        let max_age = match &self {
            DlqCommand::List { .. } => {
                dead_letters::count(&pool).await?;
                None
            }
            DlqCommand::Replay {
                force,
                inbox_retention,
                ..
            } => replay_max_age(&pool, *force, *inbox_retention).await?,
        };
        let connection = connect(&config.amqp_url_list(), "oprun dlq").await?;
        let dlq = DeadLetterQueue::open(&connection, topology).await?;
        let result = async {
            ingest(&dlq, &pool).await?;
            match self {
                DlqCommand::List { limit, format } => list(&pool, limit, format).await,
                DlqCommand::Replay {
                    limit,
                    code,
                    kind,
                    dry_run,
                    ..
                } => {
                    let filter = ReplayFilter {
                        limit: limit.unwrap_or(usize::MAX),
                        code: code.as_deref(),
                        kind: kind.as_deref(),
                        max_age,
                    };
                    replay(&dlq, &pool, &filter, dry_run).await
                }
            }
        }
        .await;
        dlq.release().await;
        let _ = connection.close(200, "done".into()).await;
        pool.close().await;
        result
    }
}

/// The age above which `replay` refuses a letter: `None` with `--force`; else the explicit
/// `--inbox-retention`, else the one `serve` recorded; neither is an error (no guessing).
async fn replay_max_age(
    pool: &PgPool,
    force: bool,
    explicit: Option<Duration>,
) -> Result<Option<Duration>, CliError> {
    let recorded = settings::recorded_inbox_retention(pool).await?;
    if force {
        return Ok(None);
    }
    match (explicit, recorded) {
        (Some(given), Some((serve, _))) if given != serve => {
            eprintln!(
                "note: using --inbox-retention {} s; serve recorded {} s",
                given.as_secs(),
                serve.as_secs()
            );
            Ok(Some(given))
        }
        (Some(given), _) => Ok(Some(given)),
        (None, Some((serve, _))) => Ok(Some(serve)),
        (None, None) => Err(CliError::Invalid(
            "no `oprun serve` has recorded its --inbox-retention in this database, so the age \
             up to which a replay cannot apply a command twice is unknown: pass \
             --inbox-retention (the service's setting) or --force"
                .to_owned(),
        )),
    }
}

/// Moves every letter now in the queue into the table: taken in batches, each committed, then
/// acked. A crash between commit and ack stores a letter twice (a replay of both is harmless:
/// the inbox dedupes); nothing is ever acked unstored.
async fn ingest(dlq: &DeadLetterQueue, pool: &PgPool) -> Result<usize, CliError> {
    let mut moved = 0;
    loop {
        let letters = dlq.take_batch(INGEST_BATCH).await?;
        if letters.is_empty() {
            return Ok(moved);
        }
        let rows: Vec<NewDeadLetter> = letters
            .iter()
            .map(|l| NewDeadLetter {
                code: l.code.clone(),
                message: l.message.clone(),
                kind: l.kind.clone(),
                command_id: l.command_id.clone(),
                routing_key: l.routing_key.clone(),
                first_failed_at: l.first_failed_at,
                failed_at: l.failed_at,
                replays: l.replays,
                delivery_count: l.delivery_count,
                body: l.delivery.data.clone(),
                properties: l.encoded_properties(),
            })
            .collect();
        let mut tx = pool.begin().await?;
        dead_letters::insert_all(&mut tx, &rows).await?;
        tx.commit().await?;
        dlq.ack_all(&letters).await?;
        moved += letters.len();
    }
}

/// The listing form: code, message, kind, age (since the first refusal), command id.
fn summary(letter: &StoredDeadLetter, now: DateTime<Utc>) -> Value {
    json!({
        "id": letter.id,
        "code": letter.code,
        "message": letter.message,
        "kind": letter.kind,
        "command_id": letter.command_id,
        "failed_at": letter.first_failed_at,
        "last_failed_at": letter.failed_at,
        "age_seconds": letter.first_failed_at.map(|t| (now - t).num_seconds()),
        "routing_key": letter.routing_key,
        "replays": letter.replays,
        "delivery_count": letter.delivery_count,
        "bytes": letter.body.len(),
    })
}

async fn list(pool: &PgPool, limit: usize, format: Format) -> Result<(), CliError> {
    let now = Utc::now();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<Value> = dead_letters::page(pool, 0, limit)
        .await?
        .iter()
        .map(|l| summary(l, now))
        .collect();
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
fn too_old(letter: &StoredDeadLetter, now: DateTime<Utc>, max_age: Duration) -> Option<String> {
    let keep = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    match letter.first_failed_at {
        None => Some(
            "its age is unknown (no x-oprun-failed-at or x-death time): its command id may be \
             gone from the inbox, so a replay could apply it twice; --force replays it anyway"
                .to_owned(),
        ),
        Some(at) if now - at > keep => Some(format!(
            "it was first dead-lettered {} s ago, longer than the inbox retention of {} s: its \
             command id may be gone from the inbox, so a replay could apply it twice; --force \
             replays it anyway",
            (now - at).num_seconds(),
            max_age.as_secs()
        )),
        Some(_) => None,
    }
}

/// Republishes one stored letter and deletes it once confirmed, in one transaction holding its
/// row (a concurrent replay skips it). `None` when another replay holds it or it is gone.
async fn replay_one(
    dlq: &DeadLetterQueue,
    pool: &PgPool,
    id: i64,
) -> Result<Option<bool>, CliError> {
    let mut tx = pool.begin().await?;
    let Some(letter) = dead_letters::lock(&mut tx, id).await? else {
        return Ok(None);
    };
    let confirmed = dlq
        .republish(&Republish {
            routing_key: &letter.routing_key,
            body: &letter.body,
            properties: &letter.properties,
            replays: letter.replays,
            first_failed_at: letter.first_failed_at,
        })
        .await?;
    if confirmed {
        dead_letters::delete(&mut tx, id).await?;
        tx.commit().await?;
    }
    Ok(Some(confirmed))
}

async fn replay(
    dlq: &DeadLetterQueue,
    pool: &PgPool,
    filter: &ReplayFilter<'_>,
    dry_run: bool,
) -> Result<(), CliError> {
    let now = Utc::now();
    let progress = std::io::stderr().is_terminal();
    let mut summary_counts = ReplaySummary::default();
    let mut after = 0;
    'pages: loop {
        let page = dead_letters::page(pool, after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for letter in &page {
            if summary_counts.replayed >= filter.limit {
                break 'pages;
            }
            let matches = filter.code.is_none_or(|c| letter.code == c)
                && filter
                    .kind
                    .is_none_or(|k| letter.kind.as_deref() == Some(k));
            let refusal = filter.max_age.and_then(|max| too_old(letter, now, max));
            if !matches {
                summary_counts.skipped += 1;
            } else if let Some(reason) = refusal {
                println!(
                    "{}",
                    json!({"refused": summary(letter, now), "reason": reason})
                );
                summary_counts.refused += 1;
            } else if dry_run {
                println!("{}", json!({"would_replay": summary(letter, now)}));
                summary_counts.replayed += 1;
            } else {
                match replay_one(dlq, pool, letter.id).await? {
                    Some(true) => summary_counts.replayed += 1,
                    Some(false) => summary_counts.failed += 1,
                    None => summary_counts.skipped += 1,
                }
            }
            if progress {
                eprint!(
                    "\rreplayed {}  skipped {}  refused {}  failed {}",
                    summary_counts.replayed,
                    summary_counts.skipped,
                    summary_counts.refused,
                    summary_counts.failed
                );
                let _ = std::io::stderr().flush();
            }
        }
    }
    if progress {
        eprintln!();
    }
    let line: Value = json!({
        "replayed": summary_counts.replayed, "skipped": summary_counts.skipped,
        "refused": summary_counts.refused, "failed": summary_counts.failed, "dry_run": dry_run,
    });
    println!("{line}");
    Ok(())
}
