"""The SMPP channel (SPEC §4): one process per `smpp` row in `channels`.

Owns QUEUED -> SENDING -> SENT | FAILED | QUEUED (retry) for its channel, SENT -> DELIVERED |
NOTDELIVERED | NOREPORT from receipts, and the incoming `in`/RECEIVED rows. Wakes on
`outgoing.<channel>` (announced by the database), on its SMPP socket and on its own timers. The
main thread owns every SMPP socket and the loop's connection (ownership, housekeeping, health);
the database thread (database_thread.py) owns a connection of its own and records batches and
claims while the main thread keeps the window moving. They share no socket and no connection.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import os
import random
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
import psycopg

from smsbus import channel_health, db, metrics
from smsbus.backoff import Backoff
from smsbus.bus import Publisher, outgoing_topic
from smsbus.channel_settings import ChannelRow, SmppSettings, start_channel
from smsbus.encoding import Encoding, TextNotEncodable, choose_encoding, segment_text, split_user_data
from smsbus.loop import Connection, LoopSettings, Watch, run
from smsbus.statuses import Status
from smsbus_channel_smpp import inbox, outbox
from smsbus_channel_smpp.command_status import (
    ESME_ROK,
    ESME_RX_T_APPN,
    ErrorClass,
    classify,
    describe,
    parse_overrides,
    status_label,
)
from smsbus_channel_smpp.database_thread import DatabaseThread
from smsbus_channel_smpp.receipts import ESM_CLASS_UDHI, Receipt, is_receipt, normalise_provider_id, parse_receipt
from smsbus_channel_smpp.session import PDU, BindRefused, ProtocolError, Session, SessionError

SERVICE = "channel-smpp"
log = logging.getLogger(SERVICE)

# timers that need no tuning per channel
HOUSEKEEPING_INTERVAL_S = 1.0
OWNERSHIP_RETRY_S = 1.0
# on SIGTERM: how long to wait for the responses to submits already on the wire
STOP_DRAIN_S = 2.0
# at-least-once channels claim this many windows beyond the one on the wire
CLAIM_AHEAD_WINDOWS = 2
# after a batch could not be recorded (the database is away), try again this much later
RECORD_RETRY_S = 1.0
# which error outcome of a multipart message wins when its parts disagree
ERROR_CLASS_RANK = {ErrorClass.THROTTLING: 0, ErrorClass.TEMPORARY: 1, ErrorClass.PERMANENT: 2}

# one advisory lock per channel, on a connection of its own: at most one owner, any host
TRY_OWNERSHIP = "SELECT pg_try_advisory_lock(hashtextextended('smsbus channel ' || %(channel)s, 0)) AS owned"
SUBMITS = prometheus_client.Counter("smsbus_smpp_submits_total", "submit_sm PDUs sent", ["channel"])
RESPONSES = prometheus_client.Counter(
    "smsbus_smpp_responses_total", "submit_sm_resp received, by command_status", ["channel", "command_status"]
)
WINDOW_IN_USE = prometheus_client.Gauge("smsbus_smpp_window_in_use", "submit_sm awaiting their response", ["channel"])
SUBMIT_RESPONSE_SECONDS = prometheus_client.Histogram(
    "smsbus_smpp_submit_response_seconds", "From submit_sm to its submit_sm_resp", ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SUBMIT_RECEIPT_SECONDS = prometheus_client.Histogram(
    "smsbus_smpp_submit_receipt_seconds", "From submit_sm_resp recorded to the delivery receipt", ["channel"],
    buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 86400),
)
RETRIES = prometheus_client.Counter("smsbus_smpp_retries_total", "Messages requeued", ["channel", "reason"])
THROTTLED = prometheus_client.Counter("smsbus_smpp_throttled_total", "Throttling responses from the SMSC", ["channel"])
INCOMING = prometheus_client.Counter("smsbus_smpp_incoming_total", "deliver_sm received", ["channel", "kind"])
PROTOCOL_ERRORS = prometheus_client.Counter(
    "smsbus_smpp_protocol_errors_total", "Garbage from the SMSC that reset the connection", ["channel"]
)


@dataclass
class Batch:
    """What the database thread records in one transaction, and how many to claim."""

    finished: list[InFlight]
    unknown: list[InFlight]
    incoming: list[tuple[Session, PDU]]
    room: int


@dataclass
class Recorded:
    """A batch's outcome, for the main thread: what to send and to acknowledge now."""

    claimed: list[outbox.Claimed]
    responses: list[tuple[Session, PDU, int]]
    latencies: list[float]
    sent_moves: int


@dataclass
class InFlight:
    """A claimed message on its way: its parts' PDUs, responses and the worst error."""

    message: outbox.Claimed
    pdus: list[PDU]
    provider_ids: dict[int, str] = field(default_factory=dict)
    sent_parts: int = 0
    answered: int = 0
    error_status: int | None = None
    error_class: ErrorClass | None = None
    # a failure found before sending (a text no alphabet can carry)
    failure: str | None = None

    @property
    def done(self) -> bool:
        """Every part answered, or an error answered and nothing more on the wire."""
        if self.error_status is not None:
            return self.answered == self.sent_parts
        return self.answered == len(self.pdus)


@dataclass
class Pending:
    message_id: int
    part_number: int
    submitted_at: float


class TokenBucket:
    """At most `rate` submits per second, bursts up to `capacity`."""

    def __init__(self, rate: float | None, capacity: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self.tokens = self.capacity
        self.updated_at = time.monotonic()

    def available(self) -> int:
        if self.rate is None:
            return sys.maxsize
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated_at) * self.rate)
        self.updated_at = now
        return int(self.tokens)

    def take(self) -> None:
        if self.rate is not None:
            self.tokens -= 1

    def next_token_at(self) -> float:
        if self.rate is None or self.tokens >= 1:
            return time.monotonic()
        return self.updated_at + (1 - self.tokens) / self.rate


class Ownership:
    """The channel's advisory lock, held on a dedicated connection for as long as it lives."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.conn: Any = None
        self.checked_at = 0.0

    def hold(self) -> bool:
        """True while we own the channel; checks the lock's connection at most every second."""
        now = time.monotonic()
        if self.conn is not None and now - self.checked_at < OWNERSHIP_RETRY_S:
            return True
        self.checked_at = now
        try:
            if self.conn is not None:
                self.conn.execute("SELECT 1")
                return True
            self.conn = db.connect(self.url, application=f"{SERVICE}-lock", autocommit=True)
            if self.conn.execute(TRY_OWNERSHIP, {"channel": self.channel}).fetchone()["owned"]:
                return True
        except psycopg.Error as e:
            log.warning("ownership lock unavailable channel=%s error=%s", self.channel, type(e).__name__)
        self.release()
        return False

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
        self.conn = None


class SmppChannel:
    def __init__(self, row: ChannelRow[SmppSettings], url: str, publisher: Publisher | None) -> None:
        self.row = row
        self.name = row.name
        self.settings = row.settings
        self.publisher = publisher
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ownership = Ownership(url, self.name)
        self.owned = False
        self.overrides = parse_overrides(self.settings.error_classes)
        self.preferred = tuple(Encoding(e) for e in self.settings.encodings)
        self.transmitter: Session | None = None
        self.receiver: Session | None = None
        self.backoff = Backoff(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
        self.next_connect_at = 0.0
        self.bucket = TokenBucket(row.rate, min(row.rate or 1.0, float(self.settings.window)))
        self.to_send: deque[tuple[InFlight, int]] = deque()
        self.outstanding: dict[int, Pending] = {}
        self.in_flight: dict[int, InFlight] = {}
        self.finished: list[InFlight] = []
        self.unknown: list[InFlight] = []
        self.incoming: list[tuple[Session, PDU]] = []
        self.references = itertools.count(random.randrange(256))
        self.throttle_pause_s = self.settings.throttle_pause_s
        self.throttled_until = 0.0
        # monotonic times when requeued messages fall due (a heap)
        self.retry_times: list[float] = []
        self.backlog = False
        self.next_housekeeping_at = 0.0
        self.next_lease_renewal_at = 0.0
        self.next_health_at = 0.0
        self.reported_connected: bool | None = None
        self.stopping = False
        # a previous owner may have left receipts waiting; checked again every housekeeping
        self.early_receipts_waiting = True
        self.labels = {"channel": self.name}
        self.database = DatabaseThread(url, f"{SERVICE}-{self.name}-recorder", self.on_connect)
        self.recording: Batch | None = None
        self.record_again_at = 0.0
        # a wake-up (bus, poll, timer, socket) asked to look at the queue; a claim that only
        # came back empty does not, or an idle channel would claim in a loop
        self.claim_wanted = True

    # -- what the main loop calls ------------------------------------------------------

    def step(self, conn: Connection) -> int:
        if not self._hold_ownership(conn):
            return 0
        self._connect_if_due(conn)
        done = self._read_sessions()
        finished = self._finish_recording()
        if finished is None:
            self.claim_wanted = True
        done += (finished or 0) + self._start_recording()
        self._housekeeping(conn)
        return done

    def on_connect(self, conn: Connection) -> None:
        """Autocommit, with explicit transactions where several statements belong together:
        a claim alone is then one statement and one round trip from INSERT to the wire."""
        conn.execute(outbox.COMMIT_WITHOUT_WAITING)
        conn.commit()
        conn.autocommit = True

    def watches(self) -> Iterator[Watch]:
        for session in self._sessions():
            yield Watch(session, functools.partial(self._on_readable, session))
        # a recorded batch: its claimed messages go out, its deliver_sm are acknowledged
        yield Watch(self.database, lambda events: True)

    def next_wake(self) -> float | None:
        """Wall-clock time of the earliest timer: reconnect, enquire_link, housekeeping,
        a free token or the end of a throttling pause while work waits."""
        now = time.monotonic()
        due = [self.next_housekeeping_at, self.next_health_at]
        if not self.owned:
            due.append(now + OWNERSHIP_RETRY_S)
        elif not self._bound():
            due.append(self.next_connect_at)
        for session in self._sessions():
            due.append(session.last_sent_at + self.settings.enquire_link_interval_s)
        if self.outstanding:
            oldest = min(p.submitted_at for p in self.outstanding.values())
            due.append(oldest + self.settings.response_timeout_s)
        if self.backlog or self.to_send:
            if self.throttled_until > now:
                due.append(self.throttled_until)
            elif self.bucket.rate is not None and len(self.outstanding) < self.settings.window:
                due.append(self.bucket.next_token_at())
        if self.retry_times:
            due.append(self.retry_times[0])
        if self.record_again_at > now:
            due.append(self.record_again_at)
        return time.time() + max(0.0, min(due) - now)

    def close(self, url: str) -> None:
        """On SIGTERM: wait briefly for responses to what is on the wire, record, unbind."""
        self.stopping = True
        if self.database.busy:
            self._finish_recording(timeout_s=STOP_DRAIN_S + 5)
        deadline = time.monotonic() + STOP_DRAIN_S
        while self.outstanding and time.monotonic() < deadline and self.transmitter is not None:
            time.sleep(0.01)
            self._read_sessions()
        self._give_back_unsent()
        if self.finished or self.unknown or self.incoming:
            try:
                with db.connect(url, application=SERVICE) as conn:
                    self._record_and_send(conn)
            except psycopg.Error as e:
                log.warning("could not record outcomes at stop error=%s (the lease recovers them)", type(e).__name__)
        for session in self._sessions():
            session.close(unbind=True)
        self.transmitter = self.receiver = None
        self.ownership.release()
        self.database.stop()

    # -- ownership and binding ---------------------------------------------------------

    def _hold_ownership(self, conn: Connection) -> bool:
        if self.ownership.hold():
            if not self.owned:
                self.owned = True
                log.info("owner of channel=%s owner=%s", self.name, self.owner)
                # whatever another process left SENDING on this channel is ours to settle
                self._settle_orphans(conn, all_others=True)
            return True
        if self.owned:
            log.warning("lost ownership of channel=%s: unbinding", self.name)
            self._reset("ownership lost")
        elif self.reported_connected is None:
            log.info("waiting: another process owns channel=%s", self.name)
            self.reported_connected = False
        self.owned = False
        return False

    def _sessions(self) -> list[Session]:
        return [s for s in (self.transmitter, self.receiver) if s is not None]

    def _needs(self) -> tuple[str | None, str | None]:
        """(transmitting bind, receiving bind) for the bind mode."""
        mode = self.settings.bind_mode
        if mode == "transceiver":
            return "bind_transceiver", None
        if mode == "transmitter":
            return "bind_transmitter", None
        if mode == "receiver":
            return None, "bind_receiver"
        return "bind_transmitter", "bind_receiver"

    def _bound(self) -> bool:
        sending, receiving = self._needs()
        return (sending is None or self.transmitter is not None) and (receiving is None or self.receiver is not None)

    def _can_send(self) -> bool:
        return self.transmitter is not None

    def _connect_if_due(self, conn: Connection) -> None:
        if self._bound() or time.monotonic() < self.next_connect_at:
            return
        sending, receiving = self._needs()
        try:
            if sending is not None and self.transmitter is None:
                self.transmitter = Session.open(self.settings, sending)
                log.info("bound channel=%s bind=%s host=%s", self.name, sending, self.settings.host)
            if receiving is not None and self.receiver is None:
                self.receiver = Session.open(self.settings, receiving)
                log.info("bound channel=%s bind=%s host=%s", self.name, receiving, self.settings.host)
        except SessionError as e:
            delay = self.backoff.next_delay()
            self.next_connect_at = time.monotonic() + delay
            level = logging.ERROR if isinstance(e, BindRefused) else logging.WARNING
            log.log(level, "bind failed channel=%s error=%s retry_in_s=%.1f", self.name, e, delay)
            self._report_health(conn)
            return
        self.backoff.reset()
        self._report_health(conn)

    def _reset(self, reason: str) -> None:
        """Close every session; what was on the wire has an unknown outcome. deliver_sm not
        stored yet are forgotten: never acknowledged, the SMSC sends them again (storing
        them now could store a message twice)."""
        for session in self._sessions():
            session.close()
        self.incoming.clear()
        self.transmitter = self.receiver = None
        self.next_connect_at = time.monotonic() + self.backoff.next_delay()
        on_wire = {p.message_id for p in self.outstanding.values()}
        self.outstanding.clear()
        for message_id in on_wire:
            flight = self.in_flight.pop(message_id, None)
            if flight is not None:
                self.unknown.append(flight)
        self._give_back_unsent()
        WINDOW_IN_USE.labels(**self.labels).set(0)
        metrics.CHANNEL_CONNECTED.labels(**self.labels).set(0)
        log.warning("connection reset channel=%s reason=%s unknown_outcomes=%d", self.name, reason, len(on_wire))

    def _give_back_unsent(self) -> None:
        """Messages none of whose parts went out: back to the queue as they were."""
        while self.to_send:
            flight, _ = self.to_send.popleft()
            if flight.message.id in self.in_flight and flight.sent_parts == 0:
                del self.in_flight[flight.message.id]
                self.finished.append(flight)
            elif flight.message.id in self.in_flight:
                del self.in_flight[flight.message.id]
                self.unknown.append(flight)

    # -- reading PDUs --------------------------------------------------------------------

    def _on_readable(self, session: Session, events: int) -> bool:
        if session in self._sessions():
            self._read(session)
        return True

    def _read_sessions(self) -> int:
        handled = 0
        for session in self._sessions():
            # a reset closed them all: nothing more to read
            if session in self._sessions():
                handled += self._read(session)
        return handled

    def _read(self, session: Session) -> int:
        """Dispatch what the session received (no database needed). PDUs that came before
        the connection ended are dispatched before the reset: a response or a receipt in
        them is recorded, not lost."""
        handled = 0
        ended: SessionError | None = None
        try:
            # more waiting: counted as work, so the main loop steps again at once
            handled += session.receive_available()
        except SessionError as e:
            ended = e
        try:
            while (pdu := session.next_pdu()) is not None:
                self._dispatch(session, pdu)
                handled += 1
        except ProtocolError as e:
            PROTOCOL_ERRORS.labels(**self.labels).inc()
            log.error("garbage from the SMSC channel=%s error=%s: resetting the connection", self.name, e)
            self._reset(f"protocol error: {e}")
            return handled + 1
        except SessionError as e:
            ended = e
        if ended is not None:
            self._reset(str(ended))
            return handled + 1
        return handled

    def _dispatch(self, session: Session, pdu: PDU) -> None:
        command = pdu.command
        if command == "submit_sm_resp" or (command == "generic_nack" and pdu.sequence in self.outstanding):
            self._on_submit_response(pdu)
        elif command in ("deliver_sm", "data_sm"):
            self.incoming.append((session, pdu))
        elif command == "enquire_link":
            session.respond(pdu, "enquire_link_resp")
        elif command == "enquire_link_resp":
            session.enquire_links.pop(pdu.sequence, None)
        elif command == "unbind":
            session.respond(pdu, "unbind_resp")
            raise SessionSignOff("the SMSC unbound")
        else:
            log.info("ignored channel=%s command=%s sequence=%s", self.name, command, pdu.sequence)

    def _on_submit_response(self, pdu: PDU) -> None:
        pending = self.outstanding.pop(pdu.sequence, None)
        if pending is None:
            log.warning("response for no submit channel=%s sequence=%s", self.name, pdu.sequence)
            return
        WINDOW_IN_USE.labels(**self.labels).set(len(self.outstanding))
        status = int(pdu.status)
        RESPONSES.labels(self.name, status_label(status)).inc()
        SUBMIT_RESPONSE_SECONDS.labels(**self.labels).observe(time.monotonic() - pending.submitted_at)
        flight = self.in_flight.get(pending.message_id)
        if flight is None:
            return
        flight.answered += 1
        if status == ESME_ROK and pdu.command == "submit_sm_resp":
            message_id = (pdu.message_id or b"").decode("latin-1")
            flight.provider_ids[pending.part_number] = normalise_provider_id(message_id)
            self.throttle_pause_s = self.settings.throttle_pause_s
        else:
            error_class = classify(status, self.overrides)
            if flight.error_class is None or ERROR_CLASS_RANK[error_class] > ERROR_CLASS_RANK[flight.error_class]:
                flight.error_class, flight.error_status = error_class, status
            if error_class is ErrorClass.THROTTLING:
                self._throttle()
        if flight.done:
            del self.in_flight[flight.message.id]
            self.finished.append(flight)

    def _throttle(self) -> None:
        """The whole bind pauses; the pause doubles while throttling goes on."""
        THROTTLED.labels(**self.labels).inc()
        now = time.monotonic()
        if self.throttled_until <= now:
            self.throttled_until = now + self.throttle_pause_s
            log.warning("throttled channel=%s pause_s=%.1f", self.name, self.throttle_pause_s)
            self.throttle_pause_s = min(self.settings.throttle_max_pause_s, self.throttle_pause_s * 2)

    # -- recording (one short transaction per batch) --------------------------------------

    def _record_and_send(self, conn: Connection) -> int:
        """The next batch recorded on `conn` by this thread, then sent: at stop only."""
        sent = self._send_queued_parts()
        batch = self._next_batch()
        if batch is None:
            return sent
        try:
            recorded = self._record(conn, batch)
        except psycopg.Error:
            self._give_back(batch)
            raise
        return sent + self._after_recording(batch, recorded)

    def _start_recording(self) -> int:
        """Hands the next batch to the database thread, unless it is busy with one."""
        sent = self._send_queued_parts()
        if self.database.busy or time.monotonic() < self.record_again_at:
            return sent
        claim_only = not (self.finished or self.unknown or self.incoming)
        if claim_only and not (self.claim_wanted or self.backlog):
            return sent
        batch = self._next_batch()
        if batch is not None:
            self.claim_wanted = self.claim_wanted and not claim_only
            self.recording = batch
            self.database.submit(functools.partial(self._record, batch=batch))
        return sent

    def _finish_recording(self, timeout_s: float | None = None) -> int | None:
        """The database thread's result, when it has one (else None): send what it claimed,
        acknowledge what it stored. A batch it could not record is kept for the next try."""
        result = self.database.take(timeout_s)
        if result is None:
            return None
        batch, self.recording = self.recording, None
        assert batch is not None
        if result.error is not None:
            self._give_back(batch)
            if not isinstance(result.error, psycopg.Error):
                raise result.error
            log.warning("could not record channel=%s error=%s retry_in_s=%.1f",
                        self.name, type(result.error).__name__, RECORD_RETRY_S)
            self.record_again_at = time.monotonic() + RECORD_RETRY_S
            return 0
        return self._after_recording(batch, result.value)

    def _next_batch(self) -> Batch | None:
        room = self._claim_room()
        if not self._worth_a_round_trip(room):
            return None
        batch = Batch(self.finished, self.unknown, self.incoming, room)
        self.finished, self.unknown, self.incoming = [], [], []
        return batch

    def _give_back(self, batch: Batch) -> None:
        """Nothing of the batch was recorded: all of it waits for the next try."""
        self.finished, self.unknown = batch.finished + self.finished, batch.unknown + self.unknown
        self.incoming = batch.incoming + self.incoming

    def _record(self, conn: Connection, batch: Batch) -> Recorded:
        """One short transaction per batch (on the database thread's connection, or on the
        loop's at stop): outcomes recorded, receipts and incoming messages stored, the next
        messages claimed. Pipeline mode: about two round trips. Touches no socket.

        Without anything received, the commit does not wait for the disk: a database crash
        that lost it leaves the message SENDING or QUEUED, which the lease turns into
        at-least-once (or, with on_unknown = "fail", at-most-once) exactly like a crash of
        the channel itself. With something received it waits: nothing acknowledged to the
        SMSC may be lost."""
        if not (batch.finished or batch.unknown or batch.incoming):
            # the claim alone: one statement, one round trip (autocommit)
            claimed = outbox.claim_queued(conn, self.name, self.owner, batch.room, self.settings.lease_s)
            return Recorded(claimed, [], [], 0)
        responses: list[tuple[Session, PDU, int]] = []
        # a refused incoming message rolls back to its savepoint: kept out of pipeline mode
        messages_in = any(not is_receipt(int(pdu.esm_class or 0)) for _, pdu in batch.incoming)
        with contextlib.nullcontext() if messages_in else conn.pipeline(), conn.transaction():
            if batch.incoming:
                conn.execute(outbox.COMMIT_DURABLY)
            sent_move = self._record_outcomes(conn, batch.finished)
            self._record_unknown(conn, batch.unknown)
            claimed = (
                outbox.claim_queued(conn, self.name, self.owner, batch.room, self.settings.lease_s)
                if batch.room else []
            )
            latencies = self._take_early_receipts(conn, batch.finished)
            latencies += self._store_received(conn, batch.incoming, responses)
        # in pipeline mode the SENT move's rowcount is known only now, after the sync
        return Recorded(claimed, responses, latencies, 0 if sent_move is None else max(0, sent_move.rowcount))

    def _after_recording(self, batch: Batch, recorded: Recorded) -> int:
        """On the main thread, after the commit: count, acknowledge, send."""
        metrics.count_moves(Status.SENT, self.name, recorded.sent_moves)
        self._observe_receipts(recorded.latencies)
        self._acknowledge(recorded.responses)
        done = len(batch.finished) + len(batch.unknown) + len(batch.incoming)
        return done + self._prepare_and_send(recorded.claimed, batch.room)

    def _prepare_and_send(self, claimed: list[outbox.Claimed], room: int) -> int:
        if room:
            self.backlog = len(claimed) == room
            while self.retry_times and self.retry_times[0] <= time.monotonic():
                heapq.heappop(self.retry_times)
        for message in claimed:
            if self.transmitter is None or self.stopping:
                # the bind broke (or SIGTERM came) while they were being claimed: back to the
                # queue untouched
                self.finished.append(InFlight(message, []))
                continue
            flight = self._prepare(message)
            if flight is not None:
                self.in_flight[message.id] = flight
                self.to_send.extend((flight, number) for number in range(1, len(flight.pdus) + 1))
        return len(claimed) + self._send_queued_parts()

    def _take_early_receipts(self, conn: Connection, finished: list[InFlight]) -> list[float]:
        """Receipts that overtook their submit_sm_resp, applied to the parts just recorded;
        looked for only while some are known to wait (none, usually: no round trip)."""
        if not self.early_receipts_waiting or self.settings.registered_delivery == 0:
            return []
        provider_ids = [pid for f in finished if f.error_status is None for pid in f.provider_ids.values()]
        return self._applied(inbox.apply_early_receipts(conn, self.name, provider_ids)) if provider_ids else []

    def _worth_a_round_trip(self, room: int) -> bool:
        """Batches, not a transaction per response: while submits are outstanding, wait
        until half of the window (and what is claimed ahead) can be refilled or recorded.
        An idle channel claims at once (the INSERT-to-wire latency)."""
        if self.incoming or self.stopping:
            return True
        if not (self.finished or self.unknown or room):
            return False
        chunk = self.settings.window
        if self.bucket.rate is not None:
            chunk = min(chunk, int(self.bucket.capacity))
        chunk = max(1, chunk)
        return bool(self.unknown) or not self.outstanding or room >= chunk or len(self.finished) >= chunk

    def _ahead(self) -> int:
        """Messages claimed beyond the window: enough to keep the window full while a
        database round trip is under way (at-least-once channels only, see _claim_room)."""
        return CLAIM_AHEAD_WINDOWS * self.settings.window if self.settings.on_unknown == "requeue" else 0

    def _claim_room(self) -> int:
        """How many messages to claim now: the free part of the window, within the rate,
        plus (at-least-once channels only) a window's worth claimed ahead, so that a
        response is followed by the next submit at once, not after a database round trip.
        At-most-once channels (on_unknown = "fail") claim nothing ahead: a crash would fail
        messages that never went out."""
        if self.stopping or not self._can_send() or time.monotonic() < self.throttled_until:
            return 0
        ahead = self._ahead()
        waiting = len({flight.message.id for flight, _ in self.to_send})
        room = min(self.settings.window + ahead - len(self.outstanding) - waiting,
                   self.bucket.available() + ahead - waiting)
        if room <= 0:
            self.backlog = True
        return max(0, room)

    def _store_received(
        self, conn: Connection, incoming: list[tuple[Session, PDU]], responses: list[tuple[Session, PDU, int]]
    ) -> list[float]:
        """Receipts applied as one batch, messages stored one by one; each deliver_sm's
        response status collected for after the commit."""
        if not incoming:
            return []
        receipts: list[Receipt] = []
        for session, pdu in incoming:
            responses.append((session, pdu, self._store_incoming(conn, pdu, receipts)))
        return self._applied(inbox.apply_receipts(conn, self.name, receipts, self.settings.receipt_id_format))

    def _applied(self, applied: inbox.Applied) -> list[float]:
        """Receipts applied: the moves counted, kept ones remembered; their latencies."""
        for status, moved in applied.moved.items():
            metrics.count_moves(status, self.name, moved)
        if applied.kept:
            self.early_receipts_waiting = True
        return applied.latencies

    def _acknowledge(self, responses: list[tuple[Session, PDU, int]]) -> None:
        """deliver_sm_resp, only now that what they acknowledge is committed."""
        for session, pdu, status in responses:
            if session in self._sessions():
                try:
                    session.respond(pdu, f"{pdu.command}_resp", status)
                except SessionError as e:
                    self._reset(str(e))

    def _observe_receipts(self, latencies: list[float]) -> None:
        for latency in latencies:
            SUBMIT_RECEIPT_SECONDS.labels(**self.labels).observe(latency)

    def _record_outcomes(self, conn: Connection, finished: list[InFlight]) -> Any:
        """Returns the SENT move's cursor (or None): in pipeline mode its rowcount is known
        only once the pipeline has synced."""
        moved = None
        sent = [(f.message.id, [f.provider_ids[n] for n in range(1, len(f.pdus) + 1)])
                for f in finished if f.error_status is None and f.failure is None and f.sent_parts]
        if sent:
            moved = outbox.record_sent(conn, self.name, sent, receipts_expected=self.settings.registered_delivery > 0)
            log.debug("sent channel=%s messages=%d", self.name, len(sent))
        for flight in finished:
            if flight.failure is not None:
                self._record_failed(conn, [flight.message.id], flight.failure)
            elif flight.sent_parts == 0 and flight.error_status is None:
                # claimed but never on the wire: back to the queue untouched
                self._requeue(conn, [flight.message.id], error=flight.message.error, delay_s=0, counted=False,
                               ack_status="N/A")
            elif flight.error_status is not None:
                self._record_error(conn, flight)
        return moved

    def _record_failed(self, conn: Connection, ids: list[int], error: str) -> None:
        metrics.count_moves(Status.FAILED, self.name, len(outbox.record_failed(conn, ids, error)))

    def _requeue(self, conn: Connection, ids: list[int], **how: Any) -> None:
        metrics.count_moves(Status.QUEUED, self.name, len(outbox.requeue(conn, ids, **how)))

    def _record_error(self, conn: Connection, flight: InFlight) -> None:
        assert flight.error_status is not None and flight.error_class is not None
        error = f"submit_sm_resp {describe(flight.error_status)}"
        message = flight.message
        if flight.error_class is ErrorClass.PERMANENT:
            self._record_failed(conn, [message.id], error)
            log.info("failed id=%s channel=%s error=%s", message.id, self.name, error)
        elif flight.error_class is ErrorClass.THROTTLING:
            delay = max(0.0, self.throttled_until - time.monotonic())
            self._requeue(conn, [message.id], error=error, delay_s=delay, counted=False, ack_status="NACK")
            self._retry_due(delay)
            RETRIES.labels(self.name, "throttling").inc()
        else:
            self._retry_or_fail(conn, message, error, reason="temporary")

    def _record_unknown(self, conn: Connection, unknown: list[InFlight]) -> None:
        for flight in unknown:
            self._settle_unknown(conn, flight.message.id, flight.message.attempts, flight.message.created_at)

    def _settle_unknown(self, conn: Connection, message_id: int, attempts: int, created_at: Any) -> None:
        """SPEC §4: an outcome nobody knows is sent again (at-least-once) or failed."""
        error = "outcome unknown: the connection or process ended before submit_sm_resp"
        if self.settings.on_unknown == "fail":
            self._record_failed(conn, [message_id], error + " (on_unknown = fail)")
            return
        self._retry_or_fail(conn, outbox.Claimed(message_id, None, "", "", {}, attempts, created_at, None), error,
                            reason="unknown", delay_s=0.0)

    def _retry_or_fail(self, conn: Connection, message: outbox.Claimed, error: str, *, reason: str,
                       delay_s: float | None = None) -> None:
        attempts = message.attempts + 1
        age_s = (time.time() - message.created_at.timestamp())
        if attempts >= self.settings.max_attempts or age_s > self.settings.max_age_s:
            self._record_failed(conn, [message.id], f"gave up after {attempts} attempts: {error}")
            return
        if delay_s is None:
            delay_s = min(self.settings.retry_max_s, self.settings.retry_initial_s * 2 ** (attempts - 1))
        self._requeue(conn, [message.id], error=error, delay_s=delay_s, counted=True, ack_status="NACK")
        self._retry_due(delay_s)
        RETRIES.labels(self.name, reason).inc()

    def _retry_due(self, delay_s: float) -> None:
        heapq.heappush(self.retry_times, time.monotonic() + delay_s)

    def _settle_orphans(self, conn: Connection, all_others: bool) -> None:
        with conn.transaction():
            orphans = outbox.select_orphaned(conn, self.name, self.owner, all_others)
            for row in orphans:
                self._settle_unknown(conn, row["id"], row["attempts"], row["created_at"])
        if orphans:
            log.warning("settled orphaned SENDING messages channel=%s count=%d on_unknown=%s",
                        self.name, len(orphans), self.settings.on_unknown)

    # -- incoming ------------------------------------------------------------------------

    def _store_incoming(self, conn: Connection, pdu: PDU, receipts: list[Receipt]) -> int:
        """The deliver_sm_resp status; a message is stored (a savepoint each), a receipt
        collected for the batch."""
        short_message = getattr(pdu, "short_message", None) or getattr(pdu, "message_payload", None) or b""
        esm_class = int(pdu.esm_class or 0)
        if is_receipt(esm_class):
            INCOMING.labels(self.name, "receipt").inc()
            receipt = _receipt_of(pdu, short_message)
            if receipt is None:
                log.warning("receipt without a message id channel=%s: acknowledged and ignored", self.name)
            else:
                receipts.append(receipt)
            return ESME_ROK
        INCOMING.labels(self.name, "message").inc()
        sender = _address(pdu.source_addr, pdu.source_addr_ton)
        recipient = _address(pdu.destination_addr, pdu.dest_addr_ton) or None
        data_coding = int(pdu.data_coding or 0)
        try:
            concatenation, payload = split_user_data(short_message, bool(esm_class & ESM_CLASS_UDHI))
            message = inbox.Incoming(sender, recipient, data_coding, payload)
        except ValueError as e:
            # a user data header that runs past the message: kept whole, never refused
            INCOMING.labels(self.name, "malformed").inc()
            log.warning("malformed user data header channel=%s error=%s: stored whole", self.name, e)
            concatenation = None
            message = inbox.Incoming(sender, recipient, data_coding, short_message, {"malformed_udh": True},
                                     f"malformed user data header: {e}")
        try:
            with conn.transaction():
                stored = inbox.store_incoming(conn, self.name, message, concatenation)
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as e:
            # nothing the shared rules let through should get here: counted, and the SMSC
            # keeps the message (a temporary error: it offers it again)
            INCOMING.labels(self.name, "malformed").inc()
            log.error("deliver_sm not stored channel=%s error=%s", self.name, str(e).splitlines()[0])
            return ESME_RX_T_APPN
        if stored is not None:
            metrics.count_moves(Status.RECEIVED, self.name, 1)
            log.info("received id=%s channel=%s", stored, self.name)
        return ESME_ROK

    # -- sending -------------------------------------------------------------------------

    def _prepare(self, message: outbox.Claimed) -> InFlight | None:
        """The submit_sm PDUs of one message; a text no alphabet can carry fails here."""
        assert self.transmitter is not None
        hint = message.properties.get("encoding")
        try:
            encoding = Encoding(hint) if hint else choose_encoding(message.body, self.preferred)
            segments = segment_text(message.body, encoding)
        except (TextNotEncodable, ValueError) as e:
            self.finished.append(InFlight(message, [], failure=f"cannot encode: {e}"))
            log.info("cannot encode id=%s channel=%s error=%s", message.id, self.name, e)
            return None
        source = message.from_address or self.settings.source_address
        source_ton, source_npi = _address_type(source, self.settings.source_ton, self.settings.source_npi)
        destination_ton, destination_npi = _address_type(
            message.to_address, self.settings.destination_ton, self.settings.destination_npi
        )
        reference = next(self.references) & 0xFF
        pdus = [
            self.transmitter.make(
                "submit_sm",
                source_addr_ton=source_ton,
                source_addr_npi=source_npi,
                source_addr=source.lstrip("+"),
                dest_addr_ton=destination_ton,
                dest_addr_npi=destination_npi,
                destination_addr=message.to_address.lstrip("+"),
                esm_class=ESM_CLASS_UDHI if segments.parts > 1 else 0,
                registered_delivery=self.settings.registered_delivery,
                data_coding=segments.data_coding,
                short_message=short_message,
            )
            for short_message in segments.short_messages(reference)
        ]
        return InFlight(message, pdus)

    def _send_queued_parts(self) -> int:
        sent = 0
        while self.to_send and self.transmitter is not None and len(self.outstanding) < self.settings.window:
            if self.bucket.available() < 1 or time.monotonic() < self.throttled_until:
                break
            flight, part_number = self.to_send[0]
            if flight.error_status is not None or flight.message.id not in self.in_flight:
                self.to_send.popleft()
                continue
            pdu = flight.pdus[part_number - 1]
            try:
                self.transmitter.send(pdu)
            except SessionError as e:
                self._reset(str(e))
                break
            self.to_send.popleft()
            self.bucket.take()
            flight.sent_parts += 1
            self.outstanding[pdu.sequence] = Pending(flight.message.id, part_number, time.monotonic())
            SUBMITS.labels(**self.labels).inc()
            sent += 1
        WINDOW_IN_USE.labels(**self.labels).set(len(self.outstanding))
        return sent

    # -- timers --------------------------------------------------------------------------

    def _housekeeping(self, conn: Connection) -> None:
        now = time.monotonic()
        self._check_timeouts(now)
        if now >= self.next_health_at:
            self._report_health(conn)
        if now < self.next_housekeeping_at:
            return
        self.next_housekeeping_at = now + HOUSEKEEPING_INTERVAL_S
        with conn.transaction():
            overdue = inbox.mark_overdue(conn, self.name, self.row.report_timeout)
            stale = inbox.store_stale_incomplete(conn, self.name, self.settings.reassembly_timeout_s)
            metrics.count_moves(Status.NOREPORT, self.name, len(overdue))
            metrics.count_moves(Status.RECEIVED, self.name, len(stale))
            if now >= self.next_lease_renewal_at:
                held = list(self.in_flight) + [f.message.id for f in self.finished + self.unknown]
                outbox.renew_leases(conn, held, self.owner, self.settings.lease_s)
                self.next_lease_renewal_at = now + self.settings.lease_s / 3
            if self.early_receipts_waiting:
                self.early_receipts_waiting = outbox.early_receipts_waiting(conn, self.name)
        if overdue:
            log.info("no report channel=%s messages=%d", self.name, len(overdue))
        if stale:
            log.warning("stored incomplete concatenated messages channel=%s ids=%s", self.name, stale)
        self._settle_orphans(conn, all_others=False)

    def _check_timeouts(self, now: float) -> None:
        if self.outstanding:
            oldest = min(p.submitted_at for p in self.outstanding.values())
            if now - oldest > self.settings.response_timeout_s:
                self._reset(f"no submit_sm_resp within {self.settings.response_timeout_s} s")
                return
        for session in self._sessions():
            if any(now - at > self.settings.response_timeout_s for at in session.enquire_links.values()):
                self._reset("no enquire_link_resp")
                return
            if now - session.last_sent_at >= self.settings.enquire_link_interval_s:
                try:
                    pdu = session.make("enquire_link")
                    session.send(pdu)
                    session.enquire_links[pdu.sequence] = now
                except SessionError as e:
                    self._reset(str(e))
                    return

    def _report_health(self, conn: Connection) -> None:
        connected = self._can_send()
        self.next_health_at = time.monotonic() + channel_health.REPORT_INTERVAL_S / 2
        metrics.CHANNEL_CONNECTED.labels(**self.labels).set(1 if self._bound() else 0)
        details = {"bound": self._bound(), "bind_mode": self.settings.bind_mode,
                   "window_in_use": len(self.outstanding), "owner": self.owner}
        channel_health.report(conn, self.publisher, self.name, connected=connected, details=details)
        if connected != self.reported_connected:
            log.info("health channel=%s connected=%s", self.name, connected)
        self.reported_connected = connected


class SessionSignOff(SessionError):
    """The SMSC sent unbind: answered, then the connection is made again."""


def _receipt_of(pdu: PDU, short_message: bytes) -> Receipt | None:
    receipted = getattr(pdu, "receipted_message_id", None)
    state = getattr(pdu, "message_state", None)
    return parse_receipt(
        short_message.decode("latin-1"),
        receipted.decode("latin-1").rstrip("\x00") if receipted else None,
        int(state) if state is not None else None,
    )


def _address(raw: bytes | None, ton: int | None) -> str:
    """An SMPP address as the messages table writes it: international numbers with +."""
    text = (raw or b"").decode("latin-1").strip()
    if ton == 1 and text.isdigit():
        return "+" + text
    return text


def _address_type(address: str, ton: int | None, npi: int | None) -> tuple[int, int]:
    """TON/NPI from the settings, else from the address: +E.164 (1/1), alphanumeric (5/0),
    other digits (0/1)."""
    if address.startswith("+"):
        guessed = (1, 1)
    elif address and not address.isdigit():
        guessed = (5, 0)
    else:
        guessed = (0, 1)
    return (guessed[0] if ton is None else ton, guessed[1] if npi is None else npi)


def main(argv: list[str] | None = None) -> None:
    settings, row = start_channel(SERVICE, SmppSettings, argv)
    url = settings.resolved_database_url()
    publisher = Publisher(settings.bus)
    channel = SmppChannel(row, url, publisher)
    try:
        run(
            settings=settings,
            service=f"{SERVICE}-{row.name}",
            loop=LoopSettings(poll_interval_s=row.settings.poll_interval_s, metrics_port=row.settings.metrics_port),
            step=channel.step,
            # the database announces it for rows made ready for this channel (0031)
            wake_on=[outgoing_topic(row.name)],
            watches=channel.watches,
            next_wake=channel.next_wake,
            on_connect=channel.on_connect,
        )
    finally:
        channel.close(url)
        publisher.close()
