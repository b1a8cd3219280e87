"""The run identity hash, as the service computes it (docs/concepts.md, "Operation types and the identity rule").

run_identity_hash = lowercase hex SHA-256 of the RFC 8785 (JCS) canonical JSON of
``{"type": T, "workspace_id": W, "tenant_id": T_or_null, "identity": {key: context[key]}}``
with ``scheduled_for`` normalised to its UTC minute. Checked against every vector of
``tests/vectors/run_identity_hash.json`` by ``tests/test_identity.py``. The JCS implementation
follows ``scripts/identity_vectors.py`` (the repository's independent cross-check).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from decimal import Decimal
from typing import Any, Dict, List, Optional

#: The catalog's identity keys per type (``oprun catalog --format json`` prints the registry).
IDENTITY_KEYS: Dict[str, List[str]] = {
    "inventory.sync": ["selection"],
    "entra_group.sync": ["selection_key"],
    "directory_role_definitions.sync": ["provider_connection_id"],
    "policy.sync": ["policy_id"],
    "backup_schedule.run_now": ["backup_schedule_id"],
    "backup_schedule.retry": ["backup_schedule_id", "backup_schedule_run_id"],
    "backup_schedule.scheduled": ["backup_schedule_id", "scheduled_for"],
    "backup_set.add_policies": ["backup_set_id", "selection"],
    "restore.execute": ["restore_run_id"],
}

_I64_MAX = 2**63 - 1
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))$",
    re.ASCII,
)


class IdentityError(ValueError):
    """A dispatch whose identity cannot be computed; ``code`` is the service's reason code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def identity_hash(command: Dict[str, Any]) -> str:
    """The ``run_identity_hash`` of a dispatch command (a dict as sent on the wire)."""
    return hashlib.sha256(canonical_identity(command).encode("utf-8")).hexdigest()


def canonical_identity(command: Dict[str, Any]) -> str:
    """The canonical JSON text that is hashed (``oprun identity-hash --explain`` prints it too)."""
    run_type = command.get("type")
    if run_type not in IDENTITY_KEYS:
        raise IdentityError("unknown_type", f"unknown operation type {run_type!r}")
    context = command.get("context")
    if not isinstance(context, dict):
        raise IdentityError("invalid_field", "context must be an object")
    identity = {}
    for key in IDENTITY_KEYS[run_type]:
        value = context.get(key)
        if value is None:
            raise IdentityError("missing_identity_key", f"context.{key} is required by type {run_type}")
        if key == "scheduled_for":
            value = _minute(value)
        else:
            value = _normalised_id(value)
        identity[key] = value
    document = {
        "type": run_type,
        "workspace_id": _scope_id(command, "workspace_id", True),
        "tenant_id": _scope_id(command, "tenant_id", False),
        "identity": identity,
    }
    return jcs(document)


#: Largest magnitude of a number with a fraction or exponent that still hashes as an integer.
_MAX_SAFE_INTEGER = 2**53 - 1


def _normalised_id(value: Any) -> Any:
    """A top-level identity integer as its decimal string (docs/concepts.md, "Integer ids"): an integer
    literal of any size (Python's ``json`` keeps every digit), or a number with a fraction or
    exponent (``5.0``, ``5e0``) whose value is an integer within ±(2^53−1); ``-0`` is ``"0"``.
    Anything else (``1.5``, ``1e21``, strings, objects) is unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
        return str(int(value))
    return value


def _scope_id(command: Dict[str, Any], name: str, required: bool) -> Optional[int]:
    value = command.get(name)
    if value is None:
        if required:
            raise IdentityError("invalid_field", f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _I64_MAX:
        raise IdentityError("invalid_field", f"{name} must be a positive integer id, got {value!r}")
    return value


def _minute(value: Any) -> str:
    """An RFC 3339 timestamp to its UTC minute, ``YYYY-MM-DDTHH:MM:00Z``."""
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if not m:
        raise IdentityError("invalid_identity_value", f"context.scheduled_for must be an RFC 3339 timestamp, got {value!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    offset = dt.timedelta(0)
    if not m.group(8):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise IdentityError("invalid_identity_value", f"bad offset in {value!r}")
        offset = dt.timedelta(hours=oh, minutes=om) * (-1 if m.group(9) == "-" else 1)
    if second > 60:
        raise IdentityError("invalid_identity_value", f"bad seconds in {value!r}")
    try:
        utc = dt.datetime(year, month, day, hour, minute) - offset
    except (ValueError, OverflowError) as e:
        raise IdentityError("invalid_identity_value", f"not a valid timestamp: {value!r}: {e}") from None
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:00Z"


# RFC 8785 (JCS) -------------------------------------------------------------------------------


def _es_number(x: float) -> str:
    """ECMAScript Number.prototype.toString of a double."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + _es_number(-x)
    _, digits, exponent = Decimal(repr(x)).as_tuple()
    s = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(s)
    k = len(s)
    n = exponent + k
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + s
    e = n - 1
    mantissa = s if k == 1 else s[0] + "." + s[1:]
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError("lone surrogates cannot be encoded as UTF-8")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jcs(value: Any) -> str:
    """RFC 8785 canonical JSON of a parsed JSON value (numbers as IEEE 754 doubles)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _es_number(float(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(_string(k) + ":" + jcs(v) for k, v in items) + "}"
    raise TypeError(f"not a JSON value: {value!r}")
