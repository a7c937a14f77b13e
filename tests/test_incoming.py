"""smsbus.incoming: what providers and modems send is stored, never refused (SPEC §13)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsbus import incoming
from smsbus.encoding import Encoding

Conn = psycopg.Connection[dict[str, Any]]

ADDRESS_CONSTRAINT = """
SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE conname = 'messages_from_address_format'
"""
MATCHES = "SELECT a, a ~ %(pattern)s AS matches FROM unnest(%(addresses)s::text[]) AS a"


def test_nul_in_latin1_data_is_replaced_and_the_raw_user_data_kept_in_hex() -> None:
    body, properties = incoming.decode_body([b"ab\x00c", b"d\xff"], Encoding.LATIN1)
    assert body == "ab\ufffdcd\xff"
    assert properties == {"user_data": "6162006364ff", "encoding": "latin1"}


def test_ucs2_nul_and_a_lone_surrogate_are_replaced() -> None:
    body, properties = incoming.decode_body(["hi\x00".encode("utf-16-be") + b"\xd8\x00"], Encoding.UCS2)
    assert body == "hi\ufffd\ufffd"
    assert properties["user_data"] == "006800690000d800"


def test_faithful_text_keeps_no_raw_copy_and_an_empty_one_is_a_space() -> None:
    assert incoming.decode_body(["héllo €".encode("utf-16-be")], Encoding.UCS2) == ("héllo €", {})
    assert incoming.decode_body([b""], Encoding.GSM7) == (incoming.EMPTY_BODY, {})


def test_a_sender_the_table_refuses_is_stored_as_unknown_with_the_sender_in_properties() -> None:
    row = incoming.received("ABCDEFGHIJKL", "+3197010000000", [b"hello"], Encoding.GSM7)
    assert (row.from_address, row.to_address, row.body) == ("unknown", "+3197010000000", "hello")
    assert row.properties == {"sender": "ABCDEFGHIJKL"}
    odd = incoming.received("+31 6\x00", "a!b", [b"x"], Encoding.GSM7, {"smsc_timestamp": "t"})
    assert odd.properties == {"smsc_timestamp": "t", "sender": "+31 6\ufffd", "recipient": "a!b"}
    assert odd.to_address is None


def test_received_rows_are_inserted_as_received(conn: Conn) -> None:
    row = incoming.received("ABCDEFGHIJKL", None, [b"\x00\x01binary"], Encoding.LATIN1)
    message_id = incoming.insert_received(conn, "sim", row, 1, "error with \x00 in it")
    stored = conn.execute("SELECT * FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert stored is not None
    assert (stored["direction"], stored["status"], stored["from_address"]) == ("in", "RECEIVED", "unknown")
    assert stored["body"] == "\ufffd\x01binary" and stored["error"] == "error with \ufffd in it"
    assert stored["properties"]["user_data"] == "0001" + b"binary".hex()


addresses = st.one_of(
    st.text(alphabet="+0123456789", max_size=17),
    st.text(alphabet=st.characters(codec="latin-1"), max_size=14),
    st.from_regex(r"[A-Za-z0-9 ._&!-]{1,13}", fullmatch=True),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(addresses, min_size=1, max_size=20))
def test_the_address_check_in_python_answers_as_the_table_does(conn: Conn, candidates: list[str]) -> None:
    definition = conn.execute(ADDRESS_CONSTRAINT).fetchone()
    assert definition is not None
    found = re.search(r"~ '(.*)'::text", definition["definition"])
    assert found is not None
    storable = [incoming.storable_text(a) for a in candidates]
    rows = conn.execute(MATCHES, {"pattern": found.group(1), "addresses": storable}).fetchall()
    assert {r["a"]: r["matches"] for r in rows} == {a: incoming.is_storable_address(a) for a in storable}
