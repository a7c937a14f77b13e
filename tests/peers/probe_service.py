"""A minimal service on the real main loop, for testing the loop and the broker: it wakes on
`status` (or at its poll interval) and fails every QUEUED message whose body starts with
"probe", recording in `error` whether a bus wake-up or the poll found it."""

from __future__ import annotations

from smsbus import queue
from smsbus.loop import Connection, LoopSettings, prepare, run
from smsbus.statuses import Status

FIND_PROBES = "SELECT id FROM messages WHERE status = 'QUEUED' AND body LIKE 'probe%%' ORDER BY id"


def fail_probes(conn: Connection) -> int:
    ids = [row["id"] for row in conn.execute(FIND_PROBES)]
    moved = queue.move(conn, ids, Status.QUEUED, Status.FAILED, error="seen by probe")
    conn.commit()
    return len(moved)


def main() -> None:
    settings, own = prepare("probe", LoopSettings)
    run(settings=settings, service="probe", loop=own, step=fail_probes, wake_on=["status"])


if __name__ == "__main__":
    main()
