"""The `channels` table, edited while everything runs: add, change, enable, disable, remove.

Settings are validated per type (smsbus.channel_settings) before they are saved, so a typo is
refused at once with the field named. The supervisord programs follow the enabled rows
(`enabled_programs` -> supervisor.Supervisor.sync_channels).
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from smsbus import config
from smsbus.channel_settings import GsmSettings, validate_settings
from smsbus.config import Settings
from smsbus.db import translate_refusal
from smsbus.errors import SmsbusError
from smsbus.secret_files import SECRETS_FOLDER, keep_secrets_apart, without_replaced_files
from smsbus.supervisor import ChannelProgram, Supervisor

# supervisord's wait after SIGTERM for a channel type with nothing longer to finish
DEFAULT_STOP_WAIT_S = 10
# settings never shown back (CLI `show`, the api): SMPP passwords, SIM PINs
SECRET_SETTINGS = frozenset({"pin", "password"})

INSERT_CHANNEL = """
INSERT INTO channels (name, type, enabled, settings, report_timeout, max_rate, daily_limit)
VALUES (%(name)s, %(type)s, %(enabled)s, %(settings)s, %(report_timeout)s, %(max_rate)s, %(daily_limit)s)
RETURNING *
"""
SELECT_CHANNELS = "SELECT * FROM channels ORDER BY name"
SELECT_CHANNEL = "SELECT * FROM channels WHERE name = %(name)s"
SELECT_ENABLED = "SELECT name, type, settings FROM channels WHERE enabled ORDER BY name"
SET_ENABLED = "UPDATE channels SET enabled = %(enabled)s WHERE name = %(name)s RETURNING *"
SET_SETTINGS = "UPDATE channels SET settings = %(settings)s WHERE name = %(name)s RETURNING *"
DELETE_CHANNEL = "DELETE FROM channels WHERE name = %(name)s RETURNING *"
UPDATE_CHANNEL = """
UPDATE channels SET settings = %(settings)s, enabled = %(enabled)s, report_timeout = %(report_timeout)s,
                    max_rate = %(max_rate)s, daily_limit = %(daily_limit)s
WHERE name = %(name)s
RETURNING *
"""


class ChannelNotFound(SmsbusError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no channel named {name!r} (see `smsbus channels list`)")


def add_channel(
    conn: psycopg.Connection[Any],
    name: str,
    channel_type: str,
    settings: dict[str, Any],
    *,
    enabled: bool = True,
    report_timeout: timedelta | None = None,
    max_rate: float | None = None,
    daily_limit: int | None = None,
    secrets_folder: Path | None = None,
) -> dict[str, Any]:
    """Validated, then saved, an inline secret moved to its file first (smsbus.secret_files);
    ConfigError names a bad setting, InvalidMessage a refused column."""
    validate_settings(channel_type, settings)
    params = {
        "name": name,
        "type": channel_type,
        "enabled": enabled,
        "settings": Jsonb(keep_secrets_apart(settings, name, secrets_folder or default_secrets_folder())),
        "report_timeout": report_timeout or timedelta(hours=48),
        "max_rate": max_rate,
        "daily_limit": daily_limit,
    }
    try:
        with conn.transaction():
            row = conn.execute(INSERT_CHANNEL, params).fetchone()
    except psycopg.errors.UniqueViolation:
        raise SmsbusError(f"a channel named {name!r} exists already") from None
    except psycopg.errors.IntegrityError as e:
        raise translate_refusal(e) from None
    assert row is not None
    return dict(row)


def list_channels(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(SELECT_CHANNELS)]


def get_channel(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    return _one(conn, SELECT_CHANNEL, {"name": name}, name)


def set_enabled(conn: psycopg.Connection[Any], name: str, enabled: bool) -> dict[str, Any]:
    with conn.transaction():
        return _one(conn, SET_ENABLED, {"name": name, "enabled": enabled}, name)


def change_settings(
    conn: psycopg.Connection[Any], name: str, changes: dict[str, Any], secrets_folder: Path | None = None
) -> dict[str, Any]:
    """Merge `changes` into the saved settings (None removes a key: its default applies); a new
    inline secret replaces the saved one's file."""
    with conn.transaction():
        channel = get_channel(conn, name)
        merged = without_replaced_files(
            {k: v for k, v in {**channel["settings"], **changes}.items() if v is not None})
        validate_settings(channel["type"], merged)
        kept = keep_secrets_apart(merged, name, secrets_folder or default_secrets_folder())
        return _one(conn, SET_SETTINGS, {"name": name, "settings": Jsonb(kept)}, name)


def default_secrets_folder() -> Path:
    return config.load().data_path / SECRETS_FOLDER



def replace_channel(
    conn: psycopg.Connection[Any],
    name: str,
    settings: dict[str, Any],
    *,
    enabled: bool,
    report_timeout: timedelta | None = None,
    max_rate: float | None = None,
    daily_limit: int | None = None,
) -> dict[str, Any]:
    """Every editable column at once (the Manager's edit form), validated as `add_channel` does."""
    with conn.transaction():
        channel = get_channel(conn, name)
        settings = without_replaced_files(settings)
        validate_settings(channel["type"], settings)
        kept = keep_secrets_apart(settings, name, default_secrets_folder())
        params = {
            "name": name, "settings": Jsonb(kept), "enabled": enabled,
            "report_timeout": report_timeout or timedelta(hours=48), "max_rate": max_rate, "daily_limit": daily_limit,
        }
        try:
            return _one(conn, UPDATE_CHANNEL, params, name)
        except psycopg.errors.IntegrityError as e:
            raise translate_refusal(e) from None


def remove_channel(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    with conn.transaction():
        return _one(conn, DELETE_CHANNEL, {"name": name}, name)


def stop_wait_seconds(settings: msgspec.Struct) -> int:
    """supervisord's wait after SIGTERM: the longest exchange the channel finishes first."""
    if isinstance(settings, GsmSettings):
        return math.ceil(settings.send_timeout_s + settings.command_timeout_s) + 5
    return DEFAULT_STOP_WAIT_S


def enabled_programs(conn: psycopg.Connection[Any]) -> list[ChannelProgram]:
    """A program per enabled channel. A row whose settings no longer validate (edited by SQL)
    still gets one: the process exits at start naming the field, and supervisord shows FATAL."""
    programs = []
    for row in conn.execute(SELECT_ENABLED):
        try:
            settings = validate_settings(row["type"], row["settings"])
        except SmsbusError:
            programs.append(ChannelProgram(row["name"], row["type"], DEFAULT_STOP_WAIT_S))
            continue
        programs.append(ChannelProgram(row["name"], row["type"], stop_wait_seconds(settings),
                                       metrics_port=settings.metrics_port))
    return programs


def _one(conn: psycopg.Connection[Any], query: str, params: dict[str, Any], name: str) -> dict[str, Any]:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise ChannelNotFound(name)
    return dict(row)


def follow_in_supervisor(settings: Settings, conn: psycopg.Connection[Any]) -> dict[str, list[str]] | None:
    """Make the channel programs follow the table now (programs started, restarted, stopped);
    None when smsbus is not running under supervisord: they follow at `smsbus up`."""
    supervisor = Supervisor(settings)
    if not supervisor.is_running():
        return None
    try:
        return supervisor.sync_channels(settings, enabled_programs(conn))
    except OSError as e:
        raise SmsbusError(f"supervisord did not take the change: {e}") from None


def masked_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: "***" if k in SECRET_SETTINGS else v for k, v in settings.items()}
