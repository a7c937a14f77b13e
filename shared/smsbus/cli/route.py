"""`smsbus route explain ID` / `smsbus route explain --to ... --body ...`: which blocking rule or
routing rule matches a message and which channel the router would pick, changing nothing.

It runs the router's own compiled query and channel choice, in a transaction it rolls back.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from smsbus import config, queue
from smsbus.cli.messages import positive_int
from smsbus.cli.rules import connection
from smsbus.errors import InvalidMessage, MessageNotFound, SmsbusError
from smsbus.message import NewMessage
from smsbus.routing import (
    BY_ID_SOURCE,
    PROPOSED_SOURCE,
    ChannelState,
    Decision,
    Rotation,
    RouterZone,
    decide,
    evaluate,
    load_rules,
    read_channel_states,
)
from smsbus.rules import refusal_text

EXPLAIN_TIMEOUT_S = 5.0


def register(commands: Any) -> None:
    parser = commands.add_parser("route", help="what the router would do with a message")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    explain = verbs.add_parser("explain", help="the matching rules and the channel, changing nothing")
    explain.add_argument("id", nargs="?", type=positive_int, help="a message in the table")
    explain.add_argument("--to", help="or a message described by its fields: E.164 number")
    explain.add_argument("--from", dest="sender")
    explain.add_argument("--body")
    explain.add_argument("--channel", help="a channel the message names itself")
    explain.add_argument("--properties", type=json_object, help="a JSON object")
    explain.set_defaults(handler=run_explain)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"priority\": 1}'")
    return value


def run_explain(args: argparse.Namespace) -> int:
    described = any(v is not None for v in (args.to, args.sender, args.body, args.channel, args.properties))
    if args.id is not None and described:
        raise SmsbusError("give either a message id or --to/--body, not both")
    if args.id is None and (args.to is None or args.body is None):
        raise SmsbusError("give a message id, or --to and --body (and optionally --from, --channel, --properties)")
    time_zone = config.load_section("router", RouterZone).time_zone
    with connection() as conn:
        try:
            print("\n".join(explain(conn, args, time_zone)))
        except psycopg.errors.QueryCanceled:
            raise SmsbusError(f"the rules took longer than {EXPLAIN_TIMEOUT_S} s") from None
        except (psycopg.ProgrammingError, psycopg.DataError) as e:
            raise SmsbusError(f"a rule raised on this message: {refusal_text(e)}") from None
        finally:
            conn.rollback()
    return 0


def explain(conn: psycopg.Connection[Any], args: argparse.Namespace, time_zone: str) -> list[str]:
    rules = load_rules(conn)
    if args.id is not None:
        found = conn.execute("SELECT status, channel, routed_at FROM messages WHERE id = %(id)s", {"id": args.id})
        row = found.fetchone()
        if row is None:
            raise MessageNotFound(args.id)
        lines = [f"message {args.id}: status {row['status']}, channel {row['channel'] or '-'}"
                 + (f", routed at {row['routed_at'].isoformat(timespec='seconds')}" if row["routed_at"] else "")]
        evaluated = evaluate(conn, rules, BY_ID_SOURCE, {"ids": [args.id]}, EXPLAIN_TIMEOUT_S)
    else:
        fields = {"to_address": args.to, "from_address": args.sender, "body": args.body,
                  "channel": args.channel, "properties": args.properties or {}}
        refuse_what_the_table_would(conn, NewMessage(**fields))
        lines = [f"proposed message to {args.to}" + (f" via {args.channel}" if args.channel else "")]
        evaluated = evaluate(conn, rules, PROPOSED_SOURCE, {"fields": Jsonb(fields)}, EXPLAIN_TIMEOUT_S)
    message = evaluated[0]
    channels = read_channel_states(conn, time_zone)
    if message.blocking_rule_id is not None:
        blocking = rules.blocking_by_id[message.blocking_rule_id]
        lines.append(f'blocking rule: "{blocking.name}" (position {blocking.position}) matches: {blocking.condition}')
    else:
        lines.append(f"blocking rules: none of {len(rules.blocking)} enabled matches")
        if message.channel is not None:
            lines.append(f"routing: skipped, the message names channel {message.channel}")
            lines.append(describe_channel(message.channel, channels))
        elif message.routing_rule_id is None:
            lines.append(f"routing rules: none of {len(rules.routing)} enabled matches")
        else:
            rule = rules.routing_by_id[message.routing_rule_id]
            lines.append(f'routing rule: "{rule.name}" (position {rule.position}) matches: {rule.condition}')
            weights = f" weights {','.join(map(str, rule.weights))}" if rule.weights else ""
            lines.append(f"  {rule.strategy}{weights} over {', '.join(rule.channels)}")
            lines.extend(describe_channel(name, channels) for name in rule.channels)
    verdict: Decision = decide(evaluated, rules, channels, Rotation())[0]
    lines.append(f"verdict: {verdict.status}" + (f" via {verdict.channel}" if verdict.channel else "")
                 + (f" ({verdict.error})" if verdict.error else ""))
    matched = rules.routing_by_id.get(message.routing_rule_id or 0)
    rotating = matched is not None and matched.strategy != "failover"
    if verdict.channel and rotating:
        lines.append("  (the router takes turns among the usable channels: the next message may go to another)")
    return lines


def refuse_what_the_table_would(conn: psycopg.Connection[Any], proposed: NewMessage) -> None:
    """A proposed message the messages table would refuse (a malformed number, an empty body)
    is said so, naming the constraint, instead of being explained: inserted, then undone."""
    with conn.transaction(force_rollback=True):
        try:
            queue.insert_message(conn, proposed)
        except InvalidMessage as e:
            raise SmsbusError(f"this message would be refused: {e}") from None


def describe_channel(name: str, channels: dict[str, ChannelState]) -> str:
    state = channels.get(name)
    if state is None:
        return f"  {name:16} no such channel"
    parts = ["enabled" if state.enabled else "disabled", "connected" if state.connected else "not connected"]
    if state.remaining_today is not None:
        parts.append(f"{state.remaining_today} left today")
    return f"  {name:16} {', '.join(parts)}"

