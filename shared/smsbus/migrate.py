"""Applies smsbus/migrations/NNNN_verb_noun.sql in order, once each, then copies the
status table of smsbus.statuses into the database. Safe to run from several processes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, NamedTuple

import psycopg

from smsbus.statuses import PERMANENT, Status, all_moves

log = logging.getLogger("smsbus.migrate")

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# any constant shared by everyone who migrates this database
MIGRATION_LOCK_KEY = 16725_0001

CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
SELECT_APPLIED = "SELECT version FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s)"
REPLACE_STATUSES = """
DELETE FROM status_moves;
DELETE FROM message_statuses;
"""
INSERT_STATUS = "INSERT INTO message_statuses (status, permanent) VALUES (%(status)s, %(permanent)s)"
INSERT_MOVE = "INSERT INTO status_moves (from_status, to_status) VALUES (%(from_status)s, %(to_status)s)"


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped in the package, in order."""
    found = []
    for entry in resources.files("smsbus.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class MigrationTarget(NamedTuple):
    """A set of migration files and where they are tracked: the live database, or a
    separate archive database (smsbus.archive), which gets only the archive's files."""

    name: str
    lock_key: int
    create_tracking: str
    select_applied: str
    insert_applied: str
    includes: Callable[[str], bool]


LIVE = MigrationTarget(
    "live", MIGRATION_LOCK_KEY, CREATE_SCHEMA_MIGRATIONS, SELECT_APPLIED, INSERT_APPLIED, lambda name: True
)


def migrate(url: str) -> list[str]:
    """Apply what is missing; returns the names of the migrations applied now."""
    return apply_migrations(url, LIVE, then=sync_statuses)


def apply_migrations(
    url: str, target: MigrationTarget, then: Callable[[psycopg.Connection[Any]], None] | None = None
) -> list[str]:
    """Each missing migration of the target in its own transaction, under an advisory lock
    (several processes may migrate at once); `then` runs under the same lock."""
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (target.lock_key,))
        try:
            conn.execute(target.create_tracking)
            done = {row[0] for row in conn.execute(target.select_applied)}
            for version, name, sql in available_migrations():
                if version in done or not target.includes(name):
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(target.insert_applied, {"version": version, "name": name})
                log.info("migrated target=%s version=%d name=%s", target.name, version, name)
                applied_now.append(name)
            if then is not None:
                then(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (target.lock_key,))
    return applied_now


def sync_statuses(conn: psycopg.Connection[Any]) -> None:
    """Make the database's copy of the status table equal to smsbus.statuses."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(REPLACE_STATUSES)
        cur.executemany(
            INSERT_STATUS, [{"status": str(s), "permanent": s in PERMANENT} for s in Status]
        )
        cur.executemany(
            INSERT_MOVE, [{"from_status": a, "to_status": b} for a, b in all_moves()]
        )
