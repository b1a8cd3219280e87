"""Commands to the service, replies through direct reply-to, and events from a queue of one's own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import pika
import pika.exceptions

from .commands import action_fields, answered, dispatch_body, new_command_id, run_body, trace_headers, update_run_fields
from .errors import CommandNotAnswered, ConnectionLost
from .urls import NoNodeAnswered, Nodes, describe

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: The client-provided connection name when none is given (shown by the broker).
DEFAULT_CONNECTION_NAME = "operation-runs-python"

# What a lost connection raises from pika: a stream lost (socket closed, missed heartbeats), a
# connection the broker closed (restart, `rabbitmqctl close_connection`), a channel of a closed
# connection. A channel the broker closed for a reason of its own (404) is not among them.
_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    OSError,
)


def _lost(error: BaseException) -> bool:
    """True when ``error`` means the connection is gone (a resend on a fresh one may succeed)."""
    if isinstance(error, pika.exceptions.ChannelClosedByBroker):
        # 320 CONNECTION_FORCED: the broker closes the connection and its channels with it.
        return error.reply_code == 320
    return isinstance(error, _LOST)


#: The viewer refuses a shorter HS256 secret.
MIN_VIEWER_SECRET_BYTES = 32


def _b64(data: bytes) -> str:
    """Unpadded base64url, as JWTs use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


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

    ``amqp_url`` is one URL, a comma-separated list of the nodes of a cluster (as the service's
    ``AMQP_URL``), or a sequence of URLs: the first that answers is used, and after a lost
    connection the next one is tried first. A call whose connection is lost is sent once more on
    a fresh connection (the command id makes it safe); errors never show a password.
    ``connection_name`` is the client-provided name the broker shows for the connection.
    ``viewer_url`` (the run viewer's base URL) and ``viewer_secret`` (the ``--api-secret`` the
    viewer is started with, at least 32 bytes) let :meth:`view_url` mint "View run" links;
    neither is needed for commands.
    """

    def __init__(
        self,
        amqp_url: Union[str, Iterable[str]],
        namespace: str = "operation_runs",
        *,
        connection_name: str = DEFAULT_CONNECTION_NAME,
        viewer_url: Optional[str] = None,
        viewer_secret: Optional[str] = None,
    ):
        if viewer_secret is not None and len(viewer_secret.encode()) < MIN_VIEWER_SECRET_BYTES:
            raise ValueError("the viewer secret must be at least 32 bytes")
        self._viewer_url = viewer_url
        self._viewer_secret = viewer_secret
        self._nodes = Nodes(amqp_url, connection_name)
        self._node = 0
        self.namespace = namespace
        self._connection: Optional[pika.BlockingConnection] = None
        self._channel = None
        self._awaiting: Optional[str] = None
        self._reply: Optional[Dict[str, Any]] = None

    # Viewer links -----------------------------------------------------------------------------

    def view_url(
        self,
        run_id: int,
        workspace_id: int,
        tenant_ids: Optional[Iterable[int]] = None,
        ttl_seconds: int = 3600,
    ) -> str:
        """A "View run" link: the viewer's page of run ``run_id``, signed in by a token (HS256,
        signed with the viewer secret) that reads that one run only, for ``ttl_seconds``.
        ``workspace_id`` and ``tenant_ids`` are the run's scope as the platform knows it
        (``None``: the whole workspace); a run outside them is "not found" for the link."""
        if self._viewer_url is None or self._viewer_secret is None:
            raise ValueError("view_url needs the viewer URL and secret (viewer_url=, viewer_secret=)")
        if ttl_seconds < 1:
            raise ValueError("ttl_seconds must be positive")
        now = int(time.time())
        claims: Dict[str, Any] = {"workspace_id": int(workspace_id)}
        if tenant_ids is not None:
            claims["tenant_ids"] = [int(t) for t in tenant_ids]
        claims.update({"run_id": int(run_id), "iat": now, "exp": now + int(ttl_seconds)})
        signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(
            json.dumps(claims, separators=(",", ":")).encode()
        )
        signature = hmac.new(self._viewer_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + _b64(signature)
        return f"{self._viewer_url.rstrip('/')}/runs/{int(run_id)}?token={token}"

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
        body = dispatch_body(type, workspace_id, tenant_id, context, user_id, initiator_name, command_id)
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
        fields = update_run_fields(status, outcome, summary_counts, failures)
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

    # Operator actions -------------------------------------------------------------------------

    def cancel(
        self,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        reason: Optional[str] = None,
        **options: Any,
    ) -> Dict[str, Any]:
        """Cancels a run: a queued run completes ``cancelled`` at once (``result`` ``done``); a
        running run's executor is asked to stop (``requested``); a completed run is never changed
        (``unchanged`` when already cancelled, else ``refused``). Options as :meth:`act`."""
        return self.act("cancel_run", run_id, workspace_id, tenant_id, reason, **options)

    def retry(
        self,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        reason: Optional[str] = None,
        **options: Any,
    ) -> Dict[str, Any]:
        """Retries a run completed ``failed``, ``partially_succeeded``, ``blocked`` or
        ``cancelled``: a new run of the same type, scope and context with ``context.retry_of``,
        dispatched as usual (``done`` with ``new_run_id``; ``deduplicated`` when an active run
        already held the identity). Options as :meth:`act`."""
        return self.act("retry_run", run_id, workspace_id, tenant_id, reason, **options)

    def fail(
        self,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        reason: str,
        **options: Any,
    ) -> Dict[str, Any]:
        """Completes a queued or running run ``failed`` (failure code ``run.failed_by_operator``,
        message ``reason``), for a run whose executor is gone. Options as :meth:`act`."""
        return self.act("fail_run", run_id, workspace_id, tenant_id, reason, **options)

    def act(
        self,
        kind: str,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        reason: Optional[str] = None,
        *,
        user_id: Optional[int] = None,
        initiator_name: Optional[str] = None,
        command_id: Optional[str] = None,
        timeout: float = 30,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Sends operator action ``kind`` (``cancel_run``, ``retry_run``, ``fail_run``) and returns
        its result ``{run_id, action, result: done|requested|unchanged|refused, new_run_id?,
        deduplicated?, error?}`` (``error`` says why it was unchanged or refused). A run outside
        this workspace and tenant raises :class:`CommandRefused` ``run_not_found``."""
        fields = action_fields(reason, user_id, initiator_name)
        return self._progress(kind, run_id, workspace_id, tenant_id, fields, command_id, True, timeout, (traceparent, tracestate))

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

        A lost connection of a named queue is resumed on a fresh one (the next node first); raises
        :class:`ConnectionLost` when no node answers, when the fresh connection is lost too before
        an event came, or for the exclusive queue (it went with the connection).
        """
        # A lost connection is resumed on a fresh one (a named queue kept its events; those not
        # acked come again), unless it is lost again before an event came on the fresh one.
        resumed = False
        while True:
            try:
                connection, node = self._nodes.connect()
            except NoNodeAnswered as e:
                raise ConnectionLost(f"cannot subscribe to {self.namespace}.events: {e}") from None
            delivered = in_handler = False
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
                    delivered = True
                    try:
                        event = json.loads(body)
                    except ValueError:
                        # Not an event of this service; nothing a handler could do with it.
                        channel.basic_nack(method.delivery_tag, requeue=False)
                        continue
                    in_handler = True
                    keep_going = handler(event)
                    in_handler = False
                    channel.basic_ack(method.delivery_tag)
                    if keep_going is False:
                        return
            except Exception as e:
                if in_handler or not _lost(e):
                    raise
                self._nodes.lost(node)
                if not queue:
                    raise ConnectionLost(
                        f"the connection of the subscription was lost ({describe(e)}); its exclusive queue went with it"
                    ) from None
                if resumed and not delivered:
                    raise ConnectionLost(
                        f"the connection of the subscription to {queue} was lost again before an event came ({describe(e)})"
                    ) from None
                resumed = True
            finally:
                try:
                    if connection.is_open:
                        connection.close()
                except Exception:
                    # Closing a broken connection: nothing left to release.
                    pass

    # Plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection."""
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except Exception:
                # Closing a broken connection: nothing left to release.
                pass
        self._connection = None
        self._channel = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _progress(self, kind, run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, trace):
        body = run_body(kind, run_id, workspace_id, tenant_id, fields, command_id)
        return self._send(body, wait, timeout, trace)

    def _drop(self) -> None:
        """The connection is lost: release it (never leak a socket), and start the next
        connection with the following node."""
        self._nodes.lost(self._node)
        self.close()

    def _open(self):
        if self._channel is not None and self._channel.is_open:
            try:
                # Services heartbeats after an idle spell (a BlockingConnection does so only when
                # called) and notices a connection the broker closed meanwhile (missed
                # heartbeats, a restart): replaced before anything is sent on it.
                self._connection.process_data_events(time_limit=0)
            except Exception as e:
                if not _lost(e):
                    raise
                self._drop()
            else:
                if self._channel.is_open:
                    return self._channel
        self.close()
        self._connection, self._node = self._nodes.connect()
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
        command_id = body["command_id"]
        lost: Optional[BaseException] = None
        # Once, and once more on a fresh connection when the connection was lost: the service
        # applies a command id at most once and replies its first result again.
        for _attempt in range(2):
            try:
                return self._attempt(self._open(), body, wait, timeout, trace)
            except NoNodeAnswered as e:
                before = f"the connection was lost ({describe(lost)}) and " if lost is not None else ""
                raise CommandNotAnswered(
                    CommandNotAnswered.CONNECTION_LOST,
                    command_id,
                    f"command {command_id} is not answered: {before}{e}; retry with the same command id",
                ) from None
            except Exception as e:
                if not _lost(e):
                    raise
                self._drop()
                lost = e
        raise CommandNotAnswered(
            CommandNotAnswered.CONNECTION_LOST,
            command_id,
            f"command {command_id} is not answered: the connection was lost, and again on a fresh connection ({describe(lost)}); retry with the same command id",
        ) from None

    def _attempt(self, channel, body: Dict[str, Any], wait: bool, timeout: float, trace) -> Dict[str, Any]:
        command_id = body["command_id"]
        correlation_id = new_command_id()
        headers = trace_headers(trace)
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
        return answered(reply)
