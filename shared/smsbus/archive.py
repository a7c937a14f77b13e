"""The archive (SPEC §8): finished messages leave the live queue for `archive.messages`, in the
same database or a separate one, and can still be found there. Used by the archiver service and
by `smsbus archive run` / `smsbus messages`. Owns no status move: a message is archived as it
is; archived rows are never changed, only deleted by retention.

Crash safety. Same database: one statement deletes a batch from `messages` and inserts it into
the archive, in one transaction. Separate database: the batch stays locked in the live database
while it is copied into the archive and committed there, its ids recorded in
`archive.unconfirmed_copies` in the same commit; then the batch is deleted from the live
database, and the record is removed with the next batch's copy (one commit fewer per batch).
An archiver killed between those commits leaves the record, and the next pass settles it: a
row gone from the live database was archived; a row still there (and locked by no other
archiver) is the truth, so its archived copy is dropped and the row is archived again in the
usual way. Nothing is lost, nothing is kept twice.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, NamedTuple

import msgspec
import psycopg
from psycopg import sql

from smsbus import config, db
from smsbus.config import OptionalPort, Seconds, Settings
from smsbus.errors import MessageNotFound, SmsbusError
from smsbus.message import Message
from smsbus.migrate import MigrationTarget, apply_migrations
from smsbus.queue import MESSAGE_FILTERS
from smsbus.statuses import PERMANENT, TriggerStatus

log = logging.getLogger("smsbus.archive")

Connection = psycopg.Connection[dict[str, Any]]

SECTION = "archiver"
# The migrations that build the archive schema: a separate archive database gets them too.
ARCHIVE_MIGRATIONS = ("0005_create_archive.sql", "0013_add_archive_message_callback.sql")
ARCHIVE_MIGRATION_LOCK_KEY = 16725_0005
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=100_000)]

TRIGGERS_DONE = (
    TriggerStatus.PROCESSED,
    TriggerStatus.NOMATCH,
    TriggerStatus.NOTRIGGERS,
    TriggerStatus.FAILED,
)


class ArchiverSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[archiver]` section, read by the service and by the CLI alike."""

    # None: archive.messages in the live database; else a database of its own
    archive_database_url: str | None = None
    # how long a finished message stays untouched in the live queue (ISO 8601 "P30D", or seconds)
    archive_after: timedelta = timedelta(days=30)
    # archived rows are deleted this long after they were archived; None keeps them for ever
    retain_for: timedelta | None = None
    # false also archives messages the triggers never looked at (trigger_status N/A): for
    # installations that run no triggers service. A message a trigger holds is never taken.
    require_triggers_done: bool = True
    batch_size: BatchSize = 1000
    # rest between batches: live traffic gets the database and the CPU to itself meanwhile;
    # archiving slows down in proportion. 0: full speed (see docs/performance.md)
    batch_pause_s: Seconds = 0.0
    poll_interval_s: Seconds = 60.0
    metrics_port: OptionalPort = 16733
    # one batch (a copy, a delete, retention) may take this long; other services get 30 s
    statement_timeout_s: Seconds = 600.0
    # testing only: sleep this long inside every batch (separate database: between the archive
    # commit and the live delete; same database: before the commit), so that a test can
    # kill -9 the archiver exactly there
    crash_test_pause_s: Seconds = 0.0

    def __post_init__(self) -> None:
        if self.archive_after < timedelta(0):
            raise ValueError("archive_after must not be negative")
        if self.retain_for is not None and self.retain_for <= timedelta(0):
            raise ValueError("retain_for must be positive (leave it out to keep archived rows)")

    @property
    def trigger_statuses(self) -> list[str]:
        """The trigger_status values a message may have to be archived."""
        done = [str(s) for s in TRIGGERS_DONE]
        return done if self.require_triggers_done else [*done, str(TriggerStatus.NOT_APPLICABLE)]


def load_settings() -> ArchiverSettings:
    own = config.load_section(SECTION, ArchiverSettings)
    config.check_database_url(f"{SECTION}.archive_database_url", own.archive_database_url)
    return own


class ArchiveSchemaMismatch(SmsbusError):
    """archive.messages lacks a column of messages: archiving would lose data, so it refuses."""


class ArchiveMissing(SmsbusError):
    """The archive database has no archive schema yet."""


# -- the schema ----------------------------------------------------------------------------

CREATE_ARCHIVE_MIGRATIONS = """
CREATE SCHEMA IF NOT EXISTS archive;
CREATE TABLE IF NOT EXISTS archive.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
SELECT_ARCHIVE_APPLIED = "SELECT version FROM archive.schema_migrations"
INSERT_ARCHIVE_APPLIED = (
    "INSERT INTO archive.schema_migrations (version, name) VALUES (%(version)s, %(name)s)"
)


ARCHIVE_TARGET = MigrationTarget(
    "archive",
    ARCHIVE_MIGRATION_LOCK_KEY,
    CREATE_ARCHIVE_MIGRATIONS,
    SELECT_ARCHIVE_APPLIED,
    INSERT_ARCHIVE_APPLIED,
    lambda name: name in ARCHIVE_MIGRATIONS,
)


def migrate_archive(url: str) -> list[str]:
    """Give a separate archive database the archive schema: the same migration files the live
    database got, tracked in archive.schema_migrations. Safe from several processes."""
    return apply_migrations(url, ARCHIVE_TARGET)


SELECT_COLUMNS = """
SELECT attname AS name FROM pg_attribute
WHERE attrelid = %(table)s::regclass AND attnum > 0 AND NOT attisdropped
ORDER BY attnum
"""


def table_columns(conn: Connection, table: str) -> list[str]:
    names = [str(row["name"]) for row in conn.execute(SELECT_COLUMNS, {"table": table})]
    conn.commit()
    return names


def archived_columns(live: Connection, archive: Connection) -> list[str]:
    """The columns of `messages`, in order; refuses when the archive lacks any of them."""
    columns = table_columns(live, "messages")
    missing = [c for c in columns if c not in set(table_columns(archive, "archive.messages"))]
    if missing:
        raise ArchiveSchemaMismatch(
            f"archive.messages lacks column(s) {', '.join(missing)} of messages: add them to the "
            "archive schema in a migration listed in smsbus.archive.ARCHIVE_MIGRATIONS"
        )
    return columns


# -- what may leave the live queue --------------------------------------------------------

# Finished with: a permanent status, done with triggers, and not SENT while its channel's
# report timeout runs (a delivery report may still come and must find the row).
FINISHED = """
    m.status = ANY(%(permanent)s)
    AND m.trigger_status = ANY(%(trigger_statuses)s)
    AND NOT (m.status = 'SENT' AND EXISTS (
        SELECT 1 FROM channels c
        WHERE c.name = m.channel AND coalesce(m.sent_at, m.updated_at) + c.report_timeout > now()))
"""

# The next batch past after_id that is finished with and untouched for archive_after, in id
# order, skipping rows that others (channels, triggers, another archiver) hold.
CLAIM_ARCHIVABLE = f"""
SELECT m.id FROM messages m
WHERE m.id > %(after_id)s
  AND m.updated_at < now() - %(archive_after)s
  AND {FINISHED}
ORDER BY m.id
LIMIT %(batch_size)s
FOR UPDATE SKIP LOCKED
"""

OLDEST_FINISHED = f"SELECT now() - min(m.updated_at) AS age FROM messages m WHERE {FINISHED}"

# One statement, one transaction: the batch leaves the queue and enters the archive together.
MOVE_WITHIN_DATABASE = """
WITH claimed AS ({claim}),
     -- out of the live queue
     moved AS (DELETE FROM messages m USING claimed WHERE m.id = claimed.id RETURNING m.*)
-- into the archive; a copy left by an earlier archive database is replaced by the live row
INSERT INTO archive.messages ({columns}) SELECT {columns} FROM moved
ON CONFLICT (id) DO UPDATE SET {replace}, archived_at = now()
RETURNING id
"""

COPY_OUT = "COPY (SELECT {columns} FROM messages WHERE id = ANY({ids}) ORDER BY id) TO STDOUT (FORMAT BINARY)"
CREATE_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS archive_staging (LIKE archive.messages INCLUDING DEFAULTS)
ON COMMIT DELETE ROWS
"""
COPY_IN = "COPY archive_staging ({columns}) FROM STDIN (FORMAT BINARY)"
# The copy and the record that its live delete is still to come, in one commit.
UPSERT_STAGED = """
WITH archived AS (
    INSERT INTO archive.messages ({columns}) SELECT {columns} FROM archive_staging
    ON CONFLICT (id) DO UPDATE SET {replace}, archived_at = now()
    RETURNING id),
     recorded AS (
    INSERT INTO archive.unconfirmed_copies (id) SELECT id FROM archived ON CONFLICT (id) DO NOTHING)
SELECT id FROM archived
"""
DELETE_ARCHIVED = "DELETE FROM messages WHERE id = ANY(%(ids)s)"
CONFIRM_COPIES = "DELETE FROM archive.unconfirmed_copies WHERE id = ANY(%(ids)s)"

SELECT_UNCONFIRMED = "SELECT id FROM archive.unconfirmed_copies ORDER BY id"
# Still in the live queue and held by nobody: the archiver that copied them died.
LOCK_ORPHANED = "SELECT id FROM messages WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE SKIP LOCKED"
SELECT_PRESENT = "SELECT id FROM messages WHERE id = ANY(%(ids)s)"
DROP_ORPHANED_COPIES = """
WITH dropped AS (DELETE FROM archive.messages WHERE id = ANY(%(ids)s))
DELETE FROM archive.unconfirmed_copies WHERE id = ANY(%(ids)s)
"""

# A batch of rows archived longer than retain_for ago; a copy whose live delete is not
# confirmed yet is not the archive's to drop.
DELETE_EXPIRED = """
WITH expired AS (
    SELECT a.id FROM archive.messages a
    WHERE a.archived_at < now() - %(retain_for)s
      AND NOT EXISTS (SELECT 1 FROM archive.unconfirmed_copies u WHERE u.id = a.id)
    ORDER BY a.archived_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED)
DELETE FROM archive.messages a USING expired WHERE a.id = expired.id
"""


def column_list(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def replace_list(columns: Sequence[str]) -> sql.Composable:
    """`col = EXCLUDED.col` for an upsert: the live row wins over an older archived copy."""
    return sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns if c != "id"
    )


class Target:
    """Where archived rows go: archive.messages in the live database."""

    def __init__(self, settings: ArchiverSettings) -> None:
        self.settings = settings
        self.columns: list[str] = []

    def archive_connection(self, live: Connection) -> Connection:
        return live

    def prepare(self, live: Connection) -> None:
        """After every (re)connect: the columns to archive, checked against the archive."""
        self.columns = archived_columns(live, self.archive_connection(live))

    def settle(self, live: Connection) -> int:
        """Finish what a killed archiver left half done; nothing is ever half done here."""
        return 0

    def move_batch(self, live: Connection, claim: dict[str, Any]) -> list[int]:
        query = sql.SQL(MOVE_WITHIN_DATABASE).format(
            claim=sql.SQL(CLAIM_ARCHIVABLE),
            columns=column_list(self.columns),
            replace=replace_list(self.columns),
        )
        ids = [int(row["id"]) for row in live.execute(query, claim)]
        self.pause_for_crash_test(ids)
        live.commit()
        return ids

    def delete_expired(self, live: Connection) -> int:
        archive = self.archive_connection(live)
        params = {"retain_for": self.settings.retain_for, "batch_size": self.settings.batch_size}
        deleted = archive.execute(DELETE_EXPIRED, params).rowcount
        archive.commit()
        return deleted

    def pause_for_crash_test(self, ids: list[int]) -> None:
        if ids and self.settings.crash_test_pause_s:
            time.sleep(self.settings.crash_test_pause_s)

    def close(self) -> None:
        """Drop what the target holds besides the live connection (the loop owns that)."""


class SeparateDatabase(Target):
    """archive.messages in a database of its own, created and migrated by the archiver."""

    def __init__(self, settings: ArchiverSettings, url: str) -> None:
        super().__init__(settings)
        self.url = url
        self.conn: Connection | None = None
        self.migrated = False
        # deleted from the live database; their unconfirmed record goes with the next commit
        self.deleted_unconfirmed: list[int] = []

    def archive_connection(self, live: Connection) -> Connection:
        if self.conn is None or self.conn.closed:
            if not self.migrated:
                migrate_archive(self.url)
                self.migrated = True
            self.conn = db.connect(
                self.url, application="smsbus-archiver", statement_timeout_s=self.settings.statement_timeout_s
            )
            self.conn.execute(CREATE_STAGING)
            self.conn.commit()
        return self.conn

    def settle(self, live: Connection) -> int:
        archive = self.archive_connection(live)
        unconfirmed = [int(row["id"]) for row in archive.execute(SELECT_UNCONFIRMED)]
        archive.commit()
        if not unconfirmed:
            return 0
        orphaned = [int(row["id"]) for row in live.execute(LOCK_ORPHANED, {"ids": unconfirmed})]
        present = {int(row["id"]) for row in live.execute(SELECT_PRESENT, {"ids": unconfirmed})}
        deleted = [i for i in unconfirmed if i not in present]
        archive.execute(DROP_ORPHANED_COPIES, {"ids": orphaned})
        archive.execute(CONFIRM_COPIES, {"ids": deleted})
        archive.commit()
        live.commit()
        log.info("settled unconfirmed copies archived=%d kept_live=%d", len(deleted), len(orphaned))
        return len(deleted) + len(orphaned)

    def move_batch(self, live: Connection, claim: dict[str, Any]) -> list[int]:
        archive = self.archive_connection(live)
        claimed = [int(row["id"]) for row in live.execute(CLAIM_ARCHIVABLE, claim)]
        if not claimed:
            live.commit()
            self.confirm_deleted(archive)
            archive.commit()
            return []
        columns = column_list(self.columns)
        copy_out = sql.SQL(COPY_OUT).format(columns=columns, ids=sql.Literal(claimed))
        with live.cursor() as cursor, cursor.copy(copy_out) as rows_out:
            data = b"".join(bytes(block) for block in rows_out)
        with archive.cursor() as cursor:
            with cursor.copy(sql.SQL(COPY_IN).format(columns=columns)) as rows_in:
                rows_in.write(data)
            upsert = sql.SQL(UPSERT_STAGED).format(columns=columns, replace=replace_list(self.columns))
            ids = sorted(int(row["id"]) for row in cursor.execute(upsert))
        self.confirm_deleted(archive)
        archive.commit()
        self.pause_for_crash_test(ids)
        # only the ids the archive now holds leave the live queue
        live.execute(DELETE_ARCHIVED, {"ids": ids})
        live.commit()
        self.deleted_unconfirmed = ids
        return ids

    def confirm_deleted(self, archive: Connection) -> None:
        """In the caller's archive transaction: the last batch's live delete is committed."""
        if self.deleted_unconfirmed:
            archive.execute(CONFIRM_COPIES, {"ids": self.deleted_unconfirmed})
            self.deleted_unconfirmed = []

    def close(self) -> None:
        # a confirmation not yet written is the next settle's to find
        self.deleted_unconfirmed = []
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def make_target(settings: ArchiverSettings) -> Target:
    if settings.archive_database_url is None:
        return Target(settings)
    return SeparateDatabase(settings, settings.archive_database_url)


# -- the passes ----------------------------------------------------------------------------


class Phase(enum.Enum):
    SETTLE = "settle"
    MOVE = "move"
    RETENTION = "retention"


class StepResult(NamedTuple):
    archived: int = 0
    deleted: int = 0
    # set on the step that ends a pass: age of the oldest finished message left in the queue
    # (zero when there is none)
    oldest_finished: timedelta | None = None


class PassReport(NamedTuple):
    archived: int
    deleted: int
    oldest_finished: timedelta


class Archiver:
    """A pass: settle what a killed archiver left, move batches in id order until none is
    left, delete expired archived rows, measure what waits. One batch per step, so the main
    loop commits between batches and can stop between them."""

    def __init__(self, settings: ArchiverSettings) -> None:
        self.settings = settings
        self.target = make_target(settings)
        self.phase = Phase.SETTLE
        self.after_id = 0
        self.pass_archived = 0
        self.pass_deleted = 0

    def prepare(self, live: Connection) -> None:
        self.target.prepare(live)

    def step(self, live: Connection) -> StepResult:
        try:
            return self._step(live)
        except psycopg.Error:
            # the loop drops the live connection; start over cleanly on the next one
            self.target.close()
            self.start_pass()
            raise

    def run_pass(self, live: Connection) -> PassReport:
        archived = deleted = 0
        while True:
            result = self.step(live)
            archived += result.archived
            deleted += result.deleted
            if result.oldest_finished is not None:
                return PassReport(archived, deleted, result.oldest_finished)

    def start_pass(self) -> None:
        self.phase = Phase.SETTLE
        self.after_id = 0
        self.pass_archived = self.pass_deleted = 0

    def _step(self, live: Connection) -> StepResult:
        if self.phase is Phase.SETTLE:
            self.target.settle(live)
            self.phase = Phase.MOVE
        if self.phase is Phase.MOVE:
            ids = self.target.move_batch(live, self.claim_params())
            if ids:
                self.after_id = max(ids)
                self.pass_archived += len(ids)
                time.sleep(self.settings.batch_pause_s)
                return StepResult(archived=len(ids))
            self.phase = Phase.RETENTION
        if self.settings.retain_for is not None:
            deleted = self.target.delete_expired(live)
            if deleted:
                self.pass_deleted += deleted
                time.sleep(self.settings.batch_pause_s)
                return StepResult(deleted=deleted)
        oldest = self.oldest_finished(live)
        if self.pass_archived or self.pass_deleted:
            log.info(
                "archive pass finished archived=%d deleted=%d oldest_finished_s=%.0f",
                self.pass_archived, self.pass_deleted, oldest.total_seconds(),
            )
        self.start_pass()
        return StepResult(oldest_finished=oldest)

    def claim_params(self) -> dict[str, Any]:
        return {
            "after_id": self.after_id,
            "archive_after": self.settings.archive_after,
            "batch_size": self.settings.batch_size,
            **self.finished_params(),
        }

    def finished_params(self) -> dict[str, Any]:
        return {
            "permanent": sorted(str(s) for s in PERMANENT),
            "trigger_statuses": self.settings.trigger_statuses,
        }

    def oldest_finished(self, live: Connection) -> timedelta:
        row = live.execute(OLDEST_FINISHED, self.finished_params()).fetchone()
        live.commit()
        age = row["age"] if row is not None else None
        return age if isinstance(age, timedelta) else timedelta(0)

    def close(self) -> None:
        self.target.close()


# -- finding archived messages -------------------------------------------------------------


class ArchivedMessage(Message, frozen=True, kw_only=True):
    """A row of archive.messages."""

    archived_at: datetime


SELECT_ARCHIVED = "SELECT * FROM archive.messages WHERE id = %(id)s"
FIND_ARCHIVED = "SELECT * FROM archive.messages" + MESSAGE_FILTERS


def archive_url(settings: Settings, own: ArchiverSettings) -> str:
    return own.archive_database_url or settings.resolved_database_url()


@contextmanager
def archive_connection() -> Iterator[Connection]:
    """A short read-only connection to wherever the archive is, for lookups."""
    url = archive_url(config.load(), load_settings())
    with db.connect(url, application="smsbus-archive-lookup") as conn:
        try:
            yield conn
        except psycopg.errors.UndefinedTable:
            raise ArchiveMissing(
                "the archive database has no archive schema yet: the archiver creates it on its "
                "first run (smsbus archive run)"
            ) from None


def get_archived(message_id: int) -> ArchivedMessage:
    """One archived message; raises MessageNotFound."""
    with archive_connection() as conn:
        row = conn.execute(SELECT_ARCHIVED, {"id": message_id}).fetchone()
    if row is None:
        raise MessageNotFound(message_id)
    return msgspec.convert(dict(row), ArchivedMessage)


def find_archived(
    *,
    status: str | None = None,
    direction: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[ArchivedMessage]:
    """The most recent archived messages matching every filter given, newest id first."""
    params = {"status": status, "direction": direction, "channel": channel, "since": since, "limit": limit}
    with archive_connection() as conn:
        return [msgspec.convert(dict(row), ArchivedMessage) for row in conn.execute(FIND_ARCHIVED, params)]
