"""The Manager's messages browser (SPEC §11): filters, id-cursor pages, a detail page with
every field, its parts and receipts, and reprocess / requeue / cancel behind a confirmation.
The list is the api's own query (GET /v1/messages); the actions are the CLI's shared code."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post

from smsbus import queue, triggers
from smsbus.archive import get_archived
from smsbus.errors import MessageNotFound
from smsbus.message import Message
from smsbus.statuses import TRIGGERS_DONE, Direction, Status
from smsbus_api.auth import scope
from smsbus_api.messages import LIST_MESSAGES
from smsbus_api.web.pages import render, see_other, viewer

PAGE_SIZE = 50
FILTERS = ("text", "status", "direction", "channel", "since", "until", "campaign", "before")
SELECT_PARTS = """
SELECT part_number, channel, provider_id, submitted_at, receipt_state, receipt_at
FROM message_parts WHERE message_id = %(id)s ORDER BY part_number
"""
SELECT_CHANNEL_NAMES = "SELECT name FROM channels ORDER BY name"

# what each button does, the shared function it calls, and the words of its confirmation
ACTIONS: dict[str, tuple[str, Callable[[Any, list[int]], dict[int, str | None]]]] = {
    "reprocess": ("offered to the triggers again", triggers.reprocess),
    "requeue": ("queued again", queue.requeue),
    "cancel": ("cancelled", queue.cancel),
}


class FilterError(ValueError):
    """A filter the page cannot use; the text names it."""


def day_start(text: str, field: str) -> datetime | None:
    """A date field (YYYY-MM-DD) as the start of that day in UTC, the zone the pages show."""
    if not text:
        return None
    try:
        return datetime.combine(datetime.strptime(text, "%Y-%m-%d").date(), time(), UTC)
    except ValueError:
        raise FilterError(f"{field}: expected a date like 2026-12-05") from None


def read_filters(query: dict[str, str]) -> dict[str, Any]:
    """The query string as LIST_MESSAGES parameters ('' and absent mean any)."""
    status, direction = query.get("status", ""), query.get("direction", "")
    if status and status not in Status.__members__:
        raise FilterError(f"status: no status {status!r}")
    if direction and direction not in {str(d) for d in Direction}:
        raise FilterError(f"direction: expected in or out, got {direction!r}")
    until = day_start(query.get("until", ""), "until")
    campaign = query.get("campaign", "")
    if campaign and not campaign.isdigit():
        raise FilterError("campaign: expected a campaign number")
    before = query.get("before", "")
    return {
        "status": status or None, "direction": direction or None, "channel": query.get("channel") or None,
        "from_address": None, "to_address": None, "text": query.get("text") or None,
        "since": day_start(query.get("since", ""), "since"),
        # a date "until" includes that whole day
        "until": until + timedelta(days=1) if until else None,
        "campaign_id": int(campaign) if campaign else None,
        "before": int(before) if before.isdigit() else None,
        "limit": PAGE_SIZE,
    }


@get("/manager/messages", opt=scope(None), include_in_schema=False)
async def show_messages(request: Request[Any, Any, Any]) -> Response[str]:
    principal = await viewer(request, "operator")
    given = request.query_params
    query = {name: given.get(name, "").strip().replace("\x00", "") for name in FILTERS}
    error = None
    rows: list[dict[str, Any]] = []
    async with request.app.state.db.pool.connection() as conn:
        channel_names = [r["name"] for r in await (await conn.execute(SELECT_CHANNEL_NAMES)).fetchall()]
        try:
            params = read_filters(query)
        except FilterError as refused:
            error = str(refused)
        else:
            rows = await (await conn.execute(LIST_MESSAGES, params)).fetchall()
    kept = {k: v for k, v in query.items() if v and k != "before"}
    older = f"?{urlencode({**kept, 'before': rows[-1]['id']})}" if len(rows) == PAGE_SIZE else None
    return render(
        principal, "messages.html", "messages", status_code=422 if error else 200,
        messages=rows, filters=query, filter_error=error, older=older, newest=f"?{urlencode(kept)}",
        statuses=list(Status), channel_names=channel_names, paged=bool(query["before"]),
    )


@get("/manager/messages/{message_id:int}", opt=scope(None), include_in_schema=False)
async def show_message(
    request: Request[Any, Any, Any], message_id: int, done: str = "", refused: str = ""
) -> Response[str]:
    principal = await viewer(request, "operator")
    async with request.app.state.db.pool.connection() as conn:
        row = await (await conn.execute(queue.SELECT_MESSAGE, {"id": message_id})).fetchone()
        parts = await (await conn.execute(SELECT_PARTS, {"id": message_id})).fetchall()
    archived = False
    if row is None:
        try:
            message: Message = await request.app.state.db.in_thread(get_archived)(message_id)
        except MessageNotFound:
            return render(principal, "not_found.html", "messages", status_code=404,
                          what=f"No message with id {message_id}, live or archived.")
        archived = True
    else:
        message = queue.to_message(row)
    notice = None
    if done in ACTIONS:
        notice = {"kind": "ok", "text": f"Message {message_id} was {ACTIONS[done][0]}."}
    elif refused:
        notice = {"kind": "bad", "text": refused}
    return render(
        principal, "message.html", "messages", message=message, parts=parts, archived=archived,
        fields=[(name, getattr(message, name)) for name in message.__struct_fields__],
        can_requeue=message.status in queue.REQUEUEABLE, can_cancel=message.status in queue.CANCELLABLE,
        can_reprocess=message.trigger_status in TRIGGERS_DONE,
        notice=notice,
    )


@post("/manager/messages/{message_id:int}/{action:str}", opt=scope("admin"), include_in_schema=False)
async def act_on_message(request: Request[Any, Any, Any], message_id: int, action: str) -> Response[Any]:
    await viewer(request, "operator")
    if action not in ACTIONS:
        return see_other(f"/manager/messages/{message_id}?{urlencode({'refused': f'no action {action!r}'})}")
    operation = ACTIONS[action][1]
    db = request.app.state.db

    def in_transaction() -> str | None:
        with db.transaction() as conn:
            return operation(conn, [message_id])[message_id]

    refusal = await db.in_thread(in_transaction)()
    outcome = {"refused": refusal} if refusal else {"done": action}
    return see_other(f"/manager/messages/{message_id}?{urlencode(outcome)}")


ROUTES = [show_messages, show_message, act_on_message]
