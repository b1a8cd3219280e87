"""The client against a running service (tests/it/clients.rs starts one and sets the env)."""

import uuid

import pika
import pytest

from operation_runs_client import Client, CommandNotAnswered, CommandRefused, identity_hash, new_traceparent


@pytest.fixture
def client(env):
    with Client(env["url"], env["namespace"]) as c:
        yield c


def unique(prefix="py"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_dispatch_creates_a_run_and_a_second_dispatch_is_deduplicated(client, env):
    context = {"policy_id": unique()}
    first = client.dispatch("policy.sync", env["workspace"], env["tenant"], context, user_id=5, initiator_name="pytest")
    assert first["run_id"] > 0
    assert first["deduplicated"] is False
    assert first["status"] == "queued"
    command = {"type": "policy.sync", "workspace_id": env["workspace"], "tenant_id": env["tenant"], "context": context}
    assert first["run_identity_hash"] == identity_hash(command)
    again = client.dispatch("policy.sync", env["workspace"], env["tenant"], {**context, "note": "ignored"})
    assert again["run_id"] == first["run_id"]
    assert again["deduplicated"] is True


def test_dispatch_without_waiting_returns_its_command_id(client, env):
    sent = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()}, command_id="py-fixed-" + uuid.uuid4().hex, wait=False)
    assert sent["command_id"].startswith("py-fixed-")


def test_a_refusal_raises_command_refused_with_its_code(client, env):
    with pytest.raises(CommandRefused) as e:
        client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policyId": 1})
    assert e.value.code == "missing_identity_key"
    assert "missing_identity_key" in str(e.value)


def test_progress_and_events(client, env):
    # A durable queue of our own, bound before the dispatch so that every event of the run is in it.
    queue = f"{env['namespace']}.subscriber.{unique()}"
    connection = pika.BlockingConnection(pika.URLParameters(env["url"]))
    admin = connection.channel()
    admin.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    admin.queue_bind(queue, f"{env['namespace']}.events")
    try:
        trace = new_traceparent()
        run = client.dispatch("inventory.sync", env["workspace"], env["tenant"], {"selection": unique()}, traceparent=trace, tracestate="py=1")
        run_id = run["run_id"]
        assert client.update_run(run_id, env["workspace"], env["tenant"], status="running") == {"run_id": run_id, "status": "running", "outcome": "pending"}
        client.increment_summary_counts(run_id, env["workspace"], env["tenant"], {"total": 2, "processed": 1})
        client.append_failures(run_id, env["workspace"], env["tenant"], [{"code": "device.unreachable", "message": "Bearer abc.def", "item": 7}])
        done = client.update_run(run_id, env["workspace"], env["tenant"], status="completed", outcome="succeeded", summary_counts={"processed": 1})
        assert done["status"] == "completed" and done["outcome"] == "succeeded"

        events = []

        def handler(event):
            if event["data"]["run"]["id"] == run_id:
                events.append(event)
                return event["type"] != "operation_run.completed"
            return True

        client.subscribe(queue, handler, idle_timeout=20)
    finally:
        admin.queue_delete(queue)
        connection.close()
    assert [e["type"] for e in events] == [
        "operation_run.queued",
        "operation_run.started",
        "operation_run.progressed",
        "operation_run.progressed",
        "operation_run.completed",
    ]
    assert [e["data"]["sequence"] for e in events] == [1, 2, 3, 4, 5]
    # The dispatch's trace context is kept with the run and set on every event of it.
    assert {(e["traceparent"], e.get("tracestate")) for e in events} == {(trace, "py=1")}
    last = events[-1]["data"]["run"]
    assert last["summary_counts"] == {"total": 2, "processed": 2}
    assert "abc.def" not in str(last["failure_summary"])


def test_another_tenants_run_is_not_found(client, env):
    run = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
    with pytest.raises(CommandRefused) as e:
        client.increment_summary_counts(run["run_id"], env["workspace"], env["other_tenant"], {"total": 1})
    assert e.value.code == "run_not_found"


def test_a_missing_topology_is_unroutable(env):
    with Client(env["url"], unique("oprun_py_missing")) as c:
        with pytest.raises(CommandNotAnswered) as e:
            c.dispatch("policy.sync", 1, None, {"policy_id": 1}, timeout=5)
        assert e.value.reason == "unroutable"

    namespace = unique("oprun_py_unbound")
    connection = pika.BlockingConnection(pika.URLParameters(env["url"]))
    channel = connection.channel()
    channel.exchange_declare(f"{namespace}.commands", "topic", auto_delete=True)
    try:
        with Client(env["url"], namespace) as c:
            with pytest.raises(CommandNotAnswered) as e:
                c.dispatch("policy.sync", 1, None, {"policy_id": 1}, timeout=5)
            assert e.value.reason == "unroutable"
    finally:
        channel.exchange_delete(f"{namespace}.commands")
        connection.close()


def test_no_reply_in_time_is_command_not_answered(env):
    namespace = unique("oprun_py_silent")
    connection = pika.BlockingConnection(pika.URLParameters(env["url"]))
    channel = connection.channel()
    channel.exchange_declare(f"{namespace}.commands", "topic", auto_delete=True)
    queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, f"{namespace}.commands", "#")
    try:
        with Client(env["url"], namespace) as c:
            with pytest.raises(CommandNotAnswered) as e:
                c.dispatch("policy.sync", 1, None, {"policy_id": 1}, timeout=0.5)
            assert e.value.reason == "timeout"
    finally:
        channel.exchange_delete(f"{namespace}.commands")
        connection.close()


def test_cancelling_a_queued_run_is_done_once_and_a_running_runs_cancel_is_requested(client, env):
    queued = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
    done = client.cancel(queued["run_id"], env["workspace"], env["tenant"], "not needed", initiator_name="pytest", user_id=5)
    assert done == {"run_id": queued["run_id"], "action": "cancel", "result": "done"}
    again = client.cancel(queued["run_id"], env["workspace"], env["tenant"])
    assert again["result"] == "unchanged" and "already completed as cancelled" in again["error"]

    running = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
    client.update_run(running["run_id"], env["workspace"], env["tenant"], status="running")
    assert client.cancel(running["run_id"], env["workspace"], env["tenant"])["result"] == "requested"
    # The executor's answer: the run completes cancelled.
    completed = client.update_run(running["run_id"], env["workspace"], env["tenant"], status="completed", outcome="cancelled")
    assert completed["outcome"] == "cancelled"


def test_a_retry_dispatches_a_new_run_and_an_operator_fail_never_overwrites_a_completion(client, env):
    run = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
    client.cancel(run["run_id"], env["workspace"], env["tenant"])
    command_id = str(uuid.uuid4())
    retried = client.retry(run["run_id"], env["workspace"], env["tenant"], "try again", command_id=command_id)
    assert retried["result"] == "done" and retried["deduplicated"] is False
    assert retried["new_run_id"] != run["run_id"]
    # The same command id again: applied once, its first answer replied again.
    assert client.retry(run["run_id"], env["workspace"], env["tenant"], "try again", command_id=command_id) == retried

    failed = client.fail(retried["new_run_id"], env["workspace"], env["tenant"], "executor gone")
    assert (failed["action"], failed["result"]) == ("fail", "done")
    cancel = client.cancel(retried["new_run_id"], env["workspace"], env["tenant"])
    assert cancel["result"] == "refused" and "never overwritten" in cancel["error"]
    queued = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
    assert client.retry(queued["run_id"], env["workspace"], env["tenant"])["result"] == "refused", "a queued run is not retried"


def test_an_action_on_another_tenants_run_is_not_found(client, env):
    run = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
    with pytest.raises(CommandRefused) as e:
        client.cancel(run["run_id"], env["workspace"], env["other_tenant"])
    assert e.value.code == "run_not_found"
    assert client.update_run(run["run_id"], env["workspace"], env["tenant"], status="running")["status"] == "running"
