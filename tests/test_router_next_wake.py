"""The main loop's `next_wake` hook (added for the router's scheduled messages), on a minimal
service with polling off and no bus: it wakes at each time it asked for, and only then."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.peers.processes import start_service


def test_the_loop_wakes_at_each_time_the_service_asked_for_with_polling_off(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    asked = [time.time() + 1.0, time.time() + 1.6]
    env = dict(service_env, SMSBUS_WAKE_AT=",".join(f"{t:.6f}" for t in asked))
    service = start_service(["-m", "tests.peers.next_wake_service"], env, tmp_path / "next-wake.log")
    try:
        service.wait_for_log("stepped at", timeout_s=10)  # the step after connecting
        time.sleep(2.2)
    finally:
        code, _ = service.stop()
    assert code == 0
    steps = [float(t) for t in re.findall(r"stepped at=([0-9.]+)", service.log())]
    # one step at start-up, then one per time asked for, each within 100 ms of it
    assert len(steps) == 3, service.log()
    for step_at, wanted in zip(steps[1:], asked, strict=True):
        assert 0 <= step_at - wanted < 0.1, (step_at, wanted)
