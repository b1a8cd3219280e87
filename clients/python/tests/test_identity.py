"""identity_hash agrees with every vector in tests/vectors/run_identity_hash.json (no broker)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from operation_runs_client import IDENTITY_KEYS, IdentityError, canonical_identity, identity_hash
from operation_runs_client.identity import jcs

VECTORS = json.loads((Path(__file__).resolve().parents[3] / "tests" / "vectors" / "run_identity_hash.json").read_text())["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_every_vector(vector):
    assert canonical_identity(vector["command"]) == vector["canonical"]
    assert identity_hash(vector["command"]) == vector["run_identity_hash"]


def test_same_hash_as_links_hold():
    for v in VECTORS:
        if "same_hash_as" in v:
            assert v["run_identity_hash"] == BY_NAME[v["same_hash_as"]]["run_identity_hash"]


def test_integer_ids_hash_as_their_decimal_string():
    a = {"kind": "dispatch", "workspace_id": 1, "type": "backup_schedule.run_now", "context": {"backup_schedule_id": 77}}
    big = {**a, "context": {"backup_schedule_id": 2**64 + 1}}
    assert identity_hash(a) == identity_hash({**a, "context": {"backup_schedule_id": "77"}})
    assert identity_hash(a) == identity_hash({**a, "context": {"backup_schedule_id": 77.0}})
    assert '"18446744073709551617"' in canonical_identity(big)
    # Within ±(2^53−1) only: 2^53 spelt with an exponent stays a number.
    assert '"backup_schedule_id":9007199254740992' in canonical_identity({**a, "context": {"backup_schedule_id": 2.0**53}})
    assert '"9007199254740991"' in canonical_identity({**a, "context": {"backup_schedule_id": 2.0**53 - 1}})
    # Not "077" or nested values.
    assert identity_hash(a) != identity_hash({**a, "context": {"backup_schedule_id": "077"}})


def test_rfc8785_sample():
    value = json.loads('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "literals": [null, true, false]}')
    assert jcs(value) == '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}'


@pytest.mark.parametrize(
    "command,code",
    [
        ({"workspace_id": 1, "type": "nope", "context": {}}, "unknown_type"),
        ({"workspace_id": 1, "type": "policy.sync", "context": {"policy_id": None}}, "missing_identity_key"),
        ({"workspace_id": 1, "type": "backup_schedule.scheduled", "context": {"backup_schedule_id": 1, "scheduled_for": "tomorrow"}}, "invalid_identity_value"),
    ],
)
def test_errors_carry_the_services_code(command, code):
    with pytest.raises(IdentityError) as e:
        identity_hash(command)
    assert e.value.code == code


@pytest.mark.skipif("OPRUN_BIN" not in os.environ, reason="needs OPRUN_BIN (set by tests/it/clients.rs)")
def test_the_catalog_copy_is_the_registry():
    out = subprocess.run([os.environ["OPRUN_BIN"], "catalog", "--format", "json"], check=True, capture_output=True, text=True).stdout
    assert IDENTITY_KEYS == {t["type"]: t["identity_keys"] for t in json.loads(out)["types"]}
