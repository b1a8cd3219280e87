//! Several broker addresses (a cluster's nodes): the service and the producer skip a node that
//! does not answer; quorum queues take `x-quorum-initial-group-size`, and an existing queue's
//! size is kept rather than refused.

use std::time::Duration;

use operation_runs::broker::connection::connect;
use operation_runs::broker::Topology;
use operation_runs::client::{DispatchRequest, Producer};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{amqp_url, test_settings, unique_namespace, TestApp};

/// Nothing listens on port 1: the connection is refused at once.
const DEAD: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

#[sqlx::test]
async fn a_service_and_a_producer_given_a_dead_first_url_work_through_the_second(pool: PgPool) {
    let mut app = TestApp::without_service(pool).await;
    app.config.amqp_url = vec![format!("{DEAD},{}", amqp_url()).into()];
    // Returns once the instance consumes: it got past the dead node.
    app.start_instance(app.pool.clone(), test_settings()).await;

    let request = DispatchRequest {
        run_type: "inventory.sync".into(),
        workspace_id: 1,
        tenant_id: Some(10),
        user_id: Some(5),
        initiator_name: None,
        context: json!({"selection": {"all": true}}),
    };
    let listed = Producer::connect_any(&[DEAD.to_owned(), amqp_url()], app.topology.namespace())
        .await
        .unwrap();
    let reply = listed
        .dispatch_and_wait(&request, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(!reply.deduplicated);
    // The single-URL API takes the comma form too.
    let joined = Producer::connect(&format!("{DEAD},{}", amqp_url()), app.topology.namespace())
        .await
        .unwrap();
    let again = joined
        .dispatch_and_wait(&request, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!((again.run_id, again.deduplicated), (reply.run_id, true));
    listed.close().await;
    joined.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn only_dead_urls_fail_with_the_last_error() {
    let err = connect(
        &format!("{DEAD},amqp://guest:secret@127.0.0.1:2/%2f"),
        "test",
    )
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn an_existing_queue_keeps_its_group_size_when_the_setting_differs() {
    let connection = connect(&amqp_url(), "oprun tests").await.unwrap();
    // Created without the argument (as before the setting existed), then declared with 3.
    let plain = Topology::new(&unique_namespace()).unwrap();
    plain.declare_on(&connection).await.unwrap();
    let sized = plain.clone().with_quorum_group_size(Some(3));
    sized.declare_on(&connection).await.unwrap();
    // Created with 2, then declared without it and with another size.
    let two = Topology::new(&unique_namespace())
        .unwrap()
        .with_quorum_group_size(Some(2));
    two.declare_on(&connection).await.unwrap();
    two.clone()
        .with_quorum_group_size(None)
        .declare_on(&connection)
        .await
        .unwrap();
    two.clone()
        .with_quorum_group_size(Some(3))
        .declare_on(&connection)
        .await
        .unwrap();
    // Without the adoption RabbitMQ refuses the redeclaration.
    let refused = sized
        .declare(&connection.create_channel().await.unwrap())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("x-quorum-initial-group-size"),
        "{refused}"
    );
    for t in [plain, two] {
        t.delete(&connection.create_channel().await.unwrap())
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
}
