"""Campaigns (issue 12): (a) loading recipients from a CSV file with COPY, rows/s (goal: 1,000,000
rows in under 60 s); (b) the feeding rate against the rate asked (goal: within 2 %); (c) INSERT ->
submit_sm p99 of one-off messages while a campaign feeds at full speed, against the same with no
campaign, in one run (goal: at most 2x).

    .venv/bin/python bench/campaigns.py [--rows 1000000] [--rate 500 --seconds 20] [--one-offs 200]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from common import percentile, print_table, service_environment, start_broker, start_service, throwaway_database
from smsbus import campaigns
from smsbus.campaigns import NewCampaign
from smsbus.db import connect
from tests.peers.smsc import PASSWORD, SYSTEM_ID, start_smsc

INSERT_CHANNEL = "INSERT INTO channels (name, type, settings) VALUES ('bench', 'smpp', %(settings)s)"
INSERT_ONE_OFF = """
INSERT INTO messages (direction, to_address, body, channel) VALUES ('out', '+31699999999', %(body)s, 'bench')
"""
COUNT_CAMPAIGN_MESSAGES = "SELECT fed_count AS n FROM campaigns WHERE name = %(name)s"


def write_csv(path: Path, rows: int) -> None:
    """Mostly E.164 numbers, some national ones (region NL), 1 % invalid, 1 % repeated."""
    rng = random.Random(1)
    with path.open("w") as out:
        out.write("phone,name,code\n")
        for n in range(rows):
            kind = rng.random()
            if kind < 0.01:
                number = "12345"
            elif kind < 0.02:
                number = f"+3161{rng.randrange(rows):07d}"
            elif kind < 0.10:
                number = f"06 1{n:07d}"
            else:
                number = f"+3161{n:07d}"
            out.write(f"{number},Person {n},{n % 9973}\n")


def load(url: str, directory: Path, rows: int) -> tuple[float, campaigns.LoadReport]:
    path = directory / "recipients.csv"
    write_csv(path, rows)
    with connect(url) as conn:
        new = NewCampaign(name="load", template="Hi {name}, code {code}", default_region="NL")
        campaigns.create_campaign(conn, new)
        conn.commit()
        started = time.monotonic()
        with path.open(newline="") as file:
            report = campaigns.load_csv(conn, "load", file)
        conn.commit()
        return time.monotonic() - started, report


def feed_rate(url: str, env: dict[str, str], directory: Path, rate: float, seconds: float) -> float:
    """Messages made per second by one campaigns process, measured after a second's warm-up."""
    with connect(url) as conn:
        campaigns.create_campaign(conn, NewCampaign(name="paced", template="Hello {address}", rate_per_s=rate))
        campaigns.load_addresses(conn, "paced", [f"+3162{n:07d}" for n in range(int(rate * (seconds + 5)))])
        conn.commit()
    feeder = start_service(["smsbus-campaigns"], {**env, "SMSBUS_CAMPAIGNS_QUEUE_AHEAD_S": "60"},
                           directory / "campaigns-rate.log")
    time.sleep(1.5)  # connected and subscribed (the log says so only at INFO)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        with connect(url) as own:
            campaigns.start_campaign(own, "paced")
            own.commit()
        time.sleep(1.0)
        first = conn.execute(COUNT_CAMPAIGN_MESSAGES, {"name": "paced"}).fetchone()
        started = time.monotonic()
        time.sleep(seconds)
        last = conn.execute(COUNT_CAMPAIGN_MESSAGES, {"name": "paced"}).fetchone()
        elapsed = time.monotonic() - started
        with connect(url) as own:
            campaigns.cancel_campaign(own, "paced")
            own.commit()
    feeder.stop()
    assert first is not None and last is not None
    return (last["n"] - first["n"]) / elapsed


def one_off_latencies(conn: Any, smsc: Any, count: int, tag: str) -> list[float]:
    """Seconds from each one-off INSERT's commit to its submit_sm at the simulator."""
    committed: dict[str, float] = {}
    for i in range(count):
        body = f"{tag} {i}"
        conn.execute(INSERT_ONE_OFF, {"body": body})
        committed[body] = time.time()
        time.sleep(0.02)
    deadline = time.monotonic() + 60
    while True:
        received = {bytes.fromhex(r["short_message"]).decode(errors="replace"): r["ts"]
                    for r in smsc.pdus("in", "submit_sm") if "short_message" in r}
        if all(body in received for body in committed) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [received[body] - at for body, at in committed.items() if body in received]


def live_traffic(
    url: str, env: dict[str, str], directory: Path, count: int, rate: float
) -> tuple[list[float], list[float], float]:
    smsc = start_smsc(env, directory, "--receipt-delay-ms", "0")
    processes: list[Any] = []
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            settings = {"host": "127.0.0.1", "port": smsc.port, "system_id": SYSTEM_ID, "password": PASSWORD,
                        "window": 10, "poll_interval_s": 1, "registered_delivery": 0}
            conn.execute(INSERT_CHANNEL, {"settings": json.dumps(settings)})
            processes.append(start_service(["smsbus-router"], env, directory / "router.log"))
            channel = start_service(["smsbus-channel-smpp", "--channel", "bench"], env, directory / "channel.log")
            processes.append(channel)
            smsc.wait_bound()
            time.sleep(1.0)
            alone = one_off_latencies(conn, smsc, count, "alone")
            with connect(url) as own:
                campaigns.create_campaign(own, NewCampaign(name="busy", template="Offer for {address}",
                                                           channel="bench", rate_per_s=rate))
                campaigns.load_addresses(own, "busy", [f"+3163{n:07d}" for n in range(int(rate * 120))])
                campaigns.start_campaign(own, "busy")
                own.commit()
            processes.append(start_service(["smsbus-campaigns"], env, directory / "campaigns.log"))
            time.sleep(3.0)
            before = conn.execute(COUNT_CAMPAIGN_MESSAGES, {"name": "busy"}).fetchone()
            started = time.monotonic()
            busy = one_off_latencies(conn, smsc, count, "busy")
            after = conn.execute(COUNT_CAMPAIGN_MESSAGES, {"name": "busy"}).fetchone()
            assert before is not None and after is not None
            campaign_rate = (after["n"] - before["n"]) / (time.monotonic() - started)
    finally:
        for process in processes:
            process.stop()
        smsc.stop()
    return alone, busy, campaign_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="(a) CSV rows")
    parser.add_argument("--rate", type=float, default=500, help="(b) messages/s asked")
    parser.add_argument("--seconds", type=float, default=20, help="(b) measured for")
    parser.add_argument("--one-offs", type=int, default=200, help="(c) one-off messages each way")
    parser.add_argument("--campaign-rate", type=float, default=3000, help="(c) above what the channel can send")
    args = parser.parse_args()

    with throwaway_database() as url, tempfile.TemporaryDirectory(prefix="smsbus-bench-campaigns-") as temp:
        directory = Path(temp)
        env = service_environment(url, directory / "var")
        env.update({"SMSBUS_LOG_LEVEL": "WARNING", "SMSBUS_CAMPAIGNS_METRICS_PORT": "0",
                    "SMSBUS_ROUTER_METRICS_PORT": "0"})
        broker = start_broker(env, directory)
        try:
            load_s, report = load(url, directory, args.rows)
            fed = feed_rate(url, env, directory, args.rate, args.seconds)
            alone, busy, campaign_rate = live_traffic(url, env, directory, args.one_offs, args.campaign_rate)
        finally:
            broker.stop()

    print_table(
        "(a) CSV -> recipients (COPY into a temporary staging table, set-based sorting)",
        ["rows", "seconds", "rows/s", "loaded", "invalid", "duplicate", "goal"],
        [[report.rows, load_s, report.rows / load_s, report.loaded, report.invalid, report.duplicate,
          "1,000,000 in < 60 s"]],
    )
    print_table(
        "(b) feeding rate, one campaigns process",
        ["asked/s", "measured/s", "deviation", "goal"],
        [[args.rate, fed, f"{100 * (fed - args.rate) / args.rate:+.2f} %", "within 2 %"]],
    )
    p99_alone, p99_busy = percentile(alone, 0.99), percentile(busy, 0.99)
    print_table(
        "(c) one-off INSERT -> submit_sm (router + SMPP channel, window 10)",
        ["while", "messages", "p50 ms", "p99 ms", "campaign messages/s"],
        [["no campaign", len(alone), 1000 * percentile(alone, 0.5), 1000 * p99_alone, 0],
         ["campaign at full speed", len(busy), 1000 * percentile(busy, 0.5), 1000 * p99_busy, campaign_rate],
         ["ratio (goal <= 2)", "", "", p99_busy / p99_alone, ""]],
    )


if __name__ == "__main__":
    main()
