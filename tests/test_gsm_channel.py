"""The GSM channel as a real process against the modem emulator on a real pty (SPEC §4, issue 6):
sending (short, concatenated, UCS-2; a refused or interrupted part sent again alone), receiving
(single, concatenated, undecodable), status reports (+CDS and stored on the SIM), NOREPORT, the
watchdog (hang, garbage, a device that disappears) and kill -9 while receiving and sending.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smsbus_channel_gsm import pdu
from smsbus_channel_gsm.channel_gsm import pdu_key
from tests.peers.metrics import value
from tests.peers.modem import EmulatedModem
from tests.peers.processes import ServiceProcess, free_port, start_service

Conn = psycopg.Connection[dict[str, Any]]
CHANNEL = "modem1"
LONG_TEXT = "The quick brown fox jumps over the lazy dog; " * 8  # 360 characters: 3 parts
UCS2_TEXT = "Привет, мир! 你好 🌍"


def wait_until(
    condition: Callable[[], Any], what: str, process: ServiceProcess | None = None, timeout_s: float = 15
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    log = process.log() if process is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def add_channel(conn: Conn, modem: EmulatedModem, **settings: Any) -> None:
    values = {
        "device": str(modem.link),
        "pin": "1234",
        "command_timeout_s": 1.0,
        "send_timeout_s": 2.0,
        "retry_initial_s": 0.2,
        "reopen_initial_s": 0.2,
        "reopen_max_s": 0.5,
        "poll_interval_s": 0.2,
        **settings,
    }
    conn.execute(
        "INSERT INTO channels (name, type, settings, report_timeout)"
        " VALUES (%(name)s, 'gsm', %(settings)s, '2 seconds')",
        {"name": CHANNEL, "settings": json.dumps(values)},
    )


def start_channel(service_env: dict[str, str], tmp_path: Path) -> ServiceProcess:
    process = start_service(["smsbus-channel-gsm", "--channel", CHANNEL], service_env, tmp_path / "channel.log")
    process.wait_for_log("modem ready")
    return process


def queue_message(conn: Conn, body: str, to: str = "+31612345678") -> int:
    row = conn.execute(
        "INSERT INTO messages (direction, to_address, body, channel, routed_at)"
        " VALUES ('out', %s, %s, %s, now()) RETURNING id",
        (to, body, CHANNEL),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def status_of(conn: Conn, message_id: int) -> str:
    row = conn.execute("SELECT status FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def received(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM messages WHERE direction = 'in' ORDER BY id").fetchall()


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[EmulatedModem]:
    emulator = EmulatedModem(tmp_path, pin="1234", auto_report="delivered")
    yield emulator
    emulator.stop()


@pytest.fixture
def channel(conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    add_channel(conn, modem)
    process = start_channel(service_env, tmp_path)
    yield process
    code, _ = process.stop()
    assert code == 0, process.log()


def test_sends_short_long_and_ucs2_messages_and_status_reports_deliver_them(
    conn: Conn, modem: EmulatedModem, channel: ServiceProcess
) -> None:
    short, long, ucs2 = (
        queue_message(conn, "Hello from smsbus €"),
        queue_message(conn, LONG_TEXT),
        queue_message(conn, UCS2_TEXT),
    )
    for message_id in (short, long, ucs2):
        wait_until(lambda m=message_id: status_of(conn, m) == "DELIVERED", f"message {message_id} DELIVERED", channel)

    sent = modem.sent()
    assert [s["text"] for s in sent[:1]] == ["Hello from smsbus €"]
    long_parts = sent[1:4]
    assert "".join(p["text"] for p in long_parts) == LONG_TEXT
    assert [p["udh"][-4:] for p in long_parts] == ["0301", "0302", "0303"]  # total 3, parts 1..3
    assert len({p["udh"][6:8] for p in long_parts}) == 1  # one concatenation reference
    assert sent[4]["encoding"] == "ucs2" and sent[4]["text"] == UCS2_TEXT
    assert all(s["request_report"] for s in sent)
    rows = {r["id"]: r for r in conn.execute("SELECT * FROM messages WHERE direction = 'out'")}
    assert (rows[short]["parts"], rows[long]["parts"], rows[ucs2]["parts"]) == (1, 3, 1)
    assert rows[long]["ack_status"] == "ACK" and rows[long]["sent_at"] is not None
    assert "AT+CMMS=1" in modem.commands()


def test_receives_single_and_concatenated_messages_and_deletes_them_after_commit(
    conn: Conn, modem: EmulatedModem, channel: ServiceProcess
) -> None:
    modem.call("deliver", sender="+31687654321", text="Short one")
    modem.call("deliver", sender="+31687654321", text=LONG_TEXT)
    modem.call("deliver", sender="Bank", text=UCS2_TEXT)
    rows = wait_until(lambda: len(received(conn)) == 3 and received(conn), "three incoming rows", channel)
    # in SIM index order, and a freed index is reused: the rows' order is not the sending order
    assert sorted((r["from_address"], r["body"], r["parts"], r["status"], r["channel"]) for r in rows) == [
        ("+31687654321", "Short one", 1, "RECEIVED", CHANNEL),
        ("+31687654321", LONG_TEXT, 3, "RECEIVED", CHANNEL),
        ("Bank", UCS2_TEXT, 1, "RECEIVED", CHANNEL),
    ]
    wait_until(lambda: modem.stored() == [], "the SIM emptied", channel)
    assert conn.execute("SELECT count(*) AS n FROM incoming_parts").fetchone() == {"n": 0}


def test_failed_report_is_notdelivered_and_a_missing_one_noreport(
    conn: Conn, modem: EmulatedModem, channel: ServiceProcess
) -> None:
    modem.call("auto_report", mode="off")
    failing, silent = queue_message(conn, "will fail"), queue_message(conn, "no report ever")
    wait_until(lambda: status_of(conn, silent) == "SENT", "both SENT", channel)
    reference = int(
        conn.execute("SELECT provider_id FROM messages WHERE id = %s", (failing,)).fetchone()["provider_id"]
    )
    modem.call("report", reference=reference, status=0x41)
    wait_until(lambda: status_of(conn, failing) == "NOTDELIVERED", "NOTDELIVERED", channel)
    # the channel's report_timeout is 2 s
    wait_until(lambda: status_of(conn, silent) == "NOREPORT", "NOREPORT", channel, timeout_s=15)
    assert "TP-ST 0x41" in conn.execute("SELECT error FROM messages WHERE id = %s", (failing,)).fetchone()["error"]


def messages_metric(port: int, status: str) -> float:
    """smsbus_messages_total{status,channel} of the channel's /metrics (0 before the first)."""
    return value(port, "smsbus_messages_total", channel=CHANNEL, status=status)


def test_a_long_message_is_delivered_only_when_every_part_is(
    conn: Conn, modem: EmulatedModem, channel: ServiceProcess
) -> None:
    modem.call("auto_report", mode="off")
    message = queue_message(conn, LONG_TEXT)
    wait_until(lambda: status_of(conn, message) in ("SENT", "NOREPORT"), "SENT", channel)
    first, second, third = (s["reference"] for s in modem.sent())
    for reference in (first, third):
        modem.call("report", reference=reference, status=0x00)
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) AS n FROM message_parts WHERE message_id = %s AND receipt_state = 'DELIVRD'",
                (message,),
            ).fetchone()["n"]
            == 2
        ),
        "parts 1 and 3 reported",
        channel,
    )
    assert status_of(conn, message) in ("SENT", "NOREPORT")  # part 2 has no report yet
    modem.call("report", reference=second, status=0x00)
    wait_until(lambda: status_of(conn, message) == "DELIVERED", "DELIVERED with the last report", channel)


def test_modem_errors_fail_permanent_ones_and_retry_temporary_ones(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    add_channel(conn, modem, metrics_port=port)
    channel = start_channel(service_env, tmp_path)
    try:
        modem.call("refuse", code=21, count=1)  # short message transfer rejected: permanent
        rejected = queue_message(conn, "rejected")
        wait_until(lambda: status_of(conn, rejected) == "FAILED", "FAILED", channel)
        row = conn.execute("SELECT * FROM messages WHERE id = %s", (rejected,)).fetchone()
        assert row["error"] == "modem refused part 1/1: +CMS ERROR: 21 (short message transfer rejected, permanent)"
        assert row["ack_status"] == "NACK" and row["attempts"] == 1

        modem.call("refuse", code=331, count=2)  # no network service: temporary
        retried = queue_message(conn, "retried")
        wait_until(lambda: status_of(conn, retried) == "DELIVERED", "DELIVERED after two refusals", channel)
        row = conn.execute("SELECT * FROM messages WHERE id = %s", (retried,)).fetchone()
        assert (row["attempts"], row["error"], row["ack_status"]) == (2, None, "ACK")  # sent on the third try
        assert (
            f"not sent id={retried} channel={CHANNEL} attempts=2 error=modem refused part 1/1: +CMS ERROR: 331"
            " (no network service, temporary)" in channel.log()
        )
        # every move the channel made, by status (SPEC §9)
        moves = {s: messages_metric(port, s) for s in ("FAILED", "QUEUED", "SENT", "DELIVERED")}
        assert moves == {"FAILED": 1.0, "QUEUED": 2.0, "SENT": 1.0, "DELIVERED": 1.0}
    finally:
        assert channel.stop()[0] == 0


def test_a_refused_part_is_sent_again_alone_with_the_same_reference(
    conn: Conn, modem: EmulatedModem, channel: ServiceProcess
) -> None:
    modem.call("refuse", code=42, count=1, after=1)  # congestion (temporary) at part 2 of 3
    message = queue_message(conn, LONG_TEXT)
    wait_until(lambda: status_of(conn, message) == "DELIVERED", "DELIVERED after the retry", channel)
    sent = modem.sent()
    # each part went out once, part 1 on the first attempt, parts 2 and 3 on the retry
    assert [s["udh"][-4:] for s in sent] == ["0301", "0302", "0303"]
    assert len({s["udh"][6:8] for s in sent}) == 1  # one concatenation reference: the phone joins them
    assert "".join(s["text"] for s in sent) == LONG_TEXT
    assert "modem refused part 2/3: +CMS ERROR: 42 (congestion, temporary)" in channel.log()
    row = conn.execute("SELECT * FROM messages WHERE id = %s", (message,)).fetchone()
    assert (row["attempts"], row["parts"], row["provider_id"]) == (1, 3, str(sent[2]["reference"]))
    parts = conn.execute(
        "SELECT part_number, provider_id, receipt_state FROM message_parts WHERE message_id = %s ORDER BY 1",
        (message,),
    ).fetchall()
    assert parts == [
        {"part_number": n, "provider_id": str(s["reference"]), "receipt_state": "DELIVRD"}
        for n, s in enumerate(sent, start=1)
    ]
    assert conn.execute("SELECT count(*) AS n FROM gsm_partial_sends").fetchone() == {"n": 0}


def test_a_concatenated_message_missing_a_part_is_stored_incomplete_after_the_timeout(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem, reassembly_timeout_s=0.5)
    process = start_channel(service_env, tmp_path)
    try:
        modem.call("deliver", sender="+31687654321", text=LONG_TEXT, lose_parts=[2])
        (row,) = wait_until(lambda: received(conn), "the incomplete message stored", process)
        assert row["properties"] == {"incomplete": True, "missing_parts": [2]} and row["parts"] == 3
        assert row["body"] == LONG_TEXT[:153] + LONG_TEXT[306:]
        assert modem.stored() == []
    finally:
        assert process.stop()[0] == 0


def test_the_rate_spaces_messages_out(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem, rate=2.0, batch=1)
    process = start_channel(service_env, tmp_path)
    try:
        ids = [queue_message(conn, f"paced {n}") for n in range(4)]
        wait_until(lambda: all(status_of(conn, i) == "DELIVERED" for i in ids), "all four DELIVERED", process)
        row = conn.execute(
            "SELECT max(sent_at) - min(sent_at) AS span FROM messages WHERE direction = 'out'"
        ).fetchone()
        # 2 per second: the last leaves at least 1.5 s after the first (a lower bound: load only adds)
        assert row["span"].total_seconds() >= 1.4
    finally:
        assert process.stop()[0] == 0


def test_a_hung_modem_is_reset_and_sending_continues(conn: Conn, modem: EmulatedModem, channel: ServiceProcess) -> None:
    first = queue_message(conn, "before the hang")
    wait_until(lambda: status_of(conn, first) == "DELIVERED", "first DELIVERED", channel)
    mark = channel.log_mark()
    modem.call("hang")
    second = queue_message(conn, "after the hang")
    channel.wait_for_log("modem reset", after=mark)
    wait_until(lambda: status_of(conn, second) == "DELIVERED", "second DELIVERED after the reset", channel)
    assert "hung: AT+CFUN=1,1" in modem.commands()
    assert [s["text"] for s in modem.sent()].count("after the hang") >= 1


def test_garbage_lines_are_ignored_with_a_log_line(conn: Conn, modem: EmulatedModem, channel: ServiceProcess) -> None:
    modem.call("garbage", on=True)
    message = queue_message(conn, "through the noise")
    modem.call("deliver", sender="+31600000001", text="incoming through the noise")
    wait_until(lambda: status_of(conn, message) == "DELIVERED", "DELIVERED despite garbage", channel)
    wait_until(lambda: len(received(conn)) == 1, "received despite garbage", channel)
    assert received(conn)[0]["body"] == "incoming through the noise"
    channel.wait_for_log("garbage from modem ignored")


def test_a_device_that_disappears_is_picked_up_again(conn: Conn, modem: EmulatedModem, channel: ServiceProcess) -> None:
    mark = channel.log_mark()
    modem.call("disconnect", seconds=1.5)
    channel.wait_for_log("modem unavailable", after=mark)
    health = wait_until(
        lambda: conn.execute(
            "SELECT * FROM channel_health WHERE channel = %s AND NOT connected", (CHANNEL,)
        ).fetchone(),
        "health reported disconnected",
        channel,
    )
    assert "error" in health["details"]
    message = queue_message(conn, "after the replug")
    wait_until(lambda: status_of(conn, message) == "DELIVERED", "sent on the new device", channel)
    wait_until(
        lambda: conn.execute("SELECT connected FROM channel_health WHERE channel = %s", (CHANNEL,)).fetchone()[
            "connected"
        ],
        "health connected again",
        channel,
    )


def test_health_and_metrics_report_signal_and_registration(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    add_channel(conn, modem, metrics_port=port)
    modem.call("signal", csq=17)
    process = start_channel(service_env, tmp_path)
    try:
        health = wait_until(
            lambda: conn.execute(
                "SELECT * FROM channel_health WHERE channel = %s AND connected", (CHANNEL,)
            ).fetchone(),
            "health connected",
            process,
        )
        assert health["details"]["registration"] == "home"
        assert health["details"]["signal_rssi"] == 17 and health["details"]["signal_dbm"] == -79
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f'smsbus_gsm_signal_rssi{{channel="{CHANNEL}"}} 17.0' in metrics
        assert f'smsbus_gsm_registration_status{{channel="{CHANNEL}"}} 1.0' in metrics
        assert f'smsbus_channel_connected{{channel="{CHANNEL}"}} 1.0' in metrics
        modem.call("register", stat=2)  # searching: cannot send
        wait_until(
            lambda: (
                not conn.execute("SELECT connected FROM channel_health WHERE channel = %s", (CHANNEL,)).fetchone()[
                    "connected"
                ]
            ),
            "health disconnected while searching",
            process,
        )
    finally:
        assert process.stop()[0] == 0


def test_bad_settings_exit_at_start_naming_the_field(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem, baud_rate=12345)
    process = start_service(["smsbus-channel-gsm", "--channel", CHANNEL], service_env, tmp_path / "bad.log")
    assert process.process.wait(10) != 0
    assert "baud_rate 12345" in process.log()
    missing = start_service(["smsbus-channel-gsm", "--channel", "nosuch"], service_env, tmp_path / "missing.log")
    assert missing.process.wait(10) != 0
    assert "no channel named 'nosuch'" in missing.log()


def test_a_wrong_pin_keeps_the_channel_running_and_reports_why(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem, pin="9999")
    process = start_service(["smsbus-channel-gsm", "--channel", CHANNEL], service_env, tmp_path / "pin.log")
    try:
        health = wait_until(
            lambda: conn.execute("SELECT * FROM channel_health WHERE channel = %s", (CHANNEL,)).fetchone(),
            "a health report",
            process,
        )
        assert not health["connected"]
        assert "+CME ERROR: 16" in health["details"]["error"]
    finally:
        assert process.stop()[0] == 0


def blocked_storing(conn: Conn) -> bool:
    """The channel's connection waits on a lock in the statement that remembers a PDU."""
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
        " AND query LIKE '%%INSERT INTO gsm_received_pdus%%'",
        (f"channel-gsm-{CHANNEL}",),
    ).fetchone()
    return bool(row and row["n"])


def test_kill_9_between_reading_and_committing_receives_exactly_once(
    conn: Conn, database_url: str, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem)
    modem.call("deliver", sender="+31611112222", text="exactly once, please")
    (stored_pdu,) = modem.call("status")["pdus"].values()
    key = pdu_key(pdu.skip_smsc(bytes.fromhex(stored_pdu)))
    # another transaction inserting the same key: the channel's insert waits for it, after
    # reading the message from the SIM and before its commit
    with psycopg.connect(database_url) as blocker:
        blocker.execute("INSERT INTO gsm_received_pdus (channel, pdu_key) VALUES (%s, %s)", (CHANNEL, key))
        first = start_channel(service_env, tmp_path)
        wait_until(lambda: blocked_storing(conn), "the channel blocked between reading and committing", first)
        assert any(c.startswith("AT+CMGL") for c in modem.commands())
        first.kill()
        blocker.rollback()
    assert received(conn) == []
    assert len(modem.stored()) == 1  # not deleted: nothing was committed
    second = start_channel(service_env, tmp_path)
    try:
        wait_until(lambda: modem.stored() == [], "the SIM emptied after the restart", second)
        assert [r["body"] for r in received(conn)] == ["exactly once, please"]
    finally:
        assert second.stop()[0] == 0


def test_kill_9_after_commit_before_delete_does_not_store_it_twice(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem, command_timeout_s=5.0)  # time to kill it while AT+CMGD hangs
    first = start_channel(service_env, tmp_path)
    modem.call("hang_on", prefix="AT+CMGD")  # committed, then the delete never answers
    modem.call("deliver", sender="+31611113333", text="committed, not yet deleted")
    modem.call("deliver", sender="+31611113333", text=LONG_TEXT)
    wait_until(lambda: len(received(conn)) >= 1, "the first row committed", first)
    first.kill()
    assert len(modem.stored()) >= 1  # still on the SIM
    second = start_channel(service_env, tmp_path)
    try:
        wait_until(lambda: modem.stored() == [], "the SIM emptied after the restart", second)
        bodies = sorted(r["body"] for r in received(conn))
        assert bodies == sorted(["committed, not yet deleted", LONG_TEXT])
        second.wait_for_log("already stored")
    finally:
        assert second.stop()[0] == 0


def test_kill_9_mid_message_sends_only_the_parts_that_did_not_go_out(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem, send_timeout_s=30.0)  # the kill comes first
    first = start_channel(service_env, tmp_path)
    modem.call("hang_on", prefix="AT+CMGS", after=2)  # parts 1 and 2 go out, part 3 never answers
    message = queue_message(conn, LONG_TEXT)
    wait_until(lambda: len(modem.sent()) == 2 and modem.call("status")["hung"], "hung at part 3", first)
    wait_until(
        lambda: (
            conn.execute("SELECT sent_references FROM gsm_partial_sends").fetchall()
            == [{"sent_references": [s["reference"] for s in modem.sent()]}]
        ),
        "parts 1 and 2 recorded",
        first,
    )
    first.kill()
    second = start_channel(service_env, tmp_path)  # reopening the port wakes the modem
    try:
        # SENT (NOREPORT later): the reports of parts 1 and 2 died with the first process
        wait_until(lambda: status_of(conn, message) in ("SENT", "NOREPORT"), "SENT after the restart", second)
        sent = modem.sent()
        assert [s["udh"][-4:] for s in sent] == ["0301", "0302", "0303"]
        assert len({s["udh"][6:8] for s in sent}) == 1
        provider_ids = conn.execute(
            "SELECT provider_id FROM message_parts WHERE message_id = %s ORDER BY part_number", (message,)
        ).fetchall()
        assert [p["provider_id"] for p in provider_ids] == [str(s["reference"]) for s in sent]
        second.wait_for_log(f"resuming id={message} channel={CHANNEL} parts_sent=2 parts=3")
    finally:
        assert second.stop()[0] == 0


def test_an_undecodable_pdu_is_kept_as_a_received_row_and_leaves_the_sim(
    conn: Conn, modem: EmulatedModem, channel: ServiceProcess
) -> None:
    # an SMS-DELIVER from +31611114444 cut off in its timestamp
    truncated = "00" + "04" + pdu.encode_address("+31611114444").hex().upper() + "0000" + "6211"
    modem.call("deliver_raw", pdu=truncated)
    modem.call("deliver_raw", pdu="07 not hex at all")
    modem.call("deliver", sender="+31687654321", text="a good one after them")
    rows = wait_until(lambda: len(received(conn)) == 3 and received(conn), "three rows", channel)
    wait_until(lambda: modem.stored() == [], "the SIM emptied", channel)
    bad = {r["properties"]["pdu"]: r for r in rows if r["properties"].get("undecodable")}
    assert set(bad) == {truncated, "07 NOT HEX AT ALL"}
    assert bad[truncated]["from_address"] == "+31611114444"
    assert bad["07 NOT HEX AT ALL"]["from_address"] == "unknown"
    assert all(r["status"] == "RECEIVED" and r["error"].startswith("undecodable PDU: ") for r in bad.values())
    assert [r["body"] for r in rows if not r["properties"].get("undecodable")] == ["a good one after them"]
    assert channel.log().count("undecodable PDU kept") == 2


def blocked_on_parts(conn: Conn) -> bool:
    """The channel's connection waits on a lock in the statement that records a status report."""
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
        " AND query LIKE '%%UPDATE message_parts%%'",
        (f"channel-gsm-{CHANNEL}",),
    ).fetchone()
    return bool(row and row["n"])


def test_status_reports_stored_on_the_sim_are_applied_and_deleted_after_the_commit(
    conn: Conn, database_url: str, modem: EmulatedModem, channel: ServiceProcess
) -> None:
    modem.call("auto_report", mode="off")
    modem.call("store_reports", on=True)  # +CDSI and a SIM index instead of +CDS
    delivered, failed = queue_message(conn, "reported on the SIM"), queue_message(conn, "fails, reported on the SIM")
    wait_until(lambda: status_of(conn, failed) in ("SENT", "NOREPORT"), "both sent", channel)
    references = {
        r["id"]: int(r["provider_id"]) for r in conn.execute("SELECT id, provider_id FROM messages").fetchall()
    }
    # another transaction holding the part: the channel reads the report and waits before its commit
    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT 1 FROM message_parts WHERE message_id = %s FOR UPDATE", (delivered,))
        modem.call("report", reference=references[delivered], status=0x00)
        wait_until(lambda: blocked_on_parts(conn), "the channel blocked before its commit", channel)
        assert len(modem.stored()) == 1  # read, not committed: still on the SIM
        assert status_of(conn, delivered) in ("SENT", "NOREPORT")
        blocker.rollback()
    wait_until(lambda: status_of(conn, delivered) == "DELIVERED", "DELIVERED from the SIM", channel)
    wait_until(lambda: modem.stored() == [], "the report deleted from the SIM", channel)
    modem.call("report", reference=references[failed], status=0x41)
    wait_until(lambda: status_of(conn, failed) == "NOTDELIVERED", "NOTDELIVERED from the SIM", channel)
    wait_until(lambda: modem.stored() == [], "the second report deleted from the SIM", channel)
    commands = modem.commands()
    assert any(c.startswith("AT+CMGL") for c in commands) and any(c.startswith("AT+CMGD=") for c in commands)


def test_kill_9_mid_send_requeues_the_message_as_outcome_unknown(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, modem, send_timeout_s=30.0)  # the kill comes first
    first = start_channel(service_env, tmp_path)
    modem.call("hang_on", prefix="AT+CMGS")
    message = queue_message(conn, "in flight when killed")
    wait_until(lambda: "AT+CMGS" in " ".join(modem.commands()) and status_of(conn, message) == "SENDING", "SENDING")
    first.kill()
    second = start_channel(service_env, tmp_path)  # reopening the port wakes the modem
    try:
        second.wait_for_log("recovered unfinished sends")
        wait_until(lambda: status_of(conn, message) == "DELIVERED", "DELIVERED after the restart", second)
        row = conn.execute("SELECT attempts, lease_owner FROM messages WHERE id = %s", (message,)).fetchone()
        assert row == {"attempts": 1, "lease_owner": None}
        assert "outcome unknown" in second.log()
    finally:
        assert second.stop()[0] == 0
