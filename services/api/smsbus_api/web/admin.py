"""Users and API keys (SPEC §11, §13), for admins: add and disable users, create keys (the
key is shown once, as `smsbus api-keys create` prints it) and revoke them. Everything goes
through smsbus.access, the CLI's code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from smsbus import access
from smsbus.errors import SmsbusError
from smsbus_api.auth import scope
from smsbus_api.web.pages import render, see_other, viewer


class UserForm(msgspec.Struct, kw_only=True):
    name: str = ""
    role: str = "agent"
    password: str = ""


class KeyForm(msgspec.Struct, kw_only=True):
    name: str = ""
    send: str = ""
    read: str = ""
    admin: str = ""


async def admin_page(request: Request[Any, Any, Any], principal: Any, status_code: int = 200,
                     **context: Any) -> Response[str]:
    db = request.app.state.db

    def load() -> dict[str, Any]:
        with db.transaction() as conn:
            return {"users": access.list_users(conn), "keys": access.list_api_keys(conn)}

    page = {"roles": access.ROLES, "scopes": access.SCOPES, "user_error": None, "key_error": None,
            "created_key": None, "user_values": {}, "key_values": {}, **await db.in_thread(load)(), **context}
    return render(principal, "admin.html", "users", status_code=status_code, **page)


@get("/manager/users", opt=scope(None), include_in_schema=False)
async def show_users(request: Request[Any, Any, Any], done: str = "") -> Response[str]:
    principal = await viewer(request, "admin")
    return await admin_page(request, principal, notice={"kind": "ok", "text": done} if done else None)


@post("/manager/users", opt=scope("admin"), include_in_schema=False)
async def add_user(
    request: Request[Any, Any, Any], data: Annotated[UserForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    principal = await viewer(request, "admin")
    db = request.app.state.db

    def save() -> None:
        with db.transaction() as conn:
            access.add_user(conn, data.name.strip(), data.role, data.password)

    try:
        await db.in_thread(save)()
    except SmsbusError as refused:
        return await admin_page(request, principal, status_code=422, user_error=str(refused),
                                user_values={"name": data.name, "role": data.role})
    return see_other("/manager/users?" + urlencode({"done": f"Added user {data.name.strip()} ({data.role})."}))


async def change_by_name(request: Request[Any, Any, Any], change: Callable[[Any, str], None], name: str,
                         done: str) -> Response[Any]:
    """Disable a user or revoke a key: one call of smsbus.access, then the page with a notice."""
    await viewer(request, "admin")
    db = request.app.state.db

    def work() -> None:
        with db.transaction() as conn:
            change(conn, name)

    await db.in_thread(work)()
    return see_other("/manager/users?" + urlencode({"done": done}))


@post("/manager/users/{name:str}/disable", opt=scope("admin"), include_in_schema=False)
async def disable_user(request: Request[Any, Any, Any], name: str) -> Response[Any]:
    return await change_by_name(request, access.disable_user, name, f"Disabled user {name}; their sessions ended.")


@post("/manager/keys", opt=scope("admin"), include_in_schema=False)
async def create_key(
    request: Request[Any, Any, Any], data: Annotated[KeyForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[str]:
    """Answers with the page itself (not a redirect): the key is shown this once."""
    principal = await viewer(request, "admin")
    db = request.app.state.db
    scopes = [s for s in access.SCOPES if getattr(data, s)]

    def create() -> access.CreatedKey:
        with db.transaction() as conn:
            return access.create_api_key(conn, data.name.strip(), scopes)

    try:
        created = await db.in_thread(create)()
    except SmsbusError as refused:
        return await admin_page(request, principal, status_code=422, key_error=str(refused),
                                key_values={"name": data.name, **{s: "on" for s in scopes}})
    return await admin_page(request, principal, created_key=created)


@post("/manager/keys/{name:str}/revoke", opt=scope("admin"), include_in_schema=False)
async def revoke_key(request: Request[Any, Any, Any], name: str) -> Response[Any]:
    return await change_by_name(request, access.revoke_api_key, name, f"Revoked API key {name}.")


ROUTES = [show_users, add_user, disable_user, create_key, revoke_key]
