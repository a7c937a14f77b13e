"""The Manager's rules (SPEC §11): blocking and routing rules in the order the router tries
them, add and edit with the condition compiled by PostgreSQL on save (its message shown at
the field), moves up and down, and an explain box that answers exactly as
`smsbus route explain --to --body` does (the same function)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from smsbus import config, rules
from smsbus.errors import SmsbusError
from smsbus.message import NewMessage
from smsbus.route_explain import explain_changing_nothing
from smsbus.routing import RouterZone
from smsbus.rules import STRATEGIES, RuleKind
from smsbus_api.auth import scope
from smsbus_api.web.pages import render, see_other, viewer

RULE_FIELDS = ("name", "condition", "channels", "strategy", "weights", "position")


class RuleForm(msgspec.Struct, kw_only=True):
    kind: str = "route"
    name: str = ""
    condition: str = ""
    channels: str = ""
    strategy: str = "failover"
    weights: str = ""
    position: str = ""
    enabled: str = ""


class ExplainForm(msgspec.Struct, kw_only=True):
    to: str = ""
    body: str = ""
    sender: str = msgspec.field(default="", name="from")


def split_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def split_weights(text: str) -> list[int] | None:
    if not text.strip():
        return None
    try:
        return [int(w) for w in split_names(text)]
    except ValueError:
        raise rules.RuleRefused("weights: whole numbers separated by commas, e.g. 3,1") from None


def field_of(refusal: SmsbusError) -> tuple[str, str]:
    """The shared code starts a refusal with its field ("name: ..."); PostgreSQL's own
    words are about the condition."""
    head, colon, rest = str(refusal).partition(": ")
    if colon and head in RULE_FIELDS:
        return head, rest
    return "condition", str(refusal)


async def rules_page(
    request: Request[Any, Any, Any], principal: Any, status_code: int = 200, **context: Any
) -> Response[str]:
    db = request.app.state.db

    def load() -> dict[str, Any]:
        with db.transaction() as conn:
            return {
                "blocking": rules.list_rules(conn, RuleKind.BLOCK),
                "routing": rules.list_rules(conn, RuleKind.ROUTE),
                "channel_names": [r["name"] for r in conn.execute("SELECT name FROM channels ORDER BY name")],
            }

    page = {"form": None, "form_kind": "", "editing": "", "errors": {}, "explained": None, "explain_error": None,
            "explain_values": {}, "strategies": STRATEGIES, "notice": None, **await db.in_thread(load)(), **context}
    return render(principal, "rules.html", "rules", status_code=status_code, **page)


@get("/manager/rules", opt=scope(None), include_in_schema=False)
async def show_rules(request: Request[Any, Any, Any], done: str = "", edit: str = "", kind: str = "") -> Response[str]:
    principal = await viewer(request, "operator")
    context: dict[str, Any] = {"notice": {"kind": "ok", "text": done} if done else None}
    if edit and kind in ("block", "route"):
        db = request.app.state.db

        def load_rule() -> dict[str, Any]:
            with db.transaction() as conn:
                return rules.get_rule(conn, RuleKind(kind), edit)

        try:
            rule = await db.in_thread(load_rule)()
        except rules.RuleNotFound as e:
            context["notice"] = {"kind": "bad", "text": str(e)}
        else:
            context.update(form_kind=kind, editing=str(rule["id"]), form={
                "name": rule["name"], "condition": rule["condition"], "enabled": "on" if rule["enabled"] else "",
                "channels": ", ".join(rule.get("channels") or []), "strategy": rule.get("strategy", "failover"),
                "weights": ", ".join(map(str, rule.get("weights") or [])),
            })
    return await rules_page(request, principal, **context)


@post("/manager/rules", opt=scope("admin"), include_in_schema=False)
async def save_rule(
    request: Request[Any, Any, Any], data: Annotated[RuleForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    edit: str = "",
) -> Response[Any]:
    """Add a rule (at a position, or last), or change the rule `edit` in place."""
    principal = await viewer(request, "operator")
    kind = RuleKind.BLOCK if data.kind == "block" else RuleKind.ROUTE
    db = request.app.state.db

    def save() -> None:
        position = int(data.position) if data.position.strip().isdigit() else None
        name, condition, enabled = data.name.strip(), data.condition, bool(data.enabled)
        channel_names, weights = split_names(data.channels), split_weights(data.weights)
        with db.transaction() as conn:
            if edit:
                rules.edit_rule(conn, kind, edit, name=name, condition=condition, enabled=enabled,
                                channels=channel_names, strategy=data.strategy, weights=weights)
            elif kind is RuleKind.ROUTE:
                rules.add_routing_rule(conn, name, condition, channel_names, strategy=data.strategy,
                                       weights=weights, position=position, enabled=enabled)
            else:
                rules.add_blocking_rule(conn, name, condition, position=position, enabled=enabled)

    try:
        await db.in_thread(save)()
    except SmsbusError as refused:
        field, problem = field_of(refused)
        return await rules_page(
            request, principal, status_code=422, form=msgspec.structs.asdict(data), form_kind=str(kind),
            editing=edit, errors={field: problem},
        )
    return see_other(f"/manager/rules?{urlencode({'done': f'Saved {kind.noun} {data.name.strip()}.'})}")


@post("/manager/rules/{kind:str}/{rule_id:int}/{verb:str}", opt=scope("admin"), include_in_schema=False)
async def change_rule_order(request: Request[Any, Any, Any], kind: str, rule_id: int, verb: str) -> Response[Any]:
    """up / down one place, or remove."""
    await viewer(request, "operator")
    rule_kind = RuleKind.BLOCK if kind == "block" else RuleKind.ROUTE
    db = request.app.state.db

    def change() -> str:
        with db.transaction() as conn:
            rule = rules.get_rule(conn, rule_kind, str(rule_id))
            if verb == "remove":
                rules.remove_rule(conn, rule_kind, str(rule_id))
                return f"Removed {rule_kind.noun} {rule['name']}."
            step = -1 if verb == "up" else 1
            rules.move_rule(conn, rule_kind, str(rule_id), max(1, rule["position"] + step))
            return f"Moved {rule_kind.noun} {rule['name']} {verb}."

    done = await db.in_thread(change)()
    return see_other(f"/manager/rules?{urlencode({'done': done})}")


@post("/manager/rules/explain", opt=scope("read"), include_in_schema=False)
async def explain_message(
    request: Request[Any, Any, Any], data: Annotated[ExplainForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[str]:
    """Changes nothing (rolled back); a POST only because it carries a message's text."""
    principal = await viewer(request, "operator")
    db = request.app.state.db
    proposed = NewMessage(to_address=data.to.strip(), body=data.body, from_address=data.sender.strip() or None)
    time_zone = config.load_section("router", RouterZone).time_zone

    def run() -> list[str]:
        with db.transaction() as conn:
            return explain_changing_nothing(conn, time_zone, proposed=proposed)

    values = {"to": data.to, "body": data.body, "from": data.sender}
    try:
        lines = await db.in_thread(run)()
    except SmsbusError as refused:
        return await rules_page(request, principal, status_code=422, explain_error=str(refused), explain_values=values)
    return await rules_page(request, principal, explained=lines, explain_values=values)


ROUTES = [show_rules, save_rule, explain_message, change_rule_order]
