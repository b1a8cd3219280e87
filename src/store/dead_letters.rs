//! `dead_letters`: the dead letters taken from `N.commands.dlq`, read, summarised, replayed and
//! discarded from here so that looking at them changes nothing (see `broker::dlq`); and
//! `dead_letter_discards`, the record of each discarded letter, written in the transaction that
//! deletes it.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

/// At most this many characters of a text column (code, message, kind, command id, routing
/// key) are kept: they come from the message, the body and the headers keep the rest.
pub const TEXT_COLUMN_CHARS: usize = 1_000;

/// A dead letter to store, as taken from the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The reason code.
    pub code: String,
    /// The reason message.
    pub message: String,
    /// The command kind, when the body says.
    pub kind: Option<String>,
    /// The command id (body field or message_id).
    pub command_id: Option<String>,
    /// The tenant the body names.
    pub tenant_id: Option<i64>,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// When it was first refused (kept across replays).
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When this letter was refused.
    pub failed_at: Option<DateTime<Utc>>,
    /// How often it was replayed before.
    pub replays: i64,
    /// The broker's delivery count when it was taken.
    pub delivery_count: i64,
    /// The message body.
    pub body: Vec<u8>,
    /// The message properties, encoded by the broker layer.
    pub properties: Vec<u8>,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredDeadLetter {
    /// Its id: the order letters were taken from the queue in.
    pub id: i64,
    /// The reason code.
    pub code: String,
    /// The reason message.
    pub message: String,
    /// The command kind, when the body says.
    pub kind: Option<String>,
    /// The command id.
    pub command_id: Option<String>,
    /// The tenant the body names.
    pub tenant_id: Option<i64>,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// When it was first refused (kept across replays): its age.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When this letter was refused.
    pub failed_at: Option<DateTime<Utc>>,
    /// How often it was replayed before.
    pub replays: i64,
    /// The broker's delivery count when it was taken.
    pub delivery_count: i64,
    /// The message body.
    pub body: Vec<u8>,
    /// The message properties, encoded by the broker layer.
    pub properties: Vec<u8>,
    /// When it was stored here.
    pub stored_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, code, message, kind, command_id, tenant_id, routing_key, \
    first_failed_at, failed_at, replays, delivery_count, body, properties, stored_at";

/// Text Postgres can store: NUL (which a `text` column refuses) replaced, at most
/// [`TEXT_COLUMN_CHARS`] characters.
fn storable(text: &str) -> String {
    text.chars()
        .take(TEXT_COLUMN_CHARS)
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect()
}

/// Inserts `letters` in order (ids follow it).
pub async fn insert_all(
    conn: &mut PgConnection,
    letters: &[NewDeadLetter],
) -> Result<(), sqlx::Error> {
    for l in letters {
        sqlx::query(
            "INSERT INTO dead_letters (code, message, kind, command_id, tenant_id, routing_key,
                 first_failed_at, failed_at, replays, delivery_count, body, properties)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(storable(&l.code))
        .bind(storable(&l.message))
        .bind(l.kind.as_deref().map(storable))
        .bind(l.command_id.as_deref().map(storable))
        .bind(l.tenant_id)
        .bind(storable(&l.routing_key))
        .bind(l.first_failed_at)
        .bind(l.failed_at)
        .bind(l.replays)
        .bind(l.delivery_count)
        .bind(&l.body)
        .bind(&l.properties)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Up to `limit` letters with an id above `after`, oldest first.
pub async fn page(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredDeadLetter>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Locks letter `id` for this transaction; `None` if it is gone or another replay holds it.
pub async fn lock(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<StoredDeadLetter>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Deletes letter `id` (after its replay was confirmed).
pub async fn delete(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many letters are stored.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(pool)
        .await
}

/// One letter by id.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<StoredDeadLetter>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The age buckets of [`summary`], by their upper bounds in seconds (the last is open): under
/// an hour, under a day, under a week, older.
pub const AGE_BUCKETS: [(&str, Option<f64>); 4] = [
    ("under_1h", Some(3_600.0)),
    ("1h_to_1d", Some(86_400.0)),
    ("1d_to_7d", Some(604_800.0)),
    ("over_7d", None),
];

/// The bucket of a letter whose age (since its first refusal) is unknown.
pub const UNKNOWN_AGE: &str = "unknown";

/// Most values listed per dimension of [`summary`] (the largest counts; the rest add up under
/// `other`): a letter's kind and tenant come from its body, so their number is the producers'.
pub const SUMMARY_TOP: usize = 20;

/// The stored letters counted: in total, and by code, kind, tenant and age bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Every stored letter.
    pub total: i64,
    /// By reason code, largest first.
    pub by_code: Vec<(String, i64)>,
    /// By command kind (`unknown` when the body names none), largest first.
    pub by_kind: Vec<(String, i64)>,
    /// By tenant (`none` when the body names none), largest first.
    pub by_tenant: Vec<(String, i64)>,
    /// By age bucket ([`AGE_BUCKETS`], then [`UNKNOWN_AGE`]), in that order, empty ones included.
    pub by_age: Vec<(String, i64)>,
}

/// One row of [`summary`]'s grouping sets: `GROUPING(code, kind, tenant_id, age)`, the
/// grouped values, the count.
type SummaryRow = (
    i32,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i32>,
    i64,
);

/// Counts the stored letters in one statement (one pass, grouping sets), ages from their first
/// refusal (kept across replays) to the database's `now()`.
pub async fn summary(pool: &PgPool) -> Result<Summary, sqlx::Error> {
    let bounds: Vec<f64> = AGE_BUCKETS.iter().filter_map(|(_, b)| *b).collect();
    let rows: Vec<SummaryRow> = sqlx::query_as(
        "SELECT GROUPING(code, kind, tenant_id, age)::int, code, kind, tenant_id, age, count(*)
             FROM (SELECT code, kind, tenant_id,
                          width_bucket(extract(epoch FROM now() - first_failed_at)::float8,
                                       $1::float8[]) AS age
                   FROM dead_letters) l
             GROUP BY GROUPING SETS ((code), (kind), (tenant_id), (age), ())",
    )
    .bind(&bounds)
    .fetch_all(pool)
    .await?;
    // GROUPING's bits, first argument highest: a set bit is a column not grouped by.
    const BY_CODE: i32 = 0b0111;
    const BY_KIND: i32 = 0b1011;
    const BY_TENANT: i32 = 0b1101;
    const BY_AGE: i32 = 0b1110;
    let mut out = Summary::default();
    let mut ages = vec![0_i64; AGE_BUCKETS.len() + 1];
    for (grouping, code, kind, tenant, age, n) in rows {
        match grouping {
            BY_CODE => out.by_code.push((code.unwrap_or_default(), n)),
            BY_KIND => out
                .by_kind
                .push((kind.unwrap_or_else(|| "unknown".into()), n)),
            BY_TENANT => out
                .by_tenant
                .push((tenant.map_or_else(|| "none".into(), |t| t.to_string()), n)),
            BY_AGE => {
                let i = age.map_or(AGE_BUCKETS.len(), |a| {
                    usize::try_from(a).unwrap_or(0).min(AGE_BUCKETS.len() - 1)
                });
                ages[i] += n;
            }
            _ => out.total = n,
        }
    }
    for counts in [&mut out.by_code, &mut out.by_kind, &mut out.by_tenant] {
        top(counts);
    }
    out.by_age = AGE_BUCKETS
        .iter()
        .map(|(name, _)| *name)
        .chain([UNKNOWN_AGE])
        .zip(ages)
        .map(|(name, n)| (name.to_owned(), n))
        .collect();
    Ok(out)
}

/// Largest first (ties by name), at most [`SUMMARY_TOP`] of them and `other` for the rest.
fn top(counts: &mut Vec<(String, i64)>) {
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if counts.len() > SUMMARY_TOP {
        let rest: i64 = counts.drain(SUMMARY_TOP..).map(|(_, n)| n).sum();
        counts.push(("other".into(), rest));
    }
}

/// Which stored letters a discard takes: these ids, or those of a code (and kind, and first
/// refused before a time).
#[derive(Debug, Clone, PartialEq)]
pub enum LetterFilter {
    /// These letters.
    Ids(Vec<i64>),
    /// Letters of a code.
    Matching {
        /// The reason code.
        code: String,
        /// Only this command kind.
        kind: Option<String>,
        /// Only letters first refused before this (a letter of unknown age never matches).
        failed_before: Option<DateTime<Utc>>,
    },
}

/// The predicates of `filter` after `WHERE` (of `dead_letters`).
fn push_filter<'a>(q: &mut QueryBuilder<'a, Postgres>, filter: &'a LetterFilter) {
    match filter {
        LetterFilter::Ids(ids) => {
            q.push("id = ANY(").push_bind(ids.as_slice()).push(")");
        }
        LetterFilter::Matching {
            code,
            kind,
            failed_before,
        } => {
            // `code` first: dead_letters_code_idx (code, id) serves the filter and the order.
            q.push("code = ").push_bind(code.as_str());
            if let Some(k) = kind {
                q.push(" AND kind = ").push_bind(k.as_str());
            }
            if let Some(t) = failed_before {
                q.push(" AND first_failed_at < ").push_bind(*t);
            }
        }
    }
}

/// `filter`'s predicates, then one page of it: `after < id <= upto`, in id order, at most
/// `limit`.
fn push_page<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    filter: &'a LetterFilter,
    after: i64,
    upto: i64,
    limit: i64,
) {
    push_filter(q, filter);
    q.push(" AND id > ")
        .push_bind(after)
        .push(" AND id <= ")
        .push_bind(upto)
        .push(" ORDER BY id LIMIT ")
        .push_bind(limit);
}

/// How many stored letters `filter` matches, and the highest of their ids (a discard takes none
/// stored after it counted).
pub async fn count_matching(
    pool: &PgPool,
    filter: &LetterFilter,
) -> Result<(i64, Option<i64>), sqlx::Error> {
    let mut q = QueryBuilder::new("SELECT count(*), max(id) FROM dead_letters WHERE ");
    push_filter(&mut q, filter);
    q.build_query_as().fetch_one(pool).await
}

/// Up to `limit` letters matching `filter` with `after < id <= upto`, in id order.
pub async fn matching_page(
    pool: &PgPool,
    filter: &LetterFilter,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<StoredDeadLetter>, sqlx::Error> {
    let mut q = QueryBuilder::new(format!("SELECT {COLUMNS} FROM dead_letters WHERE "));
    push_page(&mut q, filter, after, upto, limit);
    q.build_query_as().fetch_all(pool).await
}

/// A discarded letter's record.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Discarded {
    /// The letter's id.
    pub letter_id: i64,
    /// Its reason code.
    pub code: String,
    /// Its command kind.
    pub kind: Option<String>,
    /// Its command id.
    pub command_id: Option<String>,
    /// Lowercase hex SHA-256 of its body.
    pub body_sha256: String,
    /// Who discarded it.
    pub discarded_by: Option<String>,
    /// When.
    pub discarded_at: DateTime<Utc>,
}

/// Discards up to `limit` letters matching `filter` with `after < id <= upto` (in id order,
/// skipping letters a replay holds), in the caller's transaction: each letter is first recorded
/// in `dead_letter_discards` (who, when, code, kind, command id, tenant, age, body digest), then
/// exactly the recorded letters are deleted. Either statement failing rolls back both.
pub async fn discard(
    conn: &mut PgConnection,
    filter: &LetterFilter,
    after: i64,
    upto: i64,
    limit: i64,
    by: Option<&str>,
) -> Result<Vec<Discarded>, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "INSERT INTO dead_letter_discards (letter_id, code, kind, command_id, tenant_id,
             routing_key, first_failed_at, body_sha256, body_bytes, discarded_by)
         SELECT id, code, kind, command_id, tenant_id, routing_key, first_failed_at,
                encode(sha256(body), 'hex'), length(body), ",
    );
    q.push_bind(by);
    q.push(" FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE ");
    push_page(&mut q, filter, after, upto, limit);
    q.push(
        " FOR UPDATE SKIP LOCKED) ORDER BY id
             RETURNING letter_id, code, kind, command_id, body_sha256, discarded_by, discarded_at",
    );
    let recorded: Vec<Discarded> = q.build_query_as().fetch_all(&mut *conn).await?;
    let ids: Vec<i64> = recorded.iter().map(|d| d.letter_id).collect();
    sqlx::query("DELETE FROM dead_letters WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    Ok(recorded)
}

/// The stored letters of one reason code, as the dead-letters page groups them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CodeGroup {
    /// The reason code.
    pub code: String,
    /// How many letters have it.
    pub letters: i64,
    /// Their command kinds (`unknown` when the body names none), most common first, at most
    /// [`GROUP_KINDS`] of them.
    pub kinds: Vec<String>,
    /// How many kinds they have in all.
    pub kind_count: i64,
    /// The earliest first refusal among them (`None` when no letter's age is known).
    pub oldest: Option<DateTime<Utc>>,
    /// The latest first refusal among them.
    pub newest: Option<DateTime<Utc>>,
    /// The highest id among them: a discard or replay of the group confirmed on this count takes
    /// no letter stored after it.
    pub last_id: i64,
}

/// Most command kinds a [`CodeGroup`] names (kinds come from producers' bodies).
pub const GROUP_KINDS: i64 = 10;

/// The stored letters grouped by code, largest group first (ties by code), at most `limit`
/// groups: one statement over `dead_letters_code_idx`.
pub async fn code_groups(pool: &PgPool, limit: i64) -> Result<Vec<CodeGroup>, sqlx::Error> {
    sqlx::query_as(
        "WITH kinds AS (
             SELECT code, coalesce(kind, 'unknown') AS kind, count(*) AS n
             FROM dead_letters GROUP BY 1, 2
         ), ranked AS (
             SELECT code, kind, row_number() OVER (PARTITION BY code ORDER BY n DESC, kind) AS r,
                    count(*) OVER (PARTITION BY code) AS kind_count
             FROM kinds
         )
         SELECT g.code, g.letters,
                coalesce((SELECT array_agg(kind ORDER BY r) FROM ranked k
                          WHERE k.code = g.code AND r <= $2), '{}') AS kinds,
                (SELECT max(kind_count) FROM ranked k WHERE k.code = g.code) AS kind_count,
                g.oldest, g.newest, g.last_id
         FROM (SELECT code, count(*) AS letters, min(first_failed_at) AS oldest,
                      max(first_failed_at) AS newest, max(id) AS last_id
               FROM dead_letters GROUP BY code) g
         ORDER BY g.letters DESC, g.code
         LIMIT $1",
    )
    .bind(limit)
    .bind(GROUP_KINDS)
    .fetch_all(pool)
    .await
}

/// A stored letter as a listing shows it: everything but its body and properties.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ListedDeadLetter {
    /// Its id.
    pub id: i64,
    /// The reason code.
    pub code: String,
    /// The reason message.
    pub message: String,
    /// The command kind, when the body says.
    pub kind: Option<String>,
    /// The command id.
    pub command_id: Option<String>,
    /// The tenant the body names.
    pub tenant_id: Option<i64>,
    /// When it was first refused.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// How often it was replayed before.
    pub replays: i64,
    /// The body's size in bytes.
    pub bytes: i32,
}

/// Up to `limit` letters (of `code` when given) with an id below `before`, newest first, without
/// their bodies; and how many letters (of `code`) are stored in all.
pub async fn newest_page(
    pool: &PgPool,
    code: Option<&str>,
    before: i64,
    limit: i64,
) -> Result<(Vec<ListedDeadLetter>, i64), sqlx::Error> {
    let rows = sqlx::query_as(
        "SELECT id, code, message, kind, command_id, tenant_id, first_failed_at, replays,
                length(body) AS bytes
         FROM dead_letters
         WHERE ($1::text IS NULL OR code = $1) AND id < $2
         ORDER BY id DESC LIMIT $3",
    )
    .bind(code)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE ($1::text IS NULL OR code = $1)",
    )
    .bind(code)
    .fetch_one(pool)
    .await?;
    Ok((rows, total))
}
