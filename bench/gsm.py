"""Messages per second through the GSM channel against the modem emulator with no artificial
delay: the CPU cost of our AT and PDU layers (a real modem sends a few SMS per second).

    .venv/bin/python bench/gsm.py [--messages 2000] [--long 300]

(a) PDU encoding alone, in process: SMS-SUBMIT PDUs built per second
(b) baseline: AT+CMGS round trips against the emulator from one process, no database
(c) the channel process end to end: claim (QUEUED -> SENDING), AT+CMGS per part, record
    SENT, for short messages and for 3-part concatenated ones. Latency is created_at ->
    sent_at of each message (all inserted at once, so it includes the wait in the queue).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psycopg
import serial  # type: ignore[import-untyped]

from common import (
    PROJECT_ROOT,
    peak_rss_mb,
    percentile,
    print_table,
    service_environment,
    start_service,
    throwaway_database,
)
from smsbus.encoding import Encoding, segment_text
from smsbus_channel_gsm import pdu
from smsbus_channel_gsm.at import AtPort
from tests.peers.modem import EmulatedModem

SHORT = "Your code is 483920. It expires in 10 minutes."
LONG = "Concatenated benchmark text that needs three parts to carry. " * 6  # 372 characters
INSERT_MANY = """
INSERT INTO messages (direction, to_address, body, channel, routed_at)
SELECT 'out', '+31612345678', %(body)s, 'bench', now() FROM generate_series(1, %(count)s)
"""
PROGRESS = "SELECT count(*) FILTER (WHERE status = 'SENT') AS sent, count(*) AS total FROM messages"
LATENCIES = "SELECT extract(epoch FROM sent_at - created_at) AS latency FROM messages WHERE status = 'SENT'"


def measure_encoding(count: int) -> float:
    payload = SHORT.encode("gsm03.38")
    started = time.perf_counter()
    for _ in range(count):
        pdu.encode_submit(pdu.Submit("+31612345678", payload, Encoding.GSM7, request_report=True))
    return count / (time.perf_counter() - started)


def measure_at_round_trips(modem: EmulatedModem, count: int) -> float:
    port = serial.Serial(str(modem.link), 115200, timeout=0)
    at = AtPort(port, "bench")
    at.command("ATE0", 5)
    at.command("AT+CMGF=0", 5)
    tpdu = pdu.encode_submit(pdu.Submit("+31612345678", SHORT.encode("gsm03.38"), Encoding.GSM7))
    started = time.perf_counter()
    for _ in range(count):
        at.send_pdu(len(tpdu), "00" + tpdu.hex().upper(), 5)
    rate = count / (time.perf_counter() - started)
    port.close()
    return rate


def measure_channel(url: str, directory: Path, body: str, count: int) -> tuple[float, float, float, float]:
    """(messages/s, p50 s, p99 s, channel peak RSS MB) for `count` messages of `body`."""
    modem = EmulatedModem(directory)
    env = service_environment(url, directory / "var")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM messages")
        conn.execute("DELETE FROM channels")
        settings = {"device": str(modem.link), "request_reports": False, "poll_interval_s": 0.05, "batch": 50}
        conn.execute("INSERT INTO channels (name, type, settings) VALUES ('bench', 'gsm', %s)", (json.dumps(settings),))
        channel = start_service(["smsbus-channel-gsm", "--channel", "bench"], env, directory / "channel.log")
        channel.wait_for_log("modem ready")
        started = time.perf_counter()
        conn.execute(INSERT_MANY, {"body": body, "count": count})
        while True:
            progress = conn.execute(PROGRESS).fetchone()
            assert progress is not None
            if progress[0] == count:
                break
            if channel.process.poll() is not None:
                raise SystemExit(f"channel exited:\n{channel.log()}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        latencies = [float(row[0]) for row in conn.execute(LATENCIES)]
        rss = peak_rss_mb(channel.process.pid)
    channel.stop()
    modem.stop()
    return count / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99), rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="short messages per run")
    parser.add_argument("--long", type=int, default=300, help="3-part messages per run")
    arguments = parser.parse_args()
    assert segment_text(LONG, Encoding.GSM7).parts == 3
    with tempfile.TemporaryDirectory(prefix="smsbus-bench-gsm-") as temporary, throwaway_database() as url:
        directory = Path(temporary)
        encoding_rate = measure_encoding(20_000)
        (directory / "baseline").mkdir()
        modem = EmulatedModem(directory / "baseline")
        round_trips = measure_at_round_trips(modem, arguments.messages)
        modem.stop()
        (directory / "short").mkdir()
        short = measure_channel(url, directory / "short", SHORT, arguments.messages)
        (directory / "long").mkdir()
        long = measure_channel(url, directory / "long", LONG, arguments.long)
    nan = float("nan")
    print_table(
        f"GSM channel against the emulator, no artificial delay ({PROJECT_ROOT.name}, bench/gsm.py)",
        ["what", "messages", "messages/s", "SMS parts/s", "p50 s", "p99 s", "peak RSS MB"],
        [
            ["(a) SMS-SUBMIT encoding, in process", 20_000, encoding_rate, encoding_rate, nan, nan, peak_rss_mb()],
            [
                "(b) baseline: AT+CMGS round trips, no database",
                arguments.messages,
                round_trips,
                round_trips,
                nan,
                nan,
                nan,
            ],
            ["(c) channel: short messages", arguments.messages, short[0], short[0], short[1], short[2], short[3]],
            ["(c) channel: 3-part messages", arguments.long, long[0], 3 * long[0], long[1], long[2], long[3]],
        ],
    )


if __name__ == "__main__":
    main()
