"""The browser pages (SPEC §11): the Web Messenger and the Manager, served by the api under
`/` with its sessions, guard and CSRF rule. Server-rendered Jinja templates; static/ holds
the few hand-written scripts (live updates over /v1/events, forms, the part counter)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from litestar.static_files import create_static_files_router

from smsbus_api.auth import authenticate, scope
from smsbus_api.web import (
    admin,
    dashboard,
    manager_channels,
    manager_messages,
    manager_rules,
    manager_triggers,
    messenger,
)
from smsbus_api.web.pages import STATIC, LoginRequired, RoleRequired, render, role_refused, see_other, to_login


@get("/", opt=scope(None), include_in_schema=False)
async def show_home(request: Request[Any, Any, Any]) -> Response[Any]:
    """Agents work in the Messenger; operators and admins start at the dashboard."""
    principal = await authenticate(request)
    if principal is None or principal.role is None:
        raise LoginRequired
    return see_other("/messenger" if principal.role == "agent" else "/manager")


@get("/login", opt=scope(None), include_in_schema=False)
async def show_login(request: Request[Any, Any, Any], next: str = "/") -> Response[str]:
    safe_next = next if next.startswith("/") and not next.startswith("//") else "/"
    return render(None, "login.html", next_path=safe_next)


def web_router() -> Router:
    return Router(
        path="/",
        route_handlers=[
            show_home, show_login, *messenger.ROUTES, *dashboard.ROUTES, *manager_messages.ROUTES,
            *manager_channels.ROUTES, *manager_rules.ROUTES, *admin.ROUTES, *manager_triggers.ROUTES,
            create_static_files_router("/static", [STATIC], opt=scope(None), include_in_schema=False),
        ],
        exception_handlers={LoginRequired: to_login, RoleRequired: role_refused},
    )
