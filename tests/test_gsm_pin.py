"""A wrong SIM PIN (issue 14 item 3): entered once, never again by this process (a third wrong
PIN locks the SIM), health says "wrong PIN", and the PIN is in no log line or health report.
The real channel process against the modem emulator, which counts the attempts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests import test_gsm_channel as gsm
from tests.peers.modem import EmulatedModem
from tests.peers.processes import start_service

Conn = psycopg.Connection[dict[str, Any]]
WRONG_PIN = "80734215"
# every table's rows as text, the channel's own settings left out (where an operator put the PIN)
TABLES = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> 'channels'
"""


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[EmulatedModem]:
    emulator = EmulatedModem(tmp_path, pin="1234")
    yield emulator
    emulator.stop()


def pin_attempts(modem: EmulatedModem) -> int:
    return sum(1 for command in modem.commands() if command.upper().startswith("AT+CPIN="))


def rows_holding(conn: Conn, text: str) -> list[str]:
    tables = [row["table_name"] for row in conn.execute(TABLES)]
    holding = []
    for table in tables:
        query = sql.SQL("SELECT count(*) AS n FROM {} t WHERE t::text LIKE %s").format(sql.Identifier(table))
        row = conn.execute(query, (f"%{text}%",)).fetchone()
        if row is not None and row["n"]:
            holding.append(table)
    return holding


def test_a_wrong_pin_is_tried_once_health_says_so_and_the_pin_is_nowhere(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    gsm.add_channel(conn, modem, pin=WRONG_PIN, reopen_initial_s=0.1, reopen_max_s=0.2)
    process = start_service(["smsbus-channel-gsm", "--channel", gsm.CHANNEL], service_env, tmp_path / "pin.log")
    health = gsm.wait_until(
        lambda: conn.execute("SELECT * FROM channel_health WHERE channel = %s AND details->>'error' LIKE 'wrong PIN%%'",
                             (gsm.CHANNEL,)).fetchone(),
        "health saying wrong PIN", process)
    assert not health["connected"] and "+CME ERROR: 16" in health["details"]["error"]
    time.sleep(1.5)  # several reopen delays: a channel that retried would have by now
    assert pin_attempts(modem) == 1
    assert process.process.poll() is None
    assert process.stop()[0] == 0
    log = process.log()
    assert "wrong PIN channel=modem1" in log and WRONG_PIN not in log
    assert rows_holding(conn, WRONG_PIN) == []
