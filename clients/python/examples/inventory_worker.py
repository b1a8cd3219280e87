#!/usr/bin/env python3
"""The executor of ``inventory.sync`` runs, written only from clients/python/README.md: it
executes the jobs the service hands off, with progress, failures and cancellation, and never
dispatches (``sync_inventory.py`` and ``sync_inventory_async.py`` dispatch; decision 0087).

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f OPRUN_NAMESPACE=operation_runs \\
    python3 clients/python/examples/inventory_worker.py [--max-jobs N]

Prints ``ready`` once its job queue is declared (jobs handed off from then on wait for it);
SIGTERM or SIGINT stops it after the job in hand.
"""

import argparse
import os
import signal
import sys
from typing import Optional

from operation_runs_client import RunHandle, Worker

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
args = parser.parse_args()


def sync_inventory(run: RunHandle) -> Optional[str]:
    """One run: the devices of its context, each reported as it is done."""
    devices = run.context.get("devices") or ["dev-1", "dev-2", "offline-3"]
    run.progress(total=len(devices))
    failed = 0
    for device in devices:
        if run.cancel_requested():
            return None  # cancelled: the worker completes the run so
        if device.startswith("offline-"):
            failed += 1
            run.fail("device.unreachable", f"{device} did not answer", item=device)
            run.progress(processed=1, failed=1)
        else:
            run.progress(processed=1, succeeded=1)
    return "partially_succeeded" if failed else "succeeded"


url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
namespace = os.environ.get("OPRUN_NAMESPACE", "operation_runs")
# Every instance of one executor shares its name, and so its job queue: each job runs once.
name = os.environ.get("OPRUN_WORKER_NAME", "inventory")

with Worker(url, namespace, name, ["inventory.sync"]) as worker:
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.declare()
    print("ready", flush=True)
    done = worker.run(sync_inventory, max_jobs=args.max_jobs)
    print(f"executed {done} job(s)", flush=True)
sys.exit(0)
