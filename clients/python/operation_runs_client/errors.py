"""The client's exceptions."""

from __future__ import annotations


class OperationRunsError(Exception):
    """Base class of this client's errors."""


class CommandRefused(OperationRunsError):
    """The service refused the command; ``code`` is its reason code (docs/contract.md, "Dead letters and
    reason codes"), e.g. ``missing_identity_key``. Retrying the same command cannot succeed."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CommandNotAnswered(OperationRunsError):
    """No verdict: the broker could not route the command (``reason == "unroutable"``: the
    topology is not declared), refused it (``"nacked"``), no reply came in time (``"timeout"``),
    or the connection was lost and the one resend on a fresh connection failed too, or no node
    of the URL list answered (``"connection_lost"``). The command may still be applied: retry
    with the same ``command_id``."""

    UNROUTABLE = "unroutable"
    NACKED = "nacked"
    TIMEOUT = "timeout"
    CONNECTION_LOST = "connection_lost"

    def __init__(self, reason: str, command_id: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.command_id = command_id


class ConnectionLost(OperationRunsError):
    """A subscription ended without its handler asking: the connection was lost and could not
    be resumed (no node of the URL list answered, it was lost again before an event came, or the
    queue was the exclusive one of the call, which went with the connection). Events not acked
    are delivered again to a named queue's next subscriber."""
