"""The archiver (SPEC §8): on a timer, moves finished messages older than archive_after from
`messages` to the archive (same database or a separate one) and deletes archived rows older
than retain_for. Owns no status move. The work itself is smsbus.archive, which
`smsbus archive run` runs on demand too; several archivers may run at once.
"""

from __future__ import annotations

import sys

import prometheus_client

from smsbus import config
from smsbus import log as logs
from smsbus.archive import Archiver, ArchiverSettings, load_settings
from smsbus.errors import ConfigError, SmsbusError
from smsbus.loop import Connection, LoopSettings, run

SERVICE = "archiver"

ARCHIVED = prometheus_client.Counter(
    "smsbus_archiver_archived_total", "Messages moved from the live queue to the archive"
)
RETENTION_DELETED = prometheus_client.Counter(
    "smsbus_archiver_retention_deleted_total", "Archived messages deleted after retain_for"
)
OLDEST_FINISHED = prometheus_client.Gauge(
    "smsbus_archiver_oldest_waiting_age_seconds",
    "Time since the last change of the oldest finished message still in the live queue "
    "(measured after each pass; stays near archive_after while the archiver keeps up)",
)


class ArchiverService:
    def __init__(self, own: ArchiverSettings) -> None:
        self.archiver = Archiver(own)

    def on_connect(self, conn: Connection) -> None:
        self.archiver.prepare(conn)

    def step(self, conn: Connection) -> int:
        result = self.archiver.step(conn)
        ARCHIVED.inc(result.archived)
        RETENTION_DELETED.inc(result.deleted)
        if result.oldest_finished is not None:
            OLDEST_FINISHED.set(result.oldest_finished.total_seconds())
        return result.archived + result.deleted


def main() -> None:
    try:
        settings = config.load()
        own = load_settings()
    except ConfigError as e:
        sys.exit(f"{SERVICE}: {e}")
    logs.configure(SERVICE, settings.log_level)
    service = ArchiverService(own)
    try:
        run(
            settings=settings,
            service=SERVICE,
            # a timer only: nothing needs archiving the moment it changes
            loop=LoopSettings(
                poll_interval_s=own.poll_interval_s,
                metrics_port=own.metrics_port,
                statement_timeout_s=own.statement_timeout_s,
            ),
            step=service.step,
            on_connect=service.on_connect,
        )
    except SmsbusError as e:
        # the archive cannot take what the queue holds (a column missing): archiving would
        # lose data, so stop and say so rather than retry for ever
        sys.exit(f"{SERVICE}: {e}")
    finally:
        service.archiver.close()
