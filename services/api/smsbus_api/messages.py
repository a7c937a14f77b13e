"""/v1/messages: send one or a batch (one statement, one transaction), idempotent by
client_ref; read one (live or archived), list with filters and an id cursor; reprocess,
requeue and cancel through the shared queue code (the CLI's); parts and receipts.
The hot path is one round trip: decode with msgspec, INSERT ... RETURNING from the pool."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
import prometheus_client
import psycopg
from litestar import Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from psycopg.types.json import Jsonb

import smsbus.queue as queue
import smsbus.triggers as triggers
from smsbus.archive import get_archived
from smsbus.db import translate_refusal
from smsbus.errors import MessageNotFound
from smsbus.message import Message, NewMessage
from smsbus_api.auth import principal_of, scope
from smsbus_api.problems import ProblemError, invalid_row

MAX_BATCH = 10_000
MAX_BODY_CHARS = 10_000
MAX_PAGE = 1000

ACCEPTED = prometheus_client.Counter(
    "smsbus_api_messages_accepted_total", "Messages the api inserted (repeats of a client_ref not counted)"
)

# no NUL anywhere in a text PostgreSQL stores; the address formats are the table's to judge
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_CHARS, pattern="^[^\x00]*$")]
# the messages table's own check (messages_to_address_format), said in the document too
ADDRESS_PATTERN = r"^(\+[1-9][0-9]{1,14}|[0-9]{1,15}|(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10})$"
Address = Annotated[str, msgspec.Meta(
    min_length=1, max_length=16, pattern=ADDRESS_PATTERN,
    description="E.164 (+31612345678), a short code or national number, or an alphanumeric sender id",
)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern="^[^\x00]*$")]
ClientRef = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern="^[^\x00]*$")]
CallbackUrl = Annotated[str, msgspec.Meta(max_length=2000, pattern="^https?://[^\x00\\s]+$")]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An outgoing message to send."""

    to_address: Address
    body: Text
    from_address: Address | None = None
    # send through this channel (the routing rules are skipped, blocking rules still apply)
    channel: Name | None = None
    # not before this time (with a zone); the message is SCHEDULED until then
    scheduled_at: AwareTime | None = None
    properties: dict[str, Any] = {}
    # your idempotency key: a repeat returns the first message and creates nothing
    client_ref: ClientRef | None = None
    # every status change is POSTed here, signed with your key's callback secret
    status_callback: CallbackUrl | None = None

    def to_new(self, api_key_id: int | None) -> NewMessage:
        return NewMessage(
            to_address=self.to_address, body=self.body, from_address=self.from_address,
            channel=self.channel, scheduled_at=self.scheduled_at, properties=self.properties,
            client_ref=self.client_ref, status_callback=self.status_callback, api_key_id=api_key_id,
        )


Batch = Annotated[list[MessageIn], msgspec.Meta(max_length=MAX_BATCH)]


class Accepted(msgspec.Struct):
    id: int
    client_ref: str | None
    # false when the client_ref was sent before: id is the first message's
    created: bool


class BatchAccepted(msgspec.Struct):
    messages: list[Accepted]


class MessagePage(msgspec.Struct):
    messages: list[Message]
    # pass as `before` for the next (older) page; null on the last page
    next_before: int | None


async def insert_one(request: Request[Any, Any, Any], new: NewMessage) -> tuple[dict[str, Any], bool]:
    params = msgspec.structs.asdict(new)
    params["properties"] = Jsonb(new.properties)
    async with request.app.state.db.pool.connection() as conn:
        try:
            row = await (await conn.execute(queue.INSERT_MESSAGE_ONCE, params)).fetchone()
            if row is not None:
                return row, True
            first = await (await conn.execute(queue.SELECT_BY_CLIENT_REF, {"client_ref": new.client_ref})).fetchone()
        except psycopg.errors.IntegrityError as e:
            raise invalid_row(translate_refusal(e)) from None
        except psycopg.errors.UntranslatableCharacter:
            raise ProblemError(422, "properties hold a character PostgreSQL cannot store (NUL)",
                               field="properties") from None
    if first is None:  # the first was archived between the two statements
        raise ProblemError(409, "client_ref was used by a message that has since been archived", field="client_ref")
    return first, False


async def insert_batch(request: Request[Any, Any, Any], batch: list[NewMessage]) -> list[Accepted]:
    """All or nothing, in one statement (each row was checked against the table's formats
    when the body was decoded)."""
    async with request.app.state.db.pool.connection() as conn:
        try:
            async with conn.transaction():
                inserted = await (await conn.execute(queue.INSERT_MESSAGES_ONCE, queue.batch_columns(batch))).fetchall()
                refs = [m.client_ref for m in batch if m.client_ref is not None]
                known = {}
                if len(refs) > sum(r["client_ref"] is not None for r in inserted):
                    cursor = await conn.execute(queue.SELECT_BY_CLIENT_REFS, {"client_refs": refs})
                    known = {r["client_ref"]: r["id"] for r in await cursor.fetchall()}
        except psycopg.errors.IntegrityError as e:
            raise invalid_row(translate_refusal(e)) from None
        except psycopg.errors.UntranslatableCharacter:
            raise ProblemError(422, "properties hold a character PostgreSQL cannot store (NUL)",
                               field="properties") from None
    created_refs = {r["client_ref"] for r in inserted if r["client_ref"] is not None}
    new_ids = iter(sorted(r["id"] for r in inserted))
    accepted = []
    seen: set[str] = set()
    for message in batch:
        ref = message.client_ref
        if ref is None or (ref in created_refs and ref not in seen):
            accepted.append(Accepted(id=next(new_ids), client_ref=ref, created=True))
        else:
            accepted.append(Accepted(id=known[ref], client_ref=ref, created=False))
        if ref is not None:
            seen.add(ref)
    return accepted


@post(
    "/v1/messages", opt=scope("send"), status_code=201,
    summary="Send a message, or a batch (a JSON array) of up to 10,000 in one transaction",
    description="A repeated client_ref creates nothing: the answer is the first message (200 for one).",
    responses={200: ResponseSpec(Message, description="a message with this client_ref exists: the first one")},
)
async def send_messages(
    request: Request[Any, Any, Any], data: MessageIn | Batch
) -> Response[Message | BatchAccepted]:
    api_key_id = principal_of(request).api_key_id
    if isinstance(data, list):
        if len(data) > MAX_BATCH:
            raise ProblemError(400, f"a batch holds at most {MAX_BATCH} messages, this one {len(data)}", field="[]")
        if not data:
            return Response(BatchAccepted([]), status_code=201)
        accepted = await insert_batch(request, [m.to_new(api_key_id) for m in data])
        ACCEPTED.inc(sum(a.created for a in accepted))
        return Response(BatchAccepted(accepted), status_code=201)
    row, created = await insert_one(request, data.to_new(api_key_id))
    if created:
        ACCEPTED.inc()
    return Response(queue.to_message(row), status_code=201 if created else 200)


@get("/v1/messages/{message_id:int}", opt=scope("read"), summary="One message, live or archived")
async def show_message(request: Request[Any, Any, Any], message_id: int) -> Message:
    async with request.app.state.db.pool.connection() as conn:
        row = await (await conn.execute(queue.SELECT_MESSAGE, {"id": message_id})).fetchone()
    if row is not None:
        return queue.to_message(row)
    try:
        archived: Message = await request.app.state.db.in_thread(get_archived)(message_id)
    except MessageNotFound as e:
        raise ProblemError(404, str(e)) from None
    return archived


# One constant query: a NULL filter matches everything (custom plans prune the branch); the
# cursor is an id, so a page costs the same however deep it is.
LIST_MESSAGES = """
SELECT * FROM messages
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(direction)s::text IS NULL OR direction = %(direction)s)
  AND (%(channel)s::text IS NULL OR channel = %(channel)s)
  AND (%(from_address)s::text IS NULL OR from_address = %(from_address)s)
  AND (%(to_address)s::text IS NULL OR to_address = %(to_address)s)
  AND (%(text)s::text IS NULL OR strpos(body, %(text)s) > 0)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(campaign_id)s::bigint IS NULL OR campaign_id = %(campaign_id)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC
LIMIT %(limit)s
"""


@get("/v1/messages", opt=scope("read"), summary="Messages newest first, filtered; page with next_before")
async def list_messages(
    request: Request[Any, Any, Any],
    status: str | None = None,
    direction: str | None = None,
    channel: str | None = None,
    from_address: str | None = None,
    to_address: str | None = None,
    text: Annotated[str | None, Parameter(description="the body contains this text", max_length=1000)] = None,
    since: Annotated[datetime | None, Parameter(description="created at or after")] = None,
    until: Annotated[datetime | None, Parameter(description="created before")] = None,
    campaign_id: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
    before: Annotated[int | None, Parameter(description="only ids below this (the cursor)", ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = 50,
) -> MessagePage:
    for name, value in (("text", text), ("status", status), ("channel", channel),
                        ("from_address", from_address), ("to_address", to_address)):
        if value is not None and "\x00" in value:
            raise ProblemError(400, f"{name} must not contain NUL", field=name)
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ProblemError(400, f"{name} needs a time zone, e.g. 2026-01-01T00:00:00Z", field=name)
    params = {
        "status": status, "direction": direction, "channel": channel, "from_address": from_address,
        "to_address": to_address, "text": text, "since": since, "until": until,
        "campaign_id": campaign_id, "before": before, "limit": limit,
    }
    async with request.app.state.db.pool.connection() as conn:
        rows = await (await conn.execute(LIST_MESSAGES, params)).fetchall()
    messages = [queue.to_message(row) for row in rows]
    return MessagePage(messages, messages[-1].id if len(messages) == limit else None)


class Outcome(msgspec.Struct):
    id: int
    # null when done, else why not
    refused: str | None


async def run_move(request: Request[Any, Any, Any], message_id: int, operation: Any) -> Outcome:
    db = request.app.state.db

    def in_transaction() -> dict[int, str | None]:
        with db.transaction() as conn:
            outcome: dict[int, str | None] = operation(conn, [message_id])
            return outcome

    refusal = (await db.in_thread(in_transaction)())[message_id]
    if refusal is not None:
        raise ProblemError(404 if refusal.startswith("no message") else 409, refusal)
    return Outcome(message_id, None)


@post("/v1/messages/{message_id:int}/reprocess", opt=scope("send"), status_code=200,
      summary="Offer a finished message to the triggers again (trigger_status back to N/A)")
async def reprocess_message(request: Request[Any, Any, Any], message_id: int) -> Outcome:
    return await run_move(request, message_id, triggers.reprocess)


@post("/v1/messages/{message_id:int}/requeue", opt=scope("send"), status_code=200,
      summary="Send a FAILED, NOCHANNEL, BLOCKED or DAILYLIMIT message again")
async def requeue_message(request: Request[Any, Any, Any], message_id: int) -> Outcome:
    return await run_move(request, message_id, queue.requeue)


@post("/v1/messages/{message_id:int}/cancel", opt=scope("send"), status_code=200,
      summary="Cancel a QUEUED or SCHEDULED message (FAILED with error 'cancelled')")
async def cancel_message(request: Request[Any, Any, Any], message_id: int) -> Outcome:
    return await run_move(request, message_id, queue.cancel)


SELECT_PARTS = """
SELECT part_number, channel, provider_id, submitted_at, receipt_state, receipt_at
FROM message_parts WHERE message_id = %(id)s ORDER BY part_number
"""


class Part(msgspec.Struct):
    """One SMS segment of a message as sent, and its delivery receipt (null until it came)."""

    part_number: int
    channel: str
    provider_id: str
    submitted_at: datetime
    receipt_state: str | None
    receipt_at: datetime | None


@get("/v1/messages/{message_id:int}/parts", opt=scope("read"),
     summary="The parts a message was sent in, with their provider ids and receipts")
async def list_parts(request: Request[Any, Any, Any], message_id: int) -> list[Part]:
    async with request.app.state.db.pool.connection() as conn:
        exists = await (await conn.execute(queue.SELECT_MESSAGE, {"id": message_id})).fetchone()
        if exists is None:
            raise ProblemError(404, f"no message with id {message_id}")
        rows = await (await conn.execute(SELECT_PARTS, {"id": message_id})).fetchall()
    return [msgspec.convert(row, Part) for row in rows]


ROUTES = [send_messages, show_message, list_messages, reprocess_message, requeue_message, cancel_message, list_parts]
