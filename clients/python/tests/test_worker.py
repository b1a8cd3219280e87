"""The worker against a running service that hands jobs off (tests/it/clients.rs starts one with
``--hand-off-jobs`` and runs the ``worker`` mark alone): a job executed once with its progress, a
cancel that reaches the running handler, a queued run's cancel that never reaches it, and failures."""

import json
import time
import uuid

import pika
import pytest

from operation_runs_client import Client, RunHandle, Worker
from operation_runs_client.worker import HANDLER_FAILED

pytestmark = pytest.mark.worker


@pytest.fixture
def client(env):
    with Client(env["url"], env["namespace"]) as c:
        yield c


@pytest.fixture
def events(env):
    """Every event from now on, in an exclusive queue of the test's own: ``completed(run_id)``
    returns the run as its completion event shows it."""
    connection = pika.BlockingConnection(pika.URLParameters(env["url"]))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, f"{env['namespace']}.events")

    completions = {}

    def completed(run_id):
        if run_id not in completions:
            for method, _properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=20):
                if method is None:
                    break
                event = json.loads(body)
                if event["type"] == "operation_run.completed":
                    completions[event["data"]["run"]["id"]] = event["data"]["run"]
                    if run_id in completions:
                        break
        if run_id not in completions:
            pytest.fail(f"run {run_id} did not complete")
        return completions[run_id]

    yield completed
    connection.close()


@pytest.fixture
def worker(env):
    w = Worker(env["url"], env["namespace"], f"py-{uuid.uuid4().hex[:12]}", ["inventory.sync"])
    w.declare()
    yield w
    w.close()
    connection = pika.BlockingConnection(pika.URLParameters(env["url"]))
    connection.channel().queue_delete(w.queue)
    connection.close()


def dispatch(client, env):
    return client.dispatch("inventory.sync", env["workspace"], env["tenant"], {"selection": f"py-{uuid.uuid4().hex[:12]}"})["run_id"]


def test_a_job_is_executed_once_with_its_progress_and_acked_after_its_completion(client, env, events, worker):
    run_id = dispatch(client, env)
    calls = []

    def handler(run: RunHandle):
        calls.append(run.run_id)
        assert (run.type, run.workspace_id, run.tenant_id) == ("inventory.sync", env["workspace"], env["tenant"])
        run.progress(total=2)
        run.progress(processed=2, succeeded=2)

    assert worker.run(handler, max_jobs=1, idle_timeout=20) == 1
    assert calls == [run_id]
    run = events(run_id)
    assert run["outcome"] == "succeeded"
    assert run["summary_counts"] == {"total": 2, "processed": 2, "succeeded": 2}
    # Acked: nothing comes again.
    assert worker.run(lambda run: pytest.fail("the job came again"), idle_timeout=1) == 0


def test_a_cancel_reaches_the_running_handler_and_the_run_completes_cancelled(client, env, events, worker):
    run_id = dispatch(client, env)
    seen = {}

    def handler(run: RunHandle):
        assert not run.cancel_requested()
        # The platform asks while the handler works.
        seen["answer"] = client.cancel(run.run_id, run.workspace_id, run.tenant_id, "not needed")
        deadline = time.monotonic() + 20
        while not run.cancel_requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["cancelled"] = run.cancel_requested()

    worker.run(handler, max_jobs=1, idle_timeout=20)
    assert seen == {"answer": {"run_id": run_id, "action": "cancel", "result": "requested"}, "cancelled": True}
    assert events(run_id)["outcome"] == "cancelled"


def test_a_queued_runs_cancel_completes_it_and_its_job_is_acked_without_running_the_handler(client, env, events, worker):
    run_id = dispatch(client, env)
    assert client.cancel(run_id, env["workspace"], env["tenant"])["result"] == "done"
    assert worker.run(lambda run: pytest.fail("a cancelled run is not executed"), max_jobs=1, idle_timeout=20) == 1
    assert events(run_id)["outcome"] == "cancelled"


def test_failures_and_a_raising_handler_complete_the_run_failed(client, env, events, worker):
    failed, raised = dispatch(client, env), dispatch(client, env)

    def handler(run: RunHandle):
        if run.run_id == failed:
            run.fail("device.unreachable", "dev-7 did not answer", item="dev-7")
            return None
        raise RuntimeError("provider said password=hunter2")

    worker.run(handler, max_jobs=2, idle_timeout=20)
    run = events(failed)
    assert run["outcome"] == "failed"
    assert run["failure_summary"][0]["code"] == "device.unreachable"
    run = events(raised)
    assert run["outcome"] == "failed"
    entry = run["failure_summary"][0]
    assert entry["code"] == HANDLER_FAILED
    assert "RuntimeError" in entry["message"] and "hunter2" not in entry["message"]
