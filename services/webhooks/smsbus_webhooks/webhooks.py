"""The webhooks service (SPEC §10): delivers the delivery callbacks that the database wrote to
`webhook_outbox` with each status change of a message naming a status_callback. At least
once, in order per message, retried with backoff up to give_up_after_s; owns no status move.
Woken by the `webhooks` topic (the outbox trigger's NOTIFY), by a retry falling due, and at
the poll interval. Several copies may run: claims skip what another holds.

The HTTP requests run in a pool of `concurrency` threads (http.client blocks); each hands its
outcome back through a queue and a pipe the loop's poller watches. The loop's thread alone
touches the database.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import prometheus_client
import psycopg

from smsbus import bus, db
from smsbus.backoff import Backoff
from smsbus.config import OptionalPort, Seconds
from smsbus.errors import ConfigError
from smsbus.loop import Connection, LoopSettings, Watch, first_line, prepare, run
from smsbus.redact import redact_text, redact_url
from smsbus_webhooks import outbox
from smsbus_webhooks.delivery import Outcome, parse_networks, send
from smsbus_webhooks.formats import Unsendable, build_request
from smsbus_webhooks.outbox import Claimed

SERVICE = "webhooks"

log = logging.getLogger(SERVICE)

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]

CALLBACKS = prometheus_client.Counter(
    "smsbus_webhooks_callbacks_total",
    "Callbacks by outcome: delivered (the receiver took it), retrying (it will be tried again), "
    "failed (given up), skipped (the style does not report this status)",
    ["outcome", "style"],
)
REQUEST_SECONDS = prometheus_client.Histogram(
    "smsbus_webhooks_request_seconds", "Duration of one callback request, answered or not",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LATENCY_SECONDS = prometheus_client.Histogram(
    "smsbus_webhooks_latency_seconds", "From the status change to the receiver taking its callback",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
OUTBOX_DEPTH = prometheus_client.Gauge(
    "smsbus_webhooks_outbox_depth", "Callbacks in the outbox by state: waiting (to be delivered) or abandoned",
    ["state"],
)
OLDEST_WAITING = prometheus_client.Gauge(
    "smsbus_webhooks_oldest_waiting_age_seconds", "Age of the oldest status change whose callback is still waiting"
)


class WebhooksSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # callbacks claimed in one statement at the most
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 100
    # requests in flight at once (threads); as many more may wait claimed
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    request_timeout_s: PositiveSeconds = 10.0
    # a claim's hold on its callbacks (more than twice request_timeout_s: the wait for a
    # thread, then the request); a process killed mid-request gives them up after this
    lease_s: PositiveSeconds = 60.0
    retry_initial_s: PositiveSeconds = 1.0
    retry_max_s: PositiveSeconds = 600.0
    give_up_after_s: PositiveSeconds = 86400.0
    # a given-up callback stays this long for the operator to see (30 days)
    keep_abandoned_s: PositiveSeconds = 2592000.0
    # never connected to, whatever a callback URL names: by default the link-local networks,
    # where cloud metadata services answer (add private ones to keep callbacks off the LAN)
    denied_networks: tuple[str, ...] = ("169.254.0.0/16", "fe80::/10", "0.0.0.0/8")
    # also how often given-up callbacks past keep_abandoned_s are deleted
    depth_interval_s: Seconds = 5.0
    poll_interval_s: Seconds = 5.0
    metrics_port: OptionalPort = 16734


DENIED_NETWORKS_SETTING = "webhooks.denied_networks"


def check_settings(own: WebhooksSettings) -> None:
    parse_networks(DENIED_NETWORKS_SETTING, own.denied_networks)
    if own.lease_s <= 2 * own.request_timeout_s:
        raise ConfigError(
            "webhooks.lease_s", f"must be longer than twice request_timeout_s ({2 * own.request_timeout_s:g})"
        )
    if own.retry_max_s < own.retry_initial_s:
        raise ConfigError("webhooks.retry_max_s", f"must be at least retry_initial_s ({own.retry_initial_s:g})")


class WebhooksService:
    """Keeps `concurrency` requests in flight and as many claimed waiting for a thread: a
    step records the ones that finished and, once half are done, claims more. A slow
    receiver holds one thread, not a batch of everyone's callbacks; a claimed callback waits
    at most one request for its thread, hence a lease longer than twice the timeout."""

    def __init__(self, own: WebhooksSettings) -> None:
        self.own = own
        self.backoff = Backoff(own.retry_initial_s, own.retry_max_s)
        self.denied = parse_networks(DENIED_NETWORKS_SETTING, own.denied_networks)
        self.pool = ThreadPoolExecutor(max_workers=own.concurrency, thread_name_prefix="callback")
        self.in_flight = 0
        # filled by the pool's threads; read by the loop's thread alone
        self.finished: queue.SimpleQueue[tuple[Claimed, Outcome | None]] = queue.SimpleQueue()
        # a byte per finished request wakes the loop's poller
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.due_at: float | None = None
        self.depth_at = 0.0

    def step(self, conn: Connection) -> int:
        self.refresh_depth(conn)
        recorded = self.record_finished(conn)
        claimed: list[Claimed] = []
        # claims of at least `concurrency` rows, never one per finished request: a claim
        # query costs about the same for one row as for a hundred
        if self.in_flight <= self.own.concurrency:
            wanted = min(self.own.batch_size, 2 * self.own.concurrency - self.in_flight)
            claimed = outbox.claim_due(conn, wanted, self.own.lease_s)
        for item in claimed:
            self.in_flight += 1
            self.pool.submit(self.deliver_and_report, item)
        if not recorded and not claimed:
            self.due_at = outbox.next_due(conn)
        return recorded + len(claimed)

    def next_wake(self) -> float | None:
        return self.due_at

    def watches(self) -> list[Watch]:
        return [Watch(self.wake_read, self.drain_wake_pipe)]

    def drain_wake_pipe(self, events: int) -> bool:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def deliver_and_report(self, claimed: Claimed) -> None:
        """In a pool thread: the request, then its outcome handed to the loop's thread."""
        callback = claimed.callback
        try:
            outcome = self.deliver(claimed)
        except Exception as e:
            # whatever a receiver or its URL does, the service lives on; no traceback in the
            # log, since its text could quote the URL's secrets
            error = redact_text(f"unexpected {type(e).__name__}: {e}", callback.url)
            log.error("callback request failed event=%s url=%s error=%s", callback.id, redact_url(callback.url), error)
            outcome = Outcome(False, error=error)
        self.finished.put((claimed, outcome))
        try:
            os.write(self.wake_write, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def record_finished(self, conn: Connection) -> int:
        done: list[tuple[Claimed, Outcome | None]] = []
        while True:
            try:
                done.append(self.finished.get_nowait())
            except queue.Empty:
                break
        if done:
            self.in_flight -= len(done)
            self.record(conn, [claimed for claimed, _ in done], [outcome for _, outcome in done])
        return len(done)

    def deliver(self, claimed: Claimed) -> Outcome | None:
        """None: nothing to send (the style does not report this status)."""
        callback = claimed.callback
        try:
            request = build_request(callback, datetime.now(UTC))
        except Unsendable as e:
            return Outcome(False, permanent=True, error=str(e))
        if request is None:
            return None
        started = time.monotonic()
        outcome = send(request, self.own.request_timeout_s, self.denied)
        REQUEST_SECONDS.observe(time.monotonic() - started)
        return outcome

    def record(self, conn: Connection, claimed: list[Claimed], outcomes: list[Outcome | None]) -> None:
        taken: list[int] = []
        retries: list[tuple[int, float, str]] = []
        given_up: list[tuple[int, str]] = []
        now = datetime.now(UTC)
        for item, outcome in zip(claimed, outcomes, strict=True):
            callback = item.callback
            style = callback.style
            if outcome is None:
                taken.append(callback.id)
                CALLBACKS.labels("skipped", style).inc()
                continue
            if outcome.delivered:
                taken.append(callback.id)
                CALLBACKS.labels("delivered", style).inc()
                LATENCY_SECONDS.observe(max(0.0, (now - callback.changed_at).total_seconds()))
                continue
            error = outcome.error or "failed"
            delay = self.backoff.delay_after(item.attempts)
            age_then = (now - item.created_at).total_seconds() + delay
            if outcome.permanent or age_then > self.own.give_up_after_s:
                given_up.append((callback.id, error))
                CALLBACKS.labels("failed", style).inc()
                log.warning(
                    "callback given up event=%s message=%s status=%s url=%s attempts=%s error=%s",
                    callback.id, callback.message_id, callback.status, redact_url(callback.url),
                    item.attempts + 1, error,
                )
            else:
                retries.append((callback.id, delay, error))
                CALLBACKS.labels("retrying", style).inc()
                log.info(
                    "callback failed, retrying event=%s message=%s status=%s url=%s attempt=%s in_s=%.1f error=%s",
                    callback.id, callback.message_id, callback.status, redact_url(callback.url),
                    item.attempts + 1, delay, error,
                )
        outbox.record(conn, taken, retries, given_up)
        log.debug("batch recorded taken=%s retrying=%s given_up=%s", len(taken), len(retries), len(given_up))

    def refresh_depth(self, conn: Connection) -> None:
        if not self.own.depth_interval_s or time.monotonic() < self.depth_at:
            return
        self.depth_at = time.monotonic() + self.own.depth_interval_s
        current = outbox.depth(conn, self.own.keep_abandoned_s)
        OUTBOX_DEPTH.labels("waiting").set(current.waiting)
        OUTBOX_DEPTH.labels("abandoned").set(current.abandoned)
        OLDEST_WAITING.set(current.oldest_s)

    def close(self, database_url: str) -> None:
        """Let the requests in flight finish and record them, so a stop sends nothing twice
        (when the database is away, they are sent again once their lease runs out)."""
        self.pool.shutdown(wait=True)
        if self.finished.empty():
            return
        try:
            with db.connect(database_url, application=SERVICE) as conn:
                self.record_finished(conn)
        except psycopg.Error as e:
            log.warning("callbacks finished while stopping not recorded (they will be sent again) error=%s",
                        first_line(e))


def main() -> None:
    settings, own = prepare(SERVICE, WebhooksSettings)
    try:
        check_settings(own)
    except ConfigError as e:
        raise SystemExit(f"{SERVICE}: {e}") from None
    service = WebhooksService(own)
    try:
        run(
            settings=settings,
            service=SERVICE,
            loop=LoopSettings(poll_interval_s=own.poll_interval_s, metrics_port=own.metrics_port),
            step=service.step,
            wake_on=[bus.WEBHOOKS],
            watches=service.watches,
            next_wake=service.next_wake,
        )
    finally:
        service.close(settings.resolved_database_url())
