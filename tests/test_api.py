"""The api service over real HTTP, against a real PostgreSQL: sending, reading, idempotency,
refusals as problem+json naming the field, keys and scopes, sessions."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import psycopg

from tests.peers.api import Api


def test_a_message_posted_is_a_queued_row(api: Api, conn: psycopg.Connection[Any]) -> None:
    with api.client() as client:
        response = client.post("/v1/messages", json={"to_address": "+31612345678", "body": "hi"})
        assert response.status_code == 201, response.text
        message = response.json()
        assert message["status"] == "QUEUED"
        shown = client.get(f"/v1/messages/{message['id']}").json()
    row = conn.execute("SELECT body, api_key_id FROM messages WHERE id = %s", [message["id"]]).fetchone()
    assert row is not None and row["body"] == "hi" and row["api_key_id"] is not None
    assert shown["id"] == message["id"] and shown["to_address"] == "+31612345678"


def test_health_ready_and_metrics_answer_without_a_key(api: Api) -> None:
    with api.client(None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert "smsbus_api_messages_accepted_total" in client.get("/metrics").text
        assert client.get("/v1/openapi.json").json()["openapi"].startswith("3.1")
        docs = client.get("/v1/docs").text
        assert "/v1/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
        assert client.get("/v1/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_a_repeated_client_ref_returns_the_first_message(api: Api, conn: psycopg.Connection[Any]) -> None:
    payload = {"to_address": "+31612345678", "body": "once", "client_ref": "order-1"}
    with api.client() as client:
        first = client.post("/v1/messages", json=payload)
        again = client.post("/v1/messages", json=payload)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert conn.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 1}


def test_two_concurrent_posts_of_one_client_ref_make_one_row(api: Api, conn: psycopg.Connection[Any]) -> None:
    payloads = [{"to_address": "+31612345678", "body": "race", "client_ref": f"race-{i // 8}"} for i in range(32)]

    def post(payload: dict[str, str]) -> int:
        with api.client() as client:
            response = client.post("/v1/messages", json=payload)
            assert response.status_code in (200, 201), response.text
            return int(response.json()["id"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(post, payloads))
    assert len(set(ids)) == 4
    assert conn.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 4}


def test_a_batch_is_one_transaction_and_a_refusal_names_the_field(api: Api, conn: psycopg.Connection[Any]) -> None:
    batch = [{"to_address": f"+3161234{i:04d}", "body": f"n{i}", "client_ref": f"b{i % 900}"} for i in range(1000)]
    with api.client() as client:
        response = client.post("/v1/messages", json=batch)
        assert response.status_code == 201, response.text
        accepted = response.json()["messages"]
        bad = [{"to_address": "+31612345678", "body": "ok"}, {"to_address": "not a number!", "body": "x"}]
        refused = client.post("/v1/messages", json=bad)
    assert [a["created"] for a in accepted] == [True] * 900 + [False] * 100
    assert accepted[950]["id"] == accepted[50]["id"]
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["field"] == "[1].to_address"
    assert conn.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 900}


def test_bad_input_is_refused_naming_the_field(api: Api) -> None:
    with api.client() as client:
        cases = {
            "to_address": client.post("/v1/messages", json={"to_address": 31612345678, "body": "x"}),
            "body": client.post("/v1/messages", json={"to_address": "+31612345678", "body": "a\u0000b"}),
            "colour": client.post("/v1/messages", json={"to_address": "+31612345678", "body": "x", "colour": 1}),
        }
        huge = client.post("/v1/messages", json={"to_address": "+31612345678", "body": "x" * 2_000_000})
        too_many = client.post("/v1/messages", json=[{"to_address": "+31612345678", "body": "x"}] * 10_001)
        not_utf8 = client.post("/v1/messages", content=b'{"to_address": "+316", "body": "\xff\xfe"}',
                               headers={"Content-Type": "application/json"})
        page = client.get("/v1/messages", params={"limit": "lots"})
    for field, response in cases.items():
        assert response.status_code in (400, 422), response.text
        assert response.json()["field"] == field, response.text
    assert huge.status_code in (400, 413) and "body" in huge.text
    assert too_many.status_code == 400 and "10000" in too_many.text
    assert not_utf8.status_code == 400 and "UTF-8" in not_utf8.text
    assert page.status_code == 400 and "limit" in page.text


def test_a_key_without_the_scope_or_revoked_is_refused(api: Api) -> None:
    revoked = api.create_key("gone", ["send", "read"])
    with psycopg.connect(api.database_url) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'gone'")
    message = {"to_address": "+31612345678", "body": "x"}
    with api.client("read") as reader, api.client(None) as anonymous:
        assert reader.post("/v1/messages", json=message).status_code == 403
        assert anonymous.post("/v1/messages", json=message).status_code == 401
        wrong = anonymous.get("/v1/messages", headers={"Authorization": "Bearer test-all.nope"})
        gone = anonymous.get("/v1/messages", headers={"X-API-Key": revoked})
    assert wrong.status_code == 401 and gone.status_code == 401
    assert wrong.headers["content-type"].startswith("application/problem+json")


def test_channels_rules_and_triggers_are_configured_as_the_cli_does(api: Api) -> None:
    smpp = {"name": "kpn", "type": "smpp", "settings": {"host": "127.0.0.1", "system_id": "me", "password": "s3cret"}}
    with api.client() as client:
        added = client.post("/v1/channels", json=smpp)
        assert added.status_code == 201, added.text
        assert added.json()["programs"] is None  # smsbus is not running under supervisord here
        # the password went into a file of its own (smsbus.secret_files): only its path is kept
        assert "password_file" in added.json()["channel"]["settings"] and "s3cret" not in added.text
        bad = client.post("/v1/channels", json={**smpp, "name": "other", "settings": {"host": "x", "port": "no"}})
        assert bad.status_code == 422 and "port" in bad.json()["detail"], bad.text
        assert client.post("/v1/channels/kpn/disable").json()["channel"]["enabled"] is False
        assert [c["name"] for c in client.get("/v1/channels").json()] == ["kpn"]

        for name in ("first", "second"):
            rule = {"name": name, "condition": "to_address LIKE '+31%'", "channels": ["kpn"]}
            assert client.post("/v1/rules/routing", json=rule).status_code == 201
        moved = client.post("/v1/rules/routing/second/move", json={"position": 1}).json()
        assert [r["name"] for r in moved] == ["second", "first"]
        refused = client.post("/v1/rules/blocking", json={"name": "b", "condition": "no_such_column = 1"})
        assert refused.status_code == 422 and "no_such_column" in refused.json()["detail"], refused.text
        explained = client.post("/v1/route/explain", json={"to_address": "+31612345678", "body": "hi"})
        assert explained.status_code == 200, explained.text
        assert 'routing rule: "second"' in "\n".join(explained.json()["lines"])

        trigger = {"name": "t", "language": "sql", "script": "SELECT 1", "condition": "direction = 'in'"}
        assert client.post("/v1/triggers", json=trigger).status_code == 201
        assert client.post("/v1/triggers/t/disable").json()["enabled"] is False
        broken = client.patch("/v1/triggers/t", json={"script": "SELEC 1"})
        assert broken.status_code == 422 and broken.json()["field"] == "script", broken.text
        queue = client.get("/v1/queue", params={"counts": "true"}).json()
        assert queue == {"waiting": [], "counts": []}


def test_requeue_and_cancel_move_only_what_may_move(api: Api, conn: psycopg.Connection[Any]) -> None:
    with api.client() as client:
        queued = client.post("/v1/messages", json={"to_address": "+31612345678", "body": "x"}).json()["id"]
        assert client.post(f"/v1/messages/{queued}/requeue").status_code == 409
        cancelled = client.post(f"/v1/messages/{queued}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert client.post(f"/v1/messages/{queued}/cancel").status_code == 409
        assert client.post(f"/v1/messages/{queued}/requeue").status_code == 200
        assert client.post("/v1/messages/999999/cancel").status_code == 404
    row = conn.execute("SELECT status, error FROM messages WHERE id = %s", [queued]).fetchone()
    assert row == {"status": "QUEUED", "error": None}
