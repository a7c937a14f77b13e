"""The port 16725 wire format and the broker's coalescing, without processes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smsbus.bus import MAX_LINE_BYTES, Notification, decode_frames, encode_frames, parse_notification
from smsbus.errors import MalformedNotification
from smsbus_broker.broker import coalesce


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"status", Notification("status")),
        (b"status\n", Notification("status")),
        (b"status\r\n", Notification("status")),
        (b"nonstatus 1,2,3\n", Notification("nonstatus", (1, 2, 3))),
    ],
)
def test_valid_notifications_parse(data: bytes, expected: Notification) -> None:
    assert parse_notification(data) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad topic"),
        (b"\xff\xfe", "not ASCII"),
        (b"STATUS", "bad topic"),
        (b"launch", "unknown topic"),
        (b"config.channels", "unknown topic"),
        (b"status 1,,2", "bad ids"),
        (b"status -1", "bad ids"),
        (b"status 1 2", "bad ids"),
        (b"status " + b"1," * 5000, "longer than"),
    ],
)
def test_malformed_notifications_say_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedNotification, match=reason):
        parse_notification(data)


@given(
    topic=st.sampled_from(["status", "nonstatus"]),
    ids=st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=200).map(tuple),
)
def test_line_and_frames_round_trip(topic: str, ids: tuple[int, ...]) -> None:
    notification = Notification(topic, ids)
    line = notification.to_line()
    assert len(line) <= MAX_LINE_BYTES or len(ids) > 200
    assert parse_notification(line) == notification
    assert decode_frames(encode_frames(notification)) == notification


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_malformed(data: bytes) -> None:
    try:
        parse_notification(data)
    except MalformedNotification:
        pass


def test_coalesce_merges_a_burst_per_topic_and_keeps_order() -> None:
    burst = [Notification("status", (3, 1)), Notification("nonstatus"), Notification("status", (1, 2))]
    assert coalesce(burst) == [Notification("status", (3, 1, 2)), Notification("nonstatus")]


def test_coalesce_splits_ids_that_would_make_an_overlong_line() -> None:
    merged = coalesce([Notification("status", tuple(range(1000)))])
    assert [n.ids for n in merged] == [tuple(range(0, 400)), tuple(range(400, 800)), tuple(range(800, 1000))]
    assert all(len(n.to_line()) <= MAX_LINE_BYTES for n in merged)
