"""A client whose connection is lost, a URL list, and errors without passwords, against the
running service and the machine's broker (tests/it/clients.rs sets the env). Connections are
dropped from the broker's side with `rabbitmqctl close_connection`, each test closing only the
connection it named, never another test's."""

import logging
import socket
import subprocess
import threading
import time
import traceback
import uuid

import pika
import pytest

from operation_runs_client import Client, CommandNotAnswered, ConnectionLost


def unique(prefix="py"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def connections_named(name):
    """The broker's pids of the connections whose client-provided name is ``name``."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_connections", "pid", "client_properties"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [line.split()[0] for line in listed.splitlines() if f'"{name}"' in line]


def close_connections_named(name):
    pids = connections_named(name)
    assert pids, f"no connection named {name}"
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: the broker drops the client"], check=True)


def wait_until(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def closed_port():
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_query(urls, query):
    return ",".join(u + ("&" if "?" in u else "?") + query for u in urls.split(","))


def test_every_call_after_the_broker_closed_the_connection_is_sent_again_on_a_fresh_one(env):
    name = unique("py-dropped")
    ws, tenant = env["workspace"], env["tenant"]
    with Client(env["url"], env["namespace"], connection_name=name) as client:
        run = client.dispatch("inventory.sync", ws, tenant, {"selection": unique()})
        run_id = run["run_id"]

        close_connections_named(name)
        again = client.dispatch("inventory.sync", ws, tenant, {"selection": unique()})
        assert again["run_id"] > run_id and again["deduplicated"] is False
        close_connections_named(name)
        assert client.update_run(run_id, ws, tenant, status="running")["status"] == "running"
        close_connections_named(name)
        client.increment_summary_counts(run_id, ws, tenant, {"total": 2, "processed": 1})
        close_connections_named(name)
        client.append_failures(run_id, ws, tenant, [{"code": "device.unreachable", "message": "dev-7", "item": "dev-7"}])
        close_connections_named(name)
        sent = client.dispatch("policy.sync", ws, tenant, {"policy_id": unique()}, wait=False)
        assert sent["command_id"]
        close_connections_named(name)
        done = client.update_run(run_id, ws, tenant, status="completed", outcome="partially_succeeded", summary_counts={"processed": 1})
        assert (done["status"], done["outcome"]) == ("completed", "partially_succeeded")
        # The lost connections were released, not leaked: only the fresh one is open.
        assert len(connections_named(name)) == 1


def test_an_idle_client_whose_connection_missed_its_heartbeats_sends_on_a_fresh_one(env):
    name = unique("py-idle")
    # A one-second heartbeat: the broker closes an idle BlockingConnection after two missed.
    with Client(with_query(env["url"], "heartbeat=1"), env["namespace"], connection_name=name) as client:
        client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
        wait_until(lambda: not connections_named(name), "the broker to close the idle connection")
        run = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
        assert run["status"] == "queued"


def test_a_subscription_whose_connection_is_closed_resumes_on_a_fresh_one(env):
    queue = f"{env['namespace']}.subscriber.{unique()}"
    connection = pika.BlockingConnection(pika.URLParameters(env["url"].split(",")[0]))
    admin = connection.channel()
    admin.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    admin.queue_bind(queue, f"{env['namespace']}.events")
    name = unique("py-subscriber")
    try:
        with Client(env["url"], env["namespace"]) as client:
            run_id = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})["run_id"]
            client.update_run(run_id, env["workspace"], env["tenant"], status="completed", outcome="succeeded")
        seen = {}
        dropped = []

        def handler(event):
            if not dropped:
                dropped.append(event["id"])
                close_connections_named(name)
            if event["data"]["run"]["id"] == run_id:
                seen[event["id"]] = event["type"]
                return event["type"] != "operation_run.completed"
            return True

        # Prefetch 1: the events after the drop must come through a fresh connection.
        Client(env["url"], env["namespace"], connection_name=name).subscribe(queue, handler, idle_timeout=20, prefetch=1)
    finally:
        admin.queue_delete(queue)
        connection.close()
    assert list(seen.values()) == ["operation_run.queued", "operation_run.completed"]


def test_an_exclusive_subscription_whose_connection_is_closed_raises_connection_lost(env):
    name = unique("py-exclusive")

    def drop_when_subscribed():
        wait_until(lambda: connections_named(name), "the subscriber's connection")
        close_connections_named(name)

    dropper = threading.Thread(target=drop_when_subscribed)
    dropper.start()
    try:
        with pytest.raises(ConnectionLost) as e:
            Client(env["url"], env["namespace"], connection_name=name).subscribe(None, lambda _e: True, idle_timeout=30)
    finally:
        dropper.join()
    assert "exclusive queue" in str(e.value)


def test_a_url_list_with_a_dead_first_node_is_served_by_the_next(env):
    dead = f"amqp://guest:dead-node-s3cret@127.0.0.1:{closed_port()}/%2f"
    for urls in (f"{dead},{env['url']}", [dead, *env["url"].split(",")]):
        with Client(urls, env["namespace"]) as client:
            run = client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
            assert run["status"] == "queued"


def heartbeats_of(name):
    """The heartbeat (s) of each connection whose client-provided name is ``name``."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_connections", "timeout", "client_properties"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [line.split()[0] for line in listed.splitlines() if f'"{name}"' in line]


def test_after_a_lost_connection_the_next_url_is_tried_first(env):
    # Two URLs of the one broker told apart by their heartbeat (the broker lists it).
    first = env["url"].split(",")[0]
    second = with_query(first, "heartbeat=7")
    name = unique("py-rotate")
    with Client([first, second], env["namespace"], connection_name=name) as client:
        client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
        assert heartbeats_of(name) != ["7"], "the first URL answers first"
        close_connections_named(name)
        client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
        assert heartbeats_of(name) == ["7"], "after a lost connection, the next URL"
        close_connections_named(name)
        client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()})
        assert heartbeats_of(name) != ["7"], "and round again"


def test_with_no_node_answering_every_call_raises_the_documented_errors_without_a_password(env, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "n0-broker-s3cret"
    urls = f"amqp://guest:{secret}@127.0.0.1:{closed_port()}/%2f, amqp://guest:{secret}@127.0.0.1:{closed_port()}/%2f"
    client = Client(urls, env["namespace"])
    with pytest.raises(CommandNotAnswered) as e:
        client.dispatch("policy.sync", env["workspace"], env["tenant"], {"policy_id": unique()}, timeout=5)
    assert e.value.reason == "connection_lost"
    assert e.value.command_id
    shown = "".join(traceback.format_exception(e.type, e.value, e.tb))
    assert "guest:***@127.0.0.1" in str(e.value)
    assert secret not in shown
    with pytest.raises(CommandNotAnswered) as e:
        client.increment_summary_counts(1, env["workspace"], env["tenant"], {"total": 1})
    assert e.value.reason == "connection_lost" and secret not in str(e.value)
    with pytest.raises(ConnectionLost) as lost:
        client.subscribe(None, lambda _e: False, idle_timeout=1)
    assert secret not in "".join(traceback.format_exception(lost.type, lost.value, lost.tb))
    assert secret not in caplog.text


def test_a_url_that_is_not_amqp_is_refused_without_its_password():
    with pytest.raises(ValueError) as e:
        Client("amqp://guest:guest@127.0.0.1:5672/%2f,http://guest:n0t-amqp-s3cret@127.0.0.1/")
    assert "n0t-amqp-s3cret" not in str(e.value) and "guest:***@" in str(e.value)
