"""The archiver (SPEC §8), to the same database and to a separate one: what it takes, what it
leaves, retention, finding archived messages, and kill -9 in the middle of a batch."""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from smsbus import db
from smsbus.archive import (
    ARCHIVE_MIGRATIONS,
    Archiver,
    ArchiverSettings,
    ArchiveSchemaMismatch,
    PassReport,
    load_settings,
)
from smsbus.errors import ConfigError
from tests.conftest import url_for
from tests.peers.metrics import value
from tests.peers.processes import BIN_DIR, ServiceProcess, free_port, start_service

Conn = psycopg.Connection[dict[str, Any]]

_archive_numbers = itertools.count()

ADD_MESSAGES = """
INSERT INTO messages (direction, status, trigger_status, channel, from_address, to_address,
                      body, properties, client_ref, updated_at, sent_at)
SELECT %(direction)s, %(status)s, %(trigger_status)s, %(channel)s, '+31687654321',
       '+31612345678', 'body ' || n, jsonb_build_object('n', n, 'note', 'ü'), NULL,
       now() - %(age)s, now() - %(sent_at_age)s::interval
FROM generate_series(1, %(count)s) AS n
RETURNING id
"""


def add_messages(
    conn: Conn,
    count: int = 1,
    *,
    status: str = "DELIVERED",
    trigger_status: str = "PROCESSED",
    age: timedelta = timedelta(days=2),
    channel: str | None = "kpn",
    sent_at_age: timedelta | None = None,
    direction: str = "out",
) -> list[int]:
    rows = conn.execute(
        ADD_MESSAGES,
        {
            "direction": direction,
            "status": status,
            "trigger_status": trigger_status,
            "channel": channel,
            "age": age,
            "sent_at_age": sent_at_age,
            "count": count,
        },
    ).fetchall()
    return sorted(int(r["id"]) for r in rows)


def live_ids(conn: Conn) -> list[int]:
    return [int(r["id"]) for r in conn.execute("SELECT id FROM messages ORDER BY id")]


def archived_ids(conn: Conn) -> list[int]:
    return [int(r["id"]) for r in conn.execute("SELECT id FROM archive.messages ORDER BY id")]


def rows_by_id(conn: Conn, table: str) -> dict[int, dict[str, Any]]:
    query = sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.SQL(table))
    return {int(r["id"]): {k: v for k, v in r.items() if k != "archived_at"} for r in conn.execute(query)}


# -- the two targets ------------------------------------------------------------------------


@pytest.fixture
def separate_database_url(server_url: str) -> Iterator[str]:
    """An empty database: the archiver gives it the archive schema itself."""
    name = f"smsbus_archive_{os.getpid()}_{next(_archive_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield url_for(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["same_database", "separate_database"])
def archive_url(request: pytest.FixtureRequest, database_url: str) -> str | None:
    """None: archive.messages in the live database; else a separate archive database."""
    if request.param == "same_database":
        return None
    return str(request.getfixturevalue("separate_database_url"))


@pytest.fixture
def archive_conn(archive_url: str | None, database_url: str) -> Iterator[Conn]:
    """Where the archived rows are, once the archiver has run (it creates a separate archive)."""
    with psycopg.connect(archive_url or database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def settings_for(archive_url: str | None, **changes: Any) -> ArchiverSettings:
    return ArchiverSettings(archive_database_url=archive_url, archive_after=timedelta(days=1), **changes)


def archive_pass(database_url: str, settings: ArchiverSettings) -> PassReport:
    archiver = Archiver(settings)
    try:
        with db.connect(database_url) as live:
            archiver.prepare(live)
            return archiver.run_pass(live)
    finally:
        archiver.close()


# -- what is taken and what is left --------------------------------------------------------


def test_finished_old_messages_move_to_the_archive_unchanged(
    conn: Conn, database_url: str, archive_url: str | None, archive_conn: Conn
) -> None:
    finished = add_messages(conn, 5, status="DELIVERED")
    finished += add_messages(conn, 2, status="FAILED", trigger_status="FAILED")
    finished += add_messages(conn, 2, status="NOCHANNEL", trigger_status="NOMATCH", channel=None)
    finished += add_messages(conn, 2, status="RECEIVED", trigger_status="NOTRIGGERS", direction="in")
    unfinished = add_messages(conn, 2, status="QUEUED", trigger_status="N/A")
    unfinished += add_messages(conn, 2, status="SENDING", trigger_status="N/A")
    too_young = add_messages(conn, 2, status="DELIVERED", age=timedelta(hours=23))
    before = rows_by_id(conn, "messages")

    report = archive_pass(database_url, settings_for(archive_url, batch_size=3))

    assert report.archived == len(finished)
    assert live_ids(conn) == sorted(unfinished + too_young)
    archived = rows_by_id(archive_conn, "archive.messages")
    assert sorted(archived) == sorted(finished)
    assert all(archived[i] == before[i] for i in finished)  # every column, jsonb and times alike
    # the next pass finds nothing more
    assert archive_pass(database_url, settings_for(archive_url)).archived == 0


def test_a_message_waiting_for_its_delivery_report_is_not_archived(
    conn: Conn, database_url: str, archive_url: str | None, archive_conn: Conn
) -> None:
    conn.execute("INSERT INTO channels (name, type, report_timeout) VALUES ('kpn', 'smpp', '3 days')")
    conn.execute("INSERT INTO channels (name, type, report_timeout) VALUES ('fast', 'smpp', '1 hour')")
    waiting = add_messages(conn, 3, status="SENT", channel="kpn", sent_at_age=timedelta(days=2))
    timed_out = add_messages(conn, 2, status="SENT", channel="fast", sent_at_age=timedelta(days=2))
    reported = add_messages(conn, 2, status="DELIVERED", channel="kpn", sent_at_age=timedelta(days=2))

    archive_pass(database_url, settings_for(archive_url))

    assert live_ids(conn) == waiting
    assert archived_ids(archive_conn) == sorted(timed_out + reported)


def test_a_message_waiting_for_triggers_is_not_archived(
    conn: Conn, database_url: str, archive_url: str | None, archive_conn: Conn
) -> None:
    never_looked_at = add_messages(conn, 2, trigger_status="N/A")
    being_processed = add_messages(conn, 1, trigger_status="PENDING")
    being_processed += add_messages(conn, 1, trigger_status="PROCESSING")
    done = add_messages(conn, 2, trigger_status="PROCESSED")

    archive_pass(database_url, settings_for(archive_url))
    assert live_ids(conn) == sorted(never_looked_at + being_processed)
    assert archived_ids(archive_conn) == done

    # without a triggers service: N/A is archived too, a message a trigger holds still is not
    archive_pass(database_url, settings_for(archive_url, require_triggers_done=False))
    assert live_ids(conn) == being_processed
    assert archived_ids(archive_conn) == sorted(done + never_looked_at)


def test_archiving_a_sent_message_drops_its_parts_with_it(
    conn: Conn, database_url: str, archive_url: str | None, archive_conn: Conn
) -> None:
    ids = add_messages(conn, 2)
    conn.execute(
        "INSERT INTO message_parts (message_id, part_number, channel, provider_id, receipt_state)"
        " SELECT id, part, 'kpn', id || '-' || part, 'DELIVRD' FROM messages, generate_series(1, 2) AS part"
    )
    archive_pass(database_url, settings_for(archive_url))
    assert archived_ids(archive_conn) == ids
    assert conn.execute("SELECT count(*) AS n FROM message_parts").fetchone() == {"n": 0}


def test_rows_locked_by_someone_else_wait_for_the_next_pass(
    conn: Conn, database_url: str, archive_url: str | None, archive_conn: Conn
) -> None:
    ids = add_messages(conn, 4)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT id FROM messages WHERE id = %s FOR UPDATE", (ids[1],))
        report = archive_pass(database_url, settings_for(archive_url, batch_size=2))
        assert report.archived == 3
        assert live_ids(conn) == [ids[1]]
    assert archive_pass(database_url, settings_for(archive_url)).archived == 1
    assert archived_ids(archive_conn) == ids


def test_two_archivers_at_once_share_the_work_exactly(
    conn: Conn, database_url: str, archive_url: str | None, archive_conn: Conn
) -> None:
    ids = add_messages(conn, 2000)
    settings = settings_for(archive_url, batch_size=50)
    archive_pass(database_url, settings)  # a separate archive database gets its schema first
    ids += add_messages(conn, 2000)
    reports: list[PassReport] = []
    threads = [threading.Thread(target=lambda: reports.append(archive_pass(database_url, settings))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.archived for r in reports) == 2000
    assert live_ids(conn) == []
    assert archived_ids(archive_conn) == ids


# -- retention -----------------------------------------------------------------------------


def test_retention_deletes_archived_rows_past_retain_for_and_is_off_by_default(
    conn: Conn, database_url: str, archive_url: str | None, archive_conn: Conn
) -> None:
    ids = add_messages(conn, 7)
    archive_pass(database_url, settings_for(archive_url))
    archive_conn.execute(
        "UPDATE archive.messages SET archived_at = now() - interval '40 days' WHERE id = ANY(%s)", (ids[:5],)
    )

    assert archive_pass(database_url, settings_for(archive_url)).deleted == 0
    assert archived_ids(archive_conn) == ids

    report = archive_pass(database_url, settings_for(archive_url, retain_for=timedelta(days=30), batch_size=2))
    assert report.deleted == 5
    assert archived_ids(archive_conn) == ids[5:]


# -- the schema ----------------------------------------------------------------------------

SELECT_COLUMN_TYPES = """
SELECT column_name, data_type, is_nullable FROM information_schema.columns
WHERE table_schema = %(schema)s AND table_name = %(table)s ORDER BY ordinal_position
"""


def column_types(conn: Conn, schema: str, table: str) -> list[tuple[str, str, str]]:
    rows = conn.execute(SELECT_COLUMN_TYPES, {"schema": schema, "table": table})
    return [(r["column_name"], r["data_type"], r["is_nullable"]) for r in rows]


def test_the_archive_has_every_column_of_messages_with_the_same_type(conn: Conn) -> None:
    live = [(name, kind) for name, kind, _ in column_types(conn, "public", "messages")]
    archive = [(name, kind) for name, kind, _ in column_types(conn, "archive", "messages")]
    # columns added later come after archived_at (ALTER TABLE appends): compare by name
    assert dict(archive) == {**dict(live), "archived_at": "timestamp with time zone"}
    assert len(archive) == len(live) + 1


def test_a_separate_archive_gets_the_same_schema_from_the_same_migration(
    conn: Conn, database_url: str, separate_database_url: str
) -> None:
    archive_pass(database_url, settings_for(separate_database_url))
    archive_pass(database_url, settings_for(separate_database_url))  # a second run applies nothing
    with psycopg.connect(separate_database_url, row_factory=dict_row) as archive:
        assert column_types(archive, "archive", "messages") == column_types(conn, "archive", "messages")
        applied = archive.execute("SELECT version, name FROM archive.schema_migrations").fetchall()
        assert sorted(row["name"] for row in applied) == sorted(ARCHIVE_MIGRATIONS)
        # the archive database holds the archive only: no queue, no NOTIFY triggers
        assert archive.execute("SELECT to_regclass('public.messages') AS t").fetchone() == {"t": None}
        triggers = archive.execute("SELECT count(*) AS n FROM pg_trigger WHERE NOT tgisinternal").fetchone()
        assert triggers == {"n": 0}


def test_the_archiver_refuses_when_the_archive_lacks_a_column_of_messages(
    conn: Conn, database_url: str, archive_url: str | None
) -> None:
    add_messages(conn, 3)
    conn.execute("ALTER TABLE messages ADD COLUMN priority integer")
    with pytest.raises(ArchiveSchemaMismatch, match=r"lacks column\(s\) priority of messages"):
        archive_pass(database_url, settings_for(archive_url))
    assert len(live_ids(conn)) == 3


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SMSBUS_ARCHIVER_ARCHIVE_AFTER", "thirty days", "bad setting archiver.archive_after"),
        ("SMSBUS_ARCHIVER_ARCHIVE_AFTER", "-P1D", "archive_after must not be negative"),
        ("SMSBUS_ARCHIVER_RETAIN_FOR", "0", "retain_for must be positive"),
        ("SMSBUS_ARCHIVER_BATCH_SIZE", "0", "bad setting archiver.batch_size"),
        ("SMSBUS_ARCHIVER_ARCHIVE_DATABASE_URL", "postgresql://x/y?bogus=1", "archiver.archive_database_url"),
    ],
)
def test_a_bad_archiver_setting_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMSBUS_CONFIG", raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=says):
        load_settings()


def test_durations_read_as_iso_8601_or_seconds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMSBUS_CONFIG", raising=False)
    monkeypatch.setenv("SMSBUS_ARCHIVER_ARCHIVE_AFTER", "P7DT12H")
    monkeypatch.setenv("SMSBUS_ARCHIVER_RETAIN_FOR", "86400")
    own = load_settings()
    assert (own.archive_after, own.retain_for) == (timedelta(days=7, hours=12), timedelta(days=1))
    assert ArchiverSettings().retain_for is None and ArchiverSettings().require_triggers_done


# -- the command line ----------------------------------------------------------------------


def smsbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN_DIR / "smsbus"), *args], env=env, capture_output=True, text=True, timeout=30)


def archiver_env(service_env: dict[str, str], archive_url: str | None, **settings: str) -> dict[str, str]:
    env = dict(service_env, SMSBUS_ARCHIVER_ARCHIVE_AFTER="P1D", SMSBUS_ARCHIVER_METRICS_PORT="0")
    if archive_url is not None:
        env["SMSBUS_ARCHIVER_ARCHIVE_DATABASE_URL"] = archive_url
    env.update({f"SMSBUS_ARCHIVER_{k.upper()}": v for k, v in settings.items()})
    return env


def test_archive_run_then_list_and_show_find_archived_messages(
    conn: Conn, service_env: dict[str, str], archive_url: str | None
) -> None:
    archived = add_messages(conn, 3)
    live = add_messages(conn, 1, status="QUEUED", trigger_status="N/A")
    env = archiver_env(service_env, archive_url)

    result = smsbus(env, "archive", "run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("archived 3 messages; deleted 0")

    listed = smsbus(env, "messages", "list", "--archive")
    assert listed.returncode == 0, listed.stderr
    assert [int(line.split()[0]) for line in listed.stdout.splitlines()[1:]] == archived[::-1]
    only_live = smsbus(env, "messages", "list")
    assert [int(line.split()[0]) for line in only_live.stdout.splitlines()[1:]] == live

    shown = smsbus(env, "messages", "show", str(archived[0]))
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert fields["id"] == str(archived[0]) and fields["status"] == "DELIVERED" and "archived_at" in fields
    assert "archived_at" not in smsbus(env, "messages", "show", str(live[0])).stdout
    missing = smsbus(env, "messages", "show", "424242")
    assert (missing.returncode, missing.stderr.strip()) == (1, "smsbus: error: no message with id 424242")


def test_archive_run_refuses_a_bad_setting_in_one_line(service_env: dict[str, str]) -> None:
    result = smsbus(archiver_env(service_env, None, retain_for="forever"), "archive", "run")
    assert result.returncode == 1
    assert result.stderr.startswith("smsbus: error: bad setting archiver.retain_for")
    assert "Traceback" not in result.stderr


def test_listing_an_archive_database_the_archiver_never_ran_on_says_so(
    service_env: dict[str, str], separate_database_url: str
) -> None:
    result = smsbus(archiver_env(service_env, separate_database_url), "messages", "list", "--archive")
    assert result.returncode == 1
    assert "no archive schema yet" in result.stderr and "Traceback" not in result.stderr


# -- the service, as supervisord runs it ---------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, process: ServiceProcess, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.process.poll() is not None:
            raise AssertionError(f"archiver exited with {process.process.returncode}:\n{process.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s:\n{process.log()}")
        time.sleep(0.01)


def test_the_service_archives_on_its_timer_deletes_expired_and_exports_metrics(
    conn: Conn, database_url: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    expired = add_messages(conn, 5)
    archive_pass(database_url, settings_for(None))
    conn.execute("UPDATE archive.messages SET archived_at = now() - interval '40 days' WHERE id = ANY(%s)", (expired,))
    archived = add_messages(conn, 120)
    add_messages(conn, 1, age=timedelta(hours=1))  # finished, waiting for its archive_after
    port = free_port()
    env = archiver_env(
        service_env, None, metrics_port=str(port), retain_for="P30D", batch_size="50", poll_interval_s="0.2"
    )
    archiver = start_service(["smsbus-archiver"], env, tmp_path / "archiver.log")
    try:
        wait_until(lambda: archived_ids(conn) == archived, "the archive", archiver)
        wait_until(lambda: "archive pass finished" in archiver.log(), "a finished pass", archiver)
        assert value(port, "smsbus_archiver_archived_total") == 120
        assert value(port, "smsbus_archiver_retention_deleted_total") == 5
        assert 3500 < value(port, "smsbus_archiver_oldest_waiting_age_seconds") < 3700
        # on its timer: a message that becomes old enough is taken without a restart
        late = add_messages(conn, 1)
        wait_until(lambda: archived_ids(conn) == archived + late, "the timer", archiver)
    finally:
        code, _ = archiver.stop()
    assert code == 0


def test_the_service_exits_naming_a_bad_setting(service_env: dict[str, str], tmp_path: Path) -> None:
    env = archiver_env(service_env, None, archive_after="a month")
    result = subprocess.run([str(BIN_DIR / "smsbus-archiver")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "bad setting archiver.archive_after" in result.stderr


# -- kill -9 in the middle of a batch ------------------------------------------------------

CRASH_ROWS = 600
CRASH_BATCH = 50


def in_the_middle_of_a_batch(conn: Conn, archive_conn: Conn, separate: bool) -> bool:
    """At least two batches archived, and one between its copy and its delete (separate
    database) or inside its open transaction (same database)."""
    exists = archive_conn.execute("SELECT to_regclass('archive.messages') IS NOT NULL AS e").fetchone()
    if not (exists and exists["e"]) or len(archived_ids(archive_conn)) < 2 * CRASH_BATCH:
        return False
    if separate:
        return bool(set(live_ids(conn)) & set(archived_ids(archive_conn)))
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE application_name = 'archiver' AND state = 'idle in transaction'"
    ).fetchone()
    return row is not None and row["n"] > 0


def test_kill_9_in_the_middle_of_a_batch_loses_and_duplicates_nothing(
    conn: Conn, service_env: dict[str, str], tmp_path: Path, archive_url: str | None, archive_conn: Conn
) -> None:
    ids = add_messages(conn, CRASH_ROWS)
    before = rows_by_id(conn, "messages")
    separate = archive_url is not None
    slow = archiver_env(
        service_env, archive_url, batch_size=str(CRASH_BATCH), crash_test_pause_s="0.5", poll_interval_s="0.2"
    )
    first = start_service(["smsbus-archiver"], slow, tmp_path / "first.log")
    try:
        wait_until(lambda: in_the_middle_of_a_batch(conn, archive_conn, separate), "the middle of a batch", first)
    finally:
        first.kill()

    in_both = set(live_ids(conn)) & set(archived_ids(archive_conn))
    if separate:
        # the kill hit the window between the archive's commit and the live delete
        assert len(in_both) == CRASH_BATCH
        # meanwhile someone reprocesses one of them: the live row is the truth
        changed = min(in_both)
        conn.execute("UPDATE messages SET trigger_status = 'N/A' WHERE id = %s", (changed,))
    else:
        # the batch in hand rolled back as a whole
        assert not in_both
        assert len(live_ids(conn)) + len(archived_ids(archive_conn)) == CRASH_ROWS
        changed = None

    fast = archiver_env(service_env, archive_url, batch_size="100", poll_interval_s="0.2")
    second = start_service(["smsbus-archiver"], fast, tmp_path / "second.log")
    expected_live = [] if changed is None else [changed]

    def settled() -> bool:
        if live_ids(conn) != expected_live:
            return False
        return not separate or archive_conn.execute("SELECT 1 FROM archive.unconfirmed_copies").fetchone() is None

    try:
        wait_until(settled, "every finished message archived", second)
    finally:
        code, _ = second.stop()
    assert code == 0

    archived = rows_by_id(archive_conn, "archive.messages")
    assert sorted(archived) == sorted(set(ids) - set(expected_live))  # no id twice, none lost
    assert all(archived[i] == before[i] for i in archived)
    if changed is not None:
        row = conn.execute("SELECT trigger_status FROM messages WHERE id = %s", (changed,)).fetchone()
        assert row == {"trigger_status": "N/A"}
