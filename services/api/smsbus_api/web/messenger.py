"""The Web Messenger (SPEC §11): conversations by the other party's number, a thread whose
ticks follow the message's status live, a composer with the part counter, search, and new
conversations. Agents and up. Sending is smsbus.queue.insert_message, as for every sender."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from smsbus import channels as channel_table
from smsbus.errors import InvalidMessage
from smsbus.message import NewMessage
from smsbus.queue import insert_message
from smsbus_api.auth import Principal, scope
from smsbus_api.web import conversations
from smsbus_api.web.pages import fragment, render, see_other, viewer

# the messages of a thread shown at once (the newest)
THREAD_LENGTH = 200
DEFAULT_ENCODINGS = ("gsm7", "ucs2")
FIELDS_OF_CONSTRAINTS = {
    "messages_to_address_format": "to",
    "messages_out_has_to_address": "to",
    "messages_from_address_format": "from",
}


class ComposedMessage(msgspec.Struct, kw_only=True):
    """The composer's form."""

    to: str = ""
    body: str = ""
    channel: str = ""
    sender: str = msgspec.field(default="", name="from")


async def channel_choices(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """Enabled channels and the alphabets each tries (the counter counts with them)."""
    db = request.app.state.db

    def load() -> list[dict[str, Any]]:
        with db.transaction() as conn:
            return [
                {"name": row["name"], "encodings": row["settings"].get("encodings", DEFAULT_ENCODINGS)}
                for row in channel_table.list_channels(conn) if row["enabled"]
            ]

    choices: list[dict[str, Any]] = await db.in_thread(load)()
    return choices


async def messenger_page(
    request: Request[Any, Any, Any], principal: Principal, party: str = "", search: str = "",
    status_code: int = 200, **composer: Any,
) -> Response[str]:
    async with request.app.state.db.pool.connection() as conn:
        listed = await conversations.list_conversations(conn, principal.id, search)
        thread = await conversations.list_thread(conn, party, THREAD_LENGTH) if party else []
        if thread:
            await conversations.mark_read(conn, principal.id, party, thread[-1].id)
    unread = {c.party: c.unread for c in listed}
    if party in unread:
        # what the list shows is as read as the thread beside it
        listed = [msgspec.structs.replace(c, unread=0) if c.party == party else c for c in listed]
    context = {
        "party": party, "search": search, "conversations": listed, "thread": thread,
        "new_conversation": composer.pop("new_conversation", False),
        "channels": await channel_choices(request),
        "composer_error": None, "to_error": None, "to": "", "body": "", "channel": "", "sender": "",
        **composer,
    }
    return render(principal, "messenger.html", "messenger", status_code=status_code, **context)


@get("/messenger", opt=scope(None), include_in_schema=False)
async def show_messenger(request: Request[Any, Any, Any], q: str = "") -> Response[str]:
    principal = await viewer(request)
    return await messenger_page(request, principal, search=q.strip())


@get("/messenger/new", opt=scope(None), include_in_schema=False)
async def show_new_conversation(request: Request[Any, Any, Any]) -> Response[str]:
    principal = await viewer(request)
    return await messenger_page(request, principal, new_conversation=True)


@get("/messenger/chat", opt=scope(None), include_in_schema=False)
async def show_conversation(request: Request[Any, Any, Any], party: str) -> Response[str]:
    principal = await viewer(request)
    return await messenger_page(request, principal, party=party)


@get("/messenger/conversations", opt=scope(None), include_in_schema=False)
async def show_conversation_list(request: Request[Any, Any, Any], q: str = "", current: str = "") -> Response[str]:
    principal = await viewer(request)
    async with request.app.state.db.pool.connection() as conn:
        listed = await conversations.list_conversations(conn, principal.id, q.strip())
    return fragment("_conversations.html", conversations=listed, party=current, search=q)


@get("/messenger/thread", opt=scope(None), include_in_schema=False)
async def show_thread(request: Request[Any, Any, Any], party: str) -> Response[str]:
    """The open thread, fetched again on every change: what it shows has been read."""
    principal = await viewer(request)
    async with request.app.state.db.pool.connection() as conn:
        thread = await conversations.list_thread(conn, party, THREAD_LENGTH)
        if thread:
            await conversations.mark_read(conn, principal.id, party, thread[-1].id)
    return fragment("_thread.html", thread=thread)


@post("/messenger/send", opt=scope("send"), include_in_schema=False)
async def send_from_messenger(
    request: Request[Any, Any, Any],
    data: Annotated[ComposedMessage, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    principal = await viewer(request)
    to, body = data.to.strip(), data.body
    if not to:
        return await messenger_page(request, principal, new_conversation=True, status_code=422,
                                    to_error="Type the number to send to.", body=body)
    new = NewMessage(
        to_address=to, body=body, channel=data.channel or None, from_address=data.sender.strip() or None,
        properties={"sent_by": principal.name},
    )
    db = request.app.state.db

    def send() -> int:
        with db.transaction() as conn:
            return insert_message(conn, new)

    try:
        await db.in_thread(send)()
    except InvalidMessage as refused:
        field = FIELDS_OF_CONSTRAINTS.get(refused.constraint or "")
        known = bool(await conversations_exist(request, to))
        return await messenger_page(
            request, principal, party=to if known and field != "to" else "",
            new_conversation=not known or field == "to", status_code=422,
            to_error=str(refused) if field == "to" else None,
            composer_error=None if field == "to" else str(refused),
            to=to, body=body, channel=data.channel, sender=data.sender,
        )
    return see_other(f"/messenger/chat?party={quote(to, safe='')}")


async def conversations_exist(request: Request[Any, Any, Any], party: str) -> int:
    async with request.app.state.db.pool.connection() as conn:
        return len(await conversations.list_thread(conn, party, 1))


ROUTES = [show_messenger, show_new_conversation, show_conversation, show_conversation_list, show_thread,
          send_from_messenger]
