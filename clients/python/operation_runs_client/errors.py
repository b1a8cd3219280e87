"""The client's exceptions."""

from __future__ import annotations


class OperationRunsError(Exception):
    """Base class of this client's errors."""


class CommandRefused(OperationRunsError):
    """The service refused the command; ``code`` is its reason code (README "Dead letters and
    reason codes"), e.g. ``missing_identity_key``. Retrying the same command cannot succeed."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CommandNotAnswered(OperationRunsError):
    """No verdict: the broker could not route the command (``reason == "unroutable"``: the
    topology is not declared), refused it (``"nacked"``), or no reply came in time
    (``"timeout"``). The command may still be applied: retry with the same ``command_id``."""

    def __init__(self, reason: str, command_id: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.command_id = command_id
