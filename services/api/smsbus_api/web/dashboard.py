"""The Manager's dashboard (SPEC §11): queue depth by status (the query `smsbus status`
prints), messages per minute by channel and status over the last hour as SVG bar charts,
the oldest waiting message, and each program's supervisord state with restart for admins.
The numbers part is fetched again live."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post

from smsbus.errors import NotRunning, SmsbusError
from smsbus.queue import COUNT_BY_STATUS
from smsbus.supervisor import Supervisor
from smsbus_api.auth import scope
from smsbus_api.web.pages import fragment, render, see_other, viewer

MINUTES = 60
# messages created in the last hour, per minute, channel and status (BRIN on created_at)
PER_MINUTE = """
SELECT date_trunc('minute', created_at) AS minute, coalesce(channel, '(no channel yet)') AS channel, status,
       count(*) AS messages
FROM messages
WHERE created_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
GROUP BY 1, 2, 3
"""
OLDEST_WAITING = """
SELECT id, created_at, channel FROM messages WHERE status = 'QUEUED' ORDER BY id LIMIT 1
"""
# how the bars are coloured: what became of the messages of that minute
STATUS_GROUPS = (
    ("delivered", "Delivered / received", ("DELIVERED", "RECEIVED")),
    ("sent", "Sent", ("SENT", "NOREPORT")),
    ("waiting", "Waiting", ("CREATING", "SCHEDULED", "QUEUED", "SENDING", "RECEIVING")),
    ("failed", "Failed", ("FAILED", "NOTDELIVERED", "NOCHANNEL", "BLOCKED", "DAILYLIMIT")),
)
GROUP_OF = {status: group for group, _, statuses in STATUS_GROUPS for status in statuses}
COLOURS = {"delivered": "#1b7a3d", "sent": "#5b9bd5", "waiting": "#c28a00", "failed": "#b3261e"}


def charts(rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """One chart per channel: for each of the last 60 minutes, the count per status group."""
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    per_channel: dict[str, list[dict[str, int]]] = {}
    for row in rows:
        bars = per_channel.setdefault(row["channel"], [dict.fromkeys(COLOURS, 0) for _ in range(MINUTES)])
        index = int((row["minute"] - first).total_seconds() // 60)
        if 0 <= index < MINUTES:
            bars[index][GROUP_OF.get(row["status"], "waiting")] += row["messages"]
    result = []
    for channel, bars in sorted(per_channel.items()):
        tallest = max(1, *(sum(bar.values()) for bar in bars))
        result.append({"channel": channel, "bars": bars, "tallest": tallest,
                       "total": sum(sum(bar.values()) for bar in bars)})
    return result


def program_list(settings: Any) -> list[dict[str, Any]] | None:
    try:
        return Supervisor(settings).processes()
    except (NotRunning, OSError):
        return None


async def dashboard_numbers(request: Request[Any, Any, Any]) -> dict[str, Any]:
    async with request.app.state.db.pool.connection() as conn:
        counts = await (await conn.execute(COUNT_BY_STATUS)).fetchall()
        per_minute = await (await conn.execute(PER_MINUTE, {"minutes": MINUTES})).fetchall()
        oldest = await (await conn.execute(OLDEST_WAITING)).fetchone()
        now_row = await (await conn.execute("SELECT now() AS now")).fetchone()
    now = now_row["now"] if now_row else datetime.now(UTC)
    depth = {status: 0 for status in ("QUEUED", "SENDING", "SCHEDULED")}
    for row in counts:
        if row["direction"] == "out" and row["status"] in depth:
            depth[row["status"]] = row["messages"]
    return {
        "counts": counts, "depth": depth, "charts": charts(per_minute, now), "colours": COLOURS,
        "groups": STATUS_GROUPS, "oldest": oldest, "oldest_age": (now - oldest["created_at"]) if oldest else None,
        "programs": await request.app.state.db.in_thread(program_list)(request.app.state.shared),
        "now": now, "minutes": MINUTES,
    }


@get("/manager", opt=scope(None), include_in_schema=False)
async def show_dashboard(request: Request[Any, Any, Any], done: str = "") -> Response[str]:
    principal = await viewer(request, "operator")
    notice = {"kind": "ok", "text": done} if done else None
    return render(principal, "dashboard.html", "dashboard", notice=notice, is_admin=principal.role == "admin",
                  **await dashboard_numbers(request))


@get("/manager/dashboard/live", opt=scope(None), include_in_schema=False)
async def show_dashboard_numbers(request: Request[Any, Any, Any]) -> Response[str]:
    principal = await viewer(request, "operator")
    return fragment("_dashboard.html", is_admin=principal.role == "admin", **await dashboard_numbers(request))


@post("/manager/programs/{program:str}/restart", opt=scope("admin"), include_in_schema=False)
async def restart_program(request: Request[Any, Any, Any], program: str) -> Response[Any]:
    """Admins only: restarting a program interrupts what it is doing."""
    await viewer(request, "admin")
    supervisor = Supervisor(request.app.state.shared)
    try:
        await request.app.state.db.in_thread(supervisor.restart)(program)
    except (SmsbusError, OSError) as refused:
        return see_other("/manager?" + urlencode({"done": f"Not restarted: {refused}"}))
    return see_other("/manager?" + urlencode({"done": f"Restarted {program}."}))


ROUTES = [show_dashboard, show_dashboard_numbers, restart_program]
