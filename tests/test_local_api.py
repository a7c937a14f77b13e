"""The local API integrators import from `smsbus`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import smsbus
from smsbus.archive import ArchivedMessage, Archiver, load_settings

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture(autouse=True)
def configured(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSBUS_DATABASE_URL", service_env["SMSBUS_DATABASE_URL"])


def test_send_get_find() -> None:
    first = smsbus.send("+31612345678", "hi", client_ref="a-1", properties={"priority": 1})
    later = smsbus.send("+31612345679", "later", at=datetime.now(UTC) + timedelta(hours=1))
    assert smsbus.get(first).status == "QUEUED" and smsbus.get(first).properties == {"priority": 1}
    assert smsbus.get(later).status == "SCHEDULED"
    assert [m.id for m in smsbus.find(status="SCHEDULED")] == [later]


def test_send_in_the_callers_transaction(conn: Conn, database_url: str) -> None:
    with psycopg.connect(database_url) as own:
        message_id = smsbus.send("+31612345678", "hi", conn=own)
        own.rollback()
    with pytest.raises(smsbus.MessageNotFound):
        smsbus.get(message_id)


def test_refusals_are_smsbus_errors() -> None:
    with pytest.raises(smsbus.InvalidMessage, match="messages_to_address_format"):
        smsbus.send("call me now!", "hi")
    smsbus.send("+31612345678", "hi", client_ref="dup")
    with pytest.raises(smsbus.InvalidMessage, match="messages_client_ref_key"):
        smsbus.send("+31612345678", "hi", client_ref="dup")


def test_get_and_find_see_archived_messages_too(conn: Conn, database_url: str) -> None:
    row = conn.execute(
        "INSERT INTO messages (direction, status, trigger_status, to_address, body, updated_at)"
        " VALUES ('out', 'NOCHANNEL', 'NOTRIGGERS', '+31612345678', 'long done', now() - interval '40 days')"
        " RETURNING id"
    ).fetchone()
    assert row is not None
    old = int(row["id"])
    live = smsbus.send("+31612345678", "stays")
    archiver = Archiver(load_settings())
    with psycopg.connect(database_url, row_factory=dict_row) as own:
        archiver.prepare(own)
        assert archiver.run_pass(own).archived == 1
    archiver.close()

    archived = smsbus.get(old)
    assert isinstance(archived, ArchivedMessage) and archived.status == "NOCHANNEL"
    assert not isinstance(smsbus.get(live), ArchivedMessage)
    assert [m.id for m in smsbus.find(archive=True)] == [old]
    assert [m.id for m in smsbus.find()] == [live]
    with pytest.raises(smsbus.MessageNotFound):
        smsbus.get(424242)
