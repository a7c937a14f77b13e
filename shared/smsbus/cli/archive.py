"""`smsbus archive run`: one archiver pass now, in this process (the archiver service does the
same on its timer; both may run at once). Settings from the `[archiver]` section."""

from __future__ import annotations

import argparse
from typing import Any

from smsbus import config, db
from smsbus.archive import Archiver, load_settings


def register(commands: Any) -> None:
    parser = commands.add_parser("archive", help="the message archive")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser(
        "run", help="move finished messages older than archive_after to the archive now"
    ).set_defaults(handler=run_pass)


def run_pass(args: argparse.Namespace) -> int:
    settings = config.load()
    own = load_settings()
    archiver = Archiver(own)
    try:
        with db.connect(
            settings.resolved_database_url(),
            application="smsbus-archive-run",
            statement_timeout_s=own.statement_timeout_s,
        ) as live:
            archiver.prepare(live)
            report = archiver.run_pass(live)
    finally:
        archiver.close()
    print(
        f"archived {report.archived} messages; deleted {report.deleted} past retain_for; "
        f"oldest finished message left: {report.oldest_finished.total_seconds():.0f} s old"
    )
    return 0
