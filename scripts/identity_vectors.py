#!/usr/bin/env python3
"""Generate and cross-check the run identity hash test vectors.

This is an independent implementation (Python standard library only) of

    run_identity_hash = lowercase hex SHA-256 of the RFC 8785 (JCS) canonical JSON of
        {"type": T, "workspace_id": W, "tenant_id": T-or-null,
         "identity": {each identity key of the type: its value from context}}

with each identity value first put in its normal form: `scheduled_for` becomes its UTC minute
(`YYYY-MM-DDTHH:MM:00Z`) and an integer becomes its decimal string (see `normalise_identity_value`).
Like the service, it refuses a body with a repeated object key or a NUL character in any string.

For every vector below it computes the canonical JSON and the hash, checks them against
`oprun identity-hash --explain` (the Rust implementation), checks the vectors that must share
(or must not share) a hash, and writes tests/vectors/run_identity_hash.json.

Usage (from the repository root):

    cargo build && python3 scripts/identity_vectors.py            # check and write the file
    python3 scripts/identity_vectors.py --check                   # check; fail if the file differs
    python3 scripts/identity_vectors.py --no-oprun                # no hash cross-check (the catalog still comes from oprun)
    OPRUN_BIN=/path/to/oprun python3 scripts/identity_vectors.py  # another binary

Exit status: 0 when everything agrees, 1 on any disagreement (the file is still written, from the
Python results, so the difference can be inspected), 2 on a usage or environment error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "vectors" / "run_identity_hash.json"

# --------------------------------------------------------------------------------------------
# The identity rule
# --------------------------------------------------------------------------------------------

def _load_catalog() -> dict[str, list[str]]:
    """The identity keys per type, from the registry itself (`oprun catalog --format json`), so
    this script holds no copy of the catalog that could drift. The binary is $OPRUN_BIN, else
    target/debug/oprun (`cargo build` first)."""
    binary = os.environ.get("OPRUN_BIN", str(ROOT / "target" / "debug" / "oprun"))
    try:
        out = subprocess.run([binary, "catalog", "--format", "json"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"error: cannot read the catalog from `{binary} catalog --format json` ({e}); run `cargo build` or set OPRUN_BIN", file=sys.stderr)
        sys.exit(2)
    return {t["type"]: t["identity_keys"] for t in json.loads(out)["types"]}


IDENTITY_KEYS = _load_catalog()

RULE = (
    "run_identity_hash = lowercase hex SHA-256 of the UTF-8 bytes of the RFC 8785 (JCS) canonical "
    'JSON of {"type": <command type>, "workspace_id": <command workspace_id>, "tenant_id": '
    '<command tenant_id, null when absent or null>, "identity": {<each identity key of the type>: '
    "<its value from context>}}. Identity keys per type: "
    + "; ".join(f"{t}: {', '.join(keys)}" for t, keys in IDENTITY_KEYS.items())
    + ". Other context keys are ignored. An identity key that is missing or null is an error "
    "(missing_identity_key). workspace_id (required) and tenant_id are positive integers written without fraction or exponent. "
    "Each identity value is put in its normal form before hashing: scheduled_for must be an RFC 3339 timestamp string and is replaced by "
    "its UTC minute, formatted YYYY-MM-DDTHH:MM:00Z (seconds and fractions dropped, offset applied); "
    "anything else is an error (invalid_identity_value). Every other identity value that is a JSON number is replaced by its "
    "decimal string when it is an integer: an integer literal (no fraction, no exponent; any size, every digit kept; -0 -> \"0\") "
    "becomes its digits (77 -> \"77\", -5 -> \"-5\", 123456789012345678901234567890 -> \"123456789012345678901234567890\"), "
    "and a number with a fraction or exponent whose value is an integer of magnitude at most 2^53-1 becomes the same "
    "(1.0 -> \"1\", 7.7e1 -> \"77\", -0.0 -> \"0\"); other numbers (1.5, 1e21) stay numbers. Strings are unchanged, so \"77\" "
    "equals 77 while \"077\", \"+77\" and \" 77\" do not. Only the top-level identity values are normalised: numbers inside "
    "an object or array value (a selection) keep JCS number rules. JCS: object keys sorted by "
    "UTF-16 code units, no whitespace, every number is an IEEE 754 double printed as ECMAScript "
    "Number.prototype.toString prints it (so 1.0 -> 1, 1e3 -> 1000, -0.0 -> 0, 1e21 -> 1e+21, "
    "integers above 2^53 are rounded to the nearest double), strings escape only '\"', '\\\\' and "
    "U+0001..U+001F (as \\b \\t \\n \\f \\r or \\u00xx with lowercase hex), everything else as UTF-8. "
    "A command with a repeated object key (duplicate_key) or a U+0000 in any string (invalid_string) is refused."
)

DESCRIPTION = (
    "Test vectors for the operation-runs run identity hash, so that producers in other languages "
    "can check their implementation. Each vector gives a dispatch command (as sent to "
    "<namespace>.commands), the canonical JSON text that is hashed, and the expected "
    "run_identity_hash. Number literals in 'command' are written exactly as a producer might send "
    "them (1.0, 1e3, -0.0, ...); parse them as IEEE 754 doubles. Where present, 'same_hash_as' "
    "names an earlier vector that must give the same hash, and 'note' says what the vector covers. "
    "Generated and cross-checked against `oprun identity-hash --explain` by "
    "scripts/identity_vectors.py; do not edit by hand."
)


class IdentityError(ValueError):
    """A dispatch whose identity cannot be computed."""


RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))$",
    re.ASCII,
)


def normalise_scheduled_for(value: object) -> str:
    """An RFC 3339 timestamp to its UTC minute, `YYYY-MM-DDTHH:MM:00Z`."""
    if not isinstance(value, str):
        raise IdentityError(f"scheduled_for must be an RFC 3339 string, got {value!r}")
    m = RFC3339.match(value)
    if not m:
        raise IdentityError(f"scheduled_for is not an RFC 3339 timestamp: {value!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    if m.group(8):
        offset = dt.timedelta(0)
    else:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise IdentityError(f"bad offset in {value!r}")
        offset = dt.timedelta(hours=oh, minutes=om)
        if m.group(9) == "-":
            offset = -offset
    # Seconds (0..60, 60 being a leap second) and fractions are dropped: they cannot move the minute.
    if second > 60:
        raise IdentityError(f"bad seconds in {value!r}")
    try:
        local = dt.datetime(year, month, day, hour, minute)  # validates the calendar fields
        utc = local - offset
    except (ValueError, OverflowError) as e:
        raise IdentityError(f"scheduled_for is not a valid timestamp: {value!r}: {e}") from None
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:00Z"


INTEGER_LITERAL = re.compile(r"^-?[0-9]+$", re.ASCII)
I64_MAX = 2**63 - 1


def scope_id(command: dict, name: str, required: bool):
    """workspace_id / tenant_id: a positive integer literal (1.0 and 1e0 are refused), or null."""
    value = command.get(name)
    if value is None:
        if required:
            raise IdentityError(f"{name} is required")
        return None
    if not isinstance(value, Num) or not INTEGER_LITERAL.match(value.text) or not 0 < int(value.text) <= I64_MAX:
        raise IdentityError(f"{name} must be a positive integer id, got {value!r}")
    return value


MAX_SAFE_INTEGER = 2**53 - 1


def normalise_identity_value(value):
    """A top-level identity value (other than scheduled_for) in its normal form: an integer as its
    decimal string. Numbers inside objects and arrays, strings and literals are unchanged."""
    if not isinstance(value, Num):
        return value
    if INTEGER_LITERAL.match(value.text):
        return str(int(value.text))  # exact at any size; "-0" -> "0"
    x = float(value)
    if x.is_integer() and abs(x) <= MAX_SAFE_INTEGER:
        return str(int(x))
    return value


def identity_document(command: dict) -> dict:
    """The document that is canonicalised and hashed (numbers still as parsed Num)."""
    run_type = command["type"]
    if run_type not in IDENTITY_KEYS:
        raise IdentityError(f"unknown type {run_type!r}")
    context = command["context"]
    identity = {}
    for key in IDENTITY_KEYS[run_type]:
        value = context.get(key)
        if value is None:
            raise IdentityError(f"context.{key} is required by type {run_type}")
        identity[key] = normalise_scheduled_for(value) if key == "scheduled_for" else normalise_identity_value(value)
    return {
        "type": run_type,
        "workspace_id": scope_id(command, "workspace_id", True),
        "tenant_id": scope_id(command, "tenant_id", False),
        "identity": identity,
    }


def identity_hash(command: dict) -> tuple[str, str]:
    """(canonical JSON, lowercase hex SHA-256 of it)."""
    canonical = jcs(identity_document(command))
    return canonical, hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# RFC 8785 (JCS)
# --------------------------------------------------------------------------------------------


class Num:
    """A JSON number literal, kept as written (so the vectors file shows `1.0`, `1e3`, `-0.0`)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __float__(self) -> float:
        return float(self.text)  # correctly rounded to the nearest double

    def __repr__(self) -> str:
        return f"Num({self.text})"


def loads(text: str):
    """JSON parsing that keeps number literals as Num and, as the service does, refuses a repeated
    key in any object and U+0000 in any string."""
    value = json.loads(text, parse_int=Num, parse_float=Num, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    _refuse_nul(value)
    return value


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise IdentityError(f"duplicate_key: key {k[:64]!r} appears more than once in one object")
        out[k] = v
    return out


def _refuse_nul(value) -> None:
    if isinstance(value, str) and "\0" in value:
        raise IdentityError("invalid_string: a string contains U+0000")
    if isinstance(value, list):
        for v in value:
            _refuse_nul(v)
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_nul(k)
            _refuse_nul(v)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def es_number(x: float) -> str:
    """ECMAScript Number.prototype.toString of a double (ECMA-262 Number::toString, radix 10)."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"  # both 0 and -0
    if x < 0:
        return "-" + es_number(-x)
    # repr() gives the shortest digit string that round-trips (the `k as small as possible` of
    # ECMA-262); Decimal splits it into digits and exponent.
    sign, digits, exponent = Decimal(repr(x)).as_tuple()
    assert sign == 0
    s = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(s)
    k = len(s)
    n = exponent + k  # x = 0.s * 10^n
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + s
    e = n - 1
    mantissa = s if k == 1 else s[0] + "." + s[1:]
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def jcs_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError("lone surrogates cannot be encoded as UTF-8")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf16_key(s: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the sequences of UTF-16 code units do.
    return s.encode("utf-16-be")


def jcs(value) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Num):
        return es_number(float(value))
    if isinstance(value, (int, float)):
        return es_number(float(value))
    if isinstance(value, str):
        return jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(jcs_string(k) + ":" + jcs(v) for k, v in items) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def self_test() -> None:
    """RFC 8785's own examples, so this implementation is checked before it is trusted."""
    # Section 3.2.2.
    sample = loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert jcs(sample) == expected, jcs(sample)
    # Section 3.2.3: sorting by UTF-16 code units.
    sorting = loads(
        '{"\\u20ac":"Euro Sign","\\r":"Carriage Return","\\ufb33":"Hebrew Letter Dalet With Dagesh",'
        '"1":"One","\\ud83d\\ude00":"Emoji: Grinning Face","\\u0080":"Control",'
        '"\\u00f6":"Latin Small Letter O With Diaeresis"}'
    )
    order = [k for k in loads(jcs(sorting))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"], order
    # Appendix B: IEEE 754 bit patterns and their ECMAScript form.
    appendix_b = [
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ]
    for bits, text in appendix_b:
        x = struct.unpack(">d", bytes.fromhex(bits))[0]
        assert es_number(x) == text, (bits, es_number(x), text)
    for text, out in [("1.0", "1"), ("1e3", "1000"), ("-0.0", "0"), ("1e21", "1e+21"), ("1e20", "100000000000000000000"),
                      ("0.1", "0.1"), ("1e-6", "0.000001"), ("1e-7", "1e-7"), ("-1.5e-9", "-1.5e-9"),
                      ("12345678901234567890", "12345678901234567000"), ("9007199254740993", "9007199254740992")]:
        assert es_number(float(text)) == out, (text, es_number(float(text)), out)
    for s, out in [("a\u007fb", '"a\u007fb"'), ("\u2028", '"\u2028"'), ("/", '"/"'), ("\u0000\u001f", '"\\u0000\\u001f"')]:
        assert jcs_string(s) == out, (s, jcs_string(s), out)
    assert normalise_scheduled_for("2026-03-01T11:00:59.999+01:00") == "2026-03-01T10:00:00Z"
    for text, out in [("77", "77"), ("-5", "-5"), ("-0", "0"), ("1.0", "1"), ("7.7e1", "77"), ("-0.0", "0"),
                      ("123456789012345678901234567890", "123456789012345678901234567890"),
                      ("9007199254740991.0", "9007199254740991")]:
        assert normalise_identity_value(Num(text)) == out, (text, normalise_identity_value(Num(text)), out)
    for text in ["1.5", "1e21", "9007199254740992.0"]:
        assert isinstance(normalise_identity_value(Num(text)), Num), text
    assert normalise_identity_value("077") == "077"
    for bad in ['{"a": 1, "a": 2}', '{"x": [{"b": 1, "\\u0062": 2}]}', '{"a": "x\\u0000"}', '{"k\\u0000": 1}']:
        try:
            loads(bad)
        except IdentityError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    assert normalise_scheduled_for("2026-03-01T00:10:00+02:00") == "2026-02-28T22:10:00Z"
    assert normalise_scheduled_for("2024-02-29T23:45:10-05:30") == "2024-03-01T05:15:00Z"
    for bad in ["2026-03-01 10:00:05Z", "2026-03-01T10:00:05", "2026-02-30T10:00:05Z", "\uff12026-03-01T10:00:05Z"]:
        try:
            normalise_scheduled_for(bad)
        except IdentityError:
            continue
        raise AssertionError(f"accepted {bad!r}")


# --------------------------------------------------------------------------------------------
# Writing JSON with the literals as given
# --------------------------------------------------------------------------------------------


class Raw:
    """JSON text written to the file verbatim (a command exactly as a producer would send it)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def dumps_compact(value) -> str:
    if isinstance(value, (Num, Raw)):
        return value.text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(dumps_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(json.dumps(k, ensure_ascii=False) + ": " + dumps_compact(v) for k, v in value.items()) + "}"
    raise TypeError(repr(value))


def dumps_document(doc: dict) -> str:
    lines = ["{"]
    lines.append(f'  "description": {json.dumps(doc["description"], ensure_ascii=False)},')
    lines.append(f'  "rule": {json.dumps(doc["rule"], ensure_ascii=False)},')
    lines.append('  "vectors": [')
    for i, v in enumerate(doc["vectors"]):
        fields = [f'      "{k}": {dumps_compact(val)}' for k, val in v.items()]
        lines.append("    {\n" + ",\n".join(fields) + "\n    }" + ("," if i + 1 < len(doc["vectors"]) else ""))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The vectors. Commands are written as JSON text so that number literals and escapes are exact.
# --------------------------------------------------------------------------------------------

# (name, command JSON text, same_hash_as or None, note)
VECTORS: list[tuple[str, str, str | None, str]] = [
    (
        "policy_sync_tenant_scoped",
        r'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 2, "type": "policy.sync", "context": {"policy_id": "p1"}}',
        None,
        "The simplest case: one string identity key, tenant-scoped.",
    ),
    (
        "policy_sync_extra_context_keys_ignored",
        r'{"kind": "dispatch", "command_id": "c-42", "user_id": 9, "initiator_name": "Ada", "workspace_id": 1, "tenant_id": 2, "type": "policy.sync", "context": {"force": true, "policy_id": "p1", "reason": "manual", "requested_at": "2026-01-02T03:04:05Z"}}',
        "policy_sync_tenant_scoped",
        "Non-identity context keys and command fields (command_id, user_id, initiator_name) do not change the hash.",
    ),
    (
        "policy_sync_workspace_scoped_null_tenant",
        r'{"kind": "dispatch", "workspace_id": 1, "tenant_id": null, "type": "policy.sync", "context": {"policy_id": "p1"}}',
        None,
        "Workspace-scoped: tenant_id null is hashed as null, so the hash differs from the tenant-scoped run.",
    ),
    (
        "policy_sync_workspace_scoped_absent_tenant",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "policy.sync", "context": {"policy_id": "p1"}}',
        "policy_sync_workspace_scoped_null_tenant",
        "An absent tenant_id is the same as null.",
    ),
    (
        "policy_sync_other_workspace",
        r'{"kind": "dispatch", "workspace_id": 3, "tenant_id": 2, "type": "policy.sync", "context": {"policy_id": "p1"}}',
        None,
        "The workspace is part of the identity.",
    ),
    (
        "inventory_sync_nested_selection",
        r'{"kind": "dispatch", "workspace_id": 10, "tenant_id": 20, "type": "inventory.sync", "context": {"selection": {"scope": "all", "filters": {"platform": ["windows", "macos"], "since": null, "enabled": true}, "batch": 100}, "items": 50}}',
        None,
        "A nested object identity value; keys are sorted at every level. 'items' is not an identity key.",
    ),
    (
        "inventory_sync_nested_selection_reordered",
        r'{"type": "inventory.sync", "context": {"items": 7, "selection": {"batch": 100.0, "filters": {"enabled": true, "since": null, "platform": ["windows", "macos"]}, "scope": "all"}}, "tenant_id": 20, "workspace_id": 10, "kind": "dispatch"}',
        "inventory_sync_nested_selection",
        "The same selection with every key order changed and 100 written as 100.0: same hash. Array order is kept.",
    ),
    (
        "inventory_sync_array_order_matters",
        r'{"kind": "dispatch", "workspace_id": 10, "tenant_id": 20, "type": "inventory.sync", "context": {"selection": {"scope": "all", "filters": {"platform": ["macos", "windows"], "since": null, "enabled": true}, "batch": 100}}}',
        None,
        "Arrays are not sorted: swapping two elements changes the hash.",
    ),
    (
        "inventory_sync_numbers",
        r'{"kind": "dispatch", "workspace_id": 10, "tenant_id": 20, "type": "inventory.sync", "context": {"selection": [1.0, 1e3, -0.0, 0, 1e21, 1e20, 0.1, 0.30000000000000004, -1.5, 1E-7, 0.000001, 333333333.33333329, 9007199254740991, 9007199254740993, 12345678901234567890, 123456789012345678901234567890, 5e-324, 1.7976931348623157e308, 2.50E+2]}}',
        None,
        "Numbers are doubles printed the ECMAScript way: 1.0->1, 1e3->1000, -0.0->0, 1e21->1e+21, 1e20 in full, 1E-7->1e-7, 0.000001 in full, integers above 2^53 rounded to the nearest double.",
    ),
    (
        "inventory_sync_scalars_and_empty_containers",
        r'{"kind": "dispatch", "workspace_id": 10, "tenant_id": 20, "type": "inventory.sync", "context": {"selection": {"all": true, "none": false, "nothing": null, "empty_object": {}, "empty_array": [], "empty_string": "", "deep": [[[{"z": 1, "a": [{}]}]]]}}}',
        None,
        "Literals, empty containers and nesting inside arrays.",
    ),
    (
        "inventory_sync_string_selection",
        r'{"kind": "dispatch", "workspace_id": 10, "type": "inventory.sync", "context": {"selection": "all"}}',
        None,
        "An identity value may be any JSON value, here a string; workspace-scoped.",
    ),
    (
        "entra_group_sync_unicode",
        r'{"kind": "dispatch", "workspace_id": 5, "tenant_id": 6, "type": "entra_group.sync", "context": {"selection_key": "Gruppe Ärzte – 東京 🚀 ñandú Ωμέγα"}}',
        None,
        "Non-ASCII letters and an emoji are written as UTF-8, not escaped.",
    ),
    (
        "entra_group_sync_unicode_escaped_input",
        r'{"kind": "dispatch", "workspace_id": 5, "tenant_id": 6, "type": "entra_group.sync", "context": {"selection_key": "Gruppe \u00c4rzte \u2013 \u6771\u4eac \ud83d\ude80 \u00f1and\u00fa \u03a9\u03bc\u03ad\u03b3\u03b1"}}',
        "entra_group_sync_unicode",
        "The same string sent with \\u escapes (the emoji as a surrogate pair): same canonical text, same hash.",
    ),
    (
        "directory_role_definitions_sync_escapes",
        r'{"kind": "dispatch", "workspace_id": 5, "tenant_id": 6, "type": "directory_role_definitions.sync", "context": {"provider_connection_id": "line1\nline2\ttab\r\u0007bell\u0001soh\u001f \"quoted\" back\\slash \/solidus \u007f del \u2028 ls \b\f"}}',
        None,
        "String escapes: only \", \\ and U+0001..U+001F are escaped (\\b \\t \\n \\f \\r, else \\u00xx lowercase); / and U+007F and U+2028 are not. (U+0000 is refused: invalid_string.)",
    ),
    (
        "backup_set_add_policies_unicode_keys",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_set.add_policies", "context": {"backup_set_id": 31, "selection": {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis", "bell\u0007key": "control char in a key", "new\nline": "newline in a key", "Z": 1, "a": 2, "": "empty key"}}}',
        None,
        "Keys sorted by UTF-16 code units (the RFC 8785 example: the emoji U+1F600 sorts before U+FB33), keys with control characters escaped.",
    ),
    (
        "backup_set_add_policies_policy_list",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_set.add_policies", "context": {"backup_set_id": "bs-1", "selection": {"policy_ids": ["pol-3", "pol-1", "pol-2"], "include_assignments": true}, "dry_run": false}}',
        None,
        "Two identity keys, one an array of ids.",
    ),
    (
        "backup_schedule_run_now",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": 42}}',
        None,
        "Integer identity value: hashed as its decimal string \"42\".",
    ),
    (
        "backup_schedule_run_now_string_id",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": "42"}}',
        "backup_schedule_run_now",
        "The string \"42\" is the integer 42 (an integer id and its decimal string are one identity).",
    ),
    (
        "backup_schedule_retry",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.retry", "context": {"backup_schedule_run_id": 1001, "backup_schedule_id": 42, "attempt": 2}}',
        None,
        "Two identity keys; 'attempt' is ignored.",
    ),
    (
        "backup_schedule_scheduled_utc_seconds",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 42, "scheduled_for": "2026-03-01T10:00:05Z"}}',
        None,
        "scheduled_for is normalised to its UTC minute: 10:00:05Z -> 10:00:00Z.",
    ),
    (
        "backup_schedule_scheduled_offset_fraction_same_minute",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 42, "scheduled_for": "2026-03-01T12:00:59.999+02:00"}}',
        "backup_schedule_scheduled_utc_seconds",
        "Fractional seconds and a +02:00 offset: 12:00:59.999+02:00 is 10:00:59.999Z, the same minute.",
    ),
    (
        "backup_schedule_scheduled_negative_half_hour_offset_same_minute",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 42, "scheduled_for": "2026-03-01T04:30:00.000001-05:30", "note": "same slot"}}',
        "backup_schedule_scheduled_utc_seconds",
        "A -05:30 offset: 04:30:00.000001-05:30 is 10:00:00.000001Z, the same minute.",
    ),
    (
        "backup_schedule_scheduled_next_minute",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 42, "scheduled_for": "2026-03-01T10:01:00Z"}}',
        None,
        "The next minute is another identity.",
    ),
    (
        "backup_schedule_scheduled_offset_crosses_midnight",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 42, "scheduled_for": "2026-03-01T01:15:30+02:00"}}',
        None,
        "An offset that moves the UTC date back a day: 2026-03-01T01:15:30+02:00 -> 2026-02-28T23:15:00Z.",
    ),
    (
        "backup_schedule_scheduled_leap_day_negative_offset",
        r'{"kind": "dispatch", "workspace_id": 7, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 42, "scheduled_for": "2024-02-29T23:45:10.5-05:30"}}',
        None,
        "A -05:30 offset that moves the UTC date forward past 29 February: -> 2024-03-01T05:15:00Z; workspace-scoped.",
    ),
    (
        "backup_schedule_scheduled_lowercase_t_z",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 42, "scheduled_for": "2026-03-01t10:00:30z"}}',
        "backup_schedule_scheduled_utc_seconds",
        "RFC 3339 allows lowercase t and z.",
    ),
    (
        "restore_execute",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": 5}}',
        None,
        "Matches the unit test in src/domain/identity.rs.",
    ),
    (
        "restore_execute_extra_context",
        r'{"kind": "dispatch", "workspace_id": 1, "tenant_id": null, "type": "restore.execute", "context": {"restore_run_id": 5.0, "target": {"tenant": 9}, "items": ["a", "b"], "scheduled_for": "2026-01-01T00:00:00Z", "selection": "ignored"}}',
        "restore_execute",
        "Extra keys (including keys that are identity keys of other types) are ignored; 5.0 is 5 (both hash as \"5\").",
    ),
    (
        "backup_schedule_run_now_77",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": 77}}',
        None,
        "An integer id (the issue's case: PHP form input sends \"77\").",
    ),
    (
        "backup_schedule_run_now_77_string",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": "77"}}',
        "backup_schedule_run_now_77",
        "Its decimal string: the same identity.",
    ),
    (
        "backup_schedule_run_now_77_fraction",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": 77.0}}',
        "backup_schedule_run_now_77",
        "77.0 (and 7.7e1) is an integer within 2^53: the same identity.",
    ),
    (
        "backup_schedule_run_now_077_string",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": "077"}}',
        None,
        "\"077\" is not a canonical decimal integer: a string unlike 77 (so are \"+77\" and \" 77\").",
    ),
    (
        "backup_schedule_run_now_negative",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": -5}}',
        None,
        "A negative integer is its decimal string with the sign, \"-5\".",
    ),
    (
        "backup_schedule_run_now_negative_string",
        r'{"kind": "dispatch", "workspace_id": 7, "tenant_id": 8, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": "-5"}}',
        "backup_schedule_run_now_negative",
        "\"-5\" equals -5.",
    ),
    (
        "restore_execute_2_pow_53_plus_1",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": 9007199254740993}}',
        None,
        "2^53+1: a double would round it to 9007199254740992; as an integer it keeps every digit, \"9007199254740993\".",
    ),
    (
        "restore_execute_2_pow_53_plus_1_string",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": "9007199254740993"}}',
        "restore_execute_2_pow_53_plus_1",
        "Its decimal string: the same identity.",
    ),
    (
        "restore_execute_2_pow_53",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": 9007199254740992}}',
        None,
        "2^53 is another id than 2^53+1, although the two are the same double.",
    ),
    (
        "restore_execute_20_digits",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": 18446744073709551615}}',
        None,
        "A 20-digit integer (2^64-1) keeps every digit.",
    ),
    (
        "restore_execute_20_digits_string",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": "18446744073709551615"}}',
        "restore_execute_20_digits",
        "Its decimal string: the same identity.",
    ),
    (
        "restore_execute_30_digits",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": 123456789012345678901234567890}}',
        None,
        "An integer beyond 64 bits keeps every digit too (read from the text; a JSON parser that turns it into a double cannot reproduce this vector: send such ids as strings).",
    ),
    (
        "restore_execute_30_digits_string",
        r'{"kind": "dispatch", "workspace_id": 1, "type": "restore.execute", "context": {"restore_run_id": "123456789012345678901234567890"}}',
        "restore_execute_30_digits",
        "Its decimal string: the same identity.",
    ),
    (
        "policy_sync_one_point_zero",
        r'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 2, "type": "policy.sync", "context": {"policy_id": 1.0}}',
        None,
        "1.0 is the integer 1 (JCS would print 1), hashed as \"1\".",
    ),
    (
        "policy_sync_one_string",
        r'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 2, "type": "policy.sync", "context": {"policy_id": "1"}}',
        "policy_sync_one_point_zero",
        "\"1\" equals 1.0 (and 1).",
    ),
    (
        "policy_sync_fraction_stays_a_number",
        r'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 2, "type": "policy.sync", "context": {"policy_id": 1.50}}',
        None,
        "A number that is not an integer keeps JCS rules: 1.50 -> 1.5, unlike the string \"1.5\".",
    ),
    (
        "policy_sync_large_double_stays_a_number",
        r'{"kind": "dispatch", "workspace_id": 1, "tenant_id": 2, "type": "policy.sync", "context": {"policy_id": 1e21}}',
        None,
        "A number with an exponent beyond 2^53-1 is not taken as an exact integer: JCS prints 1e+21.",
    ),
    (
        "inventory_sync_nested_numbers_not_normalised",
        r'{"kind": "dispatch", "workspace_id": 10, "tenant_id": 20, "type": "inventory.sync", "context": {"selection": {"ids": [1, 2]}}}',
        None,
        "Only top-level identity values are normalised: numbers inside a selection keep JCS rules.",
    ),
    (
        "inventory_sync_nested_strings_differ",
        r'{"kind": "dispatch", "workspace_id": 10, "tenant_id": 20, "type": "inventory.sync", "context": {"selection": {"ids": ["1", "2"]}}}',
        None,
        "... so strings inside a selection differ from numbers there.",
    ),
]


# --------------------------------------------------------------------------------------------
# Cross-check against the binary
# --------------------------------------------------------------------------------------------


def oprun_explain(binary: str, command_text: str) -> tuple[str | None, str | None, str]:
    """(canonical, hash, error) from `oprun identity-hash --explain`."""
    proc = subprocess.run(
        [binary, "identity-hash", "--explain"],
        input=command_text.encode("utf-8"),
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return None, None, proc.stderr.decode("utf-8", "replace").strip()
    try:
        answer = json.loads(proc.stdout)
        return answer["canonical"], answer["run_identity_hash"], ""
    except (ValueError, KeyError) as e:
        return None, None, f"unexpected output {proc.stdout!r}: {e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oprun", default=os.environ.get("OPRUN_BIN", str(ROOT / "target" / "debug" / "oprun")))
    parser.add_argument("--no-oprun", action="store_true", help="skip the cross-check against the binary")
    parser.add_argument("--check", action="store_true", help="do not write; fail if the file is not up to date")
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()

    self_test()
    if not args.no_oprun and not os.access(args.oprun, os.X_OK):
        print(f"error: {args.oprun} is not an executable; run `cargo build` or pass --oprun/--no-oprun", file=sys.stderr)
        return 2

    problems: list[str] = []
    vectors = []
    by_name: dict[str, str] = {}
    for name, text, same_as, note in VECTORS:
        # The command text goes to the file verbatim and is what the binary is sent, so the file
        # holds exactly what was tested (escapes and number literals as written).
        command = loads(text)
        canonical, digest = identity_hash(command)
        if canonical != jcs(loads(canonical)):
            problems.append(f"{name}: Python canonical text is not a JCS fixed point")
        if not args.no_oprun:
            r_canonical, r_hash, error = oprun_explain(args.oprun, text)
            if error:
                problems.append(f"{name}: oprun refused the command: {error}")
            else:
                if r_canonical != canonical:
                    problems.append(f"{name}: canonical differs\n    python: {canonical!r}\n    oprun:  {r_canonical!r}")
                if r_hash != digest:
                    problems.append(f"{name}: hash differs\n    python: {digest}\n    oprun:  {r_hash}")
        if name in by_name:
            problems.append(f"{name}: duplicate vector name")
        if same_as is not None:
            if same_as not in by_name:
                problems.append(f"{name}: same_hash_as {same_as!r} is not an earlier vector")
            elif by_name[same_as] != digest:
                problems.append(f"{name}: expected the hash of {same_as}, got another")
        else:
            clash = [n for n, h in by_name.items() if h == digest]
            if clash:
                problems.append(f"{name}: unexpectedly has the same hash as {clash}")
        by_name[name] = digest
        vector = {"name": name, "note": note, "command": Raw(text)}
        if same_as is not None:
            vector["same_hash_as"] = same_as
        vector["canonical"] = canonical
        vector["run_identity_hash"] = digest
        vectors.append(vector)

    covered = {loads(t)["type"] for _, t, _, _ in VECTORS}
    missing = set(IDENTITY_KEYS) - covered
    if missing:
        problems.append(f"types without a vector: {sorted(missing)}")

    document = dumps_document({"description": DESCRIPTION, "rule": RULE, "vectors": vectors})
    # The file must parse as plain JSON and round-trip to the same vectors.
    reparsed = json.loads(document)
    assert [v["run_identity_hash"] for v in reparsed["vectors"]] == [v["run_identity_hash"] for v in vectors]
    for v in loads(document)["vectors"]:
        if identity_hash(v["command"]) != (v["canonical"], v["run_identity_hash"]):
            problems.append(f"{v['name']}: the written file does not reproduce its own hash")

    output = Path(args.output)
    if args.check:
        if not output.exists() or output.read_text(encoding="utf-8") != document:
            problems.append(f"{output} is not up to date (run without --check to rewrite it)")
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(document, encoding="utf-8")

    checked = "Python only" if args.no_oprun else f"cross-checked against {args.oprun}"
    if problems:
        print(f"{len(problems)} disagreement(s) in {len(vectors)} vectors ({checked}):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    action = "checked" if args.check else f"wrote {output}"
    print(f"{len(vectors)} vectors agree ({checked}); {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
