"""A minimal service on the real main loop for testing its `next_wake` hook: polling off, no
bus, and it asks to be woken at the wall-clock times listed in SMSBUS_WAKE_AT (comma-
separated time.time() values); each step logs when it ran."""

from __future__ import annotations

import logging
import os
import time

from smsbus import config, log
from smsbus.loop import Connection, LoopSettings, run

wake_at = sorted(float(t) for t in os.environ["SMSBUS_WAKE_AT"].split(","))
logger = logging.getLogger("next-wake")


def step(conn: Connection) -> int:
    now = time.time()
    logger.info("stepped at=%.6f", now)
    while wake_at and wake_at[0] <= now:
        wake_at.pop(0)
    return 0


def main() -> None:
    settings = config.load()
    log.configure("next-wake", settings.log_level)
    run(
        settings=settings,
        service="next-wake",
        loop=LoopSettings(poll_interval_s=0),
        step=step,
        next_wake=lambda: wake_at[0] if wake_at else None,
    )


if __name__ == "__main__":
    main()
