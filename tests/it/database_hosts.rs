//! Several database hosts in libpq's form: the pool skips a host that does not answer and
//! serves from the next, migrating finds the writable one, a read-only refusal is transient,
//! and no password shows in an error.

use operation_runs::store::{self, StoreError};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{database_url_for, dispatch, dispatch_with_reply, TestApp};

/// Nothing listens on port 1: the connection is refused at once.
const DEAD_HOST: &str = "127.0.0.1:1";

/// The test server's URL for `database`, with a dead host first in its host list.
fn dead_host_first(database: &str) -> String {
    let url = database_url_for(database);
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, hosts) = match rest.split_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), rest),
    };
    format!("{scheme}://{user}{DEAD_HOST},{hosts}")
}

fn database_of(pool: &PgPool) -> String {
    pool.connect_options()
        .get_database()
        .expect("sqlx::test names its database")
        .to_owned()
}

#[sqlx::test]
async fn a_service_on_two_hosts_whose_first_is_down_serves_through_the_second(pool: PgPool) {
    let url = dead_host_first(&database_of(&pool));
    // Already migrated by sqlx::test: migrating again through the host list finds the second.
    store::migrate(&url).await.unwrap();
    let following = store::connect_lazy(&url, 4).unwrap();
    assert!(
        store::locks::ping(&following).await,
        "ready on the second host"
    );
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&following)
        .await
        .unwrap();
    assert_eq!(port, 5432);

    let app = TestApp::spawn(following).await;
    let reply = dispatch_with_reply(
        &app,
        &dispatch("policy.sync", 1, Some(10), json!({"policy_id": 7})),
    )
    .await;
    assert_eq!(reply["status"], "queued");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn no_host_answering_is_transient_and_names_hosts_without_the_password() {
    let url = "postgres://app:hunter2@127.0.0.1:1,127.0.0.1:2/x?target_session_attrs=read-write";
    let err = store::migrate(url).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("127.0.0.1:1,127.0.0.1:2"), "{shown}");
}

#[sqlx::test]
async fn a_write_refused_as_read_only_is_transient(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query("CREATE TABLE read_only_probe (x int)")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    let err = StoreError::from(refused);
    match &err {
        StoreError::Database(sqlx::Error::Database(db)) => {
            assert_eq!(db.code().as_deref(), Some("25006"))
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());
}
