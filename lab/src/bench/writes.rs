//! What a stretch of work wrote, read back from the WAL (`pg_walinspect`): per table, its row
//! writes by kind (insert, update, HOT update, delete, row lock) and per index its new entries,
//! each attributed to the relation its record names. Exact, unlike `pg_stat_user_tables`
//! (which a backend flushes at most once a second, and up to 10 s late once idle), and
//! independent of other databases of the same server (records are filtered on this one).
//!
//! A [`WalWindow`] holds a session of its own with a temporary physical replication slot, so the
//! server keeps the window's WAL until it is read (a checkpoint would otherwise recycle it); the
//! slot goes with the session. Needs a superuser (or a member of `pg_read_server_files`) and
//! the `pg_walinspect` extension (PostgreSQL 15 contrib); without either the window is `None`
//! and the bench says the writes were not measured.

use std::collections::BTreeMap;

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::LabError;

/// The heap record types counted as row writes, and the name each is reported under.
const ROW_WRITES: [(&str, &str); 7] = [
    ("INSERT", "insert"),
    ("INSERT+INIT", "insert"),
    ("MULTI_INSERT", "insert"),
    ("MULTI_INSERT+INIT", "insert"),
    ("UPDATE", "update"),
    ("UPDATE+INIT", "update"),
    ("DELETE", "delete"),
];

/// Heap record types of HOT updates.
const HOT_UPDATES: [&str; 2] = ["HOT_UPDATE", "HOT_UPDATE+INIT"];
/// The heap record of a row lock (`FOR UPDATE`): a write to the row's page, too.
const ROW_LOCK: &str = "LOCK";

/// Index record types that add an entry: a B-tree leaf insert (plain, into a posting list, or
/// the one carried by a page split) and a GIN insert (into the tree, or appended to the pending
/// list: one record per row, whatever its number of keys).
const INDEX_ENTRIES: [(&str, &str); 7] = [
    ("Btree", "INSERT_LEAF"),
    ("Btree", "INSERT_POST"),
    ("Btree", "SPLIT_L"),
    ("Btree", "SPLIT_R"),
    ("Gin", "INSERT"),
    ("Gin", "UPDATE_META_PAGE"),
    ("Hash", "INSERT"),
];

/// One relation's writes in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelationWrites {
    /// The relation (table or index) name.
    pub name: String,
    /// Whether it is an index.
    pub index: bool,
    /// The table it belongs to (itself for a table).
    pub table: String,
    /// Row writes by kind (`insert`, `update`, `hot_update`, `delete`, `lock`) for a table;
    /// `entries` for an index.
    pub counts: BTreeMap<&'static str, u64>,
    /// WAL bytes of its records, full-page images included.
    pub wal_bytes: u64,
}

/// Everything a window wrote, by relation (tables first, then indexes, by name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    /// The relations written.
    pub relations: Vec<RelationWrites>,
}

impl Writes {
    /// What `name` wrote: a table's row writes (HOT updates included), an index's entries.
    pub fn of(&self, name: &str, index: bool) -> u64 {
        if index {
            self.count(name, "entries")
        } else {
            ["insert", "update", "hot_update", "delete"]
                .iter()
                .map(|k| self.count(name, k))
                .sum()
        }
    }

    fn count(&self, name: &str, kind: &str) -> u64 {
        self.relations
            .iter()
            .filter(|r| r.name == name)
            .map(|r| r.counts.get(kind).copied().unwrap_or(0))
            .sum()
    }

    /// HOT updates ÷ all updates of `table` (`None`: no update).
    pub fn hot_ratio(&self, table: &str) -> Option<f64> {
        let hot = self.count(table, "hot_update");
        let all = hot + self.count(table, "update");
        (all > 0).then(|| hot as f64 / all as f64)
    }

    /// Row writes (inserts, updates, HOT updates, deletes) over every table.
    pub fn row_writes(&self) -> u64 {
        self.relations
            .iter()
            .filter(|r| !r.index)
            .map(|r| {
                ["insert", "update", "hot_update", "delete"]
                    .iter()
                    .map(|k| r.counts.get(k).copied().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Index entries added over every index.
    pub fn index_entries(&self) -> u64 {
        self.relations
            .iter()
            .filter(|r| r.index)
            .map(|r| r.counts.get("entries").copied().unwrap_or(0))
            .sum()
    }

    /// WAL bytes over every relation of the database.
    pub fn wal_bytes(&self) -> u64 {
        self.relations.iter().map(|r| r.wal_bytes).sum()
    }
}

/// An open window on the WAL of the bench database.
pub struct WalWindow {
    conn: PgConnection,
    start: String,
}

impl WalWindow {
    /// Opens a window from now on `database_url`; `None` (with the reason on stderr, once per
    /// bench) when the server cannot show its WAL to this role.
    pub async fn open(database_url: &str) -> Result<Option<Self>, LabError> {
        // Reading a window's records takes seconds: no slow-statement warning for it.
        let options = PgConnectOptions::from_str(database_url)?.disable_statement_logging();
        let mut conn = PgConnection::connect_with(&options).await?;
        let ready = async {
            let installed: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_walinspect')",
            )
            .fetch_one(&mut conn)
            .await?;
            if !installed {
                sqlx::query("CREATE EXTENSION pg_walinspect")
                    .execute(&mut conn)
                    .await?;
            }
            let slot = format!(
                "oprun_bench_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            // Reserved at once, dropped with this session.
            sqlx::query("SELECT pg_create_physical_replication_slot($1, true, true)")
                .bind(&slot)
                .execute(&mut conn)
                .await?;
            sqlx::query_scalar::<_, String>("SELECT pg_current_wal_flush_lsn()::text")
                .fetch_one(&mut conn)
                .await
        }
        .await;
        match ready {
            Ok(start) => Ok(Some(Self { conn, start })),
            Err(e) => {
                eprintln!("bench: writes not measured: the WAL cannot be read here ({e})");
                let _ = conn.close().await;
                Ok(None)
            }
        }
    }

    /// Closes the window and reads what it holds, grouped by relation.
    pub async fn close(mut self) -> Result<Writes, LabError> {
        let end: String = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
            .fetch_one(&mut self.conn)
            .await?;
        let rows: Vec<(String, bool, String, String, String, i64, i64)> = sqlx::query_as(
            // The first block reference names the relation (`rel tablespace/database/filenode`);
            // a TOAST table or index is reported under its table.
            "WITH records AS (
                 SELECT resource_manager, record_type, record_length,
                        regexp_match(block_ref, 'rel \\d+/(\\d+)/(\\d+)') AS rel
                 FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
                 WHERE block_ref <> ''
             )
             SELECT c.relname::text, c.relkind IN ('i', 'I'),
                    coalesce((SELECT o.relname FROM pg_class o
                              WHERE o.relnamespace = 'public'::regnamespace
                                AND coalesce(i.indrelid, c.oid) IN (o.oid, o.reltoastrelid)
                              LIMIT 1), c.relname)::text,
                    w.resource_manager, w.record_type, count(*), sum(w.record_length)::bigint
             FROM records w
             JOIN pg_class c ON c.relfilenode = w.rel[2]::oid
             LEFT JOIN pg_index i ON i.indexrelid = c.oid
             WHERE w.rel[1]::oid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND c.relnamespace IN ('public'::regnamespace, 'pg_toast'::regnamespace)
             GROUP BY 1, 2, 3, 4, 5",
        )
        .bind(&self.start)
        .bind(&end)
        .fetch_all(&mut self.conn)
        .await?;
        let _ = self.conn.close().await;
        Ok(group(rows))
    }
}

/// Folds `(relation, is index, table, resource manager, record type, records, bytes)` rows into
/// per-relation writes.
fn group(rows: Vec<(String, bool, String, String, String, i64, i64)>) -> Writes {
    let mut by_name: BTreeMap<(bool, String), RelationWrites> = BTreeMap::new();
    for (name, index, table, manager, record, n, bytes) in rows {
        let (name, table) = if name.starts_with("pg_toast") {
            (format!("{table} (toast)"), table)
        } else {
            (name, table)
        };
        let entry = by_name
            .entry((index, name.clone()))
            .or_insert_with(|| RelationWrites {
                name,
                index,
                table,
                ..Default::default()
            });
        entry.wal_bytes += bytes.max(0) as u64;
        let kind = if index {
            INDEX_ENTRIES
                .iter()
                .any(|(m, r)| *m == manager && *r == record)
                .then_some("entries")
        } else if manager != "Heap" {
            None
        } else if HOT_UPDATES.contains(&record.as_str()) {
            Some("hot_update")
        } else if record == ROW_LOCK {
            Some("lock")
        } else {
            ROW_WRITES
                .iter()
                .find(|(r, _)| *r == record)
                .map(|(_, kind)| *kind)
        };
        if let Some(kind) = kind {
            *entry.counts.entry(kind).or_default() += n.max(0) as u64;
        }
    }
    Writes {
        relations: by_name.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        name: &str,
        index: bool,
        manager: &str,
        record: &str,
        n: i64,
    ) -> (String, bool, String, String, String, i64, i64) {
        let table = if index { "t" } else { name };
        (
            name.into(),
            index,
            table.into(),
            manager.into(),
            record.into(),
            n,
            10 * n,
        )
    }

    #[test]
    fn records_fold_into_row_writes_index_entries_and_the_hot_ratio() {
        let writes = group(vec![
            row("t", false, "Heap", "INSERT", 2),
            row("t", false, "Heap", "INSERT+INIT", 1),
            row("t", false, "Heap", "HOT_UPDATE", 9),
            row("t", false, "Heap", "UPDATE", 1),
            row("t", false, "Heap", "LOCK", 4),
            row("t", false, "Heap2", "PRUNE", 5),
            row("t_pkey", true, "Btree", "INSERT_LEAF", 3),
            row("t_pkey", true, "Btree", "SPLIT_R", 1),
            row("t_pkey", true, "Btree", "INSERT_UPPER", 1),
        ]);
        assert_eq!(writes.hot_ratio("t"), Some(0.9));
        assert_eq!(writes.row_writes(), 3 + 9 + 1);
        assert_eq!(writes.index_entries(), 4);
        assert_eq!(writes.count("t", "lock"), 4);
        assert_eq!(writes.wal_bytes(), 10 * (2 + 1 + 9 + 1 + 4 + 5 + 3 + 1 + 1));
        assert_eq!(writes.hot_ratio("u"), None);
    }
}
