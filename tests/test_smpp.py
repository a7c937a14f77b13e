"""The SMPP channel against the SMSC simulator, both real processes on loopback sockets.

A channel claims only what the router let through (routed_at): to test the channel alone,
most tests mark their messages routed in the INSERT; one runs the real router in the path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smsbus.encoding import Encoding, join_payloads, split_user_data
from tests.peers.metrics import scrape
from tests.peers.processes import ServiceProcess, free_port, start_service
from tests.peers.smsc import PASSWORD, SYSTEM_ID, Smsc

Conn = psycopg.Connection[dict[str, Any]]

INSERT_ROUTED = """
INSERT INTO messages (direction, to_address, body, channel, routed_at)
VALUES ('out', %(to)s, %(body)s, %(channel)s, now()) RETURNING id
"""
INSERT_CHANNEL = """
INSERT INTO channels (name, type, settings, report_timeout)
VALUES (%(name)s, 'smpp', %(settings)s, make_interval(secs => %(report_timeout_s)s))
"""


def add_channel(conn: Conn, smsc: Smsc, name: str = "sim", report_timeout_s: float = 3600, **settings: Any) -> str:
    values = {
        "host": "127.0.0.1", "port": smsc.port, "system_id": SYSTEM_ID, "password": PASSWORD,
        "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, "retry_initial_s": 0.2,
        "throttle_pause_s": 0.2, "response_timeout_s": 5, "poll_interval_s": 0.5,
        "reassembly_timeout_s": 60,
        **settings,
    }
    conn.execute(INSERT_CHANNEL, {"name": name, "settings": json.dumps(values), "report_timeout_s": report_timeout_s})
    return name


@pytest.fixture
def start_channel(service_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts channel processes; whatever still runs at the end is stopped."""
    started: list[ServiceProcess] = []

    def start(name: str = "sim", log_name: str | None = None) -> ServiceProcess:
        process = start_service(["smsbus-channel-smpp", "--channel", name], service_env,
                                tmp_path / f"{log_name or 'channel-' + name}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def send(conn: Conn, body: str, channel: str = "sim", to: str = "+31612345678") -> int:
    row = conn.execute(INSERT_ROUTED, {"to": to, "body": body, "channel": channel}).fetchone()
    assert row is not None
    return int(row["id"])


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s (last: {result!r})")
        time.sleep(0.05)


def message(conn: Conn, message_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM messages WHERE id = %(id)s", {"id": message_id}).fetchone()
    assert row is not None
    return dict(row)


def wait_status(conn: Conn, message_id: int, status: str, timeout_s: float = 10.0) -> dict[str, Any]:
    wait_for(lambda: message(conn, message_id)["status"] == status, timeout_s, f"message {message_id} {status}")
    return message(conn, message_id)


def statuses(conn: Conn, channel: str = "sim") -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) AS n FROM messages WHERE channel = %(c)s AND direction = 'out' GROUP BY status",
        {"c": channel},
    )
    return {r["status"]: r["n"] for r in rows}


def messages_moved(metrics_port: int, channel: str = "sim") -> dict[str, float]:
    """smsbus_messages_total of the channel, by status, as its /metrics serves them."""
    samples = scrape(metrics_port).items()
    return {dict(labels)["status"]: value for (name, labels), value in samples
            if name == "smsbus_messages_total" and ("channel", channel) in labels}


def reassembled(submits: list[dict[str, Any]], encoding: Encoding) -> str:
    payloads = []
    for pdu in submits:
        _, payload = split_user_data(bytes.fromhex(pdu["short_message"]), bool(pdu["esm_class"] & 0x40))
        payloads.append(payload)
    return join_payloads(payloads, encoding)


def test_plain_insert_goes_on_the_wire_then_sent_then_delivered(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc)
    channel = start_channel()
    smsc.wait_bound()
    message_id = send(conn, "hello from smsbus")

    delivered = wait_status(conn, message_id, "DELIVERED")
    submits = smsc.pdus("in", "submit_sm")
    assert [s["destination_addr"] for s in submits] == ["31612345678"]
    assert bytes.fromhex(submits[0]["short_message"]) == b"hello from smsbus"
    assert submits[0]["data_coding"] == 0 and submits[0]["registered_delivery"] == 1
    assert delivered["ack_status"] == "ACK"
    assert delivered["parts"] == 1
    # the SMSC gave 00000001; the receipt's TLV said 1: one id, up to leading zeros
    assert delivered["provider_id"] == "1"
    assert delivered["sent_at"] is not None and delivered["report_at"] is not None
    health = conn.execute("SELECT connected FROM channel_health WHERE channel = 'sim'").fetchone()
    assert health is not None and health["connected"]

    code, _ = channel.stop()
    assert code == 0
    assert "unbind" in [p["command"] for p in smsc.pdus("in")]


def test_with_the_router_a_plain_insert_naming_the_channel_is_delivered(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess],
    service_env: dict[str, str], tmp_path: Path,
) -> None:
    add_channel(conn, smsc)
    start_channel()
    smsc.wait_bound()
    router = start_service(["smsbus-router"], {**service_env, "SMSBUS_ROUTER_METRICS_PORT": "0"},
                           tmp_path / "router.log")
    try:
        # the SPEC §2 statement, naming the channel: the router passes it, the channel sends it
        row = conn.execute(
            "INSERT INTO messages (direction, to_address, body, channel)"
            " VALUES ('out', '+31612345678', 'hi', 'sim') RETURNING id"
        ).fetchone()
        assert row is not None
        delivered = wait_status(conn, row["id"], "DELIVERED")
        assert delivered["routed_at"] is not None
        assert [s["destination_addr"] for s in smsc.pdus("in", "submit_sm")] == ["31612345678"]
    finally:
        router.stop()

def test_long_gsm_and_emoji_texts_arrive_as_concatenated_parts(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc)
    start_channel()
    smsc.wait_bound()
    gsm_text = "Price: 5€ [see] ~ ^ {x} " * 12
    emoji_text = "Hi 😀 there 🎉 " * 12
    gsm_id = send(conn, gsm_text, to="+31600000001")
    emoji_id = send(conn, emoji_text, to="+31600000002")

    gsm_row = wait_status(conn, gsm_id, "DELIVERED")
    emoji_row = wait_status(conn, emoji_id, "DELIVERED")
    submits = smsc.pdus("in", "submit_sm")
    gsm_parts = [s for s in submits if s["destination_addr"] == "31600000001"]
    emoji_parts = [s for s in submits if s["destination_addr"] == "31600000002"]
    assert gsm_row["parts"] == len(gsm_parts) == 3
    assert emoji_row["parts"] == len(emoji_parts) == 3  # 180 UTF-16 units
    assert {p["data_coding"] for p in gsm_parts} == {0}
    assert {p["data_coding"] for p in emoji_parts} == {8}
    assert all(p["esm_class"] & 0x40 for p in gsm_parts + emoji_parts)
    assert reassembled(gsm_parts, Encoding.GSM7) == gsm_text
    assert reassembled(emoji_parts, Encoding.UCS2) == emoji_text
    # every part had its own receipt; the message is DELIVERED only with all of them
    receipts = conn.execute(
        "SELECT count(*) AS n FROM message_parts WHERE receipt_state = 'DELIVRD'"
    ).fetchone()
    assert receipts is not None and receipts["n"] == 6


def test_incoming_single_and_concatenated_messages_become_received_rows(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    metrics_port = free_port()
    add_channel(conn, smsc, reassembly_timeout_s=1, metrics_port=metrics_port)
    start_channel()
    smsc.wait_bound()
    long_text = "This is a long incoming message with € and [brackets] " * 5
    smsc.command("inject +31611111111 +3197010000000 STOP")
    smsc.command(f"inject +31622222222 +3197010000000 {long_text}")
    smsc.command("inject-parts +31633333333 +3197010000000 1,3 " + "part " * 70)

    def received() -> list[dict[str, Any]]:
        rows = conn.execute("SELECT * FROM messages WHERE direction = 'in' ORDER BY from_address").fetchall()
        return rows if len(rows) == 3 else []

    rows = wait_for(received, what="three incoming messages")
    single, concatenated, incomplete = rows
    assert (single["from_address"], single["body"], single["status"]) == ("+31611111111", "STOP", "RECEIVED")
    assert single["to_address"] == "+3197010000000" and single["channel"] == "sim"
    assert (concatenated["body"], concatenated["parts"]) == (long_text, 2)
    # part 2 never came: after the reassembly timeout the rest is kept, with the gap named
    assert incomplete["parts"] == 2 and incomplete["error"] == "incomplete: part(s) 2 of 3 never arrived"
    acknowledged = wait_for(lambda: smsc.stats()["delivered_acked"] == 5 or None, what="deliver_sm_resp")
    assert acknowledged
    # the incomplete one counted too, when the reassembly timeout stored it
    wait_for(lambda: messages_moved(metrics_port) == {"RECEIVED": 3}, what="3 RECEIVED counted")


def test_an_incoming_message_from_a_sender_the_table_refuses_is_received_never_refused(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc)
    channel = start_channel()
    smsc.wait_bound()
    smsc.command("inject a!b +3197010000000 from a sender no address format allows")
    row = wait_for(lambda: conn.execute("SELECT * FROM messages WHERE direction = 'in'").fetchone(), what="stored")
    assert (row["status"], row["from_address"], row["properties"]) == ("RECEIVED", "unknown", {"sender": "a!b"})
    wait_for(lambda: [p["status"] for p in smsc.pdus("in", "deliver_sm_resp")] == [0] or None,
             what="deliver_sm_resp with ESME_ROK")
    assert channel.process.poll() is None


def test_throttling_and_temporary_errors_retry_permanent_fails_missing_receipt_is_noreport(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    metrics_port = free_port()
    add_channel(conn, smsc, report_timeout_s=1, metrics_port=metrics_port)
    channel = start_channel()
    smsc.wait_bound()

    smsc.command("fail-next 1 0x58")
    throttled = wait_status(conn, send(conn, "throttled first"), "DELIVERED")
    assert throttled["attempts"] == 0  # throttling slows the bind down, it uses no attempt

    smsc.command("fail-next 1 0x08")
    retried = wait_status(conn, send(conn, "temporary error first"), "DELIVERED")
    assert retried["attempts"] == 1

    smsc.command("fail-next 1 0x0B")
    failed = wait_status(conn, send(conn, "to a bad number"), "FAILED")
    assert failed["error"] == "submit_sm_resp 0x0000000B ESME_RINVDSTADR: Invalid Destination Address"
    assert failed["ack_status"] == "NACK"

    smsc.command("fail-next 5 0x08")
    gave_up = wait_status(conn, send(conn, "never accepted"), "FAILED")
    assert gave_up["error"].startswith("gave up after 5 attempts: submit_sm_resp 0x00000008 ESME_RSYSERR")

    smsc.command("receipts off")
    unreported = wait_status(conn, send(conn, "nobody reports"), "NOREPORT", timeout_s=8)
    assert unreported["error"] == "no delivery receipt within the report timeout"
    assert channel.process.poll() is None
    assert "throttled channel=sim" in channel.log()
    # every move as the SQL made it: 1 throttled + 1 temporary + 4 given up on = 6 requeues
    expected = {"QUEUED": 6, "SENT": 3, "DELIVERED": 2, "FAILED": 2, "NOREPORT": 1}
    wait_for(lambda: messages_moved(metrics_port) == expected, what=f"moves counted as {expected}")


def test_undelivered_part_makes_the_message_notdelivered_and_early_receipts_apply(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc)
    start_channel()
    smsc.wait_bound()
    smsc.command("receipt-state UNDELIV")
    undelivered = wait_status(conn, send(conn, "two parts " * 20), "NOTDELIVERED")
    assert undelivered["error"].startswith("delivery receipt: part 1 UNDELIV")

    # the receipt comes before submit_sm_resp: kept, then applied when the response is recorded
    smsc.command("receipt-state DELIVRD")
    smsc.command("early-receipts on")
    smsc.command("latency 300")
    wait_status(conn, send(conn, "receipt overtakes the response"), "DELIVERED")
    left = conn.execute("SELECT count(*) AS n FROM early_receipts").fetchone()
    assert left is not None and left["n"] == 0


def test_window_keeps_that_many_submits_outstanding_and_no_more(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc, window=4, registered_delivery=0)
    start_channel()
    smsc.wait_bound()
    smsc.command("latency 50")
    ids = [send(conn, f"burst {i}") for i in range(40)]
    wait_for(lambda: statuses(conn).get("SENT") == 40 or None, what="40 SENT")
    assert smsc.stats()["max_pending_responses"] == 4
    # without receipts requested, SENT is where the message ends
    assert message(conn, ids[0])["status"] == "SENT"


def test_connection_dropped_mid_burst_reconnects_and_loses_nothing(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc)
    start_channel()
    smsc.wait_bound()
    smsc.command("latency 5")
    smsc.command("drop-after 60")
    for i in range(200):
        send(conn, f"burst {i}")
    wait_for(lambda: sum(n for s, n in statuses(conn).items() if s in ("SENT", "DELIVERED")) == 200 or None,
             timeout_s=30, what="200 SENT or DELIVERED")
    assert smsc.stats()["binds"] >= 2
    assert set(statuses(conn)) <= {"SENT", "DELIVERED"}


def test_the_database_connection_lost_mid_burst_is_reconnected_and_loses_nothing(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc)
    channel = start_channel()
    smsc.wait_bound()
    smsc.command("latency 50")  # 200 submits/s: the burst lasts well beyond the kill
    for i in range(300):
        send(conn, f"message {i}")
    wait_for(lambda: statuses(conn).get("DELIVERED", 0) >= 20 or None, what="20 DELIVERED")
    # the main loop's connection (not the ownership lock's): reconnected with backoff
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'channel-smpp-sim' AND datname = current_database()"
    )
    wait_for(lambda: statuses(conn) == {"DELIVERED": 300} or None, timeout_s=60, what="300 DELIVERED")
    assert "database connection lost" in channel.log()
    assert channel.process.poll() is None


def test_rate_limit_spaces_the_submits(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc, rate=20, registered_delivery=0)
    start_channel()
    smsc.wait_bound()
    for i in range(30):
        send(conn, f"paced {i}")
    wait_for(lambda: statuses(conn).get("SENT") == 30 or None, what="30 SENT")
    times = sorted(p["ts"] for p in smsc.pdus("in", "submit_sm"))
    # a burst of at most 10 (the window), then 20 per second: 30 submits take at least 1 s
    assert times[-1] - times[0] >= 0.9


def test_a_transmitter_and_receiver_pair_sends_and_gets_receipts_and_messages(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc, bind_mode="pair")
    start_channel()
    smsc.wait_bound(binds=2)
    assert sorted(b for b in smsc.stats()["bound"] if b != "-") == ["bind_receiver", "bind_transmitter"]
    wait_status(conn, send(conn, "over the transmitter, receipt over the receiver"), "DELIVERED")
    smsc.command("inject +31611111111 +3197010000000 hello")
    wait_for(lambda: conn.execute("SELECT 1 FROM messages WHERE direction = 'in'").fetchone(), what="incoming")

@pytest.mark.parametrize(("on_unknown", "settled_as"), [("requeue", "DELIVERED"), ("fail", "FAILED")])
def test_kill_9_mid_burst_then_restart_leaves_nothing_sending(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess],
    on_unknown: str, settled_as: str,
) -> None:
    add_channel(conn, smsc, on_unknown=on_unknown)
    channel = start_channel()
    smsc.wait_bound()
    smsc.command("latency 2000")
    ids = [send(conn, f"burst {i}") for i in range(40)]
    # a full window on the wire, and (at-least-once only) two windows claimed ahead
    on_wire_and_ahead = 30 if on_unknown == "requeue" else 10
    # claimed is not yet on the wire (a claim commits before its submits go out): wait for both
    wait_for(lambda: (statuses(conn).get("SENDING") == on_wire_and_ahead
                      and smsc.stats()["max_pending_responses"] == 10) or None, what="a full window on the wire")
    channel.kill()
    assert statuses(conn)["SENDING"] == on_wire_and_ahead
    assert smsc.stats()["max_pending_responses"] == 10

    smsc.command("latency 0")
    start_channel()
    wait_for(lambda: set(statuses(conn)) <= {"DELIVERED", "FAILED"} or None, timeout_s=20, what="every message settled")
    rows = [message(conn, i) for i in ids]
    # those SENDING when the process died: their outcome is unknown
    unknown = [r for r in rows if r["attempts"] == 1 or r["status"] == "FAILED"]
    assert len(unknown) == on_wire_and_ahead
    assert {r["status"] for r in unknown} == {settled_as}
    if on_unknown == "fail":
        assert {r["error"] for r in unknown} == {
            "outcome unknown: the connection or process ended before submit_sm_resp (on_unknown = fail)"
        }
    assert {r["status"] for r in rows if r not in unknown} == {"DELIVERED"}


@pytest.mark.parametrize("garbage", ["length", "unknown", "malformed"])
def test_garbage_from_the_smsc_is_logged_the_connection_reset_and_the_process_lives_on(
    conn: Conn, smsc: Smsc, start_channel: Callable[..., ServiceProcess], garbage: str
) -> None:
    add_channel(conn, smsc)
    channel = start_channel()
    smsc.wait_bound()
    smsc.command(f"garbage {garbage}")
    channel.wait_for_log("garbage from the SMSC")
    wait_for(lambda: smsc.stats()["binds"] >= 2 or None, what="a new bind")
    assert channel.process.poll() is None
    wait_status(conn, send(conn, "still working"), "DELIVERED")


def test_wrong_password_is_logged_and_retried_and_health_says_not_connected(
    conn: Conn, smsc: Smsc, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc, password="wrong")
    channel = start_channel()
    channel.wait_for_log("bind failed channel=sim error=bind_transceiver refused with command_status 0x0000000E")
    health = wait_for(lambda: conn.execute("SELECT * FROM channel_health WHERE channel = 'sim'").fetchone())
    assert health["connected"] is False
    assert channel.process.poll() is None


def test_a_second_process_for_the_same_channel_waits_for_the_first(
    conn: Conn, smsc: Smsc, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc)
    first = start_channel("sim")
    smsc.wait_bound()
    second = start_channel("sim", log_name="second")
    second.wait_for_log("another process owns channel=sim")
    assert [b for b in smsc.stats()["bound"] if b != "-"] == ["bind_transceiver"]
    first.stop()
    # the lock went with the first process: the second takes over and binds
    second.wait_for_log("owner of channel=sim", timeout_s=10)
    smsc.wait_bound()
    second.stop()


def test_bad_settings_exit_non_zero_naming_the_field(conn: Conn, start_channel: Callable[..., ServiceProcess]) -> None:
    conn.execute(INSERT_CHANNEL, {"name": "bad", "settings": json.dumps({"host": "x", "system_id": "a", "window": 0}),
                                  "report_timeout_s": 60})
    process = start_channel("bad")
    assert process.process.wait(20) != 0
    assert "bad setting window: Expected `int` >= 1" in process.log()
    missing = start_channel("nosuch")
    assert missing.process.wait(20) != 0
    assert "no channel named 'nosuch'" in missing.log()


def test_receipt_text_ids_in_decimal_match_hex_submit_ids_when_the_channel_says_so(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    add_channel(conn, smsc, receipt_id_format="decimal")
    start_channel()
    smsc.wait_bound()
    smsc.command("receipt-tlvs off")
    # ids 0000000A .. 0000001E in submit_sm_resp; id:10 .. id:30 in the receipts' text
    ids = [send(conn, f"message {i}") for i in range(30)]
    wait_for(lambda: statuses(conn).get("DELIVERED") == 30 or None, what="30 DELIVERED")
    assert sorted(message(conn, i)["provider_id"] for i in ids) == sorted(format(n, "x") for n in range(1, 31))


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_chaos_throttling_errors_drops_and_a_kill_lose_nothing(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, start_channel: Callable[..., ServiceProcess]
) -> None:
    count = 20_000 if os.environ.get("SMSBUS_SOAK") else 300
    add_channel(conn, smsc, max_attempts=50, retry_initial_s=0.05, retry_max_s=0.5, throttle_max_pause_s=0.5)
    channel = start_channel()
    smsc.wait_bound()
    smsc.command("throttle 0.05")
    smsc.command("error 0.05 0x08")  # temporary: retried
    smsc.command("latency 2")
    conn.execute(
        "INSERT INTO messages (direction, to_address, body, channel, routed_at)"
        " SELECT 'out', '+3161' || lpad(i::text, 7, '0'), 'chaos ' || i, 'sim', now()"
        " FROM generate_series(1, %(count)s) AS i",
        {"count": count},
    )
    for left in (0.8, 0.6, 0.4):
        wait_for(lambda left=left: statuses(conn).get("QUEUED", 0) < count * left or None, timeout_s=60,
                 what="progress")
        smsc.command("drop")
    channel.kill()
    restarted = start_channel()
    try:
        # a liveness bound, generous for a loaded machine, not a timing goal
        wait_for(lambda: set(statuses(conn)) <= {"DELIVERED"} or None, timeout_s=90 + count / 50,
                 what="every message DELIVERED")
    except AssertionError as e:
        raise AssertionError(f"{e}: {statuses(conn)}\n{restarted.log()[-3000:]}") from None
    assert sum(statuses(conn).values()) == count
