"""Archiver throughput, and what archiving does to live traffic.

    .venv/bin/python bench/archiver.py [--rows 1000000] [--batch-size 1000]
                                        [--claim-batch 50] [--pace-ms 20] [--baseline-s 20]
                                        [--batch-pause-ms 0] [--targets same,separate]

For each target (archive.messages in the same database; a separate archive database on the
same server):
(a) rows archived per second: --rows finished messages loaded, then one archiver pass alone
    (in this process, nothing else running);
(b) --rows finished messages loaded again; a claim-and-mark-sent loop (insert a batch of
    QUEUED messages, then, timed: claim them FOR UPDATE SKIP LOCKED, QUEUED -> SENDING and
    SENDING -> SENT with smsbus.queue.move, a commit after each move) runs at a fixed pace,
    first for --baseline-s without the archiver, then while the real archiver service
    (smsbus-archiver, its own process) moves the rows. Goal: p99 with <= 2 x p99 without.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from common import (
    ServiceProcess,
    peak_rss_mb,
    percentile,
    print_table,
    service_environment,
    start_service,
    throwaway_database,
)
from smsbus import db, queue
from smsbus.archive import Archiver, ArchiverSettings
from smsbus.statuses import Status

ARCHIVE_AFTER = timedelta(hours=1)
LOAD_CHUNK = 200_000

# finished two days ago: delivered and done with triggers
LOAD_FINISHED = """
INSERT INTO messages (direction, status, trigger_status, channel, from_address, to_address,
                      body, properties, updated_at, sent_at, report_at, provider_id, parts)
SELECT 'out', 'DELIVERED', 'PROCESSED', 'bench', 'Acme', '+3161' || lpad(n::text, 7, '0'),
       'Your code is ' || n, jsonb_build_object('campaign', 'bench', 'n', n),
       now() - interval '2 days', now() - interval '2 days', now() - interval '2 days',
       md5(n::text), 1
FROM generate_series(1, %(count)s) AS n
"""
INSERT_QUEUED = """
INSERT INTO messages (direction, to_address, body, channel, routed_at)
SELECT 'out', '+31612345678', 'live ' || n, 'live', now() FROM generate_series(1, %(count)s) AS n
"""
CLAIM_QUEUED = """
SELECT id FROM messages
WHERE status = 'QUEUED' AND channel = 'live' AND routed_at IS NOT NULL
ORDER BY id LIMIT %(count)s
FOR UPDATE SKIP LOCKED
"""


def load_finished(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, rows, LOAD_CHUNK):
            conn.execute(LOAD_FINISHED, {"count": min(LOAD_CHUNK, rows - start)})
        conn.execute("VACUUM ANALYZE messages")


def create_database(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(url, dbname=name)


def archive_alone(url: str, archive_url: str | None, batch_size: int, batch_pause_s: float) -> float:
    """Rows per second of one pass in this process, nothing else running."""
    settings = ArchiverSettings(
        archive_database_url=archive_url,
        archive_after=ARCHIVE_AFTER,
        batch_size=batch_size,
        batch_pause_s=batch_pause_s,
    )
    archiver = Archiver(settings)
    try:
        with db.connect(url, application="bench-archiver", statement_timeout_s=settings.statement_timeout_s) as live:
            archiver.prepare(live)
            started = time.perf_counter()
            report = archiver.run_pass(live)
            return report.archived / (time.perf_counter() - started)
    finally:
        archiver.close()


class LoopRun(NamedTuple):
    latencies: list[float]  # seconds per iteration: claim + two moves + two commits
    messages_per_s: float  # achieved; below the offered rate when iterations take longer than the pace


def claim_loop(url: str, claim_batch: int, pace_s: float, until: Callable[[], bool]) -> LoopRun:
    """One iteration per pace, or back to back when an iteration takes longer."""
    latencies = []
    with db.connect(url, application="bench-claim") as conn:
        next_at = began = time.monotonic()
        while not until():
            conn.execute(INSERT_QUEUED, {"count": claim_batch})
            conn.commit()
            started = time.perf_counter()
            ids = [row["id"] for row in conn.execute(CLAIM_QUEUED, {"count": claim_batch})]
            queue.move(conn, ids, Status.QUEUED, Status.SENDING)
            conn.commit()
            queue.move(conn, ids, Status.SENDING, Status.SENT, sent_at=datetime.now(UTC))
            conn.commit()
            latencies.append(time.perf_counter() - started)
            next_at += pace_s
            time.sleep(max(0.0, next_at - time.monotonic()))
    return LoopRun(latencies, len(latencies) * claim_batch / (time.monotonic() - began))


def log_time(line: str) -> float:
    """The timestamp smsbus.log puts first on every line, as seconds."""
    return datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def archiving_rate(log: str) -> tuple[int, float]:
    """(rows, rows/s) of the service's first pass, from its own log lines."""
    lines = log.splitlines()
    connected = next(line for line in lines if "database connected" in line)
    finished = next(line for line in lines if "archive pass finished" in line)
    archived = int(finished.split("archived=")[1].split()[0])
    return archived, archived / (log_time(finished) - log_time(connected))


def archive_under_load(
    url: str, archive_url: str | None, args: argparse.Namespace, work: Path
) -> tuple[LoopRun, LoopRun, int, float, float]:
    """(latencies without, latencies with, rows archived, rows/s, archiver peak RSS MB)."""
    pace_s = args.pace_ms / 1000
    baseline_until = time.monotonic() + args.baseline_s
    without = claim_loop(url, args.claim_batch, pace_s, lambda: time.monotonic() >= baseline_until)

    env = service_environment(url, work / "var")
    env.update(
        {
            "SMSBUS_ARCHIVER_ARCHIVE_AFTER": str(ARCHIVE_AFTER.total_seconds()),
            "SMSBUS_ARCHIVER_BATCH_SIZE": str(args.batch_size),
            "SMSBUS_ARCHIVER_BATCH_PAUSE_S": str(args.batch_pause_ms / 1000),
            "SMSBUS_ARCHIVER_POLL_INTERVAL_S": "3600",
            "SMSBUS_ARCHIVER_METRICS_PORT": "0",
        }
    )
    if archive_url is not None:
        env["SMSBUS_ARCHIVER_ARCHIVE_DATABASE_URL"] = archive_url
    log_path = work / f"archiver-{'separate' if archive_url else 'same'}.log"
    archiver: ServiceProcess = start_service(["smsbus-archiver"], env, log_path)
    try:
        with_archiver = claim_loop(
            url, args.claim_batch, pace_s, lambda: "archive pass finished" in archiver.log()
        )
        rss = peak_rss_mb(archiver.process.pid)
    finally:
        archiver.stop()
    archived, rate = archiving_rate(archiver.log())
    return without, with_archiver, archived, rate, rss


def ms(seconds: float) -> float:
    return seconds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished messages to archive per run")
    parser.add_argument("--batch-size", type=int, default=1000, help="the archiver's batch_size")
    parser.add_argument("--batch-pause-ms", type=float, default=0.0, help="the archiver's batch_pause_s, in ms")
    parser.add_argument("--claim-batch", type=int, default=50, help="messages per claim-loop iteration")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="one claim-loop iteration every this often")
    parser.add_argument("--baseline-s", type=float, default=20.0, help="claim loop without the archiver")
    parser.add_argument("--targets", default="same,separate")
    args = parser.parse_args()

    throughput_rows: list[list[object]] = []
    latency_rows: list[list[object]] = []
    with throwaway_database() as url, tempfile.TemporaryDirectory(prefix="smsbus-bench-archiver-") as tmp:
        for target in args.targets.split(","):
            archive_url = None if target == "same" else create_database(url, f"smsbus_bench_archive_{int(time.time())}")
            load_finished(url, args.rows)
            alone = archive_alone(url, archive_url, args.batch_size, args.batch_pause_ms / 1000)
            load_finished(url, args.rows)
            without, with_archiver, archived, rate, rss = archive_under_load(url, archive_url, args, Path(tmp))
            label = "same database" if archive_url is None else "separate database"
            throughput_rows.append([label, args.rows, alone, archived, rate, rss])
            p99_without = percentile(without.latencies, 0.99)
            p99_with = percentile(with_archiver.latencies, 0.99)
            latency_rows.append(
                [
                    label,
                    len(without.latencies),
                    without.messages_per_s,
                    ms(percentile(without.latencies, 0.5)),
                    ms(p99_without),
                    len(with_archiver.latencies),
                    with_archiver.messages_per_s,
                    ms(percentile(with_archiver.latencies, 0.5)),
                    ms(p99_with),
                    p99_with / p99_without,
                ]
            )

    offered = args.claim_batch / (args.pace_ms / 1000)
    print_table(
        f"Rows archived per second (archiver batch_size {args.batch_size}, "
        f"batch_pause_s {args.batch_pause_ms / 1000:g})",
        ["target", "rows", "alone rows/s", "rows under load", "under load rows/s", "archiver peak RSS MB"],
        throughput_rows,
    )
    print_table(
        f"Claim-and-mark-sent loop ({args.claim_batch} messages every {args.pace_ms:g} ms = {offered:,.0f} msgs/s), "
        "one iteration = claim + QUEUED->SENDING + SENDING->SENT, without and while the archiver moves the rows",
        [
            "target",
            "iterations without",
            "msgs/s",
            "p50 ms",
            "p99 ms",
            "iterations with",
            "msgs/s ",
            "p50 ms ",
            "p99 ms ",
            "p99 ratio (goal <= 2)",
        ],
        latency_rows,
    )
    print(f"\nbench process peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
