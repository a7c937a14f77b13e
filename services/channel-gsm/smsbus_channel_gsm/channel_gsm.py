"""One GSM modem channel (SPEC §4): AT commands in PDU mode over a serial port.

Owns QUEUED -> SENDING -> SENT | FAILED | QUEUED (retry) for its channel's messages,
SENT/NOREPORT -> DELIVERED | NOTDELIVERED from status reports (+CDS, or stored on the SIM;
matched by TP-MR),
SENT -> NOREPORT after the channel's report timeout, and incoming rows ('in', RECEIVED).
Runs on the shared main loop with the port's descriptor as a Watch (no thread): unsolicited
codes wake the step; a command waits for its own answer with select(), bounded by its timeout.
A modem that stops answering is reset (AT+CFUN=1,1) and its port reopened; a device path that
disappears is opened again with backoff until it is back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import prometheus_client
import psycopg
import serial  # type: ignore[import-untyped]

from smsbus import channel_health, incoming, metrics, queue
from smsbus.backoff import Backoff
from smsbus.bus import Publisher, outgoing_topic
from smsbus.channel_settings import ChannelRow, GsmSettings, start_channel
from smsbus.encoding import Encoding, Segments, TextNotEncodable, choose_encoding, segment_text
from smsbus.errors import ConfigError
from smsbus.loop import Connection, LoopSettings, Watch, run
from smsbus.statuses import Status, check_move
from smsbus_channel_gsm import cms_error, pdu
from smsbus_channel_gsm.at import AtPort, CommandFailed, ModemError, ModemTimeout, Unsolicited

SERVICE = "channel-gsm"
log = logging.getLogger(SERVICE)

# +CREG <stat>: registered on the home network or roaming
REGISTERED = {1: "home", 5: "roaming"}
REGISTRATION_NAMES = {0: "not_searching", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming"}
# SMS-STATUS-REPORT outcomes as message_parts.receipt_state, in the receipts' common words
RECEIPT_DELIVERED = "DELIVRD"
RECEIPT_FAILED = "UNDELIV"
# how long a received PDU's key is remembered after it left the SIM
RECEIVED_KEY_RETENTION = timedelta(days=7)
# the body of a RECEIVED row kept for a PDU that did not parse
UNDECODABLE_BODY = "(undecodable PDU: the raw PDU is in properties.pdu)"

SUBMITS = prometheus_client.Counter(
    "smsbus_gsm_submits_total", "SMS-SUBMIT PDUs sent, by outcome", ["channel", "outcome"]
)
RECEIVED = prometheus_client.Counter("smsbus_gsm_received_total", "Incoming messages stored", ["channel"])
UNDECODABLE = prometheus_client.Counter(
    "smsbus_gsm_undecodable_pdus_total", "PDUs read from the SIM that did not parse, kept as RECEIVED rows", ["channel"]
)
REPORTS = prometheus_client.Counter(
    "smsbus_gsm_status_reports_total", "Status reports, by outcome", ["channel", "outcome"]
)
RESETS = prometheus_client.Counter(
    "smsbus_gsm_modem_resets_total", "Modem resets by the watchdog", ["channel", "reason"]
)
SIGNAL = prometheus_client.Gauge("smsbus_gsm_signal_rssi", "AT+CSQ <rssi> (0-31; 99 unknown)", ["channel"])
SIGNAL_DBM = prometheus_client.Gauge("smsbus_gsm_signal_dbm", "Signal strength from AT+CSQ, in dBm", ["channel"])
REGISTRATION = prometheus_client.Gauge("smsbus_gsm_registration_status", "AT+CREG <stat>", ["channel"])
SUBMIT_SECONDS = prometheus_client.Histogram(
    "smsbus_gsm_submit_latency_seconds", "AT+CMGS to its +CMGS answer", ["channel"]
)

# --- SQL -----------------------------------------------------------------------------------

CLAIM_QUEUED = """
WITH claimed AS (
    SELECT id FROM messages
    WHERE status = 'QUEUED' AND channel = %(channel)s AND routed_at IS NOT NULL
      AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    -- live traffic first: one-off messages before campaign messages (migration 0041)
    ORDER BY (campaign_id IS NOT NULL), id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE messages m SET status = 'SENDING', lease_owner = %(owner)s,
       lease_until = now() + make_interval(secs => %(lease_s)s), ack_status = 'WAITING'
FROM claimed LEFT JOIN gsm_partial_sends p ON p.message_id = claimed.id AND p.channel = %(channel)s
WHERE m.id = claimed.id
RETURNING m.id, m.to_address, m.body, m.properties, m.attempts,
          p.concatenation_reference, p.encoding, p.total_parts, p.sent_references
"""

# SENDING rows nobody sends any more: a previous process on this host (it is gone: we hold
# the device's exclusive lock), or any owner whose lease ran out
SELECT_ORPHANED = """
SELECT id, attempts FROM messages
WHERE status = 'SENDING' AND channel = %(channel)s
  AND (split_part(lease_owner, '/', 1) = %(host)s AND lease_owner <> %(owner)s
       OR lease_until < now() OR lease_owner IS NULL)
ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
"""

# a guarded move (SENDING -> SENT, allowed by smsbus.statuses) with a TP-MR per message
RECORD_SENT = """
UPDATE messages m
SET status = 'SENT', sent_at = now(), ack_status = 'ACK', provider_id = sent.provider_id,
    parts = sent.parts, error = NULL, lease_owner = NULL, lease_until = NULL
FROM unnest(%(ids)s::bigint[], %(provider_ids)s::text[], %(parts)s::int[]) AS sent (id, provider_id, parts)
WHERE m.id = sent.id AND m.status = 'SENDING'
RETURNING m.id, m.parts
"""

# a part of a concatenated message went out: kept before the next part is sent (0011)
RECORD_PART_SENT = """
INSERT INTO gsm_partial_sends (message_id, channel, concatenation_reference, encoding, total_parts, sent_references)
VALUES (%(message_id)s, %(channel)s, %(reference)s, %(encoding)s, %(total_parts)s, %(sent_references)s)
ON CONFLICT (message_id) DO UPDATE
SET channel = EXCLUDED.channel, concatenation_reference = EXCLUDED.concatenation_reference,
    encoding = EXCLUDED.encoding, total_parts = EXCLUDED.total_parts,
    sent_references = EXCLUDED.sent_references, updated_at = now()
"""

# a part's record need not wait for the disk: see GsmChannel.record_part_sent
COMMIT_WITHOUT_FLUSH = "SET LOCAL synchronous_commit = off"

FORGET_PARTIAL_SENDS = "DELETE FROM gsm_partial_sends WHERE message_id = ANY(%(ids)s)"

# every part's TP-MR, for its status report; a message sent again replaces its parts
INSERT_PARTS = """
INSERT INTO message_parts (message_id, part_number, channel, provider_id)
SELECT message_id, part_number, %(channel)s, provider_id
FROM unnest(%(message_ids)s::bigint[], %(part_numbers)s::int[], %(provider_ids)s::text[])
     AS part (message_id, part_number, provider_id)
ON CONFLICT (message_id, part_number) DO UPDATE
SET provider_id = EXCLUDED.provider_id, submitted_at = now(), receipt_state = NULL, receipt_at = NULL
"""

# TP-MR wraps at 256: a report belongs to the latest part still waiting with that reference
RECORD_REPORT = """
UPDATE message_parts p SET receipt_state = %(state)s, receipt_at = now()
FROM (SELECT message_id, part_number FROM message_parts
      WHERE channel = %(channel)s AND provider_id = %(provider_id)s AND receipt_state IS NULL
      ORDER BY submitted_at DESC LIMIT 1 FOR UPDATE) awaiting
WHERE p.message_id = awaiting.message_id AND p.part_number = awaiting.part_number
RETURNING p.message_id
"""

# DELIVERED once every part is (a part still waiting, NULL, counts as not delivered: bool_and
# alone skips NULLs); NOTDELIVERED as soon as one part failed
SUMMARISE_REPORTS = """
SELECT bool_and(coalesce(receipt_state = %(delivered)s, false)) AS all_delivered,
       bool_or(receipt_state = %(failed)s) AS any_failed
FROM message_parts WHERE message_id = %(message_id)s
"""

SELECT_REPORT_OVERDUE = """
SELECT DISTINCT m.id FROM message_parts p JOIN messages m ON m.id = p.message_id
WHERE p.channel = %(channel)s AND p.receipt_state IS NULL
  AND p.submitted_at < now() - %(timeout)s AND m.status = 'SENT'
ORDER BY m.id
"""

REMEMBER_PDU = """
INSERT INTO gsm_received_pdus (channel, pdu_key) VALUES (%(channel)s, %(pdu_key)s)
ON CONFLICT DO NOTHING RETURNING pdu_key
"""

FORGET_OLD_PDUS = "DELETE FROM gsm_received_pdus WHERE received_at < now() - %(age)s"

INSERT_INCOMING_PART = """
INSERT INTO incoming_parts (channel, from_address, reference, total, part_number, data_coding, payload)
VALUES (%(channel)s, %(from_address)s, %(reference)s, %(total)s, %(part_number)s, %(data_coding)s, %(payload)s)
ON CONFLICT DO NOTHING
"""

# the parts of one concatenated message, taken (deleted) once all are here
TAKE_PARTS_IF_COMPLETE = """
DELETE FROM incoming_parts
WHERE channel = %(channel)s AND from_address = %(from_address)s AND reference = %(reference)s
  AND total = %(total)s
  AND (SELECT count(*) FROM incoming_parts
       WHERE channel = %(channel)s AND from_address = %(from_address)s
         AND reference = %(reference)s AND total = %(total)s) = %(total)s
RETURNING part_number, data_coding, payload
"""

# concatenated messages whose missing parts never came: stored with what did arrive
SELECT_STALE_GROUPS = """
SELECT from_address, reference, total FROM incoming_parts
WHERE channel = %(channel)s
GROUP BY from_address, reference, total
HAVING min(received_at) < now() - %(timeout)s
"""

TAKE_PARTS = """
DELETE FROM incoming_parts
WHERE channel = %(channel)s AND from_address = %(from_address)s AND reference = %(reference)s
  AND total = %(total)s
RETURNING part_number, data_coding, payload
"""


# --- outcomes of one message's sending -------------------------------------------------------


@dataclass(frozen=True)
class PartialSend:
    """The parts of a concatenated message that went out on an earlier attempt."""

    reference: int
    encoding: Encoding
    total_parts: int
    sent: tuple[int, ...]  # their TP-MRs, parts 1..len(sent)


@dataclass(frozen=True)
class Claimed:
    id: int
    to_address: str
    body: str
    properties: dict[str, Any]
    attempts: int
    partial: PartialSend | None = None


@dataclass(frozen=True)
class Prepared:
    """A message ready for AT+CMGS: its parts, their concatenation reference, and the TP-MRs
    of the parts an earlier attempt sent (those are not sent again)."""

    segments: Segments
    reference: int
    sent: tuple[int, ...]


@dataclass(frozen=True)
class Sent:
    references: tuple[int, ...]  # every part's TP-MR, earlier attempts' included


@dataclass(frozen=True)
class Refused:
    error: str
    permanent: bool


@dataclass(frozen=True)
class Unknown:
    """The modem stopped answering while this message was being sent."""

    error: str


Outcome = Sent | Refused | Unknown


class Modem:
    """An open, initialised modem: the serial port and its AT layer."""

    def __init__(self, port: serial.Serial, channel: str) -> None:
        self.port = port
        self.at = AtPort(port, channel)

    def close(self) -> None:
        try:
            self.port.close()
        except (OSError, serial.SerialException):
            pass


def open_port(settings: GsmSettings) -> serial.Serial:
    """The device opened exclusively: a second copy of the channel cannot share the modem."""
    return serial.Serial(
        settings.device, settings.baud_rate, timeout=0, write_timeout=settings.command_timeout_s, exclusive=True
    )


def signal_dbm(rssi: int) -> int | None:
    """TS 27.007 +CSQ: 0 = -113 dBm or less, 31 = -51 dBm or more, 99 = unknown."""
    return -113 + 2 * rssi if 0 <= rssi <= 31 else None


def pdu_key(tpdu: bytes) -> str:
    return hashlib.sha256(tpdu).hexdigest()


def claimed_from(row: dict[str, Any]) -> Claimed:
    partial = None
    if row["concatenation_reference"] is not None:
        partial = PartialSend(
            row["concatenation_reference"], Encoding(row["encoding"]), row["total_parts"], tuple(row["sent_references"])
        )
    return Claimed(row["id"], row["to_address"], row["body"], row["properties"], row["attempts"], partial)


def sender_of(pdu_hex: str) -> str | None:
    """The sender of an SMS-DELIVER whose later fields do not parse, if its address does."""
    try:
        tpdu = pdu.skip_smsc(pdu.from_hex(pdu_hex))
        if pdu.message_type(tpdu) != pdu.MTI_DELIVER:
            return None
        return pdu.decode_address(tpdu, 1)[0]
    except pdu.PduError:
        return None


class GsmChannel:
    def __init__(self, row: ChannelRow[GsmSettings], publisher: Publisher | None) -> None:
        assert isinstance(row.settings, GsmSettings)
        self.name = row.name
        self.settings: GsmSettings = row.settings
        self.report_timeout = row.report_timeout
        self.publisher = publisher
        self.owner = f"{socket.gethostname()}/{os.getpid()}"
        self.host = socket.gethostname()
        self.modem: Modem | None = None
        self.reopen = Backoff(self.settings.reopen_initial_s, self.settings.reopen_max_s)
        self.next_open_at = 0.0
        self.next_health_at = 0.0
        self.next_sweep_at = 0.0
        # NOREPORT and reassembly timeouts are checked at the poll interval (at most the
        # health interval): cheap queries on partial indexes
        poll = self.settings.poll_interval_s
        self.sweep_interval_s = (
            min(poll, channel_health.REPORT_INTERVAL_S) if poll > 0 else channel_health.REPORT_INTERVAL_S
        )
        self.registration: int | None = None
        self.rssi: int | None = None
        self.last_error = ""
        self.sim_may_hold_messages = True
        # set by the SIM refusing the PIN: the modem is not opened again by this process
        self.pin_refused = False
        self.recovered = False
        self.concatenation_reference = random.randrange(256)
        # a token bucket on messages (per second)
        self.rate = row.rate
        self.tokens = 1.0
        self.tokens_at = time.monotonic()
        self.validity = timedelta(seconds=self.settings.validity_s) if self.settings.validity_s else None

    # --- the main loop's hooks ------------------------------------------------------------------

    def watches(self) -> list[Watch]:
        if self.modem is None:
            return []
        return [Watch(self.modem.at, self.on_readable)]

    def on_readable(self, events: int) -> bool:
        """Unsolicited codes between commands: the step handles them (it has the database)."""
        assert self.modem is not None
        try:
            return self.modem.at.read_available()
        except ModemError as e:
            self.lose_modem("port", str(e))
            return True

    def next_wake(self) -> float | None:
        """The next watchdog probe, reopen attempt or rate token, on the wall clock."""
        due = min(self.next_health_at, self.next_sweep_at)
        if self.modem is None and not self.pin_refused:
            due = min(due, self.next_open_at)
        if self.rate is not None and self.tokens < 1:
            due = min(due, self.tokens_at + (1 - self.tokens) / self.rate)
        return due + time.time() - time.monotonic()

    def step(self, conn: Connection) -> int:
        now = time.monotonic()
        if now >= self.next_sweep_at:  # the database's part: runs with the modem away too
            self.sweep(conn)
            self.next_sweep_at = now + self.sweep_interval_s
        if self.modem is None:
            if now < self.next_open_at or self.pin_refused:
                self.report_health_when_due(conn, now)
                return 0
            if not self.open_modem():
                self.report_health_when_due(conn, now, force=True)
                return 0
            self.next_health_at = 0.0
        if not self.recovered:
            self.recover_orphans(conn)
        done = 0
        try:
            self.handle_unsolicited(conn)
            if now >= self.next_health_at:
                self.check_modem()
                self.sim_may_hold_messages = True
            if self.sim_may_hold_messages:
                done += self.read_sim(conn)
            done += self.send_batch(conn)
        except ModemError as e:
            self.lose_modem("timeout", str(e))
        except CommandFailed as e:
            # e.g. +CME ERROR: 11 (SIM PIN required): the modem restarted on its own
            self.lose_modem("refused", str(e))
        self.report_health_when_due(conn, now)
        if self.modem is not None and self.modem.at.unsolicited:
            done += 1  # codes that arrived during a command: another step handles them
        return done

    # --- the modem's life: open, initialise, watch, reset ---------------------------------------

    def open_modem(self) -> bool:
        try:
            port = open_port(self.settings)
        except (OSError, serial.SerialException) as e:
            self.last_error = f"cannot open {self.settings.device}: {e}"
            self.schedule_reopen()
            return False
        modem = Modem(port, self.name)
        try:
            self.initialise(modem.at)
        except (ModemError, CommandFailed) as e:
            modem.close()
            if self.pin_refused:
                self.last_error = (f"wrong PIN: the SIM refused settings.pin ({e}); "
                                   "not tried again until the channel restarts")
                log.error("wrong PIN channel=%s error=%s: the modem is left alone", self.name, e)
                return False
            self.last_error = f"initialisation failed: {e}"
            self.schedule_reopen()
            return False
        self.modem = modem
        self.reopen.reset()
        self.sim_may_hold_messages = True
        log.info("modem ready channel=%s device=%s", self.name, self.settings.device)
        return True

    def schedule_reopen(self) -> None:
        delay = self.reopen.next_delay()
        self.next_open_at = time.monotonic() + delay
        log.warning("modem unavailable channel=%s error=%s retry_in_s=%.1f", self.name, self.last_error, delay)

    def initialise(self, at: AtPort) -> None:
        timeout = self.settings.command_timeout_s
        at.command("AT", timeout)
        at.command("ATE0", timeout)
        at.command("AT+CMEE=1", timeout)
        pin_state = at.command("AT+CPIN?", timeout, answer="+CPIN:")
        if pin_state and "SIM PIN" in pin_state[0]:
            self.enter_pin(at)
        elif pin_state and "READY" not in pin_state[0]:
            raise CommandFailed("AT+CPIN?", pin_state[0])
        at.command("AT+CMGF=0", timeout)
        if self.settings.smsc:
            toa = pdu.TOA_INTERNATIONAL if self.settings.smsc.startswith("+") else pdu.TOA_UNKNOWN
            at.command(f'AT+CSCA="{self.settings.smsc}",{toa}', timeout)
        storage = self.settings.storage
        at.command(f'AT+CPMS="{storage}","{storage}","{storage}"', timeout, answer="+CPMS:")
        # new messages: stored and announced (+CMTI); status reports: sent at once (+CDS)
        at.command("AT+CNMI=2,1,0,1,0", timeout)
        # registration changes announced (+CREG: <stat>): health follows without waiting
        at.command("AT+CREG=1", timeout)

    def enter_pin(self, at: AtPort) -> None:
        """AT+CPIN once. The PIN appears in no error, log line or health report; after one
        refusal the channel never sends it again (a third wrong PIN locks the SIM: PUK)."""
        try:
            pin = self.settings.sim_pin()
        except ConfigError as e:
            raise CommandFailed("AT+CPIN?", str(e)) from None
        if pin is None:
            raise CommandFailed("AT+CPIN?", "the SIM asks for a PIN and the channel has none (settings.pin)")
        try:
            at.command(f'AT+CPIN="{pin}"', self.settings.command_timeout_s)
        except CommandFailed as e:
            self.pin_refused = True
            raise CommandFailed("AT+CPIN=<PIN>", e.final) from None
        except ModemTimeout:
            raise ModemTimeout("no answer to AT+CPIN=<PIN> within the timeout") from None

    def check_modem(self) -> None:
        """The watchdog's probe every few seconds: signal and registration, or a timeout."""
        assert self.modem is not None
        at, timeout = self.modem.at, self.settings.command_timeout_s
        for line in at.command("AT+CSQ", timeout, answer="+CSQ:"):
            rssi = line.split(":", 1)[1].split(",")[0].strip()
            if rssi.isdigit():
                self.rssi = int(rssi)
        for line in at.command("AT+CREG?", timeout, answer="+CREG:"):
            values = line.split(":", 1)[1].split(",")
            stat = values[1] if len(values) > 1 else values[0]
            if stat.strip().isdigit():
                self.registration = int(stat)
        if self.rssi is not None:
            SIGNAL.labels(self.name).set(self.rssi)
            dbm = signal_dbm(self.rssi)
            if dbm is not None:
                SIGNAL_DBM.labels(self.name).set(dbm)
        if self.registration is not None:
            REGISTRATION.labels(self.name).set(self.registration)

    def lose_modem(self, reason: str, error: str) -> None:
        """Reset: AT+CFUN=1,1 (a modem whose parser still listens restarts), then reopen."""
        if self.modem is None:
            return
        RESETS.labels(self.name, reason).inc()
        log.warning("modem reset channel=%s reason=%s error=%s", self.name, reason, error)
        try:
            self.modem.at.command("AT+CFUN=1,1", min(1.0, self.settings.command_timeout_s))
        except (ModemError, CommandFailed):
            pass
        self.modem.close()
        self.modem = None
        self.last_error = error
        self.registration = None
        self.next_open_at = time.monotonic()
        self.next_health_at = 0.0  # tell the router at once

    def report_health_when_due(self, conn: Connection, now: float, force: bool = False) -> None:
        if now < self.next_health_at and not force:
            return
        self.next_health_at = now + channel_health.REPORT_INTERVAL_S
        connected = self.modem is not None and self.registration in REGISTERED
        metrics.CHANNEL_CONNECTED.labels(self.name).set(1 if connected else 0)
        details: dict[str, Any] = {
            "device": self.settings.device,
            "answering": self.modem is not None,
            "registration": REGISTRATION_NAMES.get(self.registration, "unknown")
            if self.registration is not None
            else None,
            "signal_rssi": self.rssi,
            "signal_dbm": signal_dbm(self.rssi) if self.rssi is not None else None,
        }
        if not connected:
            details["error"] = self.last_error or "not registered on the network"
        conn.rollback()
        channel_health.report(conn, self.publisher, self.name, connected=connected, details=details)

    # --- sending ---------------------------------------------------------------------------

    def recover_orphans(self, conn: Connection) -> None:
        """SENDING rows of a process that died mid-send: outcome unknown (SPEC §4)."""
        with conn.transaction():
            rows = conn.execute(
                SELECT_ORPHANED, {"channel": self.name, "host": self.host, "owner": self.owner}
            ).fetchall()
            for row in rows:
                self.record(
                    conn,
                    Claimed(row["id"], "", "", {}, row["attempts"]),
                    Unknown("the channel stopped while sending; outcome unknown"),
                )
        conn.commit()
        self.recovered = True
        if rows:
            log.warning("recovered unfinished sends channel=%s messages=%d", self.name, len(rows))

    def take_tokens(self) -> int:
        if self.rate is None:
            return self.settings.batch
        now = time.monotonic()
        self.tokens = min(float(self.settings.batch), self.tokens + (now - self.tokens_at) * self.rate)
        self.tokens_at = now
        return int(self.tokens)

    def send_batch(self, conn: Connection) -> int:
        limit = self.take_tokens()
        if limit < 1:
            return 0
        params = {"channel": self.name, "limit": limit, "owner": self.owner, "lease_s": self.lease_seconds(limit)}
        with conn.transaction():
            rows = conn.execute(CLAIM_QUEUED, params).fetchall()
        conn.commit()
        if not rows:
            return 0
        claimed = sorted((claimed_from(r) for r in rows), key=lambda c: c.id)
        if self.rate is not None:
            self.tokens -= len(claimed)
        outcomes: dict[int, Outcome] = {}
        lost: ModemError | None = None
        try:
            prepared = {message.id: self.prepare(message) for message in claimed}
            self.keep_link_open(
                sum(p.segments.parts - len(p.sent) for p in prepared.values() if isinstance(p, Prepared))
            )
            for message in claimed:
                ready = prepared[message.id]
                outcomes[message.id] = self.send_message(conn, message, ready) if isinstance(ready, Prepared) else ready
                if isinstance(outcomes[message.id], Unknown):
                    break
        except ModemError as e:
            lost = e
        with conn.transaction():
            sent = [(m, o) for m in claimed if isinstance(o := outcomes.get(m.id), Sent)]
            if sent:
                self.record_sent(conn, sent)
            not_started = [m.id for m in claimed if m.id not in outcomes]
            if not_started:
                # back in the queue as they were: no attempt spent
                requeued = queue.move(
                    conn,
                    not_started,
                    Status.SENDING,
                    Status.QUEUED,
                    ack_status="N/A",
                    lease_owner=None,
                    lease_until=None,
                )
                metrics.count_moves(Status.QUEUED, self.name, len(requeued))
            for message in claimed:
                outcome = outcomes.get(message.id)
                if isinstance(outcome, Refused | Unknown):
                    self.record(conn, message, outcome)
        conn.commit()
        unknown = next((o for o in outcomes.values() if isinstance(o, Unknown)), None)
        if lost is not None or unknown is not None:
            self.lose_modem("timeout", str(lost) if lost else unknown.error if unknown else "")
        return len(claimed)

    def lease_seconds(self, messages: int) -> float:
        # longer than the worst case of this batch: every part of every message timing out
        return 60.0 + messages * self.settings.send_timeout_s

    def keep_link_open(self, pdus: int) -> None:
        """AT+CMMS=1: the network keeps the link between the PDUs of a batch."""
        assert self.modem is not None
        if pdus > 1:
            try:
                self.modem.at.command("AT+CMMS=1", self.settings.command_timeout_s)
            except CommandFailed:
                pass  # a modem without +CMMS sends the same, only slower

    def prepare(self, message: Claimed) -> Prepared | Refused:
        """The parts to send: after a partial send, the same alphabet and reference as the
        parts that went out (the phone joins them by reference), else a new reference."""
        partial = message.partial
        if partial is not None:
            segments = segment_text(message.body, partial.encoding)
            if segments.parts == partial.total_parts:
                log.info(
                    "resuming id=%d channel=%s parts_sent=%d parts=%d",
                    message.id,
                    self.name,
                    len(partial.sent),
                    segments.parts,
                )
                return Prepared(segments, partial.reference, partial.sent)
            log.warning("partial send no longer fits the body id=%d channel=%s: sent whole", message.id, self.name)
        try:
            segments = segment_text(message.body, self.choose_encoding(message))
        except TextNotEncodable as e:
            return Refused(str(e), permanent=True)
        if segments.parts == 1:
            return Prepared(segments, 0, ())
        self.concatenation_reference = (self.concatenation_reference + 1) % 256
        return Prepared(segments, self.concatenation_reference, ())

    def send_message(self, conn: Connection, message: Claimed, prepared: Prepared) -> Outcome:
        """AT+CMGS for each part not yet sent. Each part but the last is recorded (and
        committed) as it goes out, so a refusal or a crash later on leaves a retry only the
        parts that did not go out (0011)."""
        assert self.modem is not None
        segments = prepared.segments
        references = list(prepared.sent)
        short_messages = segments.short_messages(prepared.reference)
        for number in range(len(references) + 1, segments.parts + 1):
            short_message = short_messages[number - 1]
            udh = short_message[: short_message[0] + 1] if segments.parts > 1 else b""
            submit = pdu.Submit(
                message.to_address,
                short_message[len(udh) :],
                segments.encoding,
                udh,
                request_report=self.settings.request_reports,
                validity=self.validity,
            )
            tpdu = pdu.encode_submit(submit)
            started = time.monotonic()
            try:
                reference = self.modem.at.send_pdu(len(tpdu), "00" + tpdu.hex().upper(), self.settings.send_timeout_s)
            except CommandFailed as e:
                SUBMITS.labels(self.name, "refused").inc()
                return Refused(
                    f"modem refused part {number}/{segments.parts}: {cms_error.describe(e.final, e.code)}",
                    permanent=cms_error.classify(e.code) is cms_error.ErrorClass.PERMANENT,
                )
            except ModemError as e:
                SUBMITS.labels(self.name, "unknown").inc()
                return Unknown(f"no answer to AT+CMGS for part {number}/{segments.parts}: {e}")
            SUBMIT_SECONDS.labels(self.name).observe(time.monotonic() - started)
            SUBMITS.labels(self.name, "sent").inc()
            references.append(reference)
            if number < segments.parts:
                self.record_part_sent(conn, message, prepared, references)
        return Sent(tuple(references))

    def record_part_sent(self, conn: Connection, message: Claimed, prepared: Prepared, references: list[int]) -> None:
        """Committed without waiting for the disk flush (synchronous_commit off): it survives
        this process dying at once, and only a crash of PostgreSQL itself in the next moment
        could lose it (then that part goes out again, as any unknown outcome)."""
        number = len(references)
        with conn.transaction():
            conn.execute(COMMIT_WITHOUT_FLUSH)
            conn.execute(
                RECORD_PART_SENT,
                {
                    "message_id": message.id,
                    "channel": self.name,
                    "reference": prepared.reference,
                    "encoding": prepared.segments.encoding.value,
                    "total_parts": prepared.segments.parts,
                    "sent_references": references,
                },
            )
            if self.settings.request_reports:
                self.insert_parts(conn, [(message.id, number, references[-1])])
        conn.commit()

    def choose_encoding(self, message: Claimed) -> Encoding:
        """The message's own hint (properties.encoding) if PDU mode carries it, else the
        first of the channel's alphabets that holds the text."""
        hint = message.properties.get("encoding")
        if hint in ("gsm7", "ucs2"):
            return Encoding(hint)
        return choose_encoding(message.body, [Encoding(e) for e in self.settings.encodings])

    def record_sent(self, conn: Connection, sent: list[tuple[Claimed, Sent]]) -> None:
        """The batch's sent messages in one statement (and their last parts in another; the
        parts before were recorded as they went out): one UPDATE per message cost more than
        the AT+CMGS round trip itself (bench/gsm.py)."""
        check_move(Status.SENDING, Status.SENT)
        moved = conn.execute(
            RECORD_SENT,
            {
                "ids": [message.id for message, _ in sent],
                "provider_ids": [str(outcome.references[-1]) for _, outcome in sent],
                "parts": [len(outcome.references) for _, outcome in sent],
            },
        ).fetchall()
        if self.settings.request_reports:
            self.insert_parts(
                conn, [(message.id, len(outcome.references), outcome.references[-1]) for message, outcome in sent]
            )
        # a partial send found at the claim (sent whole when the body changed) is done too
        partly_sent = [m.id for m, outcome in sent if len(outcome.references) > 1 or m.partial is not None]
        if partly_sent:
            conn.execute(FORGET_PARTIAL_SENDS, {"ids": partly_sent})
        metrics.count_moves(Status.SENT, self.name, len(moved))
        for row in moved:
            log.info("sent id=%d channel=%s parts=%d", row["id"], self.name, row["parts"])

    def insert_parts(self, conn: Connection, parts: list[tuple[int, int, int]]) -> None:
        """(message id, part number, TP-MR) of parts that went out, for their status reports."""
        conn.execute(
            INSERT_PARTS,
            {
                "channel": self.name,
                "message_ids": [p[0] for p in parts],
                "part_numbers": [p[1] for p in parts],
                "provider_ids": [str(p[2]) for p in parts],
            },
        )

    def record(self, conn: Connection, message: Claimed, outcome: Refused | Unknown) -> None:
        """A message that was not sent, in the caller's (short) transaction. Parts that did
        go out stay in gsm_partial_sends: a retry (or an operator's, after FAILED) sends the rest."""
        attempts = message.attempts + 1
        changes: dict[str, Any] = {
            "attempts": attempts,
            "error": outcome.error,
            "lease_owner": None,
            "lease_until": None,
        }
        if isinstance(outcome, Refused) and (outcome.permanent or attempts >= self.settings.max_attempts):
            target = Status.FAILED
            changes["ack_status"] = "NACK"
        elif isinstance(outcome, Unknown) and (
            self.settings.on_unknown == "fail" or attempts >= self.settings.max_attempts
        ):
            target = Status.FAILED
        else:
            target = Status.QUEUED
            delay = min(self.settings.retry_max_s, self.settings.retry_initial_s * 2 ** (attempts - 1))
            changes.update(ack_status="N/A", next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay))
        moved = queue.move(conn, [message.id], Status.SENDING, target, **changes)
        metrics.count_moves(target, self.name, len(moved))
        log.warning("not sent id=%d channel=%s attempts=%d error=%s", message.id, self.name, attempts, outcome.error)

    # --- status reports -----------------------------------------------------------------------

    def apply_report(self, conn: Connection, report: pdu.StatusReport) -> None:
        outcome = report.outcome
        REPORTS.labels(self.name, outcome.value).inc()
        if outcome is pdu.ReportOutcome.PENDING:
            log.info(
                "status report pending channel=%s reference=%d tp_st=%#04x", self.name, report.reference, report.status
            )
            return
        state = RECEIPT_DELIVERED if outcome is pdu.ReportOutcome.DELIVERED else RECEIPT_FAILED
        row = conn.execute(
            RECORD_REPORT, {"channel": self.name, "provider_id": str(report.reference), "state": state}
        ).fetchone()
        if row is None:
            log.warning("status report matches no message channel=%s reference=%d", self.name, report.reference)
            return
        message_id = row["message_id"]
        summary = conn.execute(
            SUMMARISE_REPORTS, {"message_id": message_id, "delivered": RECEIPT_DELIVERED, "failed": RECEIPT_FAILED}
        ).fetchone()
        assert summary is not None
        if summary["any_failed"]:
            target, error = Status.NOTDELIVERED, f"status report TP-ST {report.status:#04x}"
        elif summary["all_delivered"]:
            target, error = Status.DELIVERED, None
        else:
            return
        for source in (Status.SENT, Status.NOREPORT):
            if queue.move(conn, [message_id], source, target, report_at=datetime.now(UTC), error=error):
                metrics.count_moves(target, self.name, 1)
                log.info("report id=%d channel=%s status=%s", message_id, self.name, target)

    def sweep(self, conn: Connection) -> None:
        """NOREPORT after the report timeout; incomplete concatenations; old PDU keys."""
        with conn.transaction():
            overdue = [
                r["id"]
                for r in conn.execute(SELECT_REPORT_OVERDUE, {"channel": self.name, "timeout": self.report_timeout})
            ]
            if overdue:
                moved = queue.move(
                    conn, overdue, Status.SENT, Status.NOREPORT, error="no status report within the report timeout"
                )
                metrics.count_moves(Status.NOREPORT, self.name, len(moved))
                log.info("no report channel=%s messages=%d", self.name, len(moved))
            timeout = timedelta(seconds=self.settings.reassembly_timeout_s)
            for group in conn.execute(SELECT_STALE_GROUPS, {"channel": self.name, "timeout": timeout}).fetchall():
                self.store_stale(conn, group)
            conn.execute(FORGET_OLD_PDUS, {"age": RECEIVED_KEY_RETENTION})
        conn.commit()

    def store_stale(self, conn: Connection, group: dict[str, Any]) -> None:
        """One stale concatenated message, in a savepoint: one the table refuses stays behind
        (logged) and the sweep goes on with the others."""
        try:
            with conn.transaction():
                parts = conn.execute(TAKE_PARTS, {"channel": self.name, **group}).fetchall()
                self.store_concatenated(conn, group["from_address"], group["total"], parts)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
            log.error("stale concatenated message not stored channel=%s reference=%s error=%s",
                      self.name, group["reference"], str(e).splitlines()[0])

    # --- receiving --------------------------------------------------------------------------

    def handle_unsolicited(self, conn: Connection) -> None:
        assert self.modem is not None
        codes: list[Unsolicited] = self.modem.at.take_unsolicited()
        reports = []
        for code in codes:
            if code.name in ("+CMTI", "+CDSI"):
                self.sim_may_hold_messages = True
            elif code.name == "+CREG" and code.value.split(",")[0].strip().isdigit():
                self.registration = int(code.value.split(",")[0])
                REGISTRATION.labels(self.name).set(self.registration)
                self.next_health_at = 0.0  # tell the router now
            elif code.name == "+CDS" and code.pdu is not None:
                try:
                    reports.append(pdu.decode_status_report(pdu.skip_smsc(pdu.from_hex(code.pdu))))
                except pdu.PduError as e:
                    log.warning("unreadable status report channel=%s error=%s", self.name, e)
            else:
                log.info("unsolicited channel=%s code=%s value=%s", self.name, code.name, code.value)
        if reports:
            with conn.transaction():
                for report in reports:
                    self.apply_report(conn, report)
            conn.commit()

    def read_sim(self, conn: Connection) -> int:
        """Every stored message and report: committed first, deleted from the SIM after."""
        assert self.modem is not None
        at = self.modem.at
        try:
            lines = at.command("AT+CMGL=4", self.settings.command_timeout_s, answer="+CMGL:", pdu_lines=True)
        except CommandFailed as e:
            # some modems refuse a listing of an empty storage (+CMS ERROR: 321)
            log.info("SIM listing refused channel=%s error=%s", self.name, e.final)
            lines = []
        self.sim_may_hold_messages = False
        entries: list[tuple[int, str]] = []
        for header, pdu_line in zip(lines[::2], lines[1::2], strict=False):
            index_text = header.split(":", 1)[1].split(",")[0].strip()
            if not index_text.isdigit():  # without its index it can be neither read alone nor deleted
                log.warning("SIM listing line without an index channel=%s header=%r", self.name, header[:40])
                continue
            entries.append((int(index_text), pdu_line.strip().upper()))
        if not entries:
            return 0
        with conn.transaction():
            for index, pdu_hex in entries:
                try:
                    with conn.transaction():  # one bad PDU must not undo the others
                        self.store_pdu(conn, pdu.skip_smsc(pdu.from_hex(pdu_hex)))
                except ValueError as e:  # a PduError, or a header smsbus.encoding refuses
                    self.store_undecodable(conn, index, pdu_hex, e)
        conn.commit()
        for index, _ in entries:
            try:
                at.command(f"AT+CMGD={index}", self.settings.command_timeout_s)
            except CommandFailed as e:
                log.warning("delete from the SIM refused channel=%s index=%d error=%s", self.name, index, e.final)
        return len(entries)

    def store_undecodable(self, conn: Connection, index: int, pdu_hex: str, error: ValueError) -> None:
        """A PDU that does not parse is kept as a RECEIVED row (raw PDU in properties.pdu,
        the reason in error) and leaves the SIM like any other: where an operator looks for
        incoming messages, archived with them, and the SIM does not fill up with it."""
        if conn.execute(REMEMBER_PDU, {"channel": self.name, "pdu_key": pdu_key(pdu_hex.encode())}).fetchone() is None:
            log.info("undecodable PDU already stored channel=%s index=%d: deleting it from the SIM", self.name, index)
            return
        UNDECODABLE.labels(self.name).inc()
        log.warning("undecodable PDU kept channel=%s index=%d error=%s", self.name, index, error)
        sender = sender_of(pdu_hex) or incoming.UNKNOWN_SENDER
        row = incoming.received(sender, None, [], Encoding.LATIN1, {"undecodable": True, "pdu": pdu_hex})
        self.insert_received(conn, replace(row, body=UNDECODABLE_BODY), 1, error=f"undecodable PDU: {error}")

    def store_pdu(self, conn: Connection, tpdu: bytes) -> None:
        if pdu.message_type(tpdu) == pdu.MTI_STATUS_REPORT:
            self.apply_report(conn, pdu.decode_status_report(tpdu))
            return
        message = pdu.decode_deliver(tpdu)
        if conn.execute(REMEMBER_PDU, {"channel": self.name, "pdu_key": pdu_key(tpdu)}).fetchone() is None:
            log.info("already stored channel=%s (read again after a restart): deleting it from the SIM", self.name)
            return
        if message.concatenation is None:
            row = incoming.received(message.sender, None, [message.payload], message.encoding,
                                    {"smsc_timestamp": message.timestamp.isoformat()})
            self.insert_received(conn, row, 1)
            return
        part = message.concatenation
        key = {"channel": self.name, "from_address": message.sender, "reference": part.reference, "total": part.total}
        conn.execute(
            INSERT_INCOMING_PART,
            {**key, "part_number": part.number, "data_coding": message.dcs, "payload": message.payload},
        )
        parts = conn.execute(TAKE_PARTS_IF_COMPLETE, key).fetchall()
        if parts:
            self.store_concatenated(conn, message.sender, part.total, parts)

    def store_concatenated(self, conn: Connection, sender: str, total: int, parts: list[dict[str, Any]]) -> None:
        parts = sorted(parts, key=lambda p: p["part_number"])
        encoding = pdu.ENCODING_FOR_ALPHABET[pdu.alphabet_of(parts[0]["data_coding"])]
        properties: dict[str, Any] = {}
        missing = sorted(set(range(1, total + 1)) - {p["part_number"] for p in parts})
        if missing:
            properties = {"incomplete": True, "missing_parts": missing}
        row = incoming.received(sender, None, [bytes(p["payload"]) for p in parts], encoding, properties)
        self.insert_received(conn, row, total)

    def insert_received(
        self, conn: Connection, message: incoming.Received, parts: int, error: str | None = None
    ) -> None:
        if message.from_address == incoming.UNKNOWN_SENDER and "sender" in message.properties:
            log.warning("sender the address format refuses channel=%s: stored as from_address=unknown", self.name)
        message_id = incoming.insert_received(conn, self.name, message, parts, error)
        RECEIVED.labels(self.name).inc()
        metrics.count_moves(Status.RECEIVED, self.name, 1)
        log.info("received id=%d channel=%s parts=%d", message_id, self.name, parts)

    def close(self) -> None:
        if self.modem is not None:
            self.modem.close()


def main(argv: list[str] | None = None) -> None:
    settings, row = start_channel(SERVICE, GsmSettings, argv)
    publisher = Publisher(settings.bus)
    channel = GsmChannel(row, publisher)
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
        )
    finally:
        channel.close()
        publisher.close()
