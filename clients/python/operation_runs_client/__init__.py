"""Python client for the operation-runs service (RabbitMQ, pika).

    from operation_runs_client import Client, CommandRefused, identity_hash
"""

from .client import Client, new_traceparent
from .errors import CommandNotAnswered, CommandRefused, ConnectionLost, OperationRunsError
from .identity import IDENTITY_KEYS, IdentityError, canonical_identity, identity_hash

__all__ = [
    "Client",
    "CommandNotAnswered",
    "CommandRefused",
    "ConnectionLost",
    "OperationRunsError",
    "IDENTITY_KEYS",
    "IdentityError",
    "canonical_identity",
    "identity_hash",
    "new_traceparent",
]
