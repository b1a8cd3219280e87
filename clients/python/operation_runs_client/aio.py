"""The asyncio client: the synchronous :class:`~operation_runs_client.Client`'s commands, awaited,
on aio-pika (``pip install 'operation-runs-client[asyncio]'``).

    from operation_runs_client.aio import AsyncClient

    async with AsyncClient(url, namespace) as runs:
        run = await runs.dispatch("inventory.sync", 1, 10, {"selection": "all"})

The same wire behaviour as the synchronous client (decision 0086): publisher confirms and
``mandatory`` (an undeclared topology raises :class:`CommandNotAnswered` ``unroutable``), persistent,
``application/json``, ``message_id`` = command id, replies through RabbitMQ direct reply-to; a
command whose connection is lost is sent once more on a fresh connection (the command id makes it
safe); a URL list is tried in turn; errors never show a password. Unlike the synchronous client,
one :class:`AsyncClient` serves many concurrent tasks: each awaited reply is matched by its
correlation id.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Union

import aio_pika
import aio_pika.abc
import aiormq.exceptions

from .client import DEFAULT_CONNECTION_NAME, DIRECT_REPLY_TO, Client
from .commands import action_fields, answered, dispatch_body, new_command_id, run_body, trace_headers, update_run_fields
from .errors import CommandNotAnswered, ConnectionLost
from .urls import describe, parse_urls, redact

# What a lost connection raises from aio-pika/aiormq: a connection closed or never opened, a
# channel of a closed connection, a socket error. A channel the broker closed for a reason of its
# own (404) is not among them.
_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)

EventHandler = Callable[[Dict[str, Any]], Union[Any, Awaitable[Any]]]


class AsyncClient:
    """Sends commands to ``N.commands`` and awaits the service's replies (asyncio, aio-pika).

    Arguments as :class:`~operation_runs_client.Client`: ``amqp_url`` is one URL, a
    comma-separated list or a sequence of them; ``viewer_url`` and ``viewer_secret`` let
    :meth:`view_url` mint "View run" links. The connection is opened by the first command.
    """

    def __init__(
        self,
        amqp_url: Union[str, Iterable[str]],
        namespace: str = "operation_runs",
        *,
        connection_name: str = DEFAULT_CONNECTION_NAME + "-asyncio",
        viewer_url: Optional[str] = None,
        viewer_secret: Optional[str] = None,
    ):
        # The links are the synchronous client's (no I/O): one implementation of the token.
        self._links = Client(amqp_url, namespace, viewer_url=viewer_url, viewer_secret=viewer_secret)
        self._urls = parse_urls(amqp_url)
        self._start = 0
        self._connection_name = connection_name
        self.namespace = namespace
        self._connection: Optional[aio_pika.abc.AbstractConnection] = None
        self._channel: Optional[aio_pika.abc.AbstractChannel] = None
        self._node = 0
        self._opening = asyncio.Lock()
        self._waiting: Dict[str, "asyncio.Future[Dict[str, Any]]"] = {}

    def view_url(
        self,
        run_id: int,
        workspace_id: int,
        tenant_ids: Optional[Iterable[int]] = None,
        ttl_seconds: int = 3600,
    ) -> str:
        """A "View run" link, as :meth:`Client.view_url <operation_runs_client.Client.view_url>`."""
        return self._links.view_url(run_id, workspace_id, tenant_ids, ttl_seconds)

    # Commands ---------------------------------------------------------------------------------

    async def dispatch(
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
        return await self._send(body, wait, timeout, (traceparent, tracestate))

    async def update_run(
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
        return await self._progress("update_run", run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, (traceparent, tracestate))

    async def complete(
        self,
        run_id: int,
        workspace_id: int,
        tenant_id: Optional[int],
        outcome: str,
        *,
        failures: Optional[List[Mapping[str, Any]]] = None,
        **options: Any,
    ) -> Dict[str, Any]:
        """Completes the run with ``outcome`` (``succeeded``, ``partially_succeeded``, ``failed``,
        ``blocked``, ``cancelled``): :meth:`update_run` with ``status="completed"``."""
        return await self.update_run(run_id, workspace_id, tenant_id, status="completed", outcome=outcome, failures=failures, **options)

    async def append_failures(
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
        return await self._progress("append_failures", run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, (traceparent, tracestate))

    async def increment_summary_counts(
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
        return await self._progress("increment_summary_counts", run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, (traceparent, tracestate))

    # Operator actions -------------------------------------------------------------------------

    async def cancel(self, run_id: int, workspace_id: int, tenant_id: Optional[int], reason: Optional[str] = None, **options: Any) -> Dict[str, Any]:
        """Cancels a run (``done`` for a queued run, ``requested`` for a running one, ``unchanged``
        or ``refused`` for a completed one), as :meth:`Client.cancel`."""
        return await self.act("cancel_run", run_id, workspace_id, tenant_id, reason, **options)

    async def retry(self, run_id: int, workspace_id: int, tenant_id: Optional[int], reason: Optional[str] = None, **options: Any) -> Dict[str, Any]:
        """Retries a completed run as a new run (``done`` with ``new_run_id``), as :meth:`Client.retry`."""
        return await self.act("retry_run", run_id, workspace_id, tenant_id, reason, **options)

    async def fail(self, run_id: int, workspace_id: int, tenant_id: Optional[int], reason: str, **options: Any) -> Dict[str, Any]:
        """Completes a queued or running run ``failed`` (``run.failed_by_operator``), as :meth:`Client.fail`."""
        return await self.act("fail_run", run_id, workspace_id, tenant_id, reason, **options)

    async def act(
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
        its result ``{run_id, action, result, new_run_id?, deduplicated?, error?}``; a run outside
        this workspace and tenant raises :class:`CommandRefused` ``run_not_found``."""
        fields = action_fields(reason, user_id, initiator_name)
        return await self._progress(kind, run_id, workspace_id, tenant_id, fields, command_id, True, timeout, (traceparent, tracestate))

    # Events -----------------------------------------------------------------------------------

    async def declare_subscription(self, queue: str) -> None:
        """Declares the durable queue ``queue`` (quorum) and binds it to ``N.events``: events
        from then on wait in it for :meth:`subscribe` (declare it before a dispatch whose events
        are all wanted)."""
        try:
            connection = await self._connect()
        except CommandNotAnswered as e:
            raise ConnectionLost(f"cannot declare {queue}: {e}") from None
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
            await declared.bind(f"{self.namespace}.events", "#")
        finally:
            await _close_quietly(connection)

    async def subscribe(
        self,
        queue: Optional[str],
        handler: EventHandler,
        *,
        idle_timeout: Optional[float] = None,
        prefetch: int = 100,
    ) -> None:
        """Binds ``queue`` to ``N.events`` and calls ``handler(event)`` (a function or a
        coroutine function) for every event, acking it after the handler returns; as
        :meth:`Client.subscribe`: returns when the handler returns ``False`` or after
        ``idle_timeout`` seconds without an event; a handler that raises stops it, its event
        unacked. ``None`` as ``queue`` makes an exclusive server-named queue. Raises
        :class:`ConnectionLost` when no node answers or the connection is lost."""
        try:
            connection = await self._connect()
        except CommandNotAnswered as e:
            raise ConnectionLost(f"cannot subscribe to {self.namespace}.events: {e}") from None
        in_handler = False
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            if queue:
                declared = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
            else:
                declared = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await declared.bind(f"{self.namespace}.events", "#")
            async with declared.iterator() as messages:
                while True:
                    try:
                        message = await asyncio.wait_for(messages.__anext__(), idle_timeout)
                    except asyncio.TimeoutError:
                        return
                    try:
                        event = json.loads(message.body)
                    except ValueError:
                        # Not an event of this service; nothing a handler could do with it.
                        await message.reject(requeue=False)
                        continue
                    in_handler = True
                    keep_going = handler(event)
                    if inspect.isawaitable(keep_going):
                        keep_going = await keep_going
                    in_handler = False
                    await message.ack()
                    if keep_going is False:
                        return
        except Exception as e:
            if in_handler or not isinstance(e, _LOST):
                raise
            raise ConnectionLost(f"the connection of the subscription was lost ({describe(e)})") from None
        finally:
            await _close_quietly(connection)

    # Plumbing ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Closes the connection."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await _close_quietly(connection)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _connect(self) -> aio_pika.abc.AbstractConnection:
        """A connection to the first node that answers, from where the last one succeeded."""
        failures = []
        n = len(self._urls)
        for k in range(n):
            i = (self._start + k) % n
            try:
                connection = await aio_pika.connect(
                    self._urls[i], client_properties={"connection_name": self._connection_name}
                )
            except (aiormq.exceptions.AMQPError, OSError, ConnectionError, asyncio.TimeoutError) as e:
                failures.append(f"{redact(self._urls[i])} ({describe(e)})")
                continue
            self._start, self._node = i, i
            return connection
        raise CommandNotAnswered(
            CommandNotAnswered.CONNECTION_LOST, "", "no broker node answered: " + "; ".join(failures)
        )

    async def _open(self) -> aio_pika.abc.AbstractChannel:
        async with self._opening:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await self.close()
            connection = await self._connect()
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                # Direct reply-to: consume the pseudo-queue (no-ack) on the channel that publishes.
                replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
                await replies.consume(self._on_reply, no_ack=True)
            except BaseException:
                await _close_quietly(connection)
                raise
            self._connection, self._channel = connection, channel
            return channel

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        # Only a reply awaited now: a late reply to a timed-out request is dropped.
        waiter = self._waiting.get(message.correlation_id or "")
        if waiter is not None and not waiter.done():
            waiter.set_result(json.loads(message.body))

    async def _drop(self) -> None:
        """The connection is lost: release it, and start the next one with the following node."""
        self._start = (self._node + 1) % len(self._urls)
        await self.close()

    async def _progress(self, kind, run_id, workspace_id, tenant_id, fields, command_id, wait, timeout, trace):
        body = run_body(kind, run_id, workspace_id, tenant_id, fields, command_id)
        return await self._send(body, wait, timeout, trace)

    async def _send(self, body: Dict[str, Any], wait: bool, timeout: float, trace) -> Dict[str, Any]:
        command_id = body["command_id"]
        lost: Optional[BaseException] = None
        # Once, and once more on a fresh connection when the connection was lost: the service
        # applies a command id at most once and replies its first result again.
        for _attempt in range(2):
            try:
                channel = await self._open()
                return await self._attempt(channel, body, wait, timeout, trace)
            except CommandNotAnswered as e:
                if e.reason != CommandNotAnswered.CONNECTION_LOST:
                    raise
                before = f"the connection was lost ({describe(lost)}) and " if lost is not None else ""
                raise CommandNotAnswered(
                    CommandNotAnswered.CONNECTION_LOST,
                    command_id,
                    f"command {command_id} is not answered: {before}{e}; retry with the same command id",
                ) from None
            except _LOST as e:
                await self._drop()
                lost = e
        raise CommandNotAnswered(
            CommandNotAnswered.CONNECTION_LOST,
            command_id,
            f"command {command_id} is not answered: the connection was lost, and again on a fresh connection ({describe(lost)}); retry with the same command id",
        )

    async def _attempt(self, channel, body: Dict[str, Any], wait: bool, timeout: float, trace) -> Dict[str, Any]:
        command_id = body["command_id"]
        correlation_id = new_command_id()
        headers = trace_headers(trace)
        message = aio_pika.Message(
            json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=command_id,
            correlation_id=correlation_id if wait else None,
            reply_to=DIRECT_REPLY_TO if wait else None,
            headers=headers or None,
        )
        loop = asyncio.get_running_loop()
        waiter: "asyncio.Future[Dict[str, Any]]" = loop.create_future()
        if wait:
            self._waiting[correlation_id] = waiter
        try:
            exchange = await channel.get_exchange(f"{self.namespace}.commands", ensure=False)
            try:
                await exchange.publish(message, body["kind"], mandatory=True, timeout=timeout)
            except aiormq.exceptions.PublishError:
                raise CommandNotAnswered("unroutable", command_id, f"command {command_id} is unroutable: is the topology of namespace {self.namespace} declared?") from None
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise CommandNotAnswered("unroutable", command_id, f"command {command_id} is unroutable: exchange {self.namespace}.commands does not exist") from None
            except aiormq.exceptions.DeliveryError:
                raise CommandNotAnswered("nacked", command_id, f"the broker refused command {command_id} (nack)") from None
            except asyncio.TimeoutError:
                raise CommandNotAnswered("timeout", command_id, f"the broker did not confirm command {command_id} within {timeout} s") from None
            if not wait:
                return {"command_id": command_id}
            # The reply, or the channel's end (a lost connection: sent again on a fresh one).
            closed = asyncio.ensure_future(channel.closed())
            try:
                await asyncio.wait({waiter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if not waiter.done():
                if channel.is_closed:
                    raise ConnectionError("the channel closed before the reply came")
                raise CommandNotAnswered("timeout", command_id, f"no reply to command {command_id} within {timeout} s")
            reply = waiter.result()
        finally:
            self._waiting.pop(correlation_id, None)
        return answered(reply)


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    try:
        await connection.close()
    except Exception:
        # Closing a broken connection: nothing left to release.
        pass
