"""Delivery callbacks: the outbox the database writes, and the webhooks service delivering it to
a real HTTP receiver in its own process (tests/peers/callback_server.py): signed, in order per
message, nothing lost when the receiver is away or the service is killed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from smsbus import access
from smsbus_webhooks.formats import SIGNATURE_HEADER, TIMESTAMP_HEADER
from smsbus_webhooks.webhooks import WebhooksService, WebhooksSettings
from tests.conftest import StartServices
from tests.peers.api import Api
from tests.peers.callback_server import CallbackServer
from tests.peers.processes import ServiceProcess, start_service
from tests.peers.smsc import start_smsc
from tests.test_smpp import add_channel, wait_for

Conn = psycopg.Connection[dict[str, Any]]

SECRET = "callback-secret-of-the-key"
LIFE = ("SENDING", "SENT", "DELIVERED")
# quick retries, so that an outage of a second or two is retried several times
FAST_RETRIES = {"retry_initial_s": "0.1", "retry_max_s": "0.4", "poll_interval_s": "0.5", "depth_interval_s": "0"}

INSERT_KEY = """
INSERT INTO api_keys (name, secret_sha256, scopes, callback_secret)
VALUES ('shop', %(hash)s, '{send}', %(secret)s) RETURNING id
"""
INSERT_MESSAGE = """
INSERT INTO messages (direction, to_address, body, status_callback, api_key_id, properties, channel)
VALUES ('out', '+31612345678', 'hello', %(url)s, %(key)s, %(properties)s, %(channel)s) RETURNING id
"""
MOVE = "UPDATE messages SET status = %(status)s WHERE id = %(id)s"
OUTBOX = "SELECT * FROM webhook_outbox ORDER BY id"
ROUTE_EVERYTHING_TO_SIM = """
INSERT INTO routing_rules (position, name, condition, channels) VALUES (1, 'all', 'true', '{sim}')
"""


@pytest.fixture
def receiver(service_env: dict[str, str], tmp_path: Path) -> Iterator[CallbackServer]:
    server = CallbackServer(service_env, tmp_path).start()
    yield server
    server.stop()


def add_key(conn: Conn, secret: str = SECRET) -> int:
    row = conn.execute(INSERT_KEY, {"hash": hashlib.sha256(os.urandom(32)).digest(), "secret": secret}).fetchone()
    assert row is not None
    return int(row["id"])


def add_message(conn: Conn, url: str, key: int | None = None, channel: str | None = None, **properties: Any) -> int:
    row = conn.execute(
        INSERT_MESSAGE, {"url": url, "key": key, "channel": channel, "properties": json.dumps(properties)}
    ).fetchone()
    assert row is not None
    return int(row["id"])


def move(conn: Conn, message_id: int, *statuses: str) -> None:
    for status in statuses:
        conn.execute(MOVE, {"id": message_id, "status": status})


def verified(request: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    """The JSON of a callback whose signature checks out, as a receiver verifies it."""
    headers = {k.lower(): v for k, v in request["headers"].items()}
    timestamp = headers[TIMESTAMP_HEADER.lower()]
    expected = hmac.new(secret.encode(), f"{timestamp}.{request['body']}".encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], f"sha256={expected}")
    assert abs(time.time() - int(timestamp)) < 60
    return dict(json.loads(request["body"]))


def statuses_by_message(requests: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Each message's statuses in the order first received (a repeat after a crash is fine)."""
    seen: set[int] = set()
    by_message: dict[int, list[str]] = {}
    for request in requests:
        payload = json.loads(request["body"])
        if payload["event_id"] not in seen:
            seen.add(payload["event_id"])
            by_message.setdefault(payload["message_id"], []).append(payload["status"])
    return by_message


def outbox_empty(conn: Conn) -> bool:
    return not conn.execute(OUTBOX).fetchall()


def test_outbox_gets_one_row_per_status_change_of_a_message_with_a_callback_in_its_transaction(conn: Conn) -> None:
    key = add_key(conn)
    watched = add_message(conn, "http://127.0.0.1:9/cb", key)
    unwatched = conn.execute(
        "INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31611111111', 'x') RETURNING id"
    ).fetchone()
    assert unwatched is not None
    conn.execute("LISTEN smsbus")
    move(conn, watched, "SENDING")
    move(conn, unwatched["id"], "SENDING")
    # no status change (the router's pass): no callback
    conn.execute("UPDATE messages SET routed_at = now() WHERE id = %(id)s", {"id": watched})
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        move(conn, watched, "SENT")
        raise psycopg.errors.CheckViolation("rolled back with its status change")
    rows = conn.execute(OUTBOX).fetchall()
    assert [(r["message_id"], r["previous_status"], r["status"], r["api_key_id"]) for r in rows] == [
        (watched, "QUEUED", "SENDING", key)]
    assert rows[0]["url"] == "http://127.0.0.1:9/cb" and rows[0]["message"]["status"] == "SENDING"
    assert "webhooks" in [n.payload for n in conn.notifies(timeout=0.5, stop_after=3)]


def test_outbox_gauges_count_waiting_and_abandoned_and_old_abandoned_callbacks_are_forgotten(conn: Conn) -> None:
    key = add_key(conn)
    waiting, old, recent = (add_message(conn, "http://127.0.0.1:9/cb", key) for _ in range(3))
    for message_id in (waiting, old, recent):
        move(conn, message_id, "SENDING")
    given_up = ("UPDATE webhook_outbox SET abandoned_at = now() - make_interval(days => %(days)s)"
                " WHERE message_id = %(m)s")
    conn.execute(given_up, {"m": old, "days": 31})
    conn.execute(given_up, {"m": recent, "days": 29})

    WebhooksService(WebhooksSettings()).refresh_depth(conn)
    remaining = {r["message_id"]: r["abandoned_at"] is not None for r in conn.execute(OUTBOX).fetchall()}
    assert remaining == {waiting: False, recent: True}
    for state in ("waiting", "abandoned"):
        assert REGISTRY.get_sample_value("smsbus_webhooks_outbox_depth", {"state": state}) == 1


def test_every_status_change_is_posted_signed_in_order_and_leaves_the_outbox(
    conn: Conn, receiver: CallbackServer, broker: ServiceProcess, start_services: StartServices
) -> None:
    start_services("webhooks", poll_interval_s="0")
    key = add_key(conn)
    message_id = add_message(conn, receiver.url + "/status", key)
    move(conn, message_id, *LIFE)

    requests = wait_for(lambda: len(receiver.requests()) >= 3 and receiver.requests(), what="3 callbacks")
    payloads = [verified(r) for r in requests]
    assert [p["status"] for p in payloads] == list(LIFE)
    assert [p["previous_status"] for p in payloads] == ["QUEUED", "SENDING", "SENT"]
    assert {p["message_id"] for p in payloads} == {message_id}
    assert all(r["path"] == "/status" and r["method"] == "POST" for r in requests)
    wait_for(lambda: outbox_empty(conn), what="outbox empty")


def test_receiver_away_for_a_while_loses_nothing_and_keeps_each_messages_order(
    conn: Conn, receiver: CallbackServer, broker: ServiceProcess, start_services: StartServices
) -> None:
    webhooks = start_services("webhooks", **FAST_RETRIES)
    key = add_key(conn)
    receiver.stop()
    messages = [add_message(conn, receiver.url + "/cb", key) for _ in range(3)]
    for message_id in messages:
        move(conn, message_id, *LIFE)
    # the heads of the three lines fail and are retried while the receiver is away
    wait_for(lambda: all(r["attempts"] >= 2 for r in conn.execute(OUTBOX).fetchall() if r["status"] == "SENDING"),
             what="retries while away")
    assert "Connection refused" in webhooks.log()
    receiver.start()

    wait_for(lambda: outbox_empty(conn), what="outbox empty")
    by_message = statuses_by_message(receiver.requests())
    assert by_message == {m: list(LIFE) for m in messages}
    for request in receiver.requests():
        verified(request)


def test_500_slow_and_unreachable_receivers_are_retried_or_given_up_with_credentials_masked(
    conn: Conn, receiver: CallbackServer, broker: ServiceProcess, start_services: StartServices
) -> None:
    webhooks = start_services("webhooks", request_timeout_s="0.3", lease_s="2", **FAST_RETRIES)
    key = add_key(conn)
    receiver.control(status=500)
    failing = add_message(conn, receiver.url.replace("http://", "http://shop:pa55word@") + "/cb?token=t0ken", key)
    # a URL nothing can reach: given up at once, holding nothing back
    garbage = add_message(conn, "http://shop:pa55word@host:99999999/cb?token=t0ken", key)
    move(conn, failing, "SENDING")
    move(conn, garbage, "SENDING")

    wait_for(lambda: conn.execute("SELECT 1 FROM webhook_outbox WHERE message_id = %(m)s AND attempts >= 2"
                                  " AND last_error = 'HTTP 500'", {"m": failing}).fetchone(), what="retried 500")
    given_up = wait_for(lambda: conn.execute("SELECT * FROM webhook_outbox WHERE abandoned_at IS NOT NULL").fetchone(),
                        what="garbage URL given up")
    assert given_up["message_id"] == garbage and "cannot be parsed" in given_up["last_error"]
    receiver.control(status=200, delay_s=1)
    wait_for(lambda: conn.execute("SELECT 1 FROM webhook_outbox WHERE message_id = %(m)s"
                                  " AND last_error LIKE 'no answer within 0.3 s'", {"m": failing}).fetchone(),
             what="slow receiver timed out")
    receiver.control(delay_s=0)
    wait_for(lambda: conn.execute("SELECT 1 FROM webhook_outbox WHERE message_id = %(m)s", {"m": failing})
             .fetchone() is None, what="delivered after the receiver recovered")

    requests = receiver.requests()
    taken = [r for r in requests if r["answered"] == 200]
    assert taken and verified(taken[-1])["status"] == "SENDING"
    # the URL's credentials went as Basic authentication, and were never logged or stored
    assert taken[-1]["headers"]["Authorization"] == "Basic c2hvcDpwYTU1d29yZA=="
    stored = json.dumps([dict(r) for r in conn.execute("SELECT last_error FROM webhook_outbox").fetchall()])
    for secret in ("pa55word", "t0ken"):
        assert secret not in webhooks.log() and secret not in stored
    assert "url=http://***@127.0.0.1" in webhooks.log()


def test_a_slow_receiver_holds_one_request_not_the_other_messages_callbacks(
    conn: Conn, receiver: CallbackServer, broker: ServiceProcess, start_services: StartServices
) -> None:
    start_services("webhooks", request_timeout_s="3", lease_s="7", stop_within_s=4, **FAST_RETRIES)
    receiver.control(delay_s=2, delay_path="/slow")
    slow, fast = add_message(conn, receiver.url + "/slow"), add_message(conn, receiver.url + "/fast")
    move(conn, slow, *LIFE)
    move(conn, fast, *LIFE)

    # the fast receiver's three callbacks (three rounds: in order) come while the slow one
    # still holds its first
    fast_calls = wait_for(lambda: len(by_path(receiver, "/fast")) == 3 and by_path(receiver, "/fast"),
                          timeout_s=1.5, what="the fast receiver's callbacks")
    assert not by_path(receiver, "/slow")
    assert [json.loads(r["body"])["status"] for r in fast_calls] == list(LIFE)
    receiver.control(delay_s=0)
    wait_for(lambda: outbox_empty(conn), what="outbox empty")
    assert [json.loads(r["body"])["status"] for r in by_path(receiver, "/slow")] == list(LIFE)


def by_path(receiver: CallbackServer, path: str) -> list[dict[str, Any]]:
    return [r for r in receiver.requests() if r["path"] == path]


def test_kill_9_mid_delivery_loses_nothing_and_keeps_each_messages_order(
    conn: Conn, receiver: CallbackServer, broker: ServiceProcess, service_env: dict[str, str], tmp_path: Path,
) -> None:
    settings = {"request_timeout_s": "0.7", "lease_s": "1.5", **FAST_RETRIES}
    env = {**service_env, "SMSBUS_WEBHOOKS_METRICS_PORT": "0",
           **{f"SMSBUS_WEBHOOKS_{k.upper()}": v for k, v in settings.items()}}
    first = start_service(["smsbus-webhooks"], env, tmp_path / "webhooks-killed.log")
    first.wait_for_log("database connected")
    key = add_key(conn)
    receiver.control(delay_s=0.4)
    messages = [add_message(conn, receiver.url + "/cb", key) for _ in range(4)]
    for message_id in messages:
        move(conn, message_id, *LIFE)
    # the first requests are in flight (claimed, leased, the receiver holding them): kill there
    wait_for(lambda: conn.execute("SELECT 1 FROM webhook_outbox WHERE attempts = 0 AND next_attempt_at > now()")
             .fetchone(), what="callbacks claimed")
    time.sleep(0.2)
    first.kill()
    receiver.control(delay_s=0)
    second = start_service(["smsbus-webhooks"], env, tmp_path / "webhooks-restarted.log")
    try:
        second.wait_for_log("database connected")
        wait_for(lambda: outbox_empty(conn), timeout_s=15, what="outbox empty after the restart")
    finally:
        code, _ = second.stop()
    assert code == 0
    assert statuses_by_message(receiver.requests()) == {m: list(LIFE) for m in messages}


def test_kannel_and_jasmin_styles_are_called_back_as_those_gateways_do(
    conn: Conn, receiver: CallbackServer, broker: ServiceProcess, start_services: StartServices
) -> None:
    start_services("webhooks", **FAST_RETRIES)
    kannel = add_message(conn, receiver.url + "/kannel?type=%d&id=%I&to=%p&reply=%A", None,
                         callback_style="kannel", dlr_mask=9)
    jasmin = add_message(conn, receiver.url + "/jasmin", None, callback_style="jasmin", dlr_level=3)
    move(conn, kannel, *LIFE)
    move(conn, jasmin, *LIFE)

    # Kannel: GET, SENT (8) and DELIVERED (1) as the mask asks, nothing for SENDING
    kannel_calls = wait_for(lambda: [r for r in receiver.requests() if r["path"] == "/kannel"][1:] and
                            [r for r in receiver.requests() if r["path"] == "/kannel"], what="Kannel DLRs")
    assert [(r["method"], r["query"]["type"], r["query"]["id"], r["query"]["to"]) for r in kannel_calls] == [
        ("GET", ["8"], [str(kannel)], ["+31612345678"]), ("GET", ["1"], [str(kannel)], ["+31612345678"])]
    assert kannel_calls[0]["query"]["reply"] == ["ACK/"]
    assert "stat:DELIVRD" in kannel_calls[1]["query"]["reply"][0]

    # Jasmin: a receiver that does not answer ACK/Jasmin is asked again, as Jasmin does
    wait_for(lambda: len([r for r in receiver.requests() if r["path"] == "/jasmin"]) >= 2, what="Jasmin retries")
    receiver.control(reply="ACK/Jasmin")
    wait_for(lambda: outbox_empty(conn), what="outbox empty")
    taken = [r for r in receiver.requests() if r["path"] == "/jasmin"][-2:]
    forms = [{k: v[0] for k, v in parse_qs(r["body"]).items()} for r in taken]
    assert [(f["id"], f["level"], f["message_status"]) for f in forms] == [
        (str(jasmin), "1", "ESME_ROK"), (str(jasmin), "3", "DELIVRD")]
    assert forms[1]["dlvrd"] == "001" and forms[1]["text"] == "hello"
    assert all(r["method"] == "POST" for r in taken)


def test_messages_sent_over_http_are_called_back_through_router_channel_and_simulator(
    conn: Conn, receiver: CallbackServer, broker: ServiceProcess, start_services: StartServices,
    api: Api, service_env: dict[str, str], tmp_path: Path,
) -> None:
    """SPEC §10 end to end: the api takes a message in its own, Kannel's and Jasmin's form;
    the router, the SMPP channel and the simulator deliver it; its callbacks arrive as asked."""
    smsc = start_smsc(service_env, tmp_path)
    channel: ServiceProcess | None = None
    try:
        add_channel(conn, smsc)
        conn.execute(ROUTE_EVERYTHING_TO_SIM)
        channel = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "channel.log")
        smsc.wait_bound()
        start_services("router")
        start_services("webhooks", poll_interval_s="0")
        receiver.control(reply="ACK/Jasmin")
        key = access.create_api_key(conn, "shop", ["send"])
        name, secret = key.key.split(".", 1)
        with httpx.Client(base_url=api.url, timeout=10) as client:
            posted = client.post("/v1/messages", headers={"Authorization": f"Bearer {key.key}"}, json={
                "to_address": "+31612345678", "body": "hi", "status_callback": receiver.url + "/v1"})
            kannel = client.get("/cgi-bin/sendsms", params={
                "username": name, "password": secret, "to": "+31612345679", "text": "hi", "dlr-mask": "9",
                "dlr-url": receiver.url + "/kannel?type=%d&id=%I"})
            jasmin = client.post("/send", data={
                "username": name, "password": secret, "to": "+31612345670", "content": "hi", "dlr": "yes",
                "dlr-url": receiver.url + "/jasmin", "dlr-level": "3"})
        assert posted.status_code == 201, posted.text
        assert (kannel.status_code, jasmin.status_code) == (202, 200), (kannel.text, jasmin.text)

        expected = {"/v1": 3, "/kannel": 2, "/jasmin": 2}
        wait_for(lambda: all(len(by_path(receiver, path)) == n for path, n in expected.items()), what="every callback")
        payloads = [verified(r, key.callback_secret) for r in by_path(receiver, "/v1")]
        assert [p["status"] for p in payloads] == ["SENDING", "SENT", "DELIVERED"]
        assert all(p["channel"] == "sim" for p in payloads) and payloads[2]["provider_id"]
        assert [r["query"]["type"] for r in by_path(receiver, "/kannel")] == [["8"], ["1"]]
        jasmin_statuses = [parse_qs(r["body"])["message_status"] for r in by_path(receiver, "/jasmin")]
        assert jasmin_statuses == [["ESME_ROK"], ["DELIVRD"]]
        wait_for(lambda: outbox_empty(conn), what="outbox empty")
    finally:
        if channel is not None:
            channel.stop()
        smsc.stop()
