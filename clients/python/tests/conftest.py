"""The environment tests/it/clients.rs sets for a running service of its own."""

import os

import pytest

NEEDED = ["AMQP_URL", "OPRUN_NAMESPACE", "OPRUN_WORKSPACE_ID", "OPRUN_TENANT_ID", "OPRUN_OTHER_TENANT_ID"]


@pytest.fixture(scope="session")
def env():
    missing = [n for n in NEEDED if n not in os.environ]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run these tests through `cargo test --test it clients::`")
    return {
        "url": os.environ["AMQP_URL"],
        "namespace": os.environ["OPRUN_NAMESPACE"],
        "workspace": int(os.environ["OPRUN_WORKSPACE_ID"]),
        "tenant": int(os.environ["OPRUN_TENANT_ID"]),
        "other_tenant": int(os.environ["OPRUN_OTHER_TENANT_ID"]),
    }


def pytest_configure(config):
    # tests/it/clients.rs runs the worker tests (-m worker) against a service that hands jobs off,
    # and the others (-m "not worker") against one that does not.
    config.addinivalue_line("markers", "worker: needs a service that hands jobs off to executors")
