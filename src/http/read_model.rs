//! A run as the viewer shows it: the event's `data.run` shape plus label, related links,
//! legacy rows and progress. Shared by the JSON API and the pages.

use serde_json::{json, Map, Value};
use sqlx::PgPool;

use crate::domain::operation_run::RELATED_CONTEXT_KEYS;
use crate::domain::{OperationRun, OperationRunType, SummaryCounts};
use crate::store::viewer;

/// The label of a type (a stored run's type is always in the catalog: `store::runs` refuses a row
/// of another).
pub fn type_label(run_type: OperationRunType) -> &'static str {
    run_type.catalog().label
}

/// `{processed, total, percent}`: `processed` is the `processed` count, else succeeded + failed
/// + skipped; `percent` only when the counts carry a positive `total`.
pub fn progress(counts: &SummaryCounts) -> Value {
    let get = |k: &str| counts.contains(k).then(|| counts.get(k));
    let processed = get("processed").unwrap_or_else(|| {
        ["succeeded", "failed", "skipped"]
            .iter()
            .filter_map(|k| get(k))
            .sum()
    });
    let total = get("total");
    let percent = total
        .filter(|t| *t > 0)
        .map(|t| ((processed as f64 / t as f64) * 1000.0).round().min(1000.0) / 10.0);
    json!({"processed": processed, "total": total, "percent": percent})
}

fn related_label(key: &str) -> &'static str {
    match key {
        "provider_connection_id" => "Provider connection",
        "backup_schedule_id" => "Backup schedule",
        "backup_schedule_run_id" => "Backup schedule run",
        "backup_set_id" => "Backup set",
        "policy_id" => "Policy",
        "restore_run_id" => "Restore run",
        _ => "Related record",
    }
}

/// The related links of `run` from its context keys. A `restore_run_id` is shown only when that
/// restore belongs to the run's own tenant.
pub async fn related(pool: &PgPool, run: &OperationRun) -> Result<Vec<Value>, sqlx::Error> {
    let mut links = Vec::new();
    for key in RELATED_CONTEXT_KEYS {
        let Some(id) = run.context.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        if key == "restore_run_id" {
            let restore = id
                .as_i64()
                .or_else(|| id.as_str().and_then(|s| s.parse().ok()));
            let visible = match (restore, run.tenant_id) {
                (Some(r), Some(t)) => viewer::restore_run_of_tenant(pool, r, t).await?,
                _ => false,
            };
            if !visible {
                continue;
            }
        }
        let shown = id
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| id.to_string());
        links.push(json!({
            "key": key,
            "id": id,
            "label": format!("{} {}", related_label(key), shown),
        }));
    }
    Ok(links)
}

/// The whole detail of one run (already checked to be in scope).
pub async fn detail(pool: &PgPool, run: &OperationRun) -> Result<Value, sqlx::Error> {
    let mut out = run.to_json();
    out["label"] = json!(type_label(run.run_type));
    // Two independent reads on two pool connections: one round trip of latency, not two.
    let (related, legacy) = tokio::try_join!(
        related(pool, run),
        viewer::legacy_rows_for_run(pool, run.id)
    )?;
    out["related"] = Value::Array(related);
    out["legacy"] = Value::Array(
        legacy
            .into_iter()
            .map(|(table, row)| {
                let mut m = Map::new();
                m.insert("table".into(), json!(table));
                m.insert("row".into(), row);
                Value::Object(m)
            })
            .collect(),
    );
    out["progress"] = progress(&run.summary_counts);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(counts: &Value) -> Value {
        super::progress(&SummaryCounts::parse(counts).unwrap())
    }

    #[test]
    fn progress_has_a_percent_only_with_a_total() {
        assert_eq!(
            progress(&json!({"total": 8, "processed": 2})),
            json!({"processed": 2, "total": 8, "percent": 25.0})
        );
        assert_eq!(
            progress(&json!({"succeeded": 2, "failed": 1})),
            json!({"processed": 3, "total": null, "percent": null})
        );
        assert_eq!(
            progress(&json!({"total": 0})),
            json!({"processed": 0, "total": 0, "percent": null})
        );
    }
}
