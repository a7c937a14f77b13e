"""What every benchmark needs: a throwaway migrated database, services as processes,
percentiles, peak memory, and one table format.

Run a benchmark from the project root: `.venv/bin/python bench/<name>.py`. With
SMSBUS_BENCH_DATABASE_URL set, a database is created on that server; otherwise an embedded
PostgreSQL (pgserver's binaries, default settings: fsync on) runs in a temp dir.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from smsbus.embedded_pg import SUPERUSER, EmbeddedPostgres  # noqa: E402
from smsbus.migrate import migrate  # noqa: E402
from tests.peers.processes import (  # noqa: E402, F401  (re-exported for the benchmarks)
    ServiceProcess,
    service_environment,
    start_service,
)


def start_broker(env: Mapping[str, str], directory: Path, timeout_s: float = 10.0) -> ServiceProcess:
    """The broker every benchmark stack starts first, listening before anything publishes."""
    broker = start_service(["smsbus-broker"], dict(env), directory / "broker.log")
    broker.wait_for_port(int(env["SMSBUS_BUS_NOTIFY_PORT"]), timeout_s=timeout_s)
    return broker


@contextlib.contextmanager
def throwaway_database(server_settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """A freshly migrated database; yields its URL and removes it afterwards."""
    given = os.environ.get("SMSBUS_BENCH_DATABASE_URL")
    if given:
        name = f"smsbus_bench_{os.getpid()}"
        with psycopg.connect(given, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = make_conninfo(given, dbname=name)
            migrate(url)
            yield url
        finally:
            with psycopg.connect(given, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        return
    data_path = Path(tempfile.mkdtemp(prefix="smsbus-bench-"))
    embedded = EmbeddedPostgres(data_path)
    process = embedded.start({"max_connections": "200", **(server_settings or {})})
    try:
        embedded.ensure_database()
        # the superuser, as in the tests: some benchmarks create databases of their own
        url = embedded.url(role=SUPERUSER)
        migrate(url)
        yield url
    finally:
        process.terminate()
        process.wait(60)
        shutil.rmtree(data_path, ignore_errors=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction 0.5 = p50, 0.99 = p99)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory of this process, or of another one (from /proc, while it lives)."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[format_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
