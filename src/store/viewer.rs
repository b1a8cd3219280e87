//! Reads of the run viewer: runs inside a token's scope with keyset paging, one run's events
//! after a sequence, the legacy rows that point at a run, related restores, the dispatches
//! deduplicated onto a run, the actions recorded on a run, and the viewer's signing secret.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{FromRow, PgExecutor, PgPool, Postgres, QueryBuilder, Row};

use crate::domain::OperationRun;
use crate::store::legacy::LegacyTable;
use crate::store::StoreError;

/// The `application_name` of the viewer's database sessions (what `pg_stat_activity` shows).
pub const VIEWER_APPLICATION_NAME: &str = "oprun-viewer";

/// The viewer's own pool of at most `max_connections` to `database_url`, apart from the
/// pipeline's, so that no amount of reading can take a connection a command needs. Lazy, like
/// the pipeline's; its sessions are named [`VIEWER_APPLICATION_NAME`].
pub fn connect_viewer_pool(database_url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    crate::store::hosts::parse(database_url)?.pool(
        PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5)),
        |options| options.application_name(VIEWER_APPLICATION_NAME),
    )
}

/// Whether PostgreSQL's `timestamptz` can hold `t` (4713 BC to 294276 AD): a time outside it
/// is a bad parameter, never a query that fails.
pub fn in_timestamptz_range(t: DateTime<Utc>) -> bool {
    // PostgreSQL's MIN_TIMESTAMP and END_TIMESTAMP, in microseconds since 2000-01-01.
    const MIN_SINCE_2000: i64 = -211_813_488_000_000_000;
    const END_SINCE_2000: i64 = 9_223_371_331_200_000_000;
    const EPOCH_2000_SINCE_1970: i64 = 946_684_800_000_000;
    let micros = t.timestamp_micros() as i128 - EPOCH_2000_SINCE_1970 as i128;
    (MIN_SINCE_2000 as i128..END_SINCE_2000 as i128).contains(&micros)
}

/// What a token may see: one workspace, and when `tenant_ids` is set only those tenants' runs
/// (never the workspace-scoped ones); when `run_id` is set, only that one run of them (a link
/// to one run: every other run, and whatever is not a run, is outside it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ViewerScope {
    /// The workspace.
    pub workspace_id: i64,
    /// The tenants, or `None` for the whole workspace.
    pub tenant_ids: Option<Vec<i64>>,
    /// The one run, or `None` for every run of the workspace and tenants.
    pub run_id: Option<i64>,
}

/// One value a context filter compares a top-level context key with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextValue {
    /// An integer: the key holds it as a JSON number or as its decimal string (one value, as in
    /// the identity rule).
    Integer(i64),
    /// Any other text: the key holds this JSON string.
    Text(String),
}

impl ContextValue {
    /// The value of a filter parameter: an integer when it is one in canonical decimal form
    /// (`7`, `-3`; not `07` or `+7`), else text.
    pub fn parse(text: &str) -> Self {
        match text.parse::<i64>() {
            Ok(n) if n.to_string() == text => Self::Integer(n),
            _ => Self::Text(text.to_owned()),
        }
    }

    /// The JSON documents one of which the context must contain (`@>`).
    fn containments(&self, key: &str) -> Vec<Value> {
        match self {
            Self::Integer(n) => vec![
                serde_json::json!({ key: n }),
                serde_json::json!({ key: n.to_string() }),
            ],
            Self::Text(t) => vec![serde_json::json!({ key: t })],
        }
    }
}

/// `q`: a run by id, or text matched against the type labels and the initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// `123` or `#123`: that run.
    Run(i64),
    /// Runs of these types (those whose label or wire name holds the text, case-insensitively)
    /// or whose initiator is the text (case-insensitively).
    Text {
        /// The text, as given.
        text: String,
        /// The wire names of the types it matches.
        types: Vec<String>,
    },
}

/// Filters of `GET /v1/runs`; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunListFilter {
    /// Only this tenant.
    pub tenant_id: Option<i64>,
    /// Only this type (wire name).
    pub run_type: Option<String>,
    /// Only this status (wire name).
    pub status: Option<String>,
    /// Only this outcome (wire name).
    pub outcome: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Top-level context keys that must equal these values (all of them).
    pub context: Vec<(String, ContextValue)>,
    /// A failure with this code (a stored entry or an overflow count).
    pub failure_code: Option<String>,
    /// Exactly this initiator name.
    pub initiator: Option<String>,
    /// Dispatched by this user.
    pub user_id: Option<i64>,
    /// Of this identity (`run_identity_hash`).
    pub identity: Option<String>,
    /// Last changed before (runs that stopped moving).
    pub updated_before: Option<DateTime<Utc>>,
    /// Free search.
    pub q: Option<Search>,
}

/// Which runs one branch of the list reads. A text search (`q`) matches a type or the
/// initiator: an `OR` that no one index serves in order, so the list reads one branch per type
/// and one for the initiator, each newest first from its own index, and merges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Branch<'a> {
    /// Every run the filters match (no text search).
    All,
    /// Runs of this type.
    OfType(&'a str),
    /// Runs whose initiator is the text, of none of the text's types (so no run is in two
    /// branches).
    OfInitiator,
}

impl<'a> Branch<'a> {
    /// The branches of `filter`'s list.
    fn of(filter: &'a RunListFilter) -> Vec<Self> {
        match &filter.q {
            Some(Search::Text { types, .. }) => types
                .iter()
                .map(|t| Self::OfType(t.as_str()))
                .chain([Self::OfInitiator])
                .collect(),
            _ => vec![Self::All],
        }
    }
}

/// The list statement's columns: the run and its tenant's name.
const LISTED_COLUMNS: &str =
    "SELECT r.*, (SELECT t.name FROM tenants t WHERE t.id = r.tenant_id) AS tenant_name \
     FROM operation_runs r WHERE ";

/// ` AND` the run `r` has a failure with `code`: a stored entry or an overflow count. The
/// expression is the failure-codes index's; the literal condition is the overflow index's
/// predicate (runs with overflow), which the planner proves from it, in generic plans too.
pub(super) fn push_failure_code<'a>(q: &mut QueryBuilder<'a, Postgres>, code: &'a str) {
    q.push(" AND (jsonb_path_query_array(r.failure_summary, '$[*].code') @> ")
        .push_bind(serde_json::json!([code]));
    q.push(" OR (r.failure_overflow <> '{}'::jsonb AND r.failure_overflow ? ")
        .push_bind(code)
        .push("))");
}

/// The predicates of one branch of the list, after `WHERE`.
fn push_predicates<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    scope: &'a ViewerScope,
    filter: &'a RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    branch: Branch<'a>,
) {
    q.push("r.workspace_id = ").push_bind(scope.workspace_id);
    if let Some(tenants) = &scope.tenant_ids {
        q.push(" AND r.tenant_id = ANY(")
            .push_bind(tenants.as_slice())
            .push(")");
    }
    if let Some(run) = scope.run_id {
        q.push(" AND r.id = ").push_bind(run);
    }
    if let Some(t) = filter.tenant_id {
        q.push(" AND r.tenant_id = ").push_bind(t);
    }
    if let Some(t) = &filter.run_type {
        q.push(" AND r.type = ").push_bind(t.as_str());
    }
    if let Some(s) = &filter.status {
        q.push(" AND r.status = ").push_bind(s.as_str());
    }
    if let Some(o) = &filter.outcome {
        q.push(" AND r.outcome = ").push_bind(o.as_str());
    }
    if let Some(t) = filter.created_after {
        q.push(" AND r.created_at >= ").push_bind(t);
    }
    if let Some(t) = filter.created_before {
        q.push(" AND r.created_at < ").push_bind(t);
    }
    for (key, value) in &filter.context {
        q.push(" AND (");
        for (i, doc) in value.containments(key).into_iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("r.context @> ").push_bind(doc);
        }
        q.push(")");
    }
    if let Some(code) = &filter.failure_code {
        push_failure_code(q, code);
    }
    if let Some(i) = &filter.initiator {
        // The index holds lower(initiator_name) of runs with an initiator; the exact predicate
        // keeps the match exact.
        q.push(" AND r.initiator_name IS NOT NULL AND lower(r.initiator_name) = lower(")
            .push_bind(i.as_str())
            .push(")");
        q.push(" AND r.initiator_name = ").push_bind(i.as_str());
    }
    if let Some(u) = filter.user_id {
        q.push(" AND r.user_id = ").push_bind(u);
    }
    if let Some(h) = &filter.identity {
        q.push(" AND r.run_identity_hash = ").push_bind(h.as_str());
    }
    if let Some(t) = filter.updated_before {
        // A run changes only after it is created (both are the database's now()), so the
        // creation time bounds the scan of the newest-first index: the runs that stopped moving
        // are old, and without this bound the list would walk every newer run to reach them.
        q.push(" AND r.updated_at < ").push_bind(t);
        q.push(" AND r.created_at < ").push_bind(t);
    }
    match &filter.q {
        Some(Search::Run(id)) => {
            q.push(" AND r.id = ").push_bind(*id);
        }
        Some(Search::Text { text, types }) => match branch {
            Branch::OfType(t) => {
                q.push(" AND r.type = ").push_bind(t);
            }
            Branch::OfInitiator | Branch::All => {
                q.push(" AND r.initiator_name IS NOT NULL AND lower(r.initiator_name) = lower(")
                    .push_bind(text.as_str())
                    .push(")");
                q.push(" AND r.type <> ALL(")
                    .push_bind(types.as_slice())
                    .push(")");
            }
        },
        None => {}
    }
    if let Some((created_at, id)) = after {
        // The first predicate bounds the index range; the row comparison breaks ties by id.
        q.push(" AND r.created_at <= ").push_bind(created_at);
        q.push(" AND (r.created_at, r.id) < (")
            .push_bind(created_at);
        q.push(", ").push_bind(id).push(")");
    }
}

/// The list query with only the predicates of the filters that are set, so that each
/// combination is its own statement whose plan (custom or generic) can use the indexes; values
/// are always bound parameters. The list's statements are never prepared for reuse
/// (`persistent(false)`): PostgreSQL then plans each with its values, where a cached generic
/// plan would read a failure code on 4 % of the runs as if it were rare (3.7 s instead of
/// 1.4 ms on 1,000,000 runs; planning costs about 1.5 ms). A text search reads its branches ([`Branch`]) apart, each newest
/// first from its own index, and merges them.
fn list_query<'a>(
    prefix: &str,
    scope: &'a ViewerScope,
    filter: &'a RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(prefix);
    match Branch::of(filter).as_slice() {
        [Branch::All] => {
            q.push(LISTED_COLUMNS);
            push_predicates(&mut q, scope, filter, after, Branch::All);
        }
        branches => {
            q.push("SELECT * FROM (");
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    q.push(" UNION ALL ");
                }
                q.push("(").push(LISTED_COLUMNS);
                push_predicates(&mut q, scope, filter, after, *branch);
                q.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
                    .push_bind(limit)
                    .push(")");
            }
            q.push(") r");
        }
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    q
}

/// A run of a list and its tenant's name.
#[derive(Debug, Clone)]
pub struct ListedRow {
    /// The run.
    pub run: OperationRun,
    /// Its tenant's name (`None`: a workspace-scoped run).
    pub tenant_name: Option<String>,
}

impl<'r> FromRow<'r, PgRow> for ListedRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            run: OperationRun::from_row(row)?,
            tenant_name: row.try_get("tenant_name")?,
        })
    }
}

/// Runs in `scope` matching `filter`, newest first (`created_at`, then `id`), strictly after the
/// keyset position `after` when given, at most `limit`.
pub async fn list_runs(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    filter: &RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<ListedRow>, sqlx::Error> {
    list_query("", scope, filter, after, limit)
        .build_query_as()
        .persistent(false)
        .fetch_all(executor)
        .await
}

/// The runs of [`list_runs`], handed to `take` one at a time as they arrive, until `take`
/// returns `false`: the caller holds only what it keeps (a page bounded in bytes), never the
/// whole result.
pub async fn each_listed_run(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    filter: &RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
    mut take: impl FnMut(ListedRow) -> bool,
) -> Result<(), sqlx::Error> {
    let mut query = list_query("", scope, filter, after, limit);
    let mut rows = query
        .build_query_as::<ListedRow>()
        .persistent(false)
        .fetch(executor);
    while let Some(row) = rows.try_next().await? {
        if !take(row) {
            break;
        }
    }
    Ok(())
}

/// The plan (`EXPLAIN (FORMAT JSON)`) of the [`list_runs`] statement for these arguments: what
/// the plan test checks.
pub async fn explain_list_runs(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    filter: &RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Value, sqlx::Error> {
    list_query("EXPLAIN (FORMAT JSON) ", scope, filter, after, limit)
        .build_query_scalar()
        .fetch_one(executor)
        .await
}

/// The run that holds identity `hash` in `scope`, if one does and it is in scope: the active
/// run of the identity, else its completed run whose window is `forever`. Both parts are read
/// from the identity index.
pub async fn identity_holder(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    hash: &str,
) -> Result<Option<ListedRow>, sqlx::Error> {
    let part = |status: &str| {
        format!(
            "(SELECT r.*, (SELECT t.name FROM tenants t WHERE t.id = r.tenant_id) AS tenant_name
              FROM operation_runs r
              WHERE r.run_identity_hash = $1 AND r.workspace_id = $2 AND {status}
                AND ($3::bigint[] IS NULL OR r.tenant_id = ANY($3))
                AND ($4::bigint IS NULL OR r.id = $4)
              ORDER BY r.created_at LIMIT 1)"
        )
    };
    let sql = format!(
        "SELECT * FROM ({} UNION ALL {}) h ORDER BY status = 'completed', created_at LIMIT 1",
        part("r.status IN ('queued', 'running')"),
        part("r.status = 'completed' AND r.dedupe_window = 'forever'"),
    );
    sqlx::query_as(&sql)
        .bind(hash)
        .bind(scope.workspace_id)
        .bind(scope.tenant_ids.as_deref())
        .bind(scope.run_id)
        .fetch_optional(executor)
        .await
}

/// Run `id` if it is in `scope`; a run outside it is as absent as one that does not exist.
pub async fn get_run(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    id: i64,
) -> Result<Option<OperationRun>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM operation_runs
         WHERE id = $1 AND workspace_id = $2 AND ($3::bigint[] IS NULL OR tenant_id = ANY($3))
           AND ($4::bigint IS NULL OR id = $4)",
    )
    .bind(id)
    .bind(scope.workspace_id)
    .bind(scope.tenant_ids.as_deref())
    .bind(scope.run_id)
    .fetch_optional(executor)
    .await
}

/// The workspace and tenant of run `id` (`None`: no such run): what a token for that one run
/// must be scoped to. Not a viewer read: no token is involved (`oprun token --run`).
pub async fn run_scope(
    executor: impl PgExecutor<'_>,
    id: i64,
) -> Result<Option<(i64, Option<i64>)>, sqlx::Error> {
    sqlx::query_as("SELECT workspace_id, tenant_id FROM operation_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// The byte budget of one page of the viewer: a run's events (their documents) or a list of runs
/// (their JSON) add up to at most
/// this many bytes (always at least one item). docs/viewer.md.
pub const PAGE_BYTES: i64 = 1024 * 1024;

/// One stored event as the viewer sends it: the document as stored, never parsed (it is
/// copied into the answer as it is).
#[derive(Debug)]
pub struct ViewerEvent {
    /// Position in the run's history, from 1.
    pub sequence: i64,
    /// CloudEvents `type`.
    pub event_type: String,
    /// The CloudEvents document, as JSON text.
    pub cloud_event: Box<RawValue>,
}

/// A page of a run's events, in sequence order, and whether more follow it.
#[derive(Debug, Default)]
pub struct EventPage {
    /// The events.
    pub events: Vec<ViewerEvent>,
    /// More events follow the last one (they did not fit the page's count or bytes).
    pub more: bool,
}

/// Events of `run_id` with a sequence above `after`, in sequence order: at most `max_events`,
/// and no more once their documents pass `max_bytes` (the first event is always included).
///
/// The statement walks the `(run_id, sequence)` index one event at a time and stops at the
/// budget, so the database reads (and sends) the page plus at most one event, whatever the
/// run's history; that one event, read to learn that more follow, comes back without its
/// document.
pub async fn events_within(
    executor: impl PgExecutor<'_>,
    run_id: i64,
    after: i64,
    max_events: i64,
    max_bytes: i64,
) -> Result<EventPage, sqlx::Error> {
    let rows: Vec<PgRow> = sqlx::query(
        "WITH RECURSIVE page (n, sequence, type, doc, bytes) AS (
             SELECT 1::bigint, sequence, type, doc, octet_length(doc)::bigint
             FROM (SELECT sequence, type, cloud_event::text AS doc FROM operation_run_events
                   WHERE run_id = $1 AND sequence > $2 ORDER BY sequence LIMIT 1) f
           UNION ALL
             SELECT p.n + 1, e.sequence, e.type, e.doc, p.bytes + octet_length(e.doc)
             FROM page p
             CROSS JOIN LATERAL (
                 SELECT sequence, type, cloud_event::text AS doc FROM operation_run_events
                 WHERE run_id = $1 AND sequence > p.sequence ORDER BY sequence LIMIT 1) e
             WHERE p.n <= $3 AND (p.n = 1 OR p.bytes <= $4)
         )
         SELECT sequence, type,
                CASE WHEN n = 1 OR (n <= $3 AND bytes <= $4) THEN doc END AS doc
         FROM page ORDER BY sequence",
    )
    .bind(run_id)
    .bind(after)
    .bind(max_events.max(1))
    .bind(max_bytes)
    .fetch_all(executor)
    .await?;
    let mut page = EventPage::default();
    for row in rows {
        let Some(doc) = row.try_get::<Option<String>, _>("doc")? else {
            page.more = true;
            break;
        };
        page.events.push(ViewerEvent {
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("type")?,
            cloud_event: RawValue::from_string(doc).map_err(|e| sqlx::Error::ColumnDecode {
                index: "doc".into(),
                source: Box::new(e),
            })?,
        });
    }
    Ok(page)
}

/// Events of `run_id` with a sequence above `after`, in sequence order, at most `limit` and
/// at most [`PAGE_BYTES`] of documents (always at least one event).
pub async fn events_after(
    executor: impl PgExecutor<'_>,
    run_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<ViewerEvent>, sqlx::Error> {
    Ok(events_within(executor, run_id, after, limit, PAGE_BYTES)
        .await?
        .events)
}

/// Whether run `run_id` is completed (`None`: there is no such run). Reads the status alone:
/// what a live stream asks on every idle poll.
pub async fn run_completed(
    executor: impl PgExecutor<'_>,
    run_id: i64,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT status = 'completed' FROM operation_runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(executor)
        .await
}

/// One line of a run's timeline: what the page shows of an event, without its document.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TimelineEntry {
    /// Position in the run's history, from 1.
    pub sequence: i64,
    /// CloudEvents `type`.
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// When it was recorded: the CloudEvents `time` (the same transaction clock).
    pub created_at: DateTime<Utc>,
}

/// Which part of a run's timeline to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineWindow {
    /// The newest events.
    Newest,
    /// The events just before this sequence.
    Before(i64),
    /// The events just after this sequence.
    After(i64),
}

/// At most `limit` timeline entries of `run_id` in `window`, in sequence order (the documents
/// are not read).
pub async fn timeline(
    executor: impl PgExecutor<'_>,
    run_id: i64,
    window: TimelineWindow,
    limit: i64,
) -> Result<Vec<TimelineEntry>, sqlx::Error> {
    let (sql, bound) = match window {
        TimelineWindow::Newest => (
            "SELECT sequence, type, created_at FROM operation_run_events
             WHERE run_id = $1 AND sequence < $2 ORDER BY sequence DESC LIMIT $3",
            i64::MAX,
        ),
        TimelineWindow::Before(s) => (
            "SELECT sequence, type, created_at FROM operation_run_events
             WHERE run_id = $1 AND sequence < $2 ORDER BY sequence DESC LIMIT $3",
            s,
        ),
        TimelineWindow::After(s) => (
            "SELECT sequence, type, created_at FROM operation_run_events
             WHERE run_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
            s,
        ),
    };
    let mut entries: Vec<TimelineEntry> = sqlx::query_as(sql)
        .bind(run_id)
        .bind(bound)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    entries.sort_by_key(|e| e.sequence);
    Ok(entries)
}

/// The legacy rows that redirect to `run_id`: `(table, row)`.
pub async fn legacy_rows_for_run(
    executor: impl PgExecutor<'_>,
    run_id: i64,
) -> Result<Vec<(String, Value)>, sqlx::Error> {
    // Fixed table names from the enum, never input.
    let sql = LegacyTable::ALL
        .iter()
        .map(|t| {
            format!(
                "SELECT '{0}'::text AS tbl, t.id, to_jsonb(t) AS row FROM {0} t WHERE t.operation_run_id = $1",
                t.table_name()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
        + " ORDER BY tbl, id";
    let rows: Vec<(String, i64, Value)> = sqlx::query_as(&sql)
        .bind(run_id)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(|(t, _, row)| (t, row)).collect())
}

/// How many dispatches were deduplicated onto each of `run_ids` (answered with that run because
/// it held their identity), and when the latest came: `(run_id, count, latest)`, for the runs
/// that had any. Read from the inbox, which records a dispatch that carried a `command_id` for
/// the inbox retention; an index probe per run on `processed_commands_deduplicated_idx`.
pub async fn deduplicated_dispatches(
    executor: impl PgExecutor<'_>,
    run_ids: &[i64],
) -> Result<Vec<(i64, i64, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT run_id, count(*), max(processed_at) FROM processed_commands
         WHERE run_id = ANY($1) AND kind = 'dispatch' AND (result ->> 'deduplicated') = 'true'
         GROUP BY run_id",
    )
    .bind(run_ids)
    .fetch_all(executor)
    .await
}

/// The name of workspace `workspace_id` and of tenant `tenant_id` (`None` when not given):
/// a run's own, already checked to be in scope.
pub async fn scope_names(
    executor: impl PgExecutor<'_>,
    workspace_id: i64,
    tenant_id: Option<i64>,
) -> Result<(String, Option<String>), sqlx::Error> {
    sqlx::query_as(
        "SELECT w.name, (SELECT t.name FROM tenants t WHERE t.id = $2 AND t.workspace_id = w.id)
         FROM workspaces w WHERE w.id = $1",
    )
    .bind(workspace_id)
    .bind(tenant_id)
    .fetch_one(executor)
    .await
}

/// Whether restore run `restore_run_id` exists and belongs to `tenant_id`.
pub async fn restore_run_of_tenant(
    executor: impl PgExecutor<'_>,
    restore_run_id: i64,
    tenant_id: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM restore_runs WHERE id = $1 AND tenant_id = $2)",
    )
    .bind(restore_run_id)
    .bind(tenant_id)
    .fetch_one(executor)
    .await
}

/// The viewer's signing secret: the stored one, or `candidate` stored now if there is none
/// (concurrent starts agree on the first one written). Read first, so that a role that may
/// only read the secret (`ops/postgres/roles.sql`) gets it without trying to write.
pub async fn api_secret(
    executor: impl PgExecutor<'_> + Copy,
    candidate: &str,
) -> Result<String, sqlx::Error> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT secret FROM api_secrets WHERE name = 'viewer'")
            .fetch_optional(executor)
            .await?;
    if let Some(secret) = stored {
        return Ok(secret);
    }
    sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO api_secrets (name, secret) VALUES ('viewer', $1)
             ON CONFLICT (name) DO NOTHING RETURNING secret)
         SELECT secret FROM ins
         UNION ALL
         SELECT secret FROM api_secrets WHERE name = 'viewer' AND NOT EXISTS (SELECT 1 FROM ins)",
    )
    .bind(candidate)
    .fetch_one(executor)
    .await
}

/// Whether tenant `tenant_id` is inside `scope` (its workspace, and its tenant list if any). A
/// scope of one run holds that run only, never a tenant's other records.
pub async fn tenant_in_scope(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    tenant_id: i64,
) -> Result<bool, sqlx::Error> {
    if scope.run_id.is_some() {
        return Ok(false);
    }
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tenants
                        WHERE id = $1 AND workspace_id = $2
                          AND ($3::bigint[] IS NULL OR id = ANY($3)))",
    )
    .bind(tenant_id)
    .bind(scope.workspace_id)
    .bind(scope.tenant_ids.as_deref())
    .fetch_one(executor)
    .await
}

// Reads of the pages: names, the list's summary line, what each event of a timeline changed.

/// The name of workspace `workspace_id`, and of tenant `tenant_id` when it belongs to that
/// workspace (`None` for a row the reference tables lack).
pub async fn workspace_and_tenant_names(
    executor: impl PgExecutor<'_>,
    workspace_id: i64,
    tenant_id: Option<i64>,
) -> Result<(Option<String>, Option<String>), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT name FROM workspaces WHERE id = $1),
                (SELECT name FROM tenants WHERE id = $2 AND workspace_id = $1)",
    )
    .bind(workspace_id)
    .bind(tenant_id)
    .fetch_one(executor)
    .await
}

/// The names of those of `tenant_ids` that belong to workspace `workspace_id` (by primary key:
/// at most one row per id given).
pub async fn tenant_names(
    executor: impl PgExecutor<'_>,
    workspace_id: i64,
    tenant_ids: &[i64],
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, name FROM tenants WHERE workspace_id = $1 AND id = ANY($2)")
        .bind(workspace_id)
        .bind(tenant_ids)
        .fetch_all(executor)
        .await
}

/// Most runs the list's summary line counts: past it the line says "more than".
pub const SUMMARY_CAP: i64 = 1_000;

/// The list page's summary line: of the newest [`SUMMARY_CAP`] runs matching a filter, how many
/// there are, failed and running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListSummary {
    /// Runs counted (at most [`SUMMARY_CAP`]).
    pub runs: i64,
    /// Of them, with outcome `failed`.
    pub failed: i64,
    /// Of them, running.
    pub running: i64,
    /// More runs match than were counted.
    pub capped: bool,
}

/// Counts the runs in `scope` matching `filter` as the list reads them (the same statement,
/// the same index, at most [`SUMMARY_CAP`] + 1 rows): another tenant's run is never counted.
pub async fn summarise_listed_runs(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    filter: &RunListFilter,
) -> Result<ListSummary, sqlx::Error> {
    let mut q = list_query(
        "SELECT count(*), count(*) FILTER (WHERE outcome = 'failed'),
                count(*) FILTER (WHERE status = 'running')
         FROM (",
        scope,
        filter,
        None,
        SUMMARY_CAP + 1,
    );
    q.push(") AS listed");
    let (runs, failed, running): (i64, i64, i64) = q
        .build_query_as()
        .persistent(false)
        .fetch_one(executor)
        .await?;
    Ok(ListSummary {
        runs: runs.min(SUMMARY_CAP),
        failed,
        running,
        capped: runs > SUMMARY_CAP,
    })
}

/// The id and tenant of the newest `limit` runs in `scope` matching `filter`, as the list reads
/// them (the same statement and indexes): what a bulk action of the list page acts on.
pub async fn listed_run_ids(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    filter: &RunListFilter,
    limit: i64,
) -> Result<Vec<(i64, Option<i64>)>, sqlx::Error> {
    let mut q = list_query("SELECT id, tenant_id FROM (", scope, filter, None, limit);
    q.push(") AS listed ORDER BY created_at DESC, id DESC");
    q.build_query_as()
        .persistent(false)
        .fetch_all(executor)
        .await
}

/// One recorded action on a run, as the run page shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordedAction {
    /// The record's id.
    pub id: i64,
    /// `cancel`, `retry` or `fail`.
    pub action: String,
    /// Who (a token's `sub`, the CLI's `--initiator`, a command's `initiator_name`).
    pub actor_name: Option<String>,
    /// Where from: `cli`, `broker`, `api`, `page`.
    pub via: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: Option<String>,
    /// `done`, `requested`, `unchanged` or `refused`.
    pub result: String,
    /// The run a retry dispatched or found.
    pub new_run_id: Option<i64>,
    /// Why it was unchanged or refused.
    pub error: Option<String>,
    /// The bulk action it was part of.
    pub bulk_id: Option<String>,
}

/// The newest `limit` actions on run `run_id` (already in scope), newest first.
pub async fn recorded_actions(
    executor: impl PgExecutor<'_>,
    run_id: i64,
    limit: i64,
) -> Result<Vec<RecordedAction>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, action, actor_name, via, at, reason, result, new_run_id, error, bulk_id
         FROM operation_run_actions WHERE run_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(run_id)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// One line of a run's timeline with the run as that event left it: enough to say what the
/// event changed (the counts, the number of failures, status, outcome), not the document.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TimelineChange {
    /// Position in the run's history, from 1.
    pub sequence: i64,
    /// CloudEvents `type`.
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// The run's status after it.
    pub status: Option<String>,
    /// The run's outcome after it.
    pub outcome: Option<String>,
    /// The run's summary counts after it (at most the nine known keys).
    pub counts: Option<Value>,
    /// The run's failures after it: stored entries plus overflow.
    pub failures: i64,
}

/// At most `limit` timeline lines of `run_id` in `window`, in sequence order, each with the run
/// as its event left it.
pub async fn timeline_changes(
    executor: impl PgExecutor<'_>,
    run_id: i64,
    window: TimelineWindow,
    limit: i64,
) -> Result<Vec<TimelineChange>, sqlx::Error> {
    let (filter, order, bound) = match window {
        TimelineWindow::Newest => ("sequence < $2", "DESC", i64::MAX),
        TimelineWindow::Before(s) => ("sequence < $2", "DESC", s),
        TimelineWindow::After(s) => ("sequence > $2", "ASC", s),
    };
    let sql = format!(
        "SELECT sequence, type, created_at, r->>'status' AS status, r->>'outcome' AS outcome,
                r->'summary_counts' AS counts,
                (CASE WHEN jsonb_typeof(r->'failure_summary') = 'array'
                      THEN jsonb_array_length(r->'failure_summary') ELSE 0 END
                 + COALESCE((SELECT sum(value::bigint) FROM jsonb_each_text(
                       CASE WHEN jsonb_typeof(r->'failure_overflow') = 'object'
                            THEN r->'failure_overflow' ELSE '{{}}'::jsonb END)), 0))::bigint
                  AS failures
         FROM (SELECT sequence, type, created_at, cloud_event->'data'->'run' AS r
               FROM operation_run_events WHERE run_id = $1 AND {filter}
               ORDER BY sequence {order} LIMIT $3) AS e"
    );
    let mut entries: Vec<TimelineChange> = sqlx::query_as(&sql)
        .bind(run_id)
        .bind(bound)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    entries.sort_by_key(|e| e.sequence);
    Ok(entries)
}
