"""The messages table and config tables as SPEC §2/§3 describe them, on a real PostgreSQL."""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
import pytest

from smsbus.migrate import available_migrations, migrate
from smsbus.statuses import ALLOWED_MOVES, PERMANENT, Status

Conn = psycopg.Connection[dict[str, Any]]

PLAIN_INSERT = "INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'hi') RETURNING *"


def test_plain_sql_insert_is_a_queued_outgoing_message_with_no_channel(conn: Conn) -> None:
    row = conn.execute(PLAIN_INSERT).fetchone()
    assert row is not None
    assert (row["status"], row["direction"], row["channel"]) == ("QUEUED", "out", None)
    assert (row["ack_status"], row["trigger_status"], row["type"]) == ("N/A", "N/A", "sms")
    assert row["attempts"] == 0 and row["properties"] == {}
    assert row["created_at"].tzinfo is not None and row["updated_at"] == row["created_at"]


@pytest.mark.parametrize(
    ("columns", "values", "constraint"),
    [
        ("direction, to_address, body, status", "'out', '+31612345678', 'hi', 'LOST'", "messages_status_known"),
        ("direction, to_address, body", "'out', '+31612345678', ''", "messages_body_not_empty"),
        ("direction, to_address, body", "'out', '0031 6 1234', 'hi'", "messages_to_address_format"),
        ("direction, to_address, body", "'out', '+0612345678', 'hi'", "messages_to_address_format"),
        ("direction, to_address, body", "'out', '+316123456789012345', 'hi'", "messages_to_address_format"),
        ("direction, to_address, from_address, body", "'out', '+31612345678', 'way-too-long-sender', 'hi'",
         "messages_from_address_format"),
        ("direction, to_address, body", "'sideways', '+31612345678', 'hi'", "messages_direction_known"),
        ("direction, from_address, body, status", "'in', '+31612345678', 'hi', 'QUEUED'",
         "messages_status_fits_direction"),
        ("direction, from_address, body", "'in', '+31612345678', 'hi'", "messages_status_fits_direction"),
        ("direction, body", "'out', 'hi'", "messages_out_has_to_address"),
        ("direction, to_address, body, ack_status", "'out', '+31612345678', 'hi', 'MAYBE'",
         "messages_ack_status_known"),
        ("direction, to_address, body, trigger_status", "'out', '+31612345678', 'hi', 'DONE'",
         "messages_trigger_status_known"),
        ("direction, to_address, body, properties", "'out', '+31612345678', 'hi', '[1]'",
         "messages_properties_is_object"),
    ],
)
def test_bad_row_is_refused_naming_the_constraint(conn: Conn, columns: str, values: str, constraint: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        conn.execute(f"INSERT INTO messages ({columns}) VALUES ({values})")
    assert refused.value.diag.constraint_name == constraint
    assert constraint in str(refused.value)


@pytest.mark.parametrize("address", ["+31612345678", "+1234567", "1234", "ACME", "My Shop", "Info-Line.1"])
def test_valid_addresses_are_accepted(conn: Conn, address: str) -> None:
    conn.execute(
        "INSERT INTO messages (direction, to_address, from_address, body) VALUES ('out', %s, %s, 'hi')",
        (address, address),
    )


def test_incoming_message_needs_a_sender_but_no_recipient(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO messages (direction, from_address, body, status) VALUES ('in', '+31612345678', 'hi', 'RECEIVED')"
    )
    with pytest.raises(psycopg.errors.CheckViolation, match="messages_in_has_from_address"):
        conn.execute("INSERT INTO messages (direction, body, status) VALUES ('in', 'hi', 'RECEIVED')")


def test_client_ref_is_unique_where_given(conn: Conn) -> None:
    insert = "INSERT INTO messages (direction, to_address, body, client_ref) VALUES ('out', '+31612345678', 'hi', %s)"
    conn.execute(insert, (None,))
    conn.execute(insert, (None,))
    conn.execute(insert, ("order-17",))
    with pytest.raises(psycopg.errors.UniqueViolation, match="messages_client_ref_key"):
        conn.execute(insert, ("order-17",))


def test_updated_at_is_kept_by_the_database(conn: Conn) -> None:
    row = conn.execute(PLAIN_INSERT).fetchone()
    assert row is not None
    time.sleep(0.01)
    update = "UPDATE messages SET error = 'x' WHERE id = %s RETURNING updated_at"
    updated = conn.execute(update, (row["id"],)).fetchone()
    assert updated is not None and updated["updated_at"] > row["updated_at"]


def test_insert_with_future_scheduled_at_waits_as_scheduled(conn: Conn) -> None:
    insert = (
        "INSERT INTO messages (direction, to_address, body, scheduled_at) "
        "VALUES ('out', '+31612345678', 'hi', now() + %s::interval) RETURNING status"
    )
    assert conn.execute(insert, ("1 hour",)).fetchone() == {"status": "SCHEDULED"}
    assert conn.execute(insert, ("-1 hour",)).fetchone() == {"status": "QUEUED"}


def test_plain_sql_forbidden_status_move_is_refused(conn: Conn) -> None:
    row = conn.execute(PLAIN_INSERT).fetchone()
    assert row is not None
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        conn.execute("UPDATE messages SET status = 'DELIVERED' WHERE id = %s", (row["id"],))
    assert refused.value.diag.constraint_name == "messages_status_move"
    assert "QUEUED -> DELIVERED" in str(refused.value)


def test_entering_a_permanent_status_offers_the_message_to_triggers_again(conn: Conn) -> None:
    row = conn.execute(PLAIN_INSERT).fetchone()
    assert row is not None
    conn.execute("UPDATE messages SET status = 'SENDING', trigger_status = 'PROCESSED' WHERE id = %s", (row["id"],))
    conn.execute("UPDATE messages SET status = 'SENT' WHERE id = %s", (row["id"],))
    assert conn.execute("SELECT trigger_status FROM messages").fetchone() == {"trigger_status": "N/A"}


def test_status_check_and_move_table_match_the_code(conn: Conn) -> None:
    statuses = {r["status"]: r["permanent"] for r in conn.execute("SELECT * FROM message_statuses")}
    assert statuses == {str(s): s in PERMANENT for s in Status}
    moves = {(r["from_status"], r["to_status"]) for r in conn.execute("SELECT * FROM status_moves")}
    assert moves == {(str(a), str(b)) for a, targets in ALLOWED_MOVES.items() for b in targets}
    check = conn.execute(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conname = 'messages_status_known'"
    ).fetchone()
    assert check is not None
    for status in Status:
        assert f"'{status}'" in check["def"]


def test_queue_uses_partial_indexes_and_leaves_room_for_hot_updates(conn: Conn) -> None:
    partial = {
        r["indexname"]
        for r in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'messages'")
        if " WHERE " in r["indexdef"]
    }
    assert {"messages_scheduled_idx", "messages_queued_idx", "messages_sending_idx"} <= partial
    options = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'messages'").fetchone()
    assert options is not None and "fillfactor=80" in options["reloptions"]


def test_migrate_twice_applies_nothing_the_second_time(database_url: str, conn: Conn) -> None:
    assert migrate(database_url) == []
    versions = [r["version"] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in available_migrations()]


# -- NOTIFY: once per statement, status told from other changes ---------------------------


def notifications(listener: Conn, wait_s: float = 0.3) -> list[str]:
    select.select([listener.fileno()], [], [], wait_s)
    time.sleep(0.05)
    return [n.payload for n in listener.notifies(timeout=0)]


@pytest.fixture
def listener(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("LISTEN smsbus")
        yield c


def test_insert_of_many_rows_notifies_once(conn: Conn, listener: Conn) -> None:
    conn.execute(
        "INSERT INTO messages (direction, to_address, body) "
        "SELECT 'out', '+31612345678', 'bulk ' || i FROM generate_series(1, 500) i"
    )
    assert notifications(listener) == ["status"]


def test_status_changes_and_other_changes_notify_differently(conn: Conn, listener: Conn) -> None:
    conn.execute(PLAIN_INSERT)
    assert notifications(listener) == ["status"]
    conn.execute("UPDATE messages SET error = 'note'")
    assert notifications(listener) == ["nonstatus"]
    conn.execute("UPDATE messages SET ack_status = 'WAITING'")
    assert notifications(listener) == ["status"]
    conn.execute("UPDATE messages SET status = 'SENDING'")
    assert notifications(listener) == ["status"]


def test_statement_touching_no_rows_notifies_nothing(conn: Conn, listener: Conn) -> None:
    conn.execute("UPDATE messages SET status = 'SENDING' WHERE status = 'QUEUED'")
    conn.execute("INSERT INTO messages (direction, to_address, body) SELECT 'out', '+31612345678', 'x' WHERE false")
    assert notifications(listener, wait_s=0.2) == []


def test_rolled_back_change_notifies_nothing(database_url: str, listener: Conn) -> None:
    with psycopg.connect(database_url) as c:
        c.execute(PLAIN_INSERT)
        c.rollback()
    assert notifications(listener, wait_s=0.2) == []


@pytest.mark.parametrize(
    ("statement", "topic"),
    [
        ("INSERT INTO channels (name, type) VALUES ('kpn', 'smpp')", "config.channels"),
        ("INSERT INTO routing_rules (position, name, condition, channels) VALUES (1, 'all', 'true', '{kpn}')",
         "config.routing_rules"),
        ("INSERT INTO blocking_rules (position, name, condition) VALUES (1, 'sat', 'false')", "config.blocking_rules"),
        ("INSERT INTO triggers (position, name, language, script) VALUES (1, 't', 'sql', 'SELECT 1')",
         "config.triggers"),
    ],
)
def test_config_tables_announce_their_changes(conn: Conn, listener: Conn, statement: str, topic: str) -> None:
    conn.execute(statement)
    assert notifications(listener) == [topic]


def test_channel_health_is_fresh_only_while_reported(conn: Conn) -> None:
    from smsbus import channel_health

    conn.execute("INSERT INTO channels (name, type) VALUES ('kpn', 'smpp'), ('modem', 'gsm')")
    channel_health.report(conn, None, "kpn", connected=True, details={"binds": 1})
    channel_health.report(conn, None, "modem", connected=False)
    assert channel_health.connected_channels(conn) == {"kpn"}
    conn.execute("UPDATE channel_health SET updated_at = now() - interval '1 hour' WHERE channel = 'kpn'")
    assert channel_health.connected_channels(conn) == set()


def test_requeued_message_goes_through_the_router_again_but_a_retry_keeps_its_pass(conn: Conn) -> None:
    row = conn.execute(PLAIN_INSERT).fetchone()
    assert row is not None
    conn.execute("UPDATE messages SET routed_at = now(), channel = 'kpn'")
    conn.execute("UPDATE messages SET status = 'SENDING'")
    conn.execute("UPDATE messages SET status = 'QUEUED'")
    assert conn.execute("SELECT routed_at IS NOT NULL AS routed FROM messages").fetchone() == {"routed": True}
    conn.execute("UPDATE messages SET status = 'SENDING'")
    conn.execute("UPDATE messages SET status = 'FAILED'")
    conn.execute("UPDATE messages SET status = 'QUEUED'")
    assert conn.execute("SELECT routed_at IS NULL AS unrouted FROM messages").fetchone() == {"unrouted": True}
