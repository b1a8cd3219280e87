"""The command bodies and reply handling both clients share (the synchronous ``Client`` on pika,
the asyncio ``AsyncClient`` on aio-pika): one definition of what goes on the wire."""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import CommandRefused

#: ``(traceparent, tracestate)`` of a command, either ``None``.
Trace = Tuple[Optional[str], Optional[str]]


def new_command_id() -> str:
    """A fresh command id (UUID)."""
    return str(uuid.uuid4())


def dispatch_body(
    type: str,  # noqa: A002 - the wire name
    workspace_id: int,
    tenant_id: Optional[int],
    context: Mapping[str, Any],
    user_id: Optional[int],
    initiator_name: Optional[str],
    command_id: Optional[str],
) -> Dict[str, Any]:
    """A ``dispatch`` command (topology/schemas/dispatch.json)."""
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
    return body


def update_run_fields(
    status: Optional[str],
    outcome: Optional[str],
    summary_counts: Optional[Mapping[str, int]],
    failures: Optional[List[Mapping[str, Any]]],
) -> Dict[str, Any]:
    """The fields of an ``update_run`` given (the absent ones are left out)."""
    fields: Dict[str, Any] = {}
    if status is not None:
        fields["status"] = status
    if outcome is not None:
        fields["outcome"] = outcome
    if summary_counts is not None:
        fields["summary_counts"] = dict(summary_counts)
    if failures is not None:
        fields["failures"] = [dict(f) for f in failures]
    return fields


def action_fields(reason: Optional[str], user_id: Optional[int], initiator_name: Optional[str]) -> Dict[str, Any]:
    """The fields of an operator action (``cancel_run``, ``retry_run``, ``fail_run``)."""
    fields: Dict[str, Any] = {"reason": reason}
    if user_id is not None:
        fields["user_id"] = user_id
    if initiator_name is not None:
        fields["initiator_name"] = initiator_name
    return fields


def run_body(
    kind: str,
    run_id: int,
    workspace_id: int,
    tenant_id: Optional[int],
    fields: Mapping[str, Any],
    command_id: Optional[str],
) -> Dict[str, Any]:
    """A command on run ``run_id`` (progress or operator action) with its ``fields``."""
    body: Dict[str, Any] = {
        "kind": kind,
        "command_id": command_id or new_command_id(),
        "run_id": run_id,
        "workspace_id": workspace_id,
        # Always present: null marks a workspace-scoped run.
        "tenant_id": tenant_id,
    }
    body.update(fields)
    return body


def trace_headers(trace: Trace) -> Dict[str, str]:
    """The AMQP headers carrying the trace context (``tracestate`` only with a ``traceparent``)."""
    traceparent, tracestate = trace
    headers: Dict[str, str] = {}
    if traceparent is not None:
        headers["traceparent"] = traceparent
        if tracestate is not None:
            headers["tracestate"] = tracestate
    return headers


def answered(reply: Dict[str, Any]) -> Dict[str, Any]:
    """``reply``, unless it is a refusal: then raises :class:`CommandRefused`. A refusal's
    ``error`` is ``{code, message}``; an action result's is its text (not a refusal)."""
    if isinstance(reply.get("error"), dict):
        error = reply["error"]
        raise CommandRefused(str(error.get("code", "unknown")), str(error.get("message", "")))
    return reply
