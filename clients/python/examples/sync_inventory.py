#!/usr/bin/env python3
"""An inventory sync dispatched from Python, written only from topology/schemas/ and
clients/python/README.md: it dispatches the run and follows its events until it completes. It
never executes the run: an executor does (``inventory_worker.py``; decision 0087).

    python3 clients/python/examples/inventory_worker.py &     # the executor
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f OPRUN_NAMESPACE=operation_runs \\
    OPRUN_WORKSPACE_ID=1 OPRUN_TENANT_ID=10 python3 clients/python/examples/sync_inventory.py
"""

import os
import sys
import uuid

import pika

from operation_runs_client import Client

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
namespace = os.environ.get("OPRUN_NAMESPACE", "operation_runs")
workspace = int(os.environ.get("OPRUN_WORKSPACE_ID", "1"))
tenant = int(os.environ["OPRUN_TENANT_ID"]) if "OPRUN_TENANT_ID" in os.environ else None
devices = ["dev-1", "dev-2", "offline-3"]

# A queue of our own, bound before the dispatch so that no event of the run is missed.
queue = f"{namespace}.subscriber.example-{uuid.uuid4().hex[:8]}"
admin = pika.BlockingConnection(pika.URLParameters(url))
admin.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
admin.channel().queue_bind(queue, f"{namespace}.events")

seen = []
try:
    with Client(url, namespace) as runs:
        context = {"selection": f"example-{uuid.uuid4().hex[:8]}", "devices": devices}
        run = runs.dispatch("inventory.sync", workspace, tenant, context, initiator_name="sync_inventory.py")
        run_id = run["run_id"]
        print(f"dispatched run {run_id}")

        def on_event(event):
            if event["data"]["run"]["id"] != run_id:
                return True
            seen.append(event["type"])
            print(event["type"], f"#{event['data']['sequence']}", event["data"]["run"]["summary_counts"])
            if event["type"] == "operation_run.completed":
                print("outcome:", event["data"]["run"]["outcome"])
                return False
            return True

        runs.subscribe(queue, on_event, idle_timeout=20)
finally:
    admin.channel().queue_delete(queue)
    admin.close()

sys.exit(0 if seen and seen[0] == "operation_run.queued" and seen[-1] == "operation_run.completed" else 1)
