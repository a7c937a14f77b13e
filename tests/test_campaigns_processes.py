"""The campaigns service as a real process, with the router, an SMPP channel and the SMSC
simulator: delivery of a whole list, pause/resume/cancel, kill -9, allowed hours, and a
one-off message overtaking a running campaign."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smsbus import campaigns
from smsbus.campaigns import NewCampaign
from smsbus.db import connect
from tests.conftest import StartServices
from tests.peers.processes import ServiceProcess, start_service
from tests.peers.smsc import Smsc, start_smsc
from tests.test_smpp import add_channel, wait_for

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def simulator(service_env: dict[str, str], tmp_path: Path) -> Iterator[Smsc]:
    smsc = start_smsc(service_env, tmp_path)
    yield smsc
    smsc.stop()


@pytest.fixture
def sending_stack(
    conn: Conn, simulator: Smsc, broker: ServiceProcess, start_services: StartServices,
    service_env: dict[str, str], tmp_path: Path,
) -> Iterator[None]:
    """Router and an SMPP channel `sim` (window 50) in front of the simulator."""
    add_channel(conn, simulator, window=50)
    start_services("router")
    channel = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "channel.log")
    simulator.wait_bound()
    yield
    channel.stop()


def create(conn: Conn, name: str, template: str = "Hi {address}", **fields: Any) -> None:
    with connect(conn.info.dsn) as own:
        campaigns.create_campaign(own, NewCampaign(name=name, template=template, channel="sim", **fields))


def load(conn: Conn, name: str, header: list[str], rows: list[list[str]]) -> campaigns.LoadReport:
    with connect(conn.info.dsn) as own:
        report = campaigns.load_rows(own, name, header, rows)
        own.commit()
    return report


def act(conn: Conn, move: Callable[..., Any], name: str) -> None:
    with connect(conn.info.dsn) as own:
        move(own, name)
        own.commit()


def numbers(count: int, first: int = 0) -> list[str]:
    return [f"+3161{n:07d}" for n in range(first, first + count)]


def count(conn: Conn, query: str, **params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def state(conn: Conn, name: str) -> str:
    return str(conn.execute("SELECT state FROM campaigns WHERE name = %(n)s", {"n": name}).fetchone()["state"])  # type: ignore[index]


def assert_one_message_per_messaged_recipient(conn: Conn) -> None:
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM messages WHERE campaign_id IS NOT NULL) AS messages,
               (SELECT count(DISTINCT to_address) FROM messages WHERE campaign_id IS NOT NULL) AS addresses,
               (SELECT count(*) FROM campaign_recipients WHERE state = 'MESSAGED') AS messaged,
               (SELECT count(*) FROM campaign_recipients r JOIN messages m ON m.id = r.message_id
                WHERE m.to_address = r.address AND m.campaign_id = r.campaign_id) AS matched
        """
    ).fetchone()
    assert row is not None
    assert row["messages"] == row["addresses"] == row["messaged"] == row["matched"], row


def test_a_10000_row_csv_is_delivered_once_each_with_the_rejects_reported(
    conn: Conn, sending_stack: None, start_services: StartServices, tmp_path: Path
) -> None:
    good = numbers(9_900)
    lines = ["name,phone,code"] + [f"P{n},{number},{n % 97}" for n, number in enumerate(good)]
    lines += [f"Dup,{good[0]},1"] * 40 + ["Bad,12345,1"] * 30 + [f"Out,{n},1" for n in numbers(30, 9_000_000)]
    conn.execute("INSERT INTO blocked_addresses (address) SELECT unnest(%(a)s::text[])",
                 {"a": numbers(30, 9_000_000)})
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    create(conn, "big", "Dear {name}, code {code}.", rate_per_s=3000)
    with connect(conn.info.dsn) as own, csv_file.open(newline="") as file:
        report = campaigns.load_csv(own, "big", file)
        own.commit()
    assert report == campaigns.LoadReport(rows=10_000, loaded=9_900, invalid=30, duplicate=40, opted_out=30)
    act(conn, campaigns.start_campaign, "big")
    start_services("campaigns")

    wait_for(lambda: count(conn, "SELECT count(*) FROM messages WHERE status = 'DELIVERED'") == 9_900,
             timeout_s=40, what="every message DELIVERED")
    assert state(conn, "big") == "FINISHED"
    assert_one_message_per_messaged_recipient(conn)
    wrong = conn.execute(
        """
        SELECT count(*) AS n FROM campaign_recipients r JOIN messages m ON m.id = r.message_id
        WHERE m.body <> format('Dear %s, code %s.', r.fields->>'name', r.fields->>'code')
        """
    ).fetchone()
    assert wrong == {"n": 0}


def test_pause_stops_within_a_second_resume_continues_and_cancel_leaves_the_rest_cancelled(
    conn: Conn, sending_stack: None, start_services: StartServices, simulator: Smsc
) -> None:
    create(conn, "paced", rate_per_s=100)
    load(conn, "paced", ["address"], [[n] for n in numbers(2_000)])
    start_services("campaigns", feed_interval_s="0.05")
    act(conn, campaigns.start_campaign, "paced")
    wait_for(lambda: count(conn, "SELECT count(*) FROM messages WHERE status = 'DELIVERED'") >= 100,
             what="the first messages delivered")

    act(conn, campaigns.pause_campaign, "paced")
    made = count(conn, "SELECT count(*) FROM messages")
    time.sleep(1.0)
    submitted = len(simulator.pdus("in", "submit_sm"))
    time.sleep(1.0)
    # no message is made once the pause is committed; the queue held at most a second's worth
    assert count(conn, "SELECT count(*) FROM messages") == made
    assert len(simulator.pdus("in", "submit_sm")) == submitted

    act(conn, campaigns.resume_campaign, "paced")
    wait_for(lambda: count(conn, "SELECT count(*) FROM messages") >= made + 100, what="feeding again")
    act(conn, campaigns.cancel_campaign, "paced")
    after_cancel = count(conn, "SELECT count(*) FROM messages")
    time.sleep(0.5)
    assert count(conn, "SELECT count(*) FROM messages") == after_cancel
    recipients = {r["state"]: r["n"] for r in conn.execute(
        "SELECT state, count(*) AS n FROM campaign_recipients GROUP BY state")}
    assert recipients == {"MESSAGED": after_cancel, "CANCELLED": 2_000 - after_cancel}
    assert state(conn, "paced") == "CANCELLED"
    assert_one_message_per_messaged_recipient(conn)


def test_kill_9_mid_run_makes_no_duplicate_and_skips_no_recipient(
    conn: Conn, broker: ServiceProcess, service_env: dict[str, str], tmp_path: Path,
    start_services: StartServices,
) -> None:
    """Two feeders share the campaign (no channel needed: the queue may fill, queue_ahead_s is
    large); one is killed with SIGKILL several times mid-batch and restarted."""
    create(conn, "crashy", rate_per_s=2000)
    load(conn, "crashy", ["address"], [[n] for n in numbers(12_000)])
    env = {**service_env, "SMSBUS_CAMPAIGNS_METRICS_PORT": "0", "SMSBUS_CAMPAIGNS_QUEUE_AHEAD_S": "60",
           "SMSBUS_CAMPAIGNS_BATCH_SIZE": "200"}
    start_services("campaigns", queue_ahead_s="60", batch_size="200")
    act(conn, campaigns.start_campaign, "crashy")
    made_before = []
    for round_number in range(3):
        victim = start_service(["smsbus-campaigns"], env, tmp_path / f"victim{round_number}.log")
        victim.wait_for_log("database connected")
        time.sleep(0.4)
        victim.kill()
        made_before.append(count(conn, "SELECT count(*) FROM messages"))
    wait_for(lambda: state(conn, "crashy") == "FINISHED", timeout_s=20, what="FINISHED")
    assert made_before[0] > 0 and made_before[-1] < 12_000, made_before
    assert count(conn, "SELECT count(*) FROM campaign_recipients WHERE state = 'MESSAGED'") == 12_000
    assert count(conn, "SELECT count(*) FROM messages WHERE campaign_id IS NOT NULL") == 12_000
    assert_one_message_per_messaged_recipient(conn)


def test_outside_its_allowed_hours_a_campaign_sends_nothing_until_they_open(
    conn: Conn, broker: ServiceProcess, start_services: StartServices
) -> None:
    create(conn, "office", rate_per_s=1000)
    load(conn, "office", ["address"], [[n] for n in numbers(50)])
    start_services("campaigns", queue_ahead_s="60")
    # a window opening two seconds from now, on the database's clock, in UTC
    conn.execute(
        """
        UPDATE campaigns SET allowed_from = (now() AT TIME ZONE 'UTC' + interval '2 s')::time,
                             allowed_until = (now() AT TIME ZONE 'UTC' + interval '1 hour')::time
        """
    )
    act(conn, campaigns.start_campaign, "office")
    window = conn.execute("SELECT campaign_window_opens(allowed_from, allowed_until, time_zone, now()) AS opens,"
                          " now() AS now FROM campaigns").fetchone()
    assert window is not None
    closed_for = (window["opens"] - window["now"]).total_seconds()
    assert 0 < closed_for <= 2
    time.sleep(max(0.0, closed_for - 0.3))
    assert count(conn, "SELECT count(*) FROM messages") == 0
    wait_for(lambda: state(conn, "office") == "FINISHED", timeout_s=6, what="sent once the window opened")
    first = conn.execute("SELECT min(created_at) AS at FROM messages").fetchone()
    assert first is not None and first["at"] >= window["opens"]
    assert count(conn, "SELECT count(*) FROM messages") == 50


def test_a_one_off_message_overtakes_a_100000_recipient_campaign(
    conn: Conn, sending_stack: None, start_services: StartServices
) -> None:
    create(conn, "huge", rate_per_s=5000)
    with connect(conn.info.dsn) as own:
        campaigns.load_addresses(own, "huge", numbers(100_000))
        own.commit()
    start_services("campaigns")
    act(conn, campaigns.start_campaign, "huge")
    # the channel is busy: a second's worth of campaign messages waits in the queue
    wait_for(lambda: count(conn, "SELECT count(*) FROM messages WHERE status = 'QUEUED'") >= 500,
             what="a campaign backlog in the queue")
    row = conn.execute(
        "INSERT INTO messages (direction, to_address, body, channel) VALUES ('out', '+31699999999', 'live', 'sim')"
        " RETURNING id"
    ).fetchone()
    assert row is not None
    wait_for(lambda: count(conn, "SELECT count(*) FROM messages WHERE id = %(id)s AND sent_at IS NOT NULL",
                           id=row["id"]), timeout_s=5, what="the one-off message sent")
    took = conn.execute("SELECT extract(epoch FROM sent_at - created_at) AS s FROM messages WHERE id = %(id)s",
                        {"id": row["id"]}).fetchone()
    assert took is not None and took["s"] < 1.0, took
    waiting = count(conn, "SELECT count(*) FROM campaign_recipients WHERE state = 'PENDING'")
    assert waiting > 50_000
    act(conn, campaigns.cancel_campaign, "huge")
