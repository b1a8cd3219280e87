//! `oprun dlq list|summary|show|replay|discard`: what is in the dead-letter queue, putting it
//! back, and throwing it away on the record.
//!
//! Each first moves what `N.commands.dlq` holds into the `dead_letters` table (each letter taken
//! once, acked only after its row is committed; with the database down nothing is taken), then
//! reads the table: listing, summarising and showing change nothing, and a letter keeps its
//! delivery count, its place and its age however often it is looked at. A discarded letter is
//! recorded in `dead_letter_discards` (who, when, code, kind, command id, body digest) in the
//! transaction that deletes it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::output::{print_rows, Format};
use super::CliError;
use crate::broker::connection::connect;
use crate::broker::dlq::{describe_properties, DeadLetterQueue};
use crate::broker::Topology;
use crate::config::{parse_duration, Config};
use crate::domain::command::MAX_ID_CHARS;
use crate::service::dead_letters::{self as service_dlq, ingest, ReplayFilter, ReplayStep, PAGE};
use crate::store::dead_letters::{self, LetterFilter, StoredDeadLetter};
use crate::store::settings;

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
    /// Count the dead letters: in total, and by code, kind, tenant and age (since the first
    /// refusal), without changing them.
    Summary {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// One dead letter: its reason, body and headers, without changing it.
    Show {
        /// The letter's id (as `dlq list` shows it).
        id: i64,
    },
    /// Delete dead letters for good, each recorded first (who, when, code, kind, command id,
    /// body digest). By ids, or by `--code` (then only with `--yes`; `--dry-run` lists them).
    Discard(DiscardArgs),
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

/// The arguments of `dlq discard`: letter ids, or a code.
#[derive(Debug, clap::Args)]
pub struct DiscardArgs {
    /// The letters' ids (or, instead, `--code`).
    #[arg(num_args = 0..=10_000, conflicts_with = "code")]
    ids: Vec<i64>,
    /// Every letter with this error code.
    #[arg(long)]
    code: Option<String>,
    /// With `--code`: only letters of this command kind.
    #[arg(long, requires = "code")]
    kind: Option<String>,
    /// With `--code`: only letters first dead-lettered longer ago than this (`7d`); a letter of
    /// unknown age is never taken.
    #[arg(long, requires = "code", value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// List what would be discarded; change nothing.
    #[arg(long, conflicts_with = "yes")]
    dry_run: bool,
    /// With `--code`: discard the matching letters (without it, only their number is printed).
    #[arg(long)]
    yes: bool,
    /// Who discards (recorded with each letter); default the OS user.
    #[arg(long, env = "USER")]
    initiator: Option<String>,
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
            DlqCommand::List { .. }
            | DlqCommand::Summary { .. }
            | DlqCommand::Show { .. }
            | DlqCommand::Discard(_) => {
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
                DlqCommand::Summary { format } => print_summary(&pool, format).await,
                DlqCommand::Show { id } => show(&pool, id).await,
                DlqCommand::Discard(args) => discard(&pool, args).await,
                DlqCommand::Replay {
                    limit,
                    code,
                    kind,
                    dry_run,
                    ..
                } => {
                    let filter = ReplayFilter {
                        limit,
                        code: code.as_deref(),
                        kind: kind.as_deref(),
                        max_age,
                        ..ReplayFilter::default()
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

/// Lists the oldest `limit` letters, then "N of TOTAL" (after a table; on stderr after JSON
/// lines, so that every line of stdout stays one letter).
async fn list(pool: &PgPool, limit: usize, format: Format) -> Result<(), CliError> {
    let now = Utc::now();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<Value> = dead_letters::page(pool, 0, limit)
        .await?
        .iter()
        .map(|l| summary(l, now))
        .collect();
    let total = dead_letters::count(pool).await?;
    print_rows(format, &rows, &LIST_COLUMNS)?;
    let mut footer = format!("{} of {total} dead letters", rows.len());
    if (rows.len() as i64) < total {
        footer.push_str(" (--limit shows more; dlq summary counts them)");
    }
    match format {
        Format::Table => println!("{footer}"),
        Format::Json => eprintln!("{footer}"),
    }
    Ok(())
}

/// `dlq summary`: one JSON object, or a table of (by, value, letters) rows.
async fn print_summary(pool: &PgPool, format: Format) -> Result<(), CliError> {
    let s = dead_letters::summary(pool).await?;
    let groups = [
        ("code", &s.by_code),
        ("kind", &s.by_kind),
        ("tenant", &s.by_tenant),
        ("age", &s.by_age),
    ];
    match format {
        Format::Json => {
            let mut out = json!({"total": s.total});
            for (by, counts) in groups {
                let object: serde_json::Map<String, Value> =
                    counts.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
                out[format!("by_{by}")] = Value::Object(object);
            }
            println!("{out}");
        }
        Format::Table => {
            let mut rows = vec![json!({"by": "total", "value": "-", "letters": s.total})];
            for (by, counts) in groups {
                rows.extend(
                    counts
                        .iter()
                        .map(|(value, n)| json!({"by": by, "value": value, "letters": n})),
                );
            }
            print_rows(format, &rows, &["by", "value", "letters"])?;
        }
    }
    Ok(())
}

/// `dlq show ID`: the letter as listed, plus its body (JSON when it is JSON, else its text, else
/// hex) and its properties and headers.
async fn show(pool: &PgPool, id: i64) -> Result<(), CliError> {
    let letter = dead_letters::get(pool, id)
        .await?
        .ok_or_else(|| CliError::NotFound(format!("dead letter {id} not found")))?;
    let mut out = summary(&letter, Utc::now());
    out["tenant_id"] = json!(letter.tenant_id);
    out["stored_at"] = json!(letter.stored_at);
    out["body_sha256"] = json!(hex::encode(Sha256::digest(&letter.body)));
    match std::str::from_utf8(&letter.body) {
        Ok(text) => match serde_json::from_str::<Value>(text) {
            Ok(body) => out["body"] = body,
            Err(_) => out["body_text"] = json!(text),
        },
        Err(_) => out["body_hex"] = json!(hex::encode(&letter.body)),
    }
    out["properties"] = describe_properties(&letter.properties).unwrap_or(Value::Null);
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("JSON values serialise")
    );
    Ok(())
}

/// `dlq discard`: the number matching, then (with ids or `--yes`) one line per discarded letter
/// and a closing count, or (with `--dry-run`) one line per letter that would go.
async fn discard(pool: &PgPool, args: DiscardArgs) -> Result<(), CliError> {
    let by = args.initiator.filter(|n| !n.is_empty());
    if by
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_ID_CHARS)
    {
        return Err(CliError::Invalid(format!(
            "--initiator is longer than {MAX_ID_CHARS} characters"
        )));
    }
    let by_ids = !args.ids.is_empty();
    let filter = match (args.ids, args.code) {
        (ids, None) if !ids.is_empty() => LetterFilter::Ids(ids),
        (_, Some(code)) => LetterFilter::Matching {
            code,
            kind: args.kind,
            failed_before: args
                .older_than
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .map(|d| Utc::now() - d),
        },
        _ => {
            return Err(CliError::Invalid(
                "give letter ids, or --code (with --kind, --older-than)".into(),
            ))
        }
    };
    let (matching, last) = dead_letters::count_matching(pool, &filter).await?;
    println!("{}", json!({"matching": matching}));
    if !by_ids && !args.yes && !args.dry_run {
        eprintln!("{matching} dead letters match; --dry-run lists them, --yes discards them");
        return Ok(());
    }
    let done = if args.dry_run {
        let upto = last.unwrap_or(0);
        let now = Utc::now();
        let mut listed = 0_i64;
        let mut after = 0;
        loop {
            let page = dead_letters::matching_page(pool, &filter, after, upto, PAGE).await?;
            let Some(tail) = page.last() else { break };
            after = tail.id;
            for letter in &page {
                println!("{}", json!({"would_discard": summary(letter, now)}));
            }
            listed += page.len() as i64;
        }
        listed
    } else {
        let done = service_dlq::discard(pool, &filter, last, by.as_deref(), |gone| {
            for d in gone {
                println!("{}", json!({"discarded": d}));
            }
        })
        .await?;
        done.discarded
    };
    let key = if args.dry_run { "listed" } else { "discarded" };
    println!(
        "{}",
        json!({key: done, "skipped": matching - done, "dry_run": args.dry_run})
    );
    Ok(())
}

/// `dlq replay`: one line per refused letter (and, in a dry run, per letter that would go),
/// then the counts.
async fn replay(
    dlq: &DeadLetterQueue,
    pool: &PgPool,
    filter: &ReplayFilter<'_>,
    dry_run: bool,
) -> Result<(), CliError> {
    let now = Utc::now();
    let progress = std::io::stderr().is_terminal();
    let counts = service_dlq::replay(dlq, pool, filter, dry_run, |counts, step| {
        match step {
            ReplayStep::Refused(letter, reason) => println!(
                "{}",
                json!({"refused": summary(letter, now), "reason": reason})
            ),
            ReplayStep::WouldReplay(letter) => {
                println!("{}", json!({"would_replay": summary(letter, now)}))
            }
            ReplayStep::Skipped | ReplayStep::Replayed(_) | ReplayStep::Failed(_) => {}
        }
        if progress {
            eprint!(
                "\rreplayed {}  skipped {}  refused {}  failed {}",
                counts.replayed, counts.skipped, counts.refused, counts.failed
            );
            let _ = std::io::stderr().flush();
        }
    })
    .await?;
    if progress {
        eprintln!();
    }
    let line: Value = json!({
        "replayed": counts.replayed, "skipped": counts.skipped,
        "refused": counts.refused, "failed": counts.failed, "dry_run": dry_run,
    });
    println!("{line}");
    Ok(())
}
