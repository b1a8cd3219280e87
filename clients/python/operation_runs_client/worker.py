"""An executor: receives the jobs of chosen run types, runs a handler for each, completes the run.

The same promises as the Rust ``operation_runs::client::Worker`` (docs/workers.md):

- **A job is acked only after the service answered its completion.** Start and completion wait for
  the service's reply; a job redelivered after a crash whose run is already completed (the start's
  reply says so) is acked without running the handler again.
- **No reply is not an answer.** A start or completion the service does not answer in time is sent
  again with the same command id (applied once) with backoff (0.1 s doubling to 10 s) until it
  answers or :meth:`Worker.stop`; the job stays unacked meanwhile.
- **A refusal never strands the run.** A refused completion completes the run ``failed`` with
  ``worker.completion_refused``, a refused start with ``worker.start_refused`` (``run_not_found``:
  acked, nothing to fail), an undecodable job that names its run with ``worker.invalid_job`` (one
  that names none is rejected); a handler that raises completes it ``failed`` with
  ``worker.handler_failed`` (the exception's type and text).
- **A cancel reaches the handler.** Each instance reads a queue of its own,
  ``N.worker.<name>.cancel.<id>`` (exclusive, at most 1,024 messages), bound with ``cancel.<type>``:
  :meth:`RunHandle.cancel_requested` reads it (at most every 0.2 s), and it is read before each
  job, so a job whose cancel came first completes ``cancelled`` without running the handler. A
  queued run's cancel completes it at once in the service; its job is then acked unrun.
- **Broker faults are survived.** A lost connection is opened again (the next node first) with
  backoff; the job in hand is redelivered by the broker.

One job at a time (prefetch 1): run more processes to execute more at once. The job connection
has no heartbeats unless the URL asks (``?heartbeat=N``; then call the handle often enough).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import pika
import pika.exceptions

from .client import Client
from .errors import CommandNotAnswered, CommandRefused
from .urls import NoNodeAnswered, Nodes, describe

log = logging.getLogger(__name__)

COMPLETION_REFUSED = "worker.completion_refused"
START_REFUSED = "worker.start_refused"
INVALID_JOB = "worker.invalid_job"
HANDLER_FAILED = "worker.handler_failed"
#: Most cancels the cancel queue holds (the newest kept) and that a worker remembers for runs not
#: in hand.
HEARD_CANCELS = 1024
#: Seconds between two reads of the cancel queue from :meth:`RunHandle.cancel_requested`.
CANCEL_POLL_INTERVAL = 0.2
#: Most failures one command may carry, and the longest failure message kept (the service's bounds).
MAX_FAILURES_PER_COMMAND = 100
MAX_MESSAGE_CHARS = 1000

_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# A lost connection or channel: reconnect (the job in hand is redelivered).
_BROKER_FAULTS = (pika.exceptions.AMQPError, OSError, NoNodeAnswered)


def _printable(text: str) -> str:
    """``text`` without control characters or unpaired surrogates, cut to the message limit."""
    clean = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", clean)[:MAX_MESSAGE_CHARS]


class RunHandle:
    """What a :class:`Worker`'s handler gets for the run it executes: the job (``run_id``,
    ``type``, ``workspace_id``, ``tenant_id``, ``context``), progress reports, failures, and whether
    the run's cancel was requested.

    The handler returns the outcome (``succeeded``, ``partially_succeeded``, ``failed``,
    ``blocked``, ``cancelled``) or ``None``, which means ``cancelled`` when
    :meth:`cancel_requested` answered true, else ``failed`` when :meth:`fail` was called, else
    ``succeeded``. Failures recorded with :meth:`fail` go with the completion whatever the outcome.
    """

    def __init__(self, job: Mapping[str, Any], client: Client, heard: Callable[[], bool], reply_timeout: float):
        self.run_id: int = job["run_id"]
        self.type: str = job["type"]
        self.workspace_id: int = job["workspace_id"]
        self.tenant_id: Optional[int] = job["tenant_id"]
        self.context: Dict[str, Any] = job["context"]
        self._client = client
        self._heard = heard
        self._timeout = reply_timeout
        self._failures: List[Dict[str, Any]] = []
        self._failed = False
        self._cancelled = False
        self._saw_cancel = False

    def progress(self, **counts: int) -> None:
        """Adds to the run's summary counts (``progress(processed=10)``; ``total`` once at the
        start): keys ``total processed succeeded failed skipped created updated deleted items``,
        non-negative increments (the service adds them up). Waits for the service's reply."""
        if counts:
            self._client.increment_summary_counts(self.run_id, self.workspace_id, self.tenant_id, counts, timeout=self._timeout)

    def fail(self, code: str, message: str, *, item: Any = None, reason_code: Optional[str] = None) -> None:
        """Records a failure (``code`` ``[A-Za-z0-9_.-]{1,128}``, a message the service sanitises
        and cuts to 1,000 characters, optionally the item and a finer reason code): sent with the
        completion (every 100th at once, within the service's bound per command), and the run
        completes ``failed`` unless the handler returns another outcome."""
        failure: Dict[str, Any] = {"code": code, "message": message.encode("utf-8", "replace").decode("utf-8")}
        if reason_code is not None:
            failure["reason_code"] = reason_code
        if item is not None:
            failure["item"] = item
        self._failed = True
        self._failures.append(failure)
        if len(self._failures) == MAX_FAILURES_PER_COMMAND:
            self._client.append_failures(self.run_id, self.workspace_id, self.tenant_id, self._failures, timeout=self._timeout)
            self._failures = []

    def cancel_requested(self) -> bool:
        """Whether the run's cancel was requested (an operator, the platform or the API asked).
        Reads the worker's cancel queue at most every 0.2 s; once true, stays true. A handler
        that stops for it returns ``None`` or ``"cancelled"``."""
        if not self._cancelled and self._heard():
            self._cancelled = True
        self._saw_cancel = self._saw_cancel or self._cancelled
        return self._cancelled

    # The worker's side ------------------------------------------------------------------------

    def _mark_cancelled(self) -> None:
        self._cancelled = True

    def _outcome(self, returned: Optional[str]) -> str:
        if returned is not None:
            return returned
        if self._saw_cancel:
            return "cancelled"
        return "failed" if self._failed else "succeeded"

    def _take_failures(self) -> List[Dict[str, Any]]:
        failures, self._failures = self._failures, []
        return failures


class Worker:
    """Consumes the jobs of ``types`` from the durable queue ``N.worker.<name>`` (quorum, bound to
    ``N.jobs``) and executes them with :meth:`run`. ``client`` is what it reports with (default:
    a :class:`Client` of its own). Not thread-safe: one worker per thread or process."""

    def __init__(
        self,
        amqp_url: Union[str, Iterable[str]],
        namespace: str,
        name: str,
        types: Iterable[str],
        *,
        client: Optional[Client] = None,
        reply_timeout: float = 30,
        connection_name: str = "operation-runs-python-worker",
    ):
        self.types = list(types)
        if not self.types:
            raise ValueError("a worker executes at least one type")
        self.namespace = namespace
        self.queue = self.queue_name(namespace, name)
        # No heartbeats unless the URL asks: pika answers them only while called, and a handler
        # may work for long between two calls.
        self._nodes = Nodes(amqp_url, connection_name, default_heartbeat=0)
        self._client = client or Client(amqp_url, namespace, connection_name=f"{connection_name} producer")
        self._reply_timeout = reply_timeout
        self._node = 0
        self._connection: Optional[pika.BlockingConnection] = None
        self._jobs = None
        self._cancels = None
        self._cancel_queue = ""
        self._delivery: Optional[Tuple[Any, bytes]] = None
        self._in_hand: Optional[RunHandle] = None
        self._heard: "OrderedDict[int, None]" = OrderedDict()
        self._last_poll = 0.0
        self._stopping = False

    @staticmethod
    def queue_name(namespace: str, name: str) -> str:
        """The durable job queue of a worker named ``name``: ``N.worker.<name>``."""
        return f"{namespace}.worker.{name}"

    def declare(self) -> None:
        """Connects and declares its queues now (also done by :meth:`run`): jobs handed off from
        then on wait in the durable job queue, even while no worker runs."""
        self._open()

    def run(
        self,
        handler: Callable[[RunHandle], Optional[str]],
        *,
        max_jobs: Optional[int] = None,
        idle_timeout: Optional[float] = None,
    ) -> int:
        """Executes jobs: ``handler(run)`` returns the outcome (see :class:`RunHandle`). Returns the
        number of jobs settled, after ``max_jobs`` of them, after ``idle_timeout`` seconds without
        a job, or once :meth:`stop` was called (from the handler or a signal handler): a job whose
        completion was not answered yet is left to the broker to redeliver."""
        self._stopping = False
        settled = 0
        delay = 0.1
        while not self._stopping and (max_jobs is None or settled < max_jobs):
            try:
                self._open()
                if self._delivery is None:
                    began = time.monotonic()
                    self._connection.process_data_events(time_limit=idle_timeout)
                    if not self._jobs.consumer_tags:
                        raise pika.exceptions.ConsumerCancelled("the broker cancelled the job consumer")
                    if self._delivery is None and idle_timeout is not None and time.monotonic() - began >= idle_timeout:
                        break
                    continue
                (method, body), self._delivery = self._delivery, None
                if not self._handle(handler, method, body):
                    break
                settled += 1
                delay = 0.1
            except _BROKER_FAULTS as e:
                self._drop()
                log.warning("worker %s lost the broker (%s), reconnecting in %.1f s", self.queue, describe(e), delay)
                _sleep(delay)
                delay = min(10.0, 2 * delay)
        return settled

    def stop(self) -> None:
        """Stops :meth:`run` after the job in hand (or at once while it waits for the service)."""
        self._stopping = True

    def close(self) -> None:
        """Closes its connections (the exclusive cancel queue goes with them)."""
        self._drop()
        self._client.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # One job ----------------------------------------------------------------------------------

    def _handle(self, handler, method, body: bytes) -> bool:
        """Start, handler, completion, ack. False when stop() interrupted it (left unacked)."""
        try:
            job = json.loads(body)
        except ValueError:
            job = None
        scoped = (
            isinstance(job, dict)
            and _is_id(job.get("run_id"))
            and _is_id(job.get("workspace_id"))
            and "tenant_id" in job
            and (job["tenant_id"] is None or _is_id(job["tenant_id"]))
        )
        if not scoped:
            log.error("worker %s: a job that names no run, rejecting it", self.queue)
            self._jobs.basic_nack(method.delivery_tag, requeue=False)
            return True
        scope = (job["run_id"], job["workspace_id"], job["tenant_id"])
        if not isinstance(job.get("type"), str) or not isinstance(job.get("context"), dict):
            return self._settle(method, self._fail_run(scope, INVALID_JOB, None, "the job does not decode: type or context missing"))
        run = RunHandle(job, self._client, lambda: self._heard_for(job["run_id"]), self._reply_timeout)
        # In hand before the start is sent: a cancel that comes meanwhile is not missed.
        self._in_hand = run
        try:
            self._poll_cancels()
            started = self._answer(scope, status="running")
            if started is None:
                return False
            if started[0] == "applied" and started[1].get("status") == "completed":
                # A redelivered job whose completion was applied before (or a cancelled queued run).
                return self._settle(method, True)
            if started[0] == "refused":
                if started[1] == "run_not_found":
                    log.error("worker %s: run %s does not exist in its scope; acking its job", self.queue, scope[0])
                    return self._settle(method, True)
                return self._settle(method, self._fail_run(scope, START_REFUSED, started[1], started[2]))
            self._poll_cancels()
            if run._cancelled:
                outcome = "cancelled"
            else:
                try:
                    outcome = run._outcome(handler(run))
                except Exception as e:
                    run.fail(HANDLER_FAILED, _printable(describe(e)))
                    outcome = "failed"
            failures = run._take_failures()
            done = self._answer(scope, status="completed", outcome=outcome, failures=failures or None)
            if done is None:
                return False
            if done[0] == "refused":
                return self._settle(method, self._fail_run(scope, COMPLETION_REFUSED, done[1], done[2]))
            return self._settle(method, True)
        finally:
            self._in_hand = None

    def _settle(self, method, answered: bool) -> bool:
        """Acks the job when ``answered``; False (left unacked) otherwise."""
        if answered:
            self._jobs.basic_ack(method.delivery_tag)
        return answered

    def _fail_run(self, scope, code: str, refusal_code: Optional[str], message: str) -> bool:
        """Completes the run ``failed`` with one failure the service accepts; True once answered
        (applied, or refused too: a refusal is deterministic, requeueing would loop)."""
        failure: Dict[str, Any] = {"code": code, "message": _printable(message)}
        if refusal_code is not None and _CODE.match(refusal_code):
            failure["reason_code"] = refusal_code
        log.warning("worker %s: completing run %s as failed (%s: %s)", self.queue, scope[0], code, failure["message"])
        answer = self._answer(scope, status="completed", outcome="failed", failures=[failure])
        if answer is not None and answer[0] == "refused":
            log.error("worker %s: failing run %s was refused too (%s); acking its job", self.queue, scope[0], answer[2])
        return answer is not None

    def _answer(self, scope, **changes: Any):
        """Sends ``update_run`` until the service answers: ``("applied", reply)`` or
        ``("refused", code, message)``; None when stop() came first. Resends keep the command id."""
        command_id = str(uuid.uuid4())
        delay = 0.1
        while True:
            try:
                return ("applied", self._client.update_run(*scope, command_id=command_id, timeout=self._reply_timeout, **changes))
            except CommandRefused as e:
                return ("refused", e.code, e.message)
            except CommandNotAnswered as e:
                if self._stopping:
                    return None
                log.warning("worker %s: %s; sending it again in %.1f s", self.queue, e, delay)
                _sleep(delay)
                delay = min(10.0, 2 * delay)
                if self._stopping:
                    return None

    # Cancels ----------------------------------------------------------------------------------

    def _heard_for(self, run_id: int) -> bool:
        """Whether run ``run_id``'s cancel has come, reading the cancel queue at most every 0.2 s."""
        if time.monotonic() - self._last_poll >= CANCEL_POLL_INTERVAL:
            try:
                self._poll_cancels()
            except _BROKER_FAULTS:
                # Lost: the job loop reconnects after this job; the cancel is not known yet.
                pass
        return self._in_hand is not None and self._in_hand.run_id == run_id and self._in_hand._cancelled

    def _poll_cancels(self) -> None:
        """Reads every waiting cancel: the run in hand is told, others are remembered."""
        self._last_poll = time.monotonic()
        while self._cancels is not None:
            method, _properties, body = self._cancels.basic_get(self._cancel_queue, auto_ack=True)
            if method is None:
                break
            try:
                notice = json.loads(body)
            except ValueError:
                continue
            if not isinstance(notice, dict) or notice.get("cancel") is not True or not _is_id(notice.get("run_id")):
                continue
            run_id = notice["run_id"]
            if self._in_hand is not None and self._in_hand.run_id == run_id:
                self._in_hand._mark_cancelled()
                continue
            self._heard.pop(run_id, None)
            self._heard[run_id] = None
            if len(self._heard) > HEARD_CANCELS:
                self._heard.popitem(last=False)
        if self._in_hand is not None and self._in_hand.run_id in self._heard:
            del self._heard[self._in_hand.run_id]
            self._in_hand._mark_cancelled()

    # Plumbing ---------------------------------------------------------------------------------

    def _on_job(self, _channel, method, _properties, body) -> None:
        self._delivery = (method, body)

    def _open(self) -> None:
        if self._connection is not None and self._connection.is_open:
            return
        self._drop()
        self._connection, self._node = self._nodes.connect()
        exchange = f"{self.namespace}.jobs"
        jobs = self._connection.channel()
        # The same arguments as the service's declaration, so either may start first.
        jobs.exchange_declare(exchange, "topic", durable=True)
        jobs.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        for run_type in self.types:
            jobs.queue_bind(self.queue, exchange, run_type)
        cancels = self._connection.channel()
        self._cancel_queue = f"{self.queue}.cancel.{uuid.uuid4().hex}"
        cancels.queue_declare(self._cancel_queue, exclusive=True, auto_delete=True, arguments={"x-max-length": HEARD_CANCELS})
        for run_type in self.types:
            cancels.queue_bind(self._cancel_queue, exchange, f"cancel.{run_type}")
        # One job at a time: the others stay in the queue for other instances.
        jobs.basic_qos(prefetch_count=1)
        jobs.basic_consume(self.queue, self._on_job)
        self._jobs, self._cancels = jobs, cancels

    def _drop(self) -> None:
        """Releases the connection (the next starts with the following node)."""
        if self._connection is None:
            return
        self._nodes.lost(self._node)
        try:
            if self._connection.is_open:
                self._connection.close()
        except Exception:
            # Closing a broken connection: nothing left to release.
            pass
        self._connection = self._jobs = self._cancels = self._delivery = None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sleep(seconds: float) -> None:
    time.sleep(seconds * (0.5 + random.random() / 2))
