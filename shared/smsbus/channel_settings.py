"""The settings of each channel type, kept in `channels.settings` (jsonb) and validated on
save (CLI, API) and again by the channel process at start: an error names the field.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
import psycopg

from smsbus import config, db
from smsbus import log as log_setup
from smsbus.backoff import Backoff
from smsbus.config import OptionalPort, Port, Seconds, Settings
from smsbus.errors import ConfigError
from smsbus.secret_files import read_secret

Octet = Annotated[int, msgspec.Meta(ge=0, le=255)]
PIN_PATTERN = r"^[0-9]{4,8}$"
# SMPP 3.4 bind: password is a C-Octet String of at most 9 octets with its NUL
MAX_PASSWORD_CHARACTERS = 8
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
ErrorClass = Literal["permanent", "temporary", "throttling"]
EncodingName = Literal["gsm7", "latin1", "ucs2"]


class SmppSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: Annotated[str, msgspec.Meta(min_length=1)]
    system_id: Annotated[str, msgspec.Meta(min_length=1, max_length=15)]
    port: Port = 2775
    tls: bool = False
    # a PEM file of the CA(s) that signed the SMSC's certificate; empty: the system's CAs
    tls_ca_file: str = ""
    # the bind password: better in a file of its own (0600) than inline, which saving moves
    # into one (smsbus.secret_files)
    password: Annotated[str, msgspec.Meta(max_length=MAX_PASSWORD_CHARACTERS)] = ""
    password_file: str = ""
    system_type: Annotated[str, msgspec.Meta(max_length=12)] = ""
    # "pair": a transmitter and a receiver bind side by side
    bind_mode: Literal["transmitter", "receiver", "transceiver", "pair"] = "transceiver"
    # submit_sm outstanding at once (SPEC §4: a window, not stop-and-wait)
    window: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    # submit_sm per second; None: only the window limits
    rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # None: chosen per address (international +..., alphanumeric sender, national digits)
    source_ton: Octet | None = None
    source_npi: Octet | None = None
    destination_ton: Octet | None = None
    destination_npi: Octet | None = None
    # sender used when a message has no from_address
    source_address: str = ""
    # 0: no receipts; 1: a receipt on success and failure (SPEC §3 DELIVERED/NOTDELIVERED)
    registered_delivery: Annotated[int, msgspec.Meta(ge=0, le=3)] = 1
    # how a receipt's `id:` text writes the submit_sm_resp id: "same" (up to case and
    # leading zeros), "decimal" (of a hex id) or "hex" (of a decimal id)
    receipt_id_format: Literal["same", "decimal", "hex"] = "same"
    # alphabets tried in order for each message; UCS-2 holds everything
    encodings: tuple[EncodingName, ...] = ("gsm7", "ucs2")
    enquire_link_interval_s: PositiveSeconds = 30.0
    # a submit_sm without its response this long: the bind is broken, outcome unknown
    response_timeout_s: PositiveSeconds = 30.0
    connect_timeout_s: PositiveSeconds = 5.0
    reconnect_initial_s: PositiveSeconds = 1.0
    reconnect_max_s: PositiveSeconds = 60.0
    # what a SENDING message whose outcome is unknown becomes: QUEUED again (at-least-once)
    # or FAILED (at-most-once)
    on_unknown: Literal["requeue", "fail"] = "requeue"
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 5
    max_age_s: PositiveSeconds = 86400.0
    retry_initial_s: PositiveSeconds = 10.0
    retry_max_s: PositiveSeconds = 3600.0
    # ESME_RTHROTTLED / ESME_RMSGQFUL pause the whole bind this long, doubling up to the max
    throttle_pause_s: PositiveSeconds = 1.0
    throttle_max_pause_s: PositiveSeconds = 30.0
    # command_status (e.g. "0x0000000B" or "11") -> class, over the SMPP 3.4 table in code
    error_classes: dict[str, ErrorClass] = {}
    lease_s: Annotated[float, msgspec.Meta(ge=5)] = 30.0
    # incoming concatenated messages missing a part are stored incomplete after this long
    reassembly_timeout_s: PositiveSeconds = 300.0
    poll_interval_s: Seconds = 5.0
    metrics_port: OptionalPort = 0

    def __post_init__(self) -> None:
        for code in self.error_classes:
            try:
                int(code, 0)
            except ValueError:
                raise ValueError(f"error_classes: {code!r} is not a command_status number") from None
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        if self.password and self.password_file:
            raise ValueError("password and password_file: give one of them")
        if self.tls_ca_file and not self.tls:
            raise ValueError("tls_ca_file is set but tls is off")

    def bind_password(self) -> str:
        """The password, read from password_file at each bind (a changed file is used at the
        next reconnection); ConfigError names the setting, never the value."""
        if not self.password_file:
            return self.password
        password = read_secret(self.password_file, "password_file")
        if len(password) > MAX_PASSWORD_CHARACTERS:
            raise ConfigError("password_file", f"the file holds more than {MAX_PASSWORD_CHARACTERS} characters")
        return password


# the rates a serial port driver offers; anything else is a typo
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class GsmSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A GSM modem on a serial port (AT commands, PDU mode). The report timeout and the rate
    are the `channels` row's own columns (report_timeout, max_rate), as for every type."""

    # the serial device; a stable name such as /dev/serial/by-id/... survives replugging
    device: Annotated[str, msgspec.Meta(min_length=1)]
    baud_rate: int = 115200
    # the SIM PIN, entered when the modem asks for it (AT+CPIN): better in a file of its own
    # (0600) than inline, which saving moves into one (smsbus.secret_files)
    pin: Annotated[str, msgspec.Meta(pattern=PIN_PATTERN)] | None = None
    pin_file: str = ""
    # the SMS centre (AT+CSCA); empty: the one stored on the SIM
    smsc: Annotated[str, msgspec.Meta(pattern=r"^(\+?[0-9]{3,20})?$")] = ""
    # where incoming messages and reports are kept and read (AT+CPMS)
    storage: Literal["SM", "ME", "MT"] = "SM"
    # ask for status reports (TP-SRR): DELIVERED / NOTDELIVERED, NOREPORT after the timeout
    request_reports: bool = True
    # TP-VP: how long the SMS centre keeps trying; None: the centre's default
    validity_s: Annotated[float, msgspec.Meta(ge=300)] | None = None
    # alphabets tried in order; PDU mode carries GSM 7-bit and UCS-2 (which holds everything)
    encodings: tuple[Literal["gsm7", "ucs2"], ...] = ("gsm7", "ucs2")
    command_timeout_s: PositiveSeconds = 5.0
    # AT+CMGS waits for the network: longer than other commands
    send_timeout_s: PositiveSeconds = 60.0
    # messages claimed and sent per step (AT+CMMS keeps the link open between them)
    batch: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    # messages per second at most (with the row's max_rate too, the lower one applies)
    rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # a modem that cannot be opened or initialised is tried again after this, doubling
    reopen_initial_s: PositiveSeconds = 1.0
    reopen_max_s: PositiveSeconds = 30.0
    on_unknown: Literal["requeue", "fail"] = "requeue"
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 5
    retry_initial_s: PositiveSeconds = 10.0
    retry_max_s: PositiveSeconds = 3600.0
    reassembly_timeout_s: PositiveSeconds = 300.0
    poll_interval_s: Seconds = 5.0
    metrics_port: OptionalPort = 0

    def __post_init__(self) -> None:
        if self.baud_rate not in BAUD_RATES:
            raise ValueError(f"baud_rate {self.baud_rate} is not one of {', '.join(map(str, BAUD_RATES))}")
        if not self.encodings:
            raise ValueError("encodings must name at least one alphabet")
        if self.reopen_max_s < self.reopen_initial_s:
            raise ValueError("reopen_max_s must be at least reopen_initial_s")
        if self.pin and self.pin_file:
            raise ValueError("pin and pin_file: give one of them")

    def sim_pin(self) -> str | None:
        """The PIN, read from pin_file when it is set; ConfigError names the setting, never
        the value."""
        if not self.pin_file:
            return self.pin
        pin = read_secret(self.pin_file, "pin_file")
        if re.fullmatch(PIN_PATTERN, pin) is None:
            raise ConfigError("pin_file", "the file does not hold a PIN of 4 to 8 digits")
        return pin


# each channel type adds its Struct here
AnyChannelSettings = SmppSettings | GsmSettings
SETTINGS_TYPES: dict[str, type[AnyChannelSettings]] = {"smpp": SmppSettings, "gsm": GsmSettings}


def validate_settings(channel_type: str, settings: dict[str, Any]) -> AnyChannelSettings:
    """The settings as their type's Struct; ConfigError names the field that is wrong."""
    struct = SETTINGS_TYPES.get(channel_type)
    if struct is None:
        raise ConfigError("type", f"unknown channel type {channel_type!r} (known: {', '.join(sorted(SETTINGS_TYPES))})")
    return config.validate(settings, struct)


SELECT_CHANNEL = """
SELECT type, enabled, settings, max_rate, report_timeout FROM channels WHERE name = %(name)s
"""


ChannelSettings = TypeVar("ChannelSettings", SmppSettings, GsmSettings)


@dataclass(frozen=True)
class ChannelRow(Generic[ChannelSettings]):
    """What a channel process reads about itself at start: its validated settings and the
    columns every type shares."""

    name: str
    settings: ChannelSettings
    max_rate: float | None
    report_timeout: timedelta

    @property
    def rate(self) -> float | None:
        """Messages per second: the lower of the type's `rate` setting and the row's max_rate."""
        rates = [r for r in (self.settings.rate, self.max_rate) if r is not None]
        return min(rates) if rates else None


def load_channel(
    url: str, name: str, settings_type: type[ChannelSettings], service: str
) -> ChannelRow[ChannelSettings]:
    """The channel's row, validated; ConfigError names what is wrong. Waits for the database
    (a channel started before PostgreSQL is up must not be marked FATAL)."""
    channel_type = next(t for t, struct in SETTINGS_TYPES.items() if struct is settings_type)
    backoff = Backoff()
    while True:
        try:
            with db.connect(url, application=service) as conn:
                row = conn.execute(SELECT_CHANNEL, {"name": name}).fetchone()
            break
        except psycopg.OperationalError as e:
            delay = backoff.next_delay()
            logging.getLogger(service).warning(
                "database unavailable error=%s retry_in_s=%.1f", str(e).strip().splitlines()[0], delay
            )
            time.sleep(delay)
    if row is None:
        raise ConfigError("--channel", f"no channel named {name!r} (add it with `smsbus channels add`)")
    if row["type"] != channel_type:
        raise ConfigError("--channel", f"channel {name!r} is of type {row['type']}, not {channel_type}")
    settings = validate_settings(channel_type, row["settings"])  # type: ignore[arg-type]
    assert isinstance(settings, settings_type)
    # a secret file that cannot be read is bad configuration: exit now, naming the setting
    if isinstance(settings, SmppSettings):
        settings.bind_password()
    else:
        settings.sim_pin()
    max_rate: float | None = row["max_rate"]  # type: ignore[assignment]
    report_timeout: timedelta = row["report_timeout"]  # type: ignore[assignment]
    return ChannelRow(name, settings, max_rate, report_timeout)


def start_channel(
    service: str, settings_type: type[ChannelSettings], argv: Sequence[str] | None = None
) -> tuple[Settings, ChannelRow[ChannelSettings]]:
    """A channel process's start-up: `--channel NAME`, the shared settings, logging, and its
    row. A bad setting exits non-zero naming it, so supervisord marks the program FATAL."""
    parser = argparse.ArgumentParser(prog=f"smsbus-{service}", description=f"one {service} of smsbus")
    parser.add_argument("--channel", required=True, help="the channel's name in the channels table")
    arguments = parser.parse_args(argv)
    try:
        settings = config.load()
    except ConfigError as e:
        sys.exit(f"{service}: {e}")
    log_setup.configure(service, settings.log_level)
    try:
        row = load_channel(settings.resolved_database_url(), arguments.channel, settings_type, service)
    except ConfigError as e:
        sys.exit(f"{service} {arguments.channel}: {e}")
    return settings, row
