"""Python client for the operation-runs service (RabbitMQ, pika).

    from operation_runs_client import Client, CommandRefused, identity_hash
    from operation_runs_client import Worker, RunHandle   # an executor of jobs
"""

from .client import Client, new_traceparent
from .errors import CommandNotAnswered, CommandRefused, ConnectionLost, OperationRunsError
from .identity import IDENTITY_KEYS, IdentityError, canonical_identity, identity_hash
from .worker import RunHandle, Worker

__all__ = [
    "Client",
    "CommandNotAnswered",
    "CommandRefused",
    "ConnectionLost",
    "OperationRunsError",
    "RunHandle",
    "Worker",
    "IDENTITY_KEYS",
    "IdentityError",
    "canonical_identity",
    "identity_hash",
    "new_traceparent",
]
