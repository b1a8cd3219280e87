"""Commands to the service, replies through direct reply-to, and events from a queue of one's own."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional

import pika
import pika.exceptions

from .errors import CommandNotAnswered, CommandRefused

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def new_command_id() -> str:
    """A fresh command id (UUID)."""
    return str(uuid.uuid4())


def new_traceparent() -> str:
    """A new W3C ``traceparent`` (version 00, random trace and parent ids, sampled), for a
    producer that starts the trace itself and wants to know its id."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class Client:
    """Sends commands to ``N.commands`` and waits for the service's replies.

    Every command is published with publisher confirms and ``mandatory`` (an undeclared topology
    raises :class:`CommandNotAnswered`, never a silent drop), persistent, ``application/json``,
    ``message_id`` = command id, routing key = its kind; replies come through RabbitMQ direct
    reply-to. Not thread-safe: one client per thread (pika's BlockingConnection).
    """

    def __init__(self, amqp_url: str, namespace: str = "operation_runs"):
        self._url = amqp_url
        self.namespace = namespace
        self._connection: Optional[pika.BlockingConnection] = None
        self._channel = None
        self._awaiting: Optional[str] = None
        self._reply: Optional[Dict[str, Any]] = None

    # Commands ---------------------------------------------------------------------------------

    def dispatch(
        self,
        type: str,  # noqa: A002 - the wire name
        workspace_id: int,
        tenant_id: Optional[int],
        context: Mapping[str, Any],
        *,
        user_id: Optional[int] = None,
        initiator_name: Optional[str] = None,
        command_id: Optional[str] = None,
        wait: bool = True,
        timeout: float = 30,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Dispatches a run. With ``wait`` returns the reply ``{run_id, deduplicated,
        run_identity_hash, status}``; without, ``{"command_id": ...}`` once the broker confirmed."""
        body: Dict[str, Any] = {
            "kind": "dispatch",
            "command_id": command_id or new_command_id(),
            "workspace_id": workspace_id,
            "tenant_id": tenant_id,
            "type": type,
            "context": dict(context),
        }
        if user_id is not None:
            body["user_id"] = user_id
        if initiator_name is not None:
            body["initiator_name"] = initiator_name
        return self._send(body, wait, timeout, (traceparent, tracestate))

    def update_run(
        self,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        *,
        status: Optional[str] = None,
        outcome: Optional[str] = None,
        summary_counts: Optional[Mapping[str, int]] = None,
        failures: Optional[List[Mapping[str, Any]]] = None,
        command_id: Optional[str] = None,
        wait: bool = True,
        timeout: float = 30,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
    ) -> Dict[str, Any]:
        """A transition (``status`` running|completed, ``outcome``) with optional count increments
        and failures, in one transaction. Returns ``{run_id, status, outcome}`` with ``wait``."""
        fields: Dict[str, Any] = {}
        if status is not None:
            fields["status"] = status
        if outcome is not None:
            fields["outcome"] = outcome
        if summary_counts is not None:
            fields["summary_counts"] = dict(summary_counts)
        if failures is not None:
            fields["failures"] = [dict(f) for f in failures]
        return self._progress("update_run", run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, (traceparent, tracestate))

    def append_failures(
        self,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        failures: List[Mapping[str, Any]],
        *,
        command_id: Optional[str] = None,
        wait: bool = True,
        timeout: float = 30,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Appends failure entries ``{code, message, reason_code?, item?}`` (at most 100)."""
        fields = {"failures": [dict(f) for f in failures]}
        return self._progress("append_failures", run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, (traceparent, tracestate))

    def increment_summary_counts(
        self,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        counts: Mapping[str, int],
        *,
        command_id: Optional[str] = None,
        wait: bool = True,
        timeout: float = 30,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Adds to summary counts (keys total processed succeeded failed skipped created updated
        deleted items; non-negative integers)."""
        fields = {"counts": dict(counts)}
        return self._progress("increment_summary_counts", run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, (traceparent, tracestate))

    # Events -----------------------------------------------------------------------------------

    def subscribe(
        self,
        queue: Optional[str],
        handler: Callable[[Dict[str, Any]], Any],
        *,
        idle_timeout: Optional[float] = None,
        prefetch: int = 100,
    ) -> None:
        """Binds ``queue`` to ``N.events`` and calls ``handler(event)`` for every event (a decoded
        CloudEvent, see topology/schemas/event.json), acking it after the handler returns.

        ``queue`` names a durable queue of one's own (by least privilege ``N.subscriber.<name>``);
        ``None`` makes an exclusive server-named one that lives as long as the call. Returns when
        the handler returns ``False`` or after ``idle_timeout`` seconds without an event; a handler
        that raises stops the loop, its event unacked (delivered again). Delivery is at least once:
        dedupe on ``event["id"]``; order per run by ``event["data"]["sequence"]``.
        """
        connection = pika.BlockingConnection(pika.URLParameters(self._url))
        try:
            channel = connection.channel()
            if queue:
                channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
                name = queue
            else:
                name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(name, f"{self.namespace}.events")
            channel.basic_qos(prefetch_count=prefetch)
            for method, _properties, body in channel.consume(name, inactivity_timeout=idle_timeout):
                if method is None:
                    return
                try:
                    event = json.loads(body)
                except ValueError:
                    # Not an event of this service; nothing a handler could do with it.
                    channel.basic_nack(method.delivery_tag, requeue=False)
                    continue
                keep_going = handler(event)
                channel.basic_ack(method.delivery_tag)
                if keep_going is False:
                    return
        finally:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass

    # Plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection."""
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except pika.exceptions.AMQPError:
                pass
        self._connection = None
        self._channel = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _progress(self, kind, run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, trace):
        body: Dict[str, Any] = {
            "kind": kind,
            "command_id": command_id or new_command_id(),
            "run_id": run_id,
            "workspace_id": workspace_id,
            # Always present: null marks a workspace-scoped run.
            "tenant_id": tenant_id,
        }
        body.update(fields)
        return self._send(body, wait, timeout, trace)

    def _open(self):
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = pika.BlockingConnection(pika.URLParameters(self._url))
        channel = self._connection.channel()
        channel.confirm_delivery()
        # Direct reply-to: consume the pseudo-queue (no-ack) on the channel that publishes.
        channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        self._channel = channel
        return channel

    def _on_reply(self, _channel, _method, properties, body) -> None:
        # Keep only the reply awaited now: a late reply to a timed-out request is dropped.
        if properties.correlation_id == self._awaiting:
            self._reply = json.loads(body)

    def _send(self, body: Dict[str, Any], wait: bool, timeout: float, trace=(None, None)) -> Dict[str, Any]:
        channel = self._open()
        command_id = body["command_id"]
        correlation_id = new_command_id()
        traceparent, tracestate = trace
        headers = {}
        if traceparent is not None:
            headers["traceparent"] = traceparent
            if tracestate is not None:
                headers["tracestate"] = tracestate
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=command_id,
            correlation_id=correlation_id if wait else None,
            reply_to=DIRECT_REPLY_TO if wait else None,
            headers=headers or None,
        )
        self._awaiting, self._reply = (correlation_id if wait else None), None
        try:
            channel.basic_publish(
                f"{self.namespace}.commands",
                body["kind"],
                json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                properties,
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            raise CommandNotAnswered("unroutable", command_id, f"command {command_id} is unroutable: is the topology of namespace {self.namespace} declared?") from None
        except pika.exceptions.NackError:
            raise CommandNotAnswered("nacked", command_id, f"the broker refused command {command_id} (nack)") from None
        except pika.exceptions.ChannelClosedByBroker as e:
            self._channel = None
            if e.reply_code == 404:
                raise CommandNotAnswered("unroutable", command_id, f"command {command_id} is unroutable: exchange {self.namespace}.commands does not exist") from None
            raise
        if not wait:
            return {"command_id": command_id}
        deadline = time.monotonic() + timeout
        while self._reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._awaiting = None
                raise CommandNotAnswered("timeout", command_id, f"no reply to command {command_id} within {timeout} s")
            self._connection.process_data_events(time_limit=min(left, 1.0))
        reply, self._reply, self._awaiting = self._reply, None, None
        if "error" in reply:
            error = reply["error"] or {}
            raise CommandRefused(str(error.get("code", "unknown")), str(error.get("message", "")))
        return reply
