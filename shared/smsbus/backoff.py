"""Capped exponential backoff with jitter, for every reconnect (database, SMSC, modem)."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float = 0.1, maximum_s: float = 10.0, factor: float = 2.0) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.factor = factor
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next try; each failure doubles it up to the cap."""
        delay = self.delay_after(self.failures)
        self.failures += 1
        return delay

    def delay_after(self, failures: int) -> float:
        """The wait after `failures` failed tries, for a count kept elsewhere (a table row)."""
        # capped before the power, so that a count in the thousands cannot overflow
        delay = min(self.maximum_s, self.initial_s * self.factor ** min(failures, 64))
        # jitter keeps many services from reconnecting in lockstep after an outage
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.failures = 0
