"""`smsbus channels add gsm NAME --device ...` and the channel lifecycle: settings validated on
save, and under a running supervisord the channel's program follows the table (started,
restarted, stopped) through XML-RPC without touching any other program."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from smsbus.supervisor import Supervisor
from tests.peers.cli import Result, program_states, secret_file
from tests.peers.modem import EmulatedModem
from tests.test_gsm_channel import queue_message, status_of, wait_until

Conn = psycopg.Connection[dict[str, Any]]


def test_add_validates_settings_naming_the_field_and_saves_nothing_bad(
    smsbus: Callable[..., Result], conn: Conn, tmp_path: Path
) -> None:
    bad_rate = smsbus("channels", "add", "gsm", "modem1", "--device", "/dev/ttyUSB0", "--baud-rate", "1234")
    assert bad_rate.returncode == 1 and "baud_rate 1234" in bad_rate.stderr
    pin = secret_file(tmp_path, "12ab")
    bad_pin = smsbus("channels", "add", "gsm", "modem1", "--device", "/dev/ttyUSB0", "--pin-file", pin)
    assert bad_pin.returncode == 1 and "pin" in bad_pin.stderr
    unknown = smsbus("channels", "add", "gsm", "modem1", "--device", "/dev/ttyUSB0", "--set", "colour=red")
    assert unknown.returncode == 1 and "colour" in unknown.stderr
    no_device = smsbus("channels", "add", "gsm", "modem1")
    assert no_device.returncode == 2 and "--device" in no_device.stderr
    bad_name = smsbus("channels", "add", "gsm", "Modem One", "--device", "/dev/ttyUSB0")
    assert bad_name.returncode == 1 and "channels_name_format" in bad_name.stderr
    assert conn.execute("SELECT count(*) AS n FROM channels").fetchone() == {"n": 0}


def test_add_list_show_set_disable_enable_remove(
    smsbus: Callable[..., Result], cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    added = smsbus(
        "channels",
        "add",
        "gsm",
        "modem1",
        "--device",
        "/dev/ttyUSB0",
        "--pin-file",
        secret_file(tmp_path, "1234"),
        "--smsc",
        "+31653131313",
        "--report-timeout",
        "3600",
        "--max-rate",
        "2",
        "--set",
        "request_reports=false",
    )
    assert added.returncode == 0, added.stderr
    assert "added gsm channel 'modem1'" in added.stdout and "follow at `smsbus up`" in added.stdout
    row = conn.execute("SELECT * FROM channels WHERE name = 'modem1'").fetchone()
    # the PIN moved into a file of its own (0600): the table holds only its path
    pin_file = Path(cli_env["SMSBUS_DATA_DIR"]) / "secrets" / "modem1.pin"
    assert row["settings"] == {
        "device": "/dev/ttyUSB0",
        "pin_file": str(pin_file),
        "smsc": "+31653131313",
        "request_reports": False,
    }
    assert pin_file.read_text() == "1234\n" and pin_file.stat().st_mode & 0o777 == 0o600
    assert row["report_timeout"].total_seconds() == 3600 and row["max_rate"] == 2

    again = smsbus("channels", "add", "gsm", "modem1", "--device", "/dev/ttyUSB1")
    assert again.returncode == 1 and "exists already" in again.stderr
    listed = smsbus("channels", "list").stdout
    assert "modem1" in listed and "gsm" in listed and "/dev/ttyUSB0" in listed
    shown = smsbus("channels", "show", "modem1").stdout
    assert "settings.pin_file" in shown and "1234" not in shown

    assert smsbus("channels", "set", "modem1", "baud_rate=9600").returncode == 0
    refused = smsbus("channels", "set", "modem1", "storage=XX")
    assert refused.returncode == 1 and "storage" in refused.stderr
    row = conn.execute("SELECT settings FROM channels WHERE name = 'modem1'").fetchone()
    assert row["settings"]["baud_rate"] == 9600 and "storage" not in row["settings"]

    assert smsbus("channels", "disable", "modem1").returncode == 0
    assert conn.execute("SELECT enabled FROM channels").fetchone() == {"enabled": False}
    assert smsbus("channels", "enable", "modem1").returncode == 0
    assert smsbus("channels", "remove", "modem1").returncode == 0
    missing = smsbus("channels", "show", "modem1")
    assert missing.returncode == 1 and "no channel named 'modem1'" in missing.stderr


def test_the_channel_program_follows_the_table_under_supervisord(
    smsbus: Callable[..., Result], cli_env: dict[str, str], conn: Conn, supervisord: Supervisor, tmp_path: Path
) -> None:
    modem = EmulatedModem(tmp_path, auto_report="delivered")
    try:
        others = {name: state for name, state in program_states(supervisord).items()}
        added = smsbus(
            "channels",
            "add",
            "gsm",
            "modem1",
            "--device",
            str(modem.link),
            "--set",
            "poll_interval_s=0.2",
            "--set",
            "command_timeout_s=1",
        )
        assert added.returncode == 0, added.stderr
        assert "started program channel-modem1" in added.stdout
        wait_until(lambda: program_states(supervisord).get("channel-modem1") == "RUNNING", "channel-modem1 RUNNING")
        message = queue_message(conn, "sent by the supervised channel")
        wait_until(lambda: status_of(conn, message) == "DELIVERED", "DELIVERED through the supervised channel")

        changed = smsbus("channels", "set", "modem1", "command_timeout_s=2")
        assert "restarted program channel-modem1" in changed.stdout, changed.stdout + changed.stderr
        disabled = smsbus("channels", "disable", "modem1")
        assert "stopped program channel-modem1" in disabled.stdout
        assert "channel-modem1" not in program_states(supervisord)
        assert program_states(supervisord) == others  # nothing else was started, stopped or restarted
        enabled = smsbus("channels", "enable", "modem1")
        assert "started program channel-modem1" in enabled.stdout
        removed = smsbus("channels", "remove", "modem1")
        assert "stopped program channel-modem1" in removed.stdout
        log = (Path(cli_env["SMSBUS_DATA_DIR"]) / "log" / "channel-modem1.log").read_text()
        assert "modem ready" in log and "stopping service=channel-gsm-modem1" in log
    finally:
        modem.stop()
