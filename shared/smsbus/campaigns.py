"""Campaigns (SPEC §12): stored bulk sends, shared by the CLI, the API, the local API and the
campaigns service. Owns the campaign state moves and the recipients' loading; the service
owns feeding (recipient PENDING -> MESSAGED together with its message row).

A load reads rows (CSV, a query, a list), normalises each address to E.164 with
`phonenumbers`, COPYs them into a temporary (unlogged) staging table and sorts them with
set-based SQL: invalid, duplicate and opted-out rows go to `campaign_rejected_rows` with
their reason, the rest become recipients. One transaction: a failed load leaves nothing.
"""

from __future__ import annotations

import csv
import itertools
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, time
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import phonenumbers
import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from smsbus.encoding import TextNotEncodable, choose_encoding, segment_text
from smsbus.errors import SmsbusError

DRAFT, SCHEDULED, RUNNING, PAUSED, FINISHED, CANCELLED = (
    "DRAFT", "SCHEDULED", "RUNNING", "PAUSED", "FINISHED", "CANCELLED"
)
STATES = (DRAFT, SCHEDULED, RUNNING, PAUSED, FINISHED, CANCELLED)
# state -> the states it may move to; the feeder makes SCHEDULED -> RUNNING -> FINISHED
CAMPAIGN_MOVES: dict[str, frozenset[str]] = {
    DRAFT: frozenset({SCHEDULED, RUNNING, CANCELLED}),
    SCHEDULED: frozenset({RUNNING, PAUSED, CANCELLED}),
    RUNNING: frozenset({PAUSED, FINISHED, CANCELLED}),
    PAUSED: frozenset({RUNNING, CANCELLED}),
    FINISHED: frozenset(),
    CANCELLED: frozenset(),
}
# recipients may be added until the campaign has ended
LOADABLE_STATES = (DRAFT, SCHEDULED, PAUSED)
REJECTION_REASONS = ("invalid", "duplicate", "opted_out")
# a template may always use the recipient's normalised number
ADDRESS_FIELD = "address"
# header names taken as the address column when none is named
ADDRESS_COLUMN_NAMES = ("address", "phone", "mobile", "msisdn", "number", "to", "telephone")

ROWS_PER_CHUNK = 50_000
# below this many distinct numbers in a chunk, worker processes cost more than they save
PARALLEL_FROM = 20_000
E164_FORM = re.compile(r"\+[1-9][0-9]{6,14}")
TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class Campaign(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `campaigns`."""

    id: int
    name: str
    template: str
    sender: str | None
    channel: str | None
    state: str
    start_at: datetime | None
    rate_per_s: float
    allowed_from: time | None
    allowed_until: time | None
    time_zone: str
    default_region: str | None
    fields: list[str]
    fed_until: datetime | None
    fed_count: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None

    @property
    def allowed_hours(self) -> str | None:
        if self.allowed_from is None or self.allowed_until is None:
            return None
        return f"{self.allowed_from:%H:%M}-{self.allowed_until:%H:%M}"


class NewCampaign(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    template: str
    sender: str | None = None
    channel: str | None = None
    rate_per_s: float = 10.0
    start_at: datetime | None = None
    # "09:00-18:00" in time_zone; None: any time
    allowed_hours: str | None = None
    time_zone: str = "UTC"
    default_region: str | None = None


class LoadReport(msgspec.Struct, frozen=True):
    """What one load did: every row read is counted once, in `loaded` or a rejection."""

    rows: int
    loaded: int
    invalid: int
    duplicate: int
    opted_out: int


class Estimate(msgspec.Struct, frozen=True):
    """What starting would cost: the messages still to make and their SMS parts."""

    messages: int
    parts: int
    by_encoding: dict[str, int]


class Progress(msgspec.Struct, frozen=True):
    campaign: Campaign
    recipients: dict[str, int]
    messages: dict[str, int]
    rejected: dict[str, int]
    # seconds until every PENDING recipient has its message at the asked rate (None: not running)
    eta_s: float | None


class CampaignNotFound(SmsbusError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no campaign {key}")


class InvalidCampaign(SmsbusError):
    """A campaign or a load refused before anything is written; names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class ForbiddenCampaignMove(SmsbusError):
    def __init__(self, name: str, from_state: str, to_state: str) -> None:
        super().__init__(f"campaign {name} is {from_state}: it cannot become {to_state}")


# the field a refusing constraint of `campaigns` is about
CONSTRAINT_FIELDS = {
    "campaigns_name_not_empty": "name",
    "campaigns_template_not_blank": "template",
    "campaigns_rate_positive": "rate_per_s",
    "campaigns_allowed_hours_both_or_neither": "allowed_hours",
    "campaigns_sender_format": "sender",
    "campaigns_channel_not_empty": "channel",
    "campaigns_default_region_format": "default_region",
}

SELECT_CAMPAIGNS = "SELECT * FROM campaigns ORDER BY id"
SELECT_CAMPAIGN_BY_ID = "SELECT * FROM campaigns WHERE id = %(id)s"
SELECT_CAMPAIGN_BY_NAME = "SELECT * FROM campaigns WHERE name = %(name)s"
LOCK_CAMPAIGN = "SELECT * FROM campaigns WHERE id = %(id)s FOR UPDATE"
INSERT_CAMPAIGN = """
INSERT INTO campaigns (name, template, sender, channel, rate_per_s, start_at, allowed_from,
                       allowed_until, time_zone, default_region)
VALUES (%(name)s, %(template)s, %(sender)s, %(channel)s, %(rate_per_s)s, %(start_at)s,
        %(allowed_from)s, %(allowed_until)s, %(time_zone)s, %(default_region)s)
RETURNING *
"""
# the guarded move; fed_until restarts the pacing clock so that a resume sends no burst
MOVE_CAMPAIGN = """
UPDATE campaigns SET state = %(to_state)s,
    start_at = coalesce(%(start_at)s, start_at),
    fed_until = CASE WHEN %(to_state)s = 'RUNNING' THEN now() ELSE fed_until END,
    started_at = CASE WHEN %(to_state)s = 'RUNNING' THEN coalesce(started_at, now()) ELSE started_at END,
    ended_at = CASE WHEN %(to_state)s IN ('FINISHED', 'CANCELLED') THEN now() END
WHERE id = %(id)s AND state = %(from_state)s
RETURNING *
"""
CANCEL_PENDING_RECIPIENTS = """
UPDATE campaign_recipients SET state = 'CANCELLED' WHERE campaign_id = %(id)s AND state = 'PENDING'
"""

NO_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = 0"
CREATE_STAGING = """
CREATE TEMPORARY TABLE campaign_staging (
    line        bigint NOT NULL,
    raw_address text,
    address     text,
    fields      jsonb NOT NULL
) ON COMMIT DROP
"""
COPY_STAGING = "COPY campaign_staging (line, raw_address, address, fields) FROM STDIN"
# One pass over the staging rows: the reason each refused row is refused, first match wins.
CLASSIFY_STAGING = """
CREATE TEMPORARY TABLE campaign_classified ON COMMIT DROP AS
SELECT s.line, s.raw_address, s.address, s.fields,
       CASE
           WHEN s.address IS NULL THEN 'invalid'
           -- the first row of a number wins, in this load and against earlier loads
           WHEN row_number() OVER (PARTITION BY s.address ORDER BY s.line) > 1
             OR EXISTS (SELECT 1 FROM campaign_recipients r
                        WHERE r.campaign_id = %(campaign_id)s AND r.address = s.address) THEN 'duplicate'
           WHEN EXISTS (SELECT 1 FROM blocked_addresses b WHERE b.address = s.address) THEN 'opted_out'
       END AS reason
FROM campaign_staging s
"""
INSERT_REJECTED = """
INSERT INTO campaign_rejected_rows (campaign_id, line, address, reason, fields)
SELECT %(campaign_id)s, line, raw_address, reason, fields FROM campaign_classified
WHERE reason IS NOT NULL ORDER BY line
"""
INSERT_RECIPIENTS = """
INSERT INTO campaign_recipients (campaign_id, address, fields)
SELECT %(campaign_id)s, address, fields FROM campaign_classified
WHERE reason IS NULL ORDER BY line
"""
COUNT_CLASSIFIED = "SELECT coalesce(reason, 'loaded') AS reason, count(*) AS n FROM campaign_classified GROUP BY 1"
ADD_FIELDS = """
UPDATE campaigns SET fields = ARRAY(SELECT DISTINCT unnest(fields || %(fields)s::text[]) ORDER BY 1)
WHERE id = %(campaign_id)s
"""

SELECT_PREVIEW = """
SELECT address, fields FROM campaign_recipients
WHERE campaign_id = %(campaign_id)s AND state = 'PENDING' ORDER BY id LIMIT %(limit)s
"""
SELECT_PENDING = """
SELECT address, fields FROM campaign_recipients WHERE campaign_id = %(campaign_id)s AND state = 'PENDING'
"""
COUNT_RECIPIENTS = """
SELECT state, count(*) AS n FROM campaign_recipients WHERE campaign_id = %(campaign_id)s GROUP BY state
"""
COUNT_MESSAGES = "SELECT status, count(*) AS n FROM messages WHERE campaign_id = %(campaign_id)s GROUP BY status"
COUNT_REJECTED = """
SELECT reason, count(*) AS n FROM campaign_rejected_rows WHERE campaign_id = %(campaign_id)s GROUP BY reason
"""
SELECT_REJECTED = """
SELECT line, address, reason FROM campaign_rejected_rows
WHERE campaign_id = %(campaign_id)s ORDER BY id LIMIT %(limit)s
"""


# -- templates -------------------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order; InvalidCampaign for a stray brace or {}."""
    names: list[str] = []
    for match in TEMPLATE_TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        name = match.group(1)
        if name is None or not name.strip():
            where = match.start() + 1
            problem = f"unmatched or empty brace at character {where} (write {{{{ or }}}} for one)"
            raise InvalidCampaign("template", problem)
        if name.strip() not in names:
            names.append(name.strip())
    return names


def render(template: str, address: str, fields: dict[str, Any]) -> str:
    """The template with each {field} replaced by the recipient's value ({address}: its number)."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = (match.group(1) or "").strip()
        if name == ADDRESS_FIELD and ADDRESS_FIELD not in fields:
            return address
        value = fields.get(name)
        return "" if value is None else str(value)

    return TEMPLATE_TOKEN.sub(replace, template)


def check_template_fields(campaign: Campaign, template: str | None = None) -> None:
    """Every field the template uses is one the recipients have."""
    known = set(campaign.fields) | {ADDRESS_FIELD}
    missing = [name for name in template_fields(template or campaign.template) if name not in known]
    if missing:
        have = ", ".join(sorted(known))
        raise InvalidCampaign("template", f"no field {', '.join(missing)} in the recipients (they have: {have})")


# -- addresses -------------------------------------------------------------------------------


def normalise_address(raw: str, region: str | None) -> str | None:
    """E.164 for a valid number, else None. Valid input already in E.164 form skips parsing
    (the country code is looked up directly), which halves the cost of a typical large list;
    anything else gets phonenumbers' full, lenient parse (national prefixes, spaces...)."""
    text = raw.strip()
    if E164_FORM.fullmatch(text):
        number = _number_from_e164(text)
        if number is not None and phonenumbers.is_valid_number(number):
            return text
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _number_from_e164(text: str) -> phonenumbers.PhoneNumber | None:
    """None where the fast path cannot decide (a national part with a leading zero)."""
    digits = text[1:]
    for length in (1, 2, 3):
        if int(digits[:length]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            if not national or national[0] == "0":
                return None
            return phonenumbers.PhoneNumber(country_code=int(digits[:length]), national_number=int(national))
    return None


def normalise_addresses(raws: Sequence[str], region: str | None) -> list[str | None]:
    return [normalise_address(raw, region) for raw in raws]


class AddressNormaliser:
    """Normalises a load's addresses, each distinct text once; large chunks are shared out
    between worker processes (one per core), started on first need."""

    def __init__(self, region: str | None) -> None:
        self.region = region
        self.pool: ProcessPoolExecutor | None = None

    def normalise(self, raws: Sequence[str]) -> dict[str, str | None]:
        distinct = list(dict.fromkeys(raws))
        workers = os.cpu_count() or 1
        if len(distinct) < PARALLEL_FROM or workers < 2:
            return dict(zip(distinct, normalise_addresses(distinct, self.region), strict=True))
        if self.pool is None:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        size = -(-len(distinct) // workers)
        slices = [distinct[i : i + size] for i in range(0, len(distinct), size)]
        results: dict[str, str | None] = {}
        for part, normalised in zip(
            slices, self.pool.map(normalise_addresses, slices, [self.region] * len(slices)), strict=True
        ):
            results.update(zip(part, normalised, strict=True))
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# -- campaigns -------------------------------------------------------------------------------


def parse_allowed_hours(text: str) -> tuple[time, time]:
    """"09:00-18:00" (a window may wrap midnight: "22:00-06:00")."""
    start, dash, end = text.partition("-")
    try:
        if not dash:
            raise ValueError
        opens, closes = time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise InvalidCampaign("allowed_hours", f"expected HH:MM-HH:MM, got {text!r}") from None
    if opens == closes:
        raise InvalidCampaign("allowed_hours", "opens and closes at the same time")
    return opens, closes


def check_new_campaign(new: NewCampaign) -> dict[str, Any]:
    """The row's values, or InvalidCampaign naming the first bad field."""
    if not new.name.strip():
        raise InvalidCampaign("name", "must not be empty")
    if not new.template.strip():
        raise InvalidCampaign("template", "must not be empty")
    template_fields(new.template)
    if not TEMPLATE_TOKEN.sub("", new.template).strip():
        raise InvalidCampaign("template", "needs some text besides its {fields}, so that no message can be empty")
    try:
        ZoneInfo(new.time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidCampaign("time_zone", f"unknown time zone {new.time_zone!r} (e.g. Europe/Amsterdam)") from None
    if new.default_region is not None and new.default_region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidCampaign("default_region", f"unknown region {new.default_region!r} (e.g. NL, US, GB)")
    if not 0 < new.rate_per_s <= 100_000:
        raise InvalidCampaign("rate_per_s", "must be above 0 and at most 100000 messages per second")
    if new.start_at is not None and new.start_at.tzinfo is None:
        raise InvalidCampaign("start_at", "needs a time zone (e.g. 2026-12-06T09:00:00+01:00)")
    opens, closes = parse_allowed_hours(new.allowed_hours) if new.allowed_hours else (None, None)
    values = msgspec.structs.asdict(new)
    del values["allowed_hours"]
    return {**values, "name": new.name.strip(), "allowed_from": opens, "allowed_until": closes}


def create_campaign(conn: psycopg.Connection[Any], new: NewCampaign) -> Campaign:
    """A DRAFT campaign; InvalidCampaign names a bad field (the database's constraints too)."""
    values = check_new_campaign(new)
    try:
        with conn.transaction():
            row = conn.execute(INSERT_CAMPAIGN, values).fetchone()
    except psycopg.errors.UniqueViolation:
        raise InvalidCampaign("name", f"a campaign named {values['name']!r} exists already") from None
    except psycopg.errors.CheckViolation as e:
        field = (e.diag.constraint_name or "campaigns").removeprefix("campaigns_").split("_")[0]
        raise InvalidCampaign(field, e.diag.message_primary or str(e)) from None
    assert row is not None
    return to_campaign(row)


def find_campaign(conn: psycopg.Connection[Any], key: str | int) -> Campaign:
    """By id (a number) or by name."""
    text = str(key)
    if text.isdigit():
        row = conn.execute(SELECT_CAMPAIGN_BY_ID, {"id": int(text)}).fetchone()
        if row is not None:
            return to_campaign(row)
    row = conn.execute(SELECT_CAMPAIGN_BY_NAME, {"name": text}).fetchone()
    if row is None:
        raise CampaignNotFound(text)
    return to_campaign(row)


def list_campaigns(conn: psycopg.Connection[Any]) -> list[Campaign]:
    return [to_campaign(row) for row in conn.execute(SELECT_CAMPAIGNS)]


def move_campaign(
    conn: psycopg.Connection[Any],
    key: str | int,
    to_state: str,
    *,
    start_at: datetime | None = None,
    only_from: Sequence[str] = STATES,
) -> Campaign:
    """The guarded state move, in the caller's transaction. Cancelling also cancels every
    recipient still PENDING (the feeder holds the campaign's row while it feeds, so no
    recipient gets a message after this commits)."""
    campaign = find_campaign(conn, key)
    locked = to_campaign(_fetch_one(conn, LOCK_CAMPAIGN, {"id": campaign.id}))
    if locked.state not in only_from or to_state not in CAMPAIGN_MOVES[locked.state]:
        raise ForbiddenCampaignMove(locked.name, locked.state, to_state)
    if to_state in (RUNNING, SCHEDULED):
        check_template_fields(locked)
    params = {"id": locked.id, "from_state": locked.state, "to_state": to_state, "start_at": start_at}
    moved = to_campaign(_fetch_one(conn, MOVE_CAMPAIGN, params))
    if to_state == CANCELLED:
        conn.execute(CANCEL_PENDING_RECIPIENTS, {"id": locked.id})
    return moved


def start_campaign(conn: psycopg.Connection[Any], key: str | int, at: datetime | None = None) -> Campaign:
    """RUNNING now, or SCHEDULED until `at` (the feeder starts it then)."""
    campaign = find_campaign(conn, key)
    if at is not None and at.tzinfo is None:
        raise InvalidCampaign("start_at", "needs a time zone (e.g. 2026-12-06T09:00:00+01:00)")
    now = conn.execute("SELECT now() AS now").fetchone()
    assert now is not None
    start_at = at or campaign.start_at
    to_state = SCHEDULED if start_at is not None and start_at > now["now"] else RUNNING
    return move_campaign(conn, campaign.id, to_state, start_at=start_at)


def pause_campaign(conn: psycopg.Connection[Any], key: str | int) -> Campaign:
    return move_campaign(conn, key, PAUSED)


def resume_campaign(conn: psycopg.Connection[Any], key: str | int) -> Campaign:
    return move_campaign(conn, key, RUNNING, only_from=(PAUSED,))


def cancel_campaign(conn: psycopg.Connection[Any], key: str | int) -> Campaign:
    return move_campaign(conn, key, CANCELLED)


# -- loading ---------------------------------------------------------------------------------

Rows = Iterable[Sequence[str]]
# called with the rows read so far, after each chunk
OnProgress = Callable[[int], None]


def load_rows(
    conn: psycopg.Connection[Any],
    key: str | int,
    header: Sequence[str],
    rows: Rows,
    *,
    address_column: str | None = None,
    on_progress: OnProgress | None = None,
) -> LoadReport:
    """Add recipients, in the caller's transaction (a failure leaves nothing written)."""
    campaign = to_campaign(_fetch_one(conn, LOCK_CAMPAIGN, {"id": find_campaign(conn, key).id}))
    if campaign.state not in LOADABLE_STATES:
        raise InvalidCampaign("state", f"campaign {campaign.name} is {campaign.state}: it takes no more recipients")
    names = check_header(header)
    address_index = names.index(pick_address_column(names, address_column))
    field_names = [name for i, name in enumerate(names) if i != address_index]
    normaliser = AddressNormaliser(campaign.default_region)
    # a million rows may take longer than an ordinary statement may (smsbus.db's timeout)
    conn.execute(NO_STATEMENT_TIMEOUT)
    conn.execute(CREATE_STAGING)
    read = 0
    try:
        with conn.cursor().copy(COPY_STAGING) as copy:
            for chunk in _chunks(rows, ROWS_PER_CHUNK):
                addresses = [row[address_index] if len(row) == len(names) else "" for row in chunk]
                normalised = normaliser.normalise(addresses)
                for offset, row in enumerate(chunk):
                    line = read + offset + 1
                    if len(row) != len(names):
                        # a row with a column too many or too few: refused whole, kept as read
                        copy.write_row((line, ",".join(row)[:200], None, Jsonb({})))
                        continue
                    fields = {name: row[i] for i, name in enumerate(names) if i != address_index}
                    raw = addresses[offset]
                    copy.write_row((line, raw, normalised[raw], Jsonb(fields)))
                read += len(chunk)
                if on_progress is not None:
                    on_progress(read)
    finally:
        normaliser.close()
    params = {"campaign_id": campaign.id}
    conn.execute(CLASSIFY_STAGING, params)
    conn.execute(INSERT_REJECTED, params)
    conn.execute(INSERT_RECIPIENTS, params)
    counts = {row["reason"]: row["n"] for row in conn.execute(COUNT_CLASSIFIED)}
    conn.execute(ADD_FIELDS, {**params, "fields": field_names})
    return LoadReport(
        rows=read, loaded=counts.get("loaded", 0), invalid=counts.get("invalid", 0),
        duplicate=counts.get("duplicate", 0), opted_out=counts.get("opted_out", 0),
    )


def load_csv(
    conn: psycopg.Connection[Any],
    key: str | int,
    file: IO[str],
    *,
    address_column: str | None = None,
    on_progress: OnProgress | None = None,
) -> LoadReport:
    """A CSV file whose header row names the fields (comma, semicolon or tab, sniffed)."""
    sample = file.readline()
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(itertools.chain([sample], file), dialect)
    header = next(reader, None)
    if header is None:
        raise InvalidCampaign("csv", "the file is empty (expected a header row naming the fields)")
    return load_rows(conn, key, header, reader, address_column=address_column, on_progress=on_progress)


def load_addresses(conn: psycopg.Connection[Any], key: str | int, addresses: Iterable[str]) -> LoadReport:
    """A plain list of numbers: recipients with no fields but {address}."""
    return load_rows(conn, key, [ADDRESS_FIELD], ([a] for a in addresses))


def load_query(
    conn: psycopg.Connection[Any], key: str | int, query: str, *, address_column: str | None = None
) -> LoadReport:
    """The rows of a SELECT (the operator's own, run as given): its column names are the fields."""
    cursor = conn.cursor(row_factory=tuple_row)
    try:
        with conn.transaction():
            cursor.execute(query.encode())
            if cursor.description is None:
                raise InvalidCampaign("query", "returns no rows (expected a SELECT)")
            header = [column.name for column in cursor.description]
            rows = [["" if value is None else str(value) for value in row] for row in cursor.fetchall()]
    except psycopg.DatabaseError as e:
        raise InvalidCampaign("query", e.diag.message_primary or str(e)) from None
    return load_rows(conn, key, header, rows, address_column=address_column)


def check_header(header: Sequence[str]) -> list[str]:
    names = [name.strip() for name in header]
    for position, name in enumerate(names, 1):
        if not name:
            raise InvalidCampaign("csv", f"column {position} of the header row has no name")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise InvalidCampaign("csv", f"the header row names {', '.join(repeated)} more than once")
    return names


def pick_address_column(names: Sequence[str], given: str | None) -> str:
    if given is not None:
        if given not in names:
            raise InvalidCampaign("address_column", f"no column {given!r} (the header has: {', '.join(names)})")
        return given
    for name in names:
        if name.lower() in ADDRESS_COLUMN_NAMES:
            return name
    return names[0]


def _chunks(rows: Rows, size: int) -> Iterator[list[Sequence[str]]]:
    chunk: list[Sequence[str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- preview, cost and progress --------------------------------------------------------------


def preview(conn: psycopg.Connection[Any], key: str | int, limit: int = 5) -> list[tuple[str, str]]:
    """(address, rendered text) of the first PENDING recipients."""
    campaign = find_campaign(conn, key)
    rows = conn.execute(SELECT_PREVIEW, {"campaign_id": campaign.id, "limit": limit})
    return [(row["address"], render(campaign.template, row["address"], row["fields"])) for row in rows]


def count_parts(body: str) -> tuple[str, int]:
    """(encoding, SMS parts) as the channels will send it (smsbus.encoding, default alphabets)."""
    encoding = choose_encoding(body)
    return encoding.value, segment_text(body, encoding).parts


def estimate(conn: psycopg.Connection[Any], key: str | int) -> Estimate:
    """Messages and SMS parts for every PENDING recipient, each text rendered and segmented
    by the channels' own code; a text no SMS can carry is refused naming its recipient."""
    campaign = find_campaign(conn, key)
    messages = parts = 0
    by_encoding: Counter[str] = Counter()
    with conn.cursor(name="campaign_estimate") as cursor:
        cursor.itersize = 5000
        cursor.execute(SELECT_PENDING, {"campaign_id": campaign.id})
        for row in cursor:
            try:
                encoding, count = count_parts(render(campaign.template, row["address"], row["fields"]))
            except TextNotEncodable as e:
                raise InvalidCampaign("template", f"the text for {row['address']}: {e}") from None
            messages += 1
            parts += count
            by_encoding[encoding] += 1
    return Estimate(messages=messages, parts=parts, by_encoding=dict(by_encoding))


def progress(conn: psycopg.Connection[Any], key: str | int) -> Progress:
    campaign = find_campaign(conn, key)
    params = {"campaign_id": campaign.id}
    recipients = {row["state"]: row["n"] for row in conn.execute(COUNT_RECIPIENTS, params)}
    messages = {row["status"]: row["n"] for row in conn.execute(COUNT_MESSAGES, params)}
    rejected = {row["reason"]: row["n"] for row in conn.execute(COUNT_REJECTED, params)}
    pending = recipients.get("PENDING", 0)
    eta = pending / campaign.rate_per_s if campaign.state in (RUNNING, SCHEDULED) else None
    return Progress(campaign=campaign, recipients=recipients, messages=messages, rejected=rejected, eta_s=eta)


def rejected_rows(conn: psycopg.Connection[Any], key: str | int, limit: int = 100) -> list[dict[str, Any]]:
    campaign = find_campaign(conn, key)
    return [dict(row) for row in conn.execute(SELECT_REJECTED, {"campaign_id": campaign.id, "limit": limit})]


def to_campaign(row: Any) -> Campaign:
    return msgspec.convert(dict(row), Campaign)


def _fetch_one(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> Any:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise CampaignNotFound(str(params.get("id")))
    return row

