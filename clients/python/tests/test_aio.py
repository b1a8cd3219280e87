"""The asyncio client against a running service (tests/it/clients.rs starts one and sets the env).

Each test runs its coroutine with ``asyncio.run``: no pytest plugin is needed."""

import asyncio
import importlib.metadata
import uuid

import pytest

from operation_runs_client import CommandNotAnswered, CommandRefused, identity_hash
from operation_runs_client.aio import AsyncClient


def unique(prefix="py-aio"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_the_installed_package_ships_its_type_hints_marker():
    files = [str(f) for f in importlib.metadata.files("operation-runs-client") or []]
    assert "operation_runs_client/py.typed" in files, files


def test_an_async_dispatch_creates_a_run_and_a_second_is_deduplicated(env):
    async def scenario():
        async with AsyncClient(env["url"], env["namespace"]) as runs:
            context = {"policy_id": unique()}
            first = await runs.dispatch("policy.sync", env["workspace"], env["tenant"], context, user_id=5, initiator_name="pytest-aio")
            again = await runs.dispatch("policy.sync", env["workspace"], env["tenant"], context)
            return context, first, again

    context, first, again = asyncio.run(scenario())
    assert first["run_id"] > 0 and first["deduplicated"] is False and first["status"] == "queued"
    command = {"type": "policy.sync", "workspace_id": env["workspace"], "tenant_id": env["tenant"], "context": context}
    assert first["run_identity_hash"] == identity_hash(command)
    assert (again["run_id"], again["deduplicated"]) == (first["run_id"], True)


def test_concurrent_commands_on_one_async_client_each_get_their_own_reply(env):
    async def scenario():
        async with AsyncClient(env["url"], env["namespace"]) as runs:
            contexts = [{"policy_id": unique()} for _ in range(8)]
            replies = await asyncio.gather(
                *(runs.dispatch("policy.sync", env["workspace"], env["tenant"], c) for c in contexts)
            )
            return contexts, replies

    contexts, replies = asyncio.run(scenario())
    for context, reply in zip(contexts, replies):
        command = {"type": "policy.sync", "workspace_id": env["workspace"], "tenant_id": env["tenant"], "context": context}
        assert reply["run_identity_hash"] == identity_hash(command)
    assert len({r["run_id"] for r in replies}) == 8


def test_an_async_refusal_raises_command_refused_with_its_code(env):
    async def scenario():
        async with AsyncClient(env["url"], env["namespace"]) as runs:
            await runs.dispatch("policy.sync", env["workspace"], env["tenant"], {"policyId": 1})

    with pytest.raises(CommandRefused) as e:
        asyncio.run(scenario())
    assert e.value.code == "missing_identity_key"


def test_async_progress_and_completion_arrive_as_events_through_an_async_subscription(env):
    queue = f"{env['namespace']}.subscriber.{unique()}"

    async def scenario():
        async with AsyncClient(env["url"], env["namespace"]) as runs:
            # Declared and bound before the dispatch: every event of the run is in it.
            await runs.declare_subscription(queue)
            run_id = (await runs.dispatch("inventory.sync", env["workspace"], env["tenant"], {"selection": unique()}))["run_id"]
            assert (await runs.update_run(run_id, env["workspace"], env["tenant"], status="running"))["status"] == "running"
            await runs.increment_summary_counts(run_id, env["workspace"], env["tenant"], {"total": 2, "processed": 2, "failed": 1})
            await runs.append_failures(run_id, env["workspace"], env["tenant"], [{"code": "device.unreachable", "message": "dev-2 did not answer", "item": "dev-2"}])
            done = await runs.complete(run_id, env["workspace"], env["tenant"], "partially_succeeded")
            assert (done["status"], done["outcome"]) == ("completed", "partially_succeeded")
            events = []

            async def handler(event):
                if event["data"]["run"]["id"] != run_id:
                    return True
                events.append(event)
                return event["type"] != "operation_run.completed"

            try:
                await runs.subscribe(queue, handler, idle_timeout=20)
            finally:
                import aio_pika

                connection = await aio_pika.connect(env["url"])
                async with connection:
                    await (await connection.channel()).queue_delete(queue)
            return events

    events = asyncio.run(scenario())
    assert [e["type"] for e in events] == [
        "operation_run.queued",
        "operation_run.started",
        "operation_run.progressed",
        "operation_run.progressed",
        "operation_run.completed",
    ]
    last = events[-1]["data"]["run"]
    assert last["outcome"] == "partially_succeeded"
    assert last["summary_counts"] == {"total": 2, "processed": 2, "failed": 1}


def test_async_cancel_retry_and_fail_answer_as_the_synchronous_clients(env):
    async def scenario():
        async with AsyncClient(env["url"], env["namespace"]) as runs:
            ws, tenant = env["workspace"], env["tenant"]
            queued = await runs.dispatch("policy.sync", ws, tenant, {"policy_id": unique()})
            cancelled = await runs.cancel(queued["run_id"], ws, tenant, "not needed", initiator_name="pytest-aio")
            retried = await runs.retry(queued["run_id"], ws, tenant, "try again")
            failed = await runs.fail(retried["new_run_id"], ws, tenant, "executor gone")
            with pytest.raises(CommandRefused) as e:
                await runs.cancel(queued["run_id"], ws, env["other_tenant"])
            return queued, cancelled, retried, failed, e.value.code

    queued, cancelled, retried, failed, other = asyncio.run(scenario())
    assert cancelled == {"run_id": queued["run_id"], "action": "cancel", "result": "done"}
    assert retried["result"] == "done" and retried["new_run_id"] != queued["run_id"]
    assert (failed["action"], failed["result"]) == ("fail", "done")
    assert other == "run_not_found"


def test_an_async_command_to_a_missing_topology_is_unroutable(env):
    async def scenario():
        async with AsyncClient(env["url"], unique("oprun_py_aio_missing")) as runs:
            await runs.dispatch("policy.sync", 1, None, {"policy_id": 1}, timeout=5)

    with pytest.raises(CommandNotAnswered) as e:
        asyncio.run(scenario())
    assert e.value.reason == "unroutable"


def test_no_node_answering_is_command_not_answered_without_the_password(env):
    async def scenario():
        async with AsyncClient("amqp://guest:s3cret@127.0.0.1:1/%2f", env["namespace"]) as runs:
            await runs.dispatch("policy.sync", 1, None, {"policy_id": 1}, timeout=5)

    with pytest.raises(CommandNotAnswered) as e:
        asyncio.run(scenario())
    assert e.value.reason == "connection_lost"
    assert "s3cret" not in str(e.value) and "guest:***@" in str(e.value)
