"""What every page shares: the Jinja templates, who is looking (the api's session, read by
smsbus_api.auth), the role each section needs, and the answers for someone not logged in
(to the login page) or without the role (a 403 page)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from litestar import Request, Response
from litestar.response import Redirect

from smsbus.encoding import counter_table
from smsbus_api.auth import Principal, authenticate

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# a role may do what the roles after it may
ROLE_RANK = {"agent": 0, "operator": 1, "admin": 2}

# (section, label, link, the least role that sees it)
NAVIGATION = (
    ("messenger", "Messenger", "/messenger", "agent"),
    ("dashboard", "Dashboard", "/manager", "operator"),
    ("messages", "Messages", "/manager/messages", "operator"),
    ("channels", "Channels", "/manager/channels", "operator"),
    ("rules", "Rules", "/manager/rules", "operator"),
    ("users", "Users & keys", "/manager/users", "admin"),
)

TICKS = {
    "CREATING": "🕓 Queued", "SCHEDULED": "🕓 Scheduled", "QUEUED": "🕓 Queued", "SENDING": "… Sending",
    "SENT": "✓ Sent", "NOREPORT": "✓ Sent (no report)", "DELIVERED": "✓✓ Delivered",
    "NOTDELIVERED": "✕ Not delivered", "FAILED": "✕ Failed", "NOCHANNEL": "✕ No channel",
    "BLOCKED": "✕ Blocked", "DAILYLIMIT": "✕ Daily limit reached",
}
FAILED_STATUSES = frozenset({"NOTDELIVERED", "FAILED", "NOCHANNEL", "BLOCKED", "DAILYLIMIT"})


class LoginRequired(Exception):
    """Nobody is logged in: the page answers with the login page."""


class RoleRequired(Exception):
    """Logged in, but the page needs a higher role."""

    def __init__(self, role: str, principal: Principal) -> None:
        super().__init__(role)
        self.role = role
        self.principal = principal


def tick_class(status: str) -> str:
    if status == "DELIVERED":
        return "delivered"
    return "failed" if status in FAILED_STATUSES else ""


def show_time(moment: datetime | None) -> str:
    """Today's times as 14:05, older ones with their date; in UTC, said once in the footer."""
    if moment is None:
        return "-"
    moment = moment.astimezone(UTC)
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def status_class(status: str) -> str:
    if status in {"DELIVERED", "SENT", "RECEIVED"}:
        return "ok"
    if status in FAILED_STATUSES:
        return "bad"
    return "live" if status in {"QUEUED", "SENDING", "SCHEDULED"} else ""


ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.filters.update(when=show_time, tick=lambda s: TICKS.get(s, s), tick_class=tick_class,
                           status_class=status_class)
ENVIRONMENT.globals["counter_table"] = counter_table


async def viewer(request: Request[Any, Any, Any], role: str = "agent") -> Principal:
    """The logged-in user of a page; LoginRequired or RoleRequired when there is none fit."""
    principal = await authenticate(request)
    if principal is None or principal.kind != "user" or principal.role is None:
        raise LoginRequired
    if ROLE_RANK[principal.role] < ROLE_RANK[role]:
        raise RoleRequired(role, principal)
    return principal


def navigation(principal: Principal) -> list[dict[str, str]]:
    rank = ROLE_RANK[principal.role or "agent"]
    return [
        {"section": section, "label": label, "href": href}
        for section, label, href, least in NAVIGATION if rank >= ROLE_RANK[least]
    ]


def render_html(template: str, context: Mapping[str, Any]) -> str:
    return ENVIRONMENT.get_template(template).render(context)


def render(
    principal: Principal | None, template: str, section: str = "", status_code: int = 200, **context: Any
) -> Response[str]:
    """A whole page; the layout needs the viewer (navigation, CSRF token for the scripts)."""
    page = {
        "user": principal,
        "csrf_token": principal.csrf_token if principal else "",
        "navigation": navigation(principal) if principal else [],
        "section": section,
        "notice": None,
        **context,
    }
    return Response(render_html(template, page), status_code=status_code, media_type="text/html")


def fragment(template: str, **context: Any) -> Response[str]:
    """A part of a page, fetched again by static/live.js when something changed."""
    return Response(render_html(template, context), media_type="text/html")


def to_login(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect(f"/login?next={quote(wanted, safe='')}", status_code=303)


def role_refused(request: Request[Any, Any, Any], exc: RoleRequired) -> Response[str]:
    return render(exc.principal, "forbidden.html", status_code=403, role=exc.role)


def see_other(path: str) -> Redirect:
    """After a successful form post (static/forms.js follows it)."""
    return Redirect(path, status_code=303)
