"""/v1/channels, /v1/rules, /v1/route/explain, /v1/triggers and /v1/queue: everything an
operator configures, through the very functions `smsbus channels|rules|route|triggers` call
(smsbus.channels, rules, route_explain, triggers), run in a worker thread on a pooled
connection. Channel edits make the supervisord programs follow, as the CLI does."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import psycopg
from litestar import Request, delete, get, patch, post
from litestar.params import Parameter

import smsbus.channels as channels
import smsbus.queue as queue
import smsbus.rules as rules
import smsbus.triggers as triggers
from smsbus.config import load_section
from smsbus.message import NewMessage
from smsbus.route_explain import explain_changing_nothing
from smsbus.routing import RouterZone
from smsbus.rules import RuleKind
from smsbus_api.auth import scope
from smsbus_api.problems import ProblemError

T = TypeVar("T")
Row = dict[str, Any]
NoNul = msgspec.Meta(pattern="^[^\x00]*$")
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern="^[^\x00]*$")]
Condition = Annotated[str, msgspec.Meta(min_length=1, max_length=20_000, pattern="^[^\x00]*$")]
Script = Annotated[str, msgspec.Meta(min_length=1, max_length=200_000, pattern="^[^\x00]*$")]
Position = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Weight = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
RuleKindName = Literal["blocking", "routing"]
RULE_KINDS = {"blocking": RuleKind.BLOCK, "routing": RuleKind.ROUTE}
# the dry run of a trigger is the triggers service's own code, as `smsbus triggers test` runs it
TRIGGERS_EXECUTABLE = "smsbus-triggers"
TRIGGER_TEST_TIMEOUT_S = 60.0


async def in_transaction(request: Request[Any, Any, Any], work: Callable[[psycopg.Connection[Any]], T]) -> T:
    """The shared (sync) code on a pooled connection in a worker thread; committed at the end."""
    db = request.app.state.db

    def run() -> T:
        with db.transaction() as conn:
            return work(conn)

    result: T = await db.in_thread(run)()
    return result


# -- channels ------------------------------------------------------------------------------

SELECT_HEALTH = "SELECT channel, connected, details, updated_at FROM channel_health ORDER BY channel"


class ChannelIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern="^[a-z0-9][a-z0-9_-]*$")]
    type: Literal["smpp", "gsm"]
    # validated per type, as `smsbus channels add` does
    settings: dict[str, Any] = {}
    enabled: bool = True
    report_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] | None = None
    max_rate: Annotated[float, msgspec.Meta(gt=0, le=100_000)] | None = None
    daily_limit: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None


class ChannelChange(msgspec.Struct, forbid_unknown_fields=True):
    # merged into the saved settings; null removes a setting (its default applies)
    settings: dict[str, Any]


class ChannelSaved(msgspec.Struct):
    channel: Row
    # the supervisord programs started/restarted/stopped; null when smsbus is not running
    programs: dict[str, list[str]] | None


def shown(row: Row) -> Row:
    return {**row, "settings": channels.masked_settings(row["settings"])}


async def save_channel(
    request: Request[Any, Any, Any], change: Callable[[psycopg.Connection[Any]], Row]
) -> ChannelSaved:
    shared = request.app.state.shared

    def work(conn: psycopg.Connection[Any]) -> ChannelSaved:
        row = change(conn)
        conn.commit()
        return ChannelSaved(shown(row), channels.follow_in_supervisor(shared, conn))

    return await in_transaction(request, work)


@get("/v1/channels", opt=scope("read"), summary="Every channel (secrets masked)")
async def list_channels(request: Request[Any, Any, Any]) -> list[Row]:
    return [shown(row) for row in await in_transaction(request, channels.list_channels)]


@get("/v1/channels/{name:str}", opt=scope("read"), summary="One channel (secrets masked)")
async def show_channel(request: Request[Any, Any, Any], name: str) -> Row:
    return shown(await in_transaction(request, lambda conn: channels.get_channel(conn, name)))


@post("/v1/channels", opt=scope("admin"), status_code=201, summary="Add a channel (its program starts)")
async def add_channel(request: Request[Any, Any, Any], data: ChannelIn) -> ChannelSaved:
    timeout = timedelta(seconds=data.report_timeout_s) if data.report_timeout_s else None
    return await save_channel(request, lambda conn: channels.add_channel(
        conn, data.name, data.type, data.settings, enabled=data.enabled, report_timeout=timeout,
        max_rate=data.max_rate, daily_limit=data.daily_limit,
    ))


@patch("/v1/channels/{name:str}", opt=scope("admin"), summary="Change settings (validated; the program restarts)")
async def change_channel(request: Request[Any, Any, Any], name: str, data: ChannelChange) -> ChannelSaved:
    return await save_channel(request, lambda conn: channels.change_settings(conn, name, data.settings))


@post("/v1/channels/{name:str}/enable", opt=scope("admin"), status_code=200, summary="Start sending through it")
async def enable_channel(request: Request[Any, Any, Any], name: str) -> ChannelSaved:
    return await save_channel(request, lambda conn: channels.set_enabled(conn, name, True))


@post("/v1/channels/{name:str}/disable", opt=scope("admin"), status_code=200, summary="Stop its program, keep it")
async def disable_channel(request: Request[Any, Any, Any], name: str) -> ChannelSaved:
    return await save_channel(request, lambda conn: channels.set_enabled(conn, name, False))


@delete("/v1/channels/{name:str}", opt=scope("admin"), status_code=200, summary="Remove it (its program stops)")
async def remove_channel(request: Request[Any, Any, Any], name: str) -> ChannelSaved:
    return await save_channel(request, lambda conn: channels.remove_channel(conn, name))


@get("/v1/health/channels", opt=scope("read"), summary="What each channel last reported: connected, details")
async def channel_health(request: Request[Any, Any, Any]) -> list[Row]:
    return await in_transaction(request, lambda conn: [dict(r) for r in conn.execute(SELECT_HEALTH)])


# -- rules and explain ----------------------------------------------------------------------


class BlockingRuleIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    # an SQL boolean expression over the message's columns, checked by PostgreSQL on save
    condition: Condition
    position: Position | None = None
    enabled: bool = True


class RoutingRuleIn(BlockingRuleIn, forbid_unknown_fields=True, kw_only=True):
    channels: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=100)]
    strategy: Literal["failover", "round_robin", "weighted"] = "failover"
    weights: Annotated[list[Weight], msgspec.Meta(max_length=100)] | None = None


class MoveTo(msgspec.Struct, forbid_unknown_fields=True):
    # 1 = first; past the end = last
    position: Position


def kind_of(name: str) -> RuleKind:
    kind = RULE_KINDS.get(name)
    if kind is None:
        raise ProblemError(404, f"no rule kind {name!r}: blocking or routing")
    return kind


@get("/v1/rules/blocking", opt=scope("read"), summary="Blocking rules, in order")
async def list_blocking_rules(request: Request[Any, Any, Any]) -> list[Row]:
    return await in_transaction(request, lambda conn: rules.list_rules(conn, RuleKind.BLOCK))


@get("/v1/rules/routing", opt=scope("read"), summary="Routing rules, in order")
async def list_routing_rules(request: Request[Any, Any, Any]) -> list[Row]:
    return await in_transaction(request, lambda conn: rules.list_rules(conn, RuleKind.ROUTE))


@get("/v1/rules/{kind:str}/{ref:str}", opt=scope("read"), summary="One rule, by name or id")
async def show_rule(request: Request[Any, Any, Any], kind: RuleKindName, ref: str) -> Row:
    rule_kind = kind_of(kind)
    return await in_transaction(request, lambda conn: rules.get_rule(conn, rule_kind, ref))


@post("/v1/rules/blocking", opt=scope("admin"), status_code=201, summary="Add a blocking rule")
async def add_blocking_rule(request: Request[Any, Any, Any], data: BlockingRuleIn) -> Row:
    return await in_transaction(request, lambda conn: rules.add_blocking_rule(
        conn, data.name, data.condition, position=data.position, enabled=data.enabled))


@post("/v1/rules/routing", opt=scope("admin"), status_code=201, summary="Add a routing rule")
async def add_routing_rule(request: Request[Any, Any, Any], data: RoutingRuleIn) -> Row:
    return await in_transaction(request, lambda conn: rules.add_routing_rule(
        conn, data.name, data.condition, data.channels, strategy=data.strategy, weights=data.weights,
        position=data.position, enabled=data.enabled))


@delete("/v1/rules/{kind:str}/{ref:str}", opt=scope("admin"), status_code=200, summary="Remove a rule")
async def remove_rule(request: Request[Any, Any, Any], kind: RuleKindName, ref: str) -> Row:
    rule_kind = kind_of(kind)
    return await in_transaction(request, lambda conn: rules.remove_rule(conn, rule_kind, ref))


@post("/v1/rules/{kind:str}/{ref:str}/move", opt=scope("admin"), status_code=200,
      summary="Put a rule at a position; answers the rules in their new order")
async def move_rule(request: Request[Any, Any, Any], kind: RuleKindName, ref: str, data: MoveTo) -> list[Row]:
    rule_kind = kind_of(kind)
    return await in_transaction(request, lambda conn: rules.move_rule(conn, rule_kind, ref, data.position))


class ExplainIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A message in the table (message_id), or one described by its fields."""

    message_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None
    to_address: Annotated[str, msgspec.Meta(min_length=1, max_length=32), NoNul] | None = None
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000), NoNul] | None = None
    from_address: Annotated[str, msgspec.Meta(min_length=1, max_length=32), NoNul] | None = None
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=63), NoNul] | None = None
    properties: dict[str, Any] = {}


class Explanation(msgspec.Struct):
    # the same lines `smsbus route explain` prints, the verdict last
    lines: list[str]


@post("/v1/route/explain", opt=scope("read"), status_code=200,
      summary="Which rule matches and which channel the router would pick, changing nothing")
async def explain_route(request: Request[Any, Any, Any], data: ExplainIn) -> Explanation:
    if (data.message_id is None) == (data.to_address is None or data.body is None):
        raise ProblemError(400, "give either message_id, or to_address and body", field="message_id")
    proposed = None
    if data.message_id is None:
        assert data.to_address is not None and data.body is not None
        proposed = NewMessage(to_address=data.to_address, body=data.body, from_address=data.from_address,
                              channel=data.channel, properties=data.properties)
    time_zone = load_section("router", RouterZone).time_zone

    def work(conn: psycopg.Connection[Any]) -> list[str]:
        return explain_changing_nothing(conn, time_zone, message_id=data.message_id, proposed=proposed)

    return Explanation(await in_transaction(request, work))


# -- triggers ------------------------------------------------------------------------------


class TriggerIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    language: Literal["python", "sql"]
    script: Script
    condition: Condition = "true"
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    enabled: bool = True
    position: Position | None = None


class TriggerChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    name: Name | None = None
    language: Literal["python", "sql"] | None = None
    script: Script | None = None
    condition: Condition | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None


class TriggerTest(msgspec.Struct, forbid_unknown_fields=True):
    message_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class TriggerTestResult(msgspec.Struct):
    # what `smsbus triggers test` prints, and its exit code (0: the trigger ran without error)
    output: str
    exit_code: int


def trigger_row(trigger: triggers.Trigger) -> Row:
    row = msgspec.structs.asdict(trigger)
    row["timeout_s"] = trigger.timeout_s
    del row["timeout"]
    return row


@get("/v1/triggers", opt=scope("read"), summary="Every trigger, in order")
async def list_triggers(request: Request[Any, Any, Any]) -> list[Row]:
    return [trigger_row(t) for t in await in_transaction(request, triggers.list_triggers)]


@get("/v1/triggers/{ref:str}", opt=scope("read"), summary="One trigger, by name or id")
async def show_trigger(request: Request[Any, Any, Any], ref: str) -> Row:
    return trigger_row(await in_transaction(request, lambda conn: triggers.find_trigger(conn, ref)))


@post("/v1/triggers", opt=scope("admin"), status_code=201, summary="Add a trigger (checked before it is saved)")
async def add_trigger(request: Request[Any, Any, Any], data: TriggerIn) -> Row:
    return trigger_row(await in_transaction(request, lambda conn: triggers.add_trigger(
        conn, name=data.name, condition=data.condition, language=data.language, script=data.script,
        timeout_s=data.timeout_s, enabled=data.enabled, position=data.position)))


@patch("/v1/triggers/{ref:str}", opt=scope("admin"), summary="Change fields of a trigger (checked as a whole)")
async def edit_trigger(request: Request[Any, Any, Any], ref: str, data: TriggerChange) -> Row:
    changes = msgspec.structs.asdict(data)
    changes = {("timeout" if k == "timeout_s" else k): v for k, v in changes.items() if v is not None}
    return trigger_row(await in_transaction(
        request, lambda conn: triggers.edit_trigger(conn, triggers.find_trigger(conn, ref), **changes)))


async def switch_trigger(request: Request[Any, Any, Any], ref: str, enabled: bool) -> Row:
    return trigger_row(await in_transaction(
        request, lambda conn: triggers.edit_trigger(conn, triggers.find_trigger(conn, ref), enabled=enabled)))


@post("/v1/triggers/{ref:str}/enable", opt=scope("admin"), status_code=200, summary="Switch a trigger on")
async def enable_trigger(request: Request[Any, Any, Any], ref: str) -> Row:
    return await switch_trigger(request, ref, True)


@post("/v1/triggers/{ref:str}/disable", opt=scope("admin"), status_code=200, summary="Switch a trigger off")
async def disable_trigger(request: Request[Any, Any, Any], ref: str) -> Row:
    return await switch_trigger(request, ref, False)


@delete("/v1/triggers/{ref:str}", opt=scope("admin"), status_code=200, summary="Remove a trigger")
async def remove_trigger(request: Request[Any, Any, Any], ref: str) -> Row:
    def work(conn: psycopg.Connection[Any]) -> Row:
        trigger = triggers.find_trigger(conn, ref)
        triggers.remove_trigger(conn, trigger)
        return trigger_row(trigger)

    return await in_transaction(request, work)


@post("/v1/triggers/{ref:str}/move", opt=scope("admin"), status_code=200,
      summary="Put a trigger at a position; answers the triggers in their new order")
async def move_trigger(request: Request[Any, Any, Any], ref: str, data: MoveTo) -> list[Row]:
    def work(conn: psycopg.Connection[Any]) -> list[Row]:
        triggers.move_trigger(conn, triggers.find_trigger(conn, ref), data.position)
        return [trigger_row(t) for t in triggers.list_triggers(conn)]

    return await in_transaction(request, work)


@post("/v1/triggers/{ref:str}/test", opt=scope("admin"), status_code=200,
      summary="Dry-run a trigger on a message: its output, nothing changed")
async def test_trigger(request: Request[Any, Any, Any], ref: str, data: TriggerTest) -> TriggerTestResult:
    trigger = await in_transaction(request, lambda conn: triggers.find_trigger(conn, ref))
    return await dry_run(trigger.id, data.message_id)


async def dry_run(trigger_id: int, message_id: int) -> TriggerTestResult:
    """`smsbus-triggers test`: the triggers service's own code runs the trigger on the message
    and rolls back (also the Manager's trigger page)."""
    executable = Path(sys.executable).parent / TRIGGERS_EXECUTABLE
    process = await asyncio.create_subprocess_exec(
        str(executable), "test", str(trigger_id), "--message", str(message_id),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), TRIGGER_TEST_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        raise ProblemError(422, f"the dry run took longer than {TRIGGER_TEST_TIMEOUT_S:.0f} s") from None
    return TriggerTestResult(output.decode(errors="replace"), process.returncode or 0)


# -- queue -----------------------------------------------------------------------------------

# Only the working states, each read through its partial index: cheap however many finished
# messages the table holds.
SELECT_QUEUE_DEPTH = """
SELECT status, coalesce(channel, '') AS channel, count(*) AS messages, min(created_at) AS oldest_created_at
FROM messages WHERE status IN ('SCHEDULED', 'QUEUED', 'SENDING')
GROUP BY status, coalesce(channel, '') ORDER BY status, channel
"""


class QueueDepth(msgspec.Struct):
    # messages waiting in SCHEDULED, QUEUED, SENDING per channel ('' for not routed yet)
    waiting: list[Row]
    # every message by direction and status (counts the whole table: slower on a big one)
    counts: list[Row] | None


@get("/v1/queue", opt=scope("read"), summary="Queue depth per working status and channel; counts per status")
async def queue_depth(
    request: Request[Any, Any, Any],
    counts: Annotated[bool, Parameter(description="also count every status (a whole-table count)")] = False,
) -> QueueDepth:
    def work(conn: psycopg.Connection[Any]) -> QueueDepth:
        waiting = [dict(r) for r in conn.execute(SELECT_QUEUE_DEPTH)]
        by_status = None
        if counts:
            by_status = [{"direction": d, "status": s, "messages": n} for d, s, n in queue.count_by_status(conn)]
        return QueueDepth(waiting, by_status)

    return await in_transaction(request, work)


ROUTES = [
    list_channels, channel_health, show_channel, add_channel, change_channel, enable_channel, disable_channel,
    remove_channel, list_blocking_rules, list_routing_rules, show_rule, add_blocking_rule, add_routing_rule,
    remove_rule, move_rule,
    explain_route, list_triggers, show_trigger, add_trigger, edit_trigger, enable_trigger, disable_trigger,
    remove_trigger, move_trigger, test_trigger, queue_depth,
]
