#!/usr/bin/env python3
"""The inventory sync of ``sync_inventory.py`` with the asyncio client
(``pip install 'operation-runs-client[asyncio]'``): it dispatches the run and follows its events
until it completes, never executing it (an executor does: ``inventory_worker.py``).

    python3 clients/python/examples/inventory_worker.py &     # the executor
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f OPRUN_NAMESPACE=operation_runs \\
    OPRUN_WORKSPACE_ID=1 OPRUN_TENANT_ID=10 python3 clients/python/examples/sync_inventory_async.py
"""

import asyncio
import os
import sys
import uuid

import aio_pika

from operation_runs_client.aio import AsyncClient

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
namespace = os.environ.get("OPRUN_NAMESPACE", "operation_runs")
workspace = int(os.environ.get("OPRUN_WORKSPACE_ID", "1"))
tenant = int(os.environ["OPRUN_TENANT_ID"]) if "OPRUN_TENANT_ID" in os.environ else None
devices = ["dev-1", "dev-2", "offline-3"]


async def main() -> bool:
    queue = f"{namespace}.subscriber.example-{uuid.uuid4().hex[:8]}"
    seen = []
    async with AsyncClient(url, namespace) as runs:
        # Declares and binds our queue before the dispatch, so that no event of the run is missed.
        await runs.declare_subscription(queue)
        try:
            context = {"selection": f"example-{uuid.uuid4().hex[:8]}", "devices": devices}
            run = await runs.dispatch("inventory.sync", workspace, tenant, context, initiator_name="sync_inventory_async.py")
            run_id = run["run_id"]
            print(f"dispatched run {run_id}")

            async def on_event(event):
                if event["data"]["run"]["id"] != run_id:
                    return True
                seen.append(event["type"])
                print(event["type"], f"#{event['data']['sequence']}", event["data"]["run"]["summary_counts"])
                if event["type"] == "operation_run.completed":
                    print("outcome:", event["data"]["run"]["outcome"])
                    return False
                return True

            await runs.subscribe(queue, on_event, idle_timeout=20)
        finally:
            connection = await aio_pika.connect(url)
            async with connection:
                await (await connection.channel()).queue_delete(queue)
    return bool(seen) and seen[0] == "operation_run.queued" and seen[-1] == "operation_run.completed"


sys.exit(0 if asyncio.run(main()) else 1)
