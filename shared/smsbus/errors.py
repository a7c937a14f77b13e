"""The one small hierarchy of smsbus errors; the CLI prints them as one line."""

from __future__ import annotations


class SmsbusError(Exception):
    """Anything smsbus refuses on purpose, with a message fit for an operator."""


class ConfigError(SmsbusError):
    """A bad setting: raised at start-up so the process exits and supervisord marks it FATAL."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"bad setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class InvalidMessage(SmsbusError):
    """PostgreSQL refused a message row; the message names the constraint."""

    def __init__(self, constraint: str | None, detail: str) -> None:
        super().__init__(detail)
        self.constraint = constraint


class ForbiddenMove(SmsbusError):
    """A status move that smsbus.statuses.ALLOWED_MOVES does not contain."""

    def __init__(self, from_status: str, to_status: str) -> None:
        super().__init__(f"status move {from_status} -> {to_status} is not allowed")
        self.from_status = from_status
        self.to_status = to_status


class MessageNotFound(SmsbusError):
    def __init__(self, message_id: int) -> None:
        super().__init__(f"no message with id {message_id}")
        self.message_id = message_id


class MalformedNotification(SmsbusError):
    """A datagram or line on port 16725 that is not `status|nonstatus [id,...]`."""


class NotRunning(SmsbusError):
    """supervisord (or the embedded PostgreSQL) is not running."""
