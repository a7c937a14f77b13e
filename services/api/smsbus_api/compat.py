"""Kannel's `/cgi-bin/sendsms` and Jasmin's `/send`, so that applications written for those
gateways switch to smsbus without code changes (SPEC §10). username is an API key's name,
password its secret; the key needs the send scope. The answers are those gateways' own texts.
A dlr-url becomes the message's status_callback with properties.callback_style = "kannel" or
"jasmin" (and dlr_mask / dlr_level), which the webhooks service formats as that gateway would.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, route
from litestar.exceptions import ClientException

from smsbus.message import NewMessage
from smsbus_api.auth import Principal
from smsbus_api.messages import ACCEPTED, insert_batch
from smsbus_api.problems import ProblemError

TEXT = "text/plain; charset=utf-8"
KANNEL_CODINGS = {"0": "gsm7", "1": "8bit", "2": "ucs2"}
JASMIN_DLR_LEVELS = ("1", "2", "3")
MAX_RECIPIENTS = 1000


async def form_values(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Query string, and for a POST its form body too (the body wins), as those gateways read them."""
    values = dict(request.query_params)
    if request.method == "POST":
        try:
            form = await request.form()
        except ClientException:
            form = None
        if form is not None:
            values.update({k: v for k, v in form.items() if isinstance(v, str)})
    return values


async def sender_key(request: Request[Any, Any, Any], username: str, password: str) -> Principal | None:
    if not username or not password:
        return None
    state = request.app.state
    principal: Principal | None = await state.key_cache.find(state.db, f"{username}.{password}")
    return principal if principal is not None and "send" in principal.scopes else None


def plain(text: str, status: int) -> Response[str]:
    return Response(text, status_code=status, media_type=TEXT)


async def accept(request: Request[Any, Any, Any], messages: list[NewMessage]) -> list[int] | str:
    """The ids, or the refusal in words (the table's, naming the field)."""
    try:
        accepted = await insert_batch(request, messages)
    except ProblemError as e:
        return f"{e.field + ': ' if e.field else ''}{e.detail}"
    ACCEPTED.inc(len(accepted))
    return [a.id for a in accepted]


@route("/cgi-bin/sendsms", http_method=["GET", "POST"], opt={"scope": None}, media_type=TEXT, include_in_schema=False,
       summary="Kannel-compatible send (username = API key name, password = its secret)")
async def kannel_sendsms(request: Request[Any, Any, Any]) -> Response[str]:
    values = await form_values(request)
    key = await sender_key(request, values.get("username", ""), values.get("password", ""))
    if key is None:
        return plain("Authorization failed for sendsms", 403)
    recipients = values.get("to", "").split()
    if not recipients:
        return plain("Missing receiver number", 400)
    if len(recipients) > MAX_RECIPIENTS:
        return plain(f"Too many receivers (at most {MAX_RECIPIENTS})", 400)
    text = values.get("text", "")
    if not text or "\x00" in text:
        return plain("Missing text" if not text else "Text contains NUL", 400)
    coding = values.get("coding")
    properties: dict[str, Any] = {}
    if coding is not None:
        if coding not in KANNEL_CODINGS:
            return plain("Invalid coding: expected 0, 1 or 2", 400)
        properties["coding"] = KANNEL_CODINGS[coding]
    dlr_url = values.get("dlr-url") or None
    if dlr_url is not None:
        properties["callback_style"] = "kannel"
        mask = values.get("dlr-mask", "31")
        if not mask.isdigit() or not 0 < int(mask) < 256:
            return plain("Invalid dlr-mask", 400)
        properties["dlr_mask"] = int(mask)
    messages = [
        NewMessage(to_address=to, body=text, from_address=values.get("from") or None,
                   channel=values.get("smsc") or None, properties=properties, status_callback=dlr_url,
                   api_key_id=key.api_key_id)
        for to in recipients
    ]
    outcome = await accept(request, messages)
    if isinstance(outcome, str):
        return plain(f"Not accepted: {outcome}", 400)
    return plain("0: Accepted for delivery", 202)


@route("/send", http_method=["GET", "POST"], opt={"scope": None}, media_type=TEXT, include_in_schema=False,
       summary="Jasmin-compatible send (username = API key name, password = its secret)")
async def jasmin_send(request: Request[Any, Any, Any]) -> Response[str]:
    values = await form_values(request)
    username = values.get("username", "")
    for argument in ("username", "password", "to", "content"):
        if not values.get(argument):
            return plain(f'Error "Mandatory argument [{argument}] is not found."', 400)
    key = await sender_key(request, username, values["password"])
    if key is None:
        return plain(f'Error "Authentication failure for username:{username[:64]}"', 403)
    properties: dict[str, Any] = {}
    dlr_url = None
    if values.get("dlr", "no") == "yes":
        dlr_url = values.get("dlr-url")
        level = values.get("dlr-level", "1")
        if not dlr_url:
            return plain('Error "Argument [dlr-url] is mandatory when dlr is yes"', 400)
        if level not in JASMIN_DLR_LEVELS:
            return plain('Error "Argument [dlr-level] has an invalid value: expected 1, 2 or 3"', 400)
        properties.update(callback_style="jasmin", dlr_level=int(level),
                          dlr_method=values.get("dlr-method", "POST").upper())
    if values.get("coding"):
        properties["coding"] = values["coding"]
    if "\x00" in values["content"]:
        return plain('Error "Argument [content] contains NUL"', 400)
    message = NewMessage(to_address=values["to"], body=values["content"], from_address=values.get("from") or None,
                         properties=properties, status_callback=dlr_url, api_key_id=key.api_key_id)
    outcome = await accept(request, [message])
    if isinstance(outcome, str):
        return plain(f'Error "{outcome}"', 400)
    return plain(f'Success "{outcome[0]}"', 200)


ROUTES = [kannel_sendsms, jasmin_send]
