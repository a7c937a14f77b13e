"""`route explain`: which blocking or routing rule matches a message (one in the table, or
one described by its fields) and which channel the router would pick, changing nothing. Runs
the router's own compiled query and channel choice; used by `smsbus route explain` and the api.
The caller rolls its transaction back.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from smsbus import queue
from smsbus.errors import InvalidMessage, MessageNotFound, SmsbusError
from smsbus.message import NewMessage
from smsbus.routing import (
    BY_ID_SOURCE,
    PROPOSED_SOURCE,
    ChannelState,
    Decision,
    Rotation,
    decide,
    evaluate,
    load_rules,
    read_channel_states,
)
from smsbus.rules import refusal_text

EXPLAIN_TIMEOUT_S = 5.0


def explain(
    conn: psycopg.Connection[Any], time_zone: str, *, message_id: int | None = None,
    proposed: NewMessage | None = None,
) -> list[str]:
    """Lines of words, the verdict last. Give message_id or proposed."""
    rules = load_rules(conn)
    if message_id is not None:
        found = conn.execute("SELECT status, channel, routed_at FROM messages WHERE id = %(id)s", {"id": message_id})
        row = found.fetchone()
        if row is None:
            raise MessageNotFound(message_id)
        lines = [f"message {message_id}: status {row['status']}, channel {row['channel'] or '-'}"
                 + (f", routed at {row['routed_at'].isoformat(timespec='seconds')}" if row["routed_at"] else "")]
        evaluated = evaluate(conn, rules, BY_ID_SOURCE, {"ids": [message_id]}, EXPLAIN_TIMEOUT_S)
    elif proposed is not None:
        fields = {"to_address": proposed.to_address, "from_address": proposed.from_address, "body": proposed.body,
                  "channel": proposed.channel, "properties": proposed.properties}
        refuse_what_the_table_would(conn, proposed)
        via = f" via {proposed.channel}" if proposed.channel else ""
        lines = [f"proposed message to {proposed.to_address}{via}"]
        evaluated = evaluate(conn, rules, PROPOSED_SOURCE, {"fields": Jsonb(fields)}, EXPLAIN_TIMEOUT_S)
    else:
        raise SmsbusError("give a message id, or a message's to_address and body")
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


def explain_changing_nothing(
    conn: psycopg.Connection[Any], time_zone: str, *, message_id: int | None = None,
    proposed: NewMessage | None = None,
) -> list[str]:
    """`explain`, rolled back, with a rule that fails on this message or takes too long said
    in words (SmsbusError): `smsbus route explain` and the Manager's explain box."""
    try:
        return explain(conn, time_zone, message_id=message_id, proposed=proposed)
    except psycopg.errors.QueryCanceled:
        raise SmsbusError(f"the rules took longer than {EXPLAIN_TIMEOUT_S} s") from None
    except (psycopg.ProgrammingError, psycopg.DataError) as e:
        raise SmsbusError(f"a rule raised on this message: {refusal_text(e)}") from None
    finally:
        conn.rollback()


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

