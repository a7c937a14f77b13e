"""The Manager's channels (SPEC §11): the list with live health (bound, window in use,
sent in the last minute) and each program's supervisord state; add and edit forms whose
settings are validated by the CLI's code (smsbus.channels), the error shown at its field;
enable and disable. The programs follow the table as after `smsbus channels ...`."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from smsbus import channels
from smsbus.channel_health import MAX_AGE_S
from smsbus.channel_settings import SETTINGS_TYPES
from smsbus.cli.channels import TYPE_OPTIONS
from smsbus.errors import ConfigError, InvalidMessage, NotRunning, SmsbusError
from smsbus.supervisor import CHANNEL_PROGRAM_PREFIX, Supervisor
from smsbus_api.auth import scope
from smsbus_api.web.pages import fragment, render, see_other, viewer

# sent in the last minute: recent rows only (the BRIN index on created_at of migration 0046)
LIST_CHANNELS = """
SELECT c.name, c.type, c.enabled, c.settings, c.max_rate, c.daily_limit, c.report_timeout,
       coalesce(h.connected AND h.updated_at > now() - make_interval(secs => %(max_age_s)s), false) AS connected,
       coalesce(h.details, '{}') AS details, h.updated_at AS health_at,
       coalesce(sent.last_minute, 0) AS sent_last_minute
FROM channels c
LEFT JOIN channel_health h ON h.channel = c.name
LEFT JOIN (
    SELECT channel, count(*) AS last_minute FROM messages
    WHERE created_at > now() - interval '1 day' AND sent_at > now() - interval '1 minute'
    GROUP BY channel
) sent ON sent.channel = c.name
ORDER BY c.name
"""
MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")
COMMON_FIELDS = ("name", "type", "max_rate", "daily_limit", "report_timeout_s", "other")


class ChannelForm(msgspec.Struct, kw_only=True):
    """Every field of the add/edit form, as typed (validated by smsbus.channels)."""

    name: str = ""
    type: str = "smpp"
    enabled: str = ""
    max_rate: str = ""
    daily_limit: str = ""
    report_timeout_s: str = ""
    # any other setting, as a JSON object
    other: str = ""
    host: str = ""
    port: str = ""
    system_id: str = ""
    password: str = ""
    bind_mode: str = ""
    device: str = ""
    baud_rate: str = ""
    pin: str = ""
    smsc: str = ""
    storage: str = ""


class FieldError(SmsbusError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def typed(text: str, kind: type) -> Any:
    """A form value as the setting's type; left as text when it is not one, so the shared
    validation names the field and the type it expected."""
    if kind is int:
        try:
            return int(text)
        except ValueError:
            return text
    return text


def settings_of(form: ChannelForm, keep: dict[str, Any]) -> dict[str, Any]:
    """The settings object: the type's fields, then the JSON of the others. An empty secret
    keeps the saved one (it is never shown back)."""
    if form.type not in TYPE_OPTIONS:
        raise FieldError("type", f"expected one of {', '.join(SETTINGS_TYPES)}")
    try:
        others = json.loads(form.other) if form.other.strip() else {}
    except json.JSONDecodeError as e:
        raise FieldError("other", f"not JSON: {e.msg} at character {e.pos + 1}") from None
    if not isinstance(others, dict):
        raise FieldError("other", 'expected a JSON object, e.g. {"window": 20}')
    settings = {k: v for k, v in others.items() if k not in channels.SECRET_SETTINGS or v}
    for option in TYPE_OPTIONS[form.type]:
        value = getattr(form, option.field).strip()
        if value:
            settings[option.field] = typed(value, option.kind)
        elif option.field in channels.SECRET_SETTINGS and option.field in keep:
            settings[option.field] = keep[option.field]
    return settings


def number(text: str, field: str, kind: type) -> Any:
    if not text.strip():
        return None
    try:
        value = kind(text)
    except ValueError:
        raise FieldError(field, f"expected a {'whole ' if kind is int else ''}number") from None
    if value <= 0:
        raise FieldError(field, "must be more than 0")
    return value


def field_of(error: SmsbusError) -> tuple[str, str]:
    """Which form field an error belongs to, and what to say there."""
    if isinstance(error, FieldError):
        return error.field, error.problem
    if isinstance(error, ConfigError):
        missing = MISSING_FIELD.search(error.problem)
        if missing:
            return missing.group(1), "required"
        form_fields = {f for options in TYPE_OPTIONS.values() for f in (o.field for o in options)}
        return (error.setting if error.setting in form_fields else "other"), error.problem
    if isinstance(error, InvalidMessage) and error.constraint and error.constraint.startswith("channels_name"):
        return "name", "lower case letters, digits, - and _ (at most 63), starting with a letter or digit"
    text = str(error)
    return ("name", text) if "named" in text else ("", text)


def form_values(row: dict[str, Any]) -> dict[str, str]:
    """A saved channel as the form shows it: the type's fields, the rest as JSON, no secrets."""
    settings = dict(row["settings"])
    values = {"name": row["name"], "type": row["type"], "enabled": "on" if row["enabled"] else "",
              "max_rate": "" if row["max_rate"] is None else f"{row['max_rate']:g}",
              "daily_limit": "" if row["daily_limit"] is None else str(row["daily_limit"]),
              "report_timeout_s": f"{row['report_timeout'].total_seconds():g}"}
    for option in TYPE_OPTIONS[row["type"]]:
        value = settings.pop(option.field, "")
        values[option.field] = "" if option.field in channels.SECRET_SETTINGS else str(value)
    for secret in channels.SECRET_SETTINGS:
        settings.pop(secret, None)
    values["other"] = json.dumps(settings, indent=1) if settings else ""
    return values


def program_states(request: Request[Any, Any, Any]) -> dict[str, dict[str, Any]] | None:
    """supervisord's view of every program, or None when it is not running."""
    try:
        return {p["name"]: p for p in Supervisor(request.app.state.shared).processes()}
    except (NotRunning, OSError):
        return None


@get("/manager/channels", opt=scope(None), include_in_schema=False)
async def show_channels(request: Request[Any, Any, Any], done: str = "") -> Response[str]:
    principal = await viewer(request, "operator")
    context = await channel_list(request)
    notice = {"kind": "ok", "text": done} if done else None
    return render(principal, "channels.html", "channels", notice=notice, **context)


@get("/manager/channels/list", opt=scope(None), include_in_schema=False)
async def show_channel_list(request: Request[Any, Any, Any]) -> Response[str]:
    await viewer(request, "operator")
    return fragment("_channels.html", **await channel_list(request))


async def channel_list(request: Request[Any, Any, Any]) -> dict[str, Any]:
    async with request.app.state.db.pool.connection() as conn:
        rows = await (await conn.execute(LIST_CHANNELS, {"max_age_s": MAX_AGE_S})).fetchall()
    programs = await request.app.state.db.in_thread(program_states)(request)
    return {"channels": rows, "programs": programs, "program_prefix": CHANNEL_PROGRAM_PREFIX}


def channel_form_page(principal: Any, values: dict[str, str], editing: bool, errors: dict[str, str],
                      status_code: int = 200) -> Response[str]:
    return render(
        principal, "channel_form.html", "channels", status_code=status_code, values=values, editing=editing,
        errors=errors, type_options=TYPE_OPTIONS, types=list(SETTINGS_TYPES),
    )


@get("/manager/channels/new", opt=scope(None), include_in_schema=False)
async def show_new_channel(request: Request[Any, Any, Any], type: str = "smpp") -> Response[str]:
    principal = await viewer(request, "operator")
    values = {"type": type if type in TYPE_OPTIONS else "smpp", "enabled": "on"}
    return channel_form_page(principal, values, editing=False, errors={})


@get("/manager/channels/{name:str}", opt=scope(None), include_in_schema=False)
async def show_channel(request: Request[Any, Any, Any], name: str) -> Response[str]:
    principal = await viewer(request, "operator")
    db = request.app.state.db

    def load() -> dict[str, Any]:
        with db.transaction() as conn:
            return channels.get_channel(conn, name)

    try:
        row = await db.in_thread(load)()
    except channels.ChannelNotFound as e:
        return render(principal, "not_found.html", "channels", status_code=404, what=str(e))
    return channel_form_page(principal, form_values(row), editing=True, errors={})


@post("/manager/channels", opt=scope("admin"), include_in_schema=False)
async def save_channel(
    request: Request[Any, Any, Any], data: Annotated[ChannelForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    edit: str = "",
) -> Response[Any]:
    """Add (edit empty) or change the channel `edit`: all or nothing, in one transaction."""
    principal = await viewer(request, "operator")
    db = request.app.state.db
    shared = request.app.state.shared

    def save() -> None:
        with db.transaction() as conn:
            saved = channels.get_channel(conn, edit) if edit else None
            settings = settings_of(data, saved["settings"] if saved else {})
            max_rate = number(data.max_rate, "max_rate", float)
            daily_limit = number(data.daily_limit, "daily_limit", int)
            report_seconds = number(data.report_timeout_s, "report_timeout_s", float)
            report_timeout = timedelta(seconds=report_seconds) if report_seconds else None
            if saved is None:
                channels.add_channel(conn, data.name.strip(), data.type, settings, enabled=bool(data.enabled),
                                     report_timeout=report_timeout, max_rate=max_rate, daily_limit=daily_limit)
            else:
                channels.replace_channel(conn, edit, settings, enabled=bool(data.enabled),
                                          report_timeout=report_timeout, max_rate=max_rate, daily_limit=daily_limit)
            conn.commit()
            channels.follow_in_supervisor(shared, conn)

    try:
        await db.in_thread(save)()
    except SmsbusError as refused:
        field, problem = field_of(refused)
        values = {k: v for k, v in msgspec.structs.asdict(data).items() if k not in channels.SECRET_SETTINGS}
        if edit:
            values["name"] = edit
        return channel_form_page(principal, values, editing=bool(edit), errors={field: problem}, status_code=422)
    name = edit or data.name.strip()
    return see_other("/manager/channels?" + urlencode({"done": f"{'Saved' if edit else 'Added'} channel {name}."}))


@post("/manager/channels/{name:str}/{verb:str}", opt=scope("admin"), include_in_schema=False)
async def toggle_channel(request: Request[Any, Any, Any], name: str, verb: str) -> Response[Any]:
    await viewer(request, "operator")
    if verb not in ("enable", "disable"):
        return see_other("/manager/channels")
    db = request.app.state.db
    shared = request.app.state.shared

    def toggle() -> None:
        with db.transaction() as conn:
            channels.set_enabled(conn, name, verb == "enable")
            channels.follow_in_supervisor(shared, conn)

    await db.in_thread(toggle)()
    return see_other("/manager/channels?" + urlencode({"done": f"{verb.capitalize()}d channel {name}."}))


ROUTES = [show_channels, show_channel_list, show_new_channel, show_channel, save_channel, toggle_channel]
