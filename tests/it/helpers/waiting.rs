//! Deadline-bound waits: poll until a condition holds, fail with what was last seen.

use std::future::Future;
use std::time::Duration;

use operation_runs::domain::OperationRun;
use operation_runs::store::runs;

use super::{TestApp, DEADLINE};

impl TestApp {
    /// Waits until run `id` satisfies `check`, and returns it.
    pub async fn wait_for_run(
        &self,
        id: i64,
        what: &str,
        check: impl Fn(&OperationRun) -> bool,
    ) -> OperationRun {
        let pool = self.pool.clone();
        wait_until(what, || {
            let pool = pool.clone();
            let found = async move { runs::get(&pool, id).await.unwrap() };
            let check = &check;
            async move { found.await.filter(|r| check(r)) }
        })
        .await
    }

    /// Waits until `sql` (a scalar count) returns `expected`.
    pub async fn wait_for_count(&self, sql: &str, expected: i64) {
        let pool = self.pool.clone();
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = last.clone();
        let result = tokio::time::timeout(DEADLINE, async {
            loop {
                let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                *seen.lock().unwrap() = Some(n);
                if n == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        if result.is_err() {
            panic!(
                "{sql}: expected {expected}, last saw {:?}",
                last.lock().unwrap()
            );
        }
    }
}

/// Polls `probe` until it yields `Some`, failing after [`DEADLINE`].
pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for(what, DEADLINE, || {
        let polled = probe();
        async move { polled.await.ok_or_else(String::new) }
    })
    .await
}

/// Polls `probe` until it yields `Ok`, failing after `within` with what it last saw (its last
/// `Err`): for conditions with a deadline of their own (floods, measurements).
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what} (last seen: {seen})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The id of the active run of `run_type`, waiting for it to appear.
pub async fn wait_for_active_run(app: &TestApp, run_type: &str) -> i64 {
    let pool = app.pool.clone();
    let run_type = run_type.to_owned();
    wait_until("an active run", || {
        let (pool, run_type) = (pool.clone(), run_type.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM operation_runs WHERE type = $1 AND status <> 'completed'",
            )
            .bind(run_type)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await
}
