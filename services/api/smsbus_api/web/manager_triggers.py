"""The Manager's triggers (SPEC §11): the list in the order they run, an editor for a Python
or SQL script with the save-time check of smsbus.triggers (the error at its field), and the
dry run on a chosen message (the api's, which runs `smsbus-triggers test`)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from smsbus import triggers
from smsbus.errors import SmsbusError
from smsbus_api.auth import scope
from smsbus_api.configuration import dry_run
from smsbus_api.problems import ProblemError
from smsbus_api.web.pages import render, see_other, viewer

# what a new trigger's editor starts with (deploy/triggers/auto_reply.py)
NEW_PYTHON = '''def handle(message, api):
    # runs once a message is final and the condition matches
    api.send(message.from_address, "Thank you, we will answer soon.", sender=message.to_address)
    api.log(f"auto-reply queued for message {message.id}")
'''


class TriggerForm(msgspec.Struct, kw_only=True):
    name: str = ""
    language: str = "python"
    condition: str = "true"
    script: str = ""
    timeout_s: str = "5"
    enabled: str = ""


class DryRunForm(msgspec.Struct, kw_only=True):
    trigger: str = ""
    message: str = ""


async def triggers_page(request: Request[Any, Any, Any], principal: Any, status_code: int = 200,
                        **context: Any) -> Response[str]:
    db = request.app.state.db

    def load() -> list[triggers.Trigger]:
        with db.transaction() as conn:
            return triggers.list_triggers(conn)

    page = {"triggers": await db.in_thread(load)(), "form": {"language": "python", "condition": "true",
            "script": NEW_PYTHON, "timeout_s": "5", "enabled": "on"}, "editing": "", "errors": {},
            "dry_run": None, "dry_values": {}, "notice": None, **context}
    return render(principal, "triggers.html", "triggers", status_code=status_code, **page)


@get("/manager/triggers", opt=scope(None), include_in_schema=False)
async def show_triggers(request: Request[Any, Any, Any], done: str = "", edit: str = "") -> Response[str]:
    principal = await viewer(request, "operator")
    context: dict[str, Any] = {"notice": {"kind": "ok", "text": done} if done else None}
    if edit:
        db = request.app.state.db

        def find() -> triggers.Trigger:
            with db.transaction() as conn:
                return triggers.find_trigger(conn, edit)

        trigger = await db.in_thread(find)()
        context.update(editing=str(trigger.id), form={
            "name": trigger.name, "language": trigger.language, "condition": trigger.condition,
            "script": trigger.script, "timeout_s": f"{trigger.timeout_s:g}",
            "enabled": "on" if trigger.enabled else "",
        })
    return await triggers_page(request, principal, **context)


@post("/manager/triggers", opt=scope("admin"), include_in_schema=False)
async def save_trigger(
    request: Request[Any, Any, Any], data: Annotated[TriggerForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    edit: str = "",
) -> Response[Any]:
    principal = await viewer(request, "operator")
    db = request.app.state.db

    def save() -> None:
        try:
            timeout_s = float(data.timeout_s)
        except ValueError:
            raise triggers.InvalidTrigger("timeout_s", "expected a number of seconds") from None
        with db.transaction() as conn:
            if edit:
                triggers.edit_trigger(conn, triggers.find_trigger(conn, edit), name=data.name.strip(),
                                      language=data.language, condition=data.condition, script=data.script,
                                      timeout=timeout_s, enabled=bool(data.enabled))
            else:
                triggers.add_trigger(conn, name=data.name.strip(), condition=data.condition, language=data.language,
                                     script=data.script, timeout_s=timeout_s, enabled=bool(data.enabled))

    try:
        await db.in_thread(save)()
    except SmsbusError as refused:
        field = getattr(refused, "field", "script")
        problem = str(refused).partition(": ")[2] or str(refused)
        return await triggers_page(request, principal, status_code=422, form=msgspec.structs.asdict(data),
                                   editing=edit, errors={field: problem})
    return see_other("/manager/triggers?" + urlencode({"done": f"Saved trigger {data.name.strip()}."}))


@post("/manager/triggers/dry-run", opt=scope("admin"), include_in_schema=False)
async def dry_run_trigger(
    request: Request[Any, Any, Any], data: Annotated[DryRunForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[str]:
    """What the trigger would do to the message; nothing is changed (the run is rolled back)."""
    principal = await viewer(request, "operator")
    values = {"trigger": data.trigger, "message": data.message}
    if not data.trigger.isdigit() or not data.message.strip().isdigit():
        return await triggers_page(request, principal, status_code=422, dry_values=values,
                                   dry_run={"output": "Choose a trigger and type a message id.", "exit_code": 2})
    try:
        result = await dry_run(int(data.trigger), int(data.message))
    except ProblemError as refused:
        return await triggers_page(request, principal, status_code=422, dry_values=values,
                                   dry_run={"output": refused.detail, "exit_code": 1})
    return await triggers_page(request, principal, dry_values=values,
                               dry_run={"output": result.output, "exit_code": result.exit_code})


ROUTES = [show_triggers, save_trigger, dry_run_trigger]
