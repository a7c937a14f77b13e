"""The message row as a msgspec Struct: what crosses process boundaries and the local API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `messages` (SPEC §2)."""

    id: int
    direction: str
    type: str
    status: str
    ack_status: str
    trigger_status: str
    channel: str | None
    from_address: str | None
    to_address: str | None
    body: str
    properties: dict[str, Any]
    client_ref: str | None
    scheduled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    report_at: datetime | None
    received_at: datetime | None
    provider_id: str | None
    parts: int | None
    attempts: int
    next_attempt_at: datetime | None
    error: str | None
    campaign_id: int | None
    # why the triggers failed on this message (trigger_status FAILED); `error` is the sending's
    trigger_error: str | None = None
    # when the router let it through (SPEC §5); channels send only routed messages
    routed_at: datetime | None = None
    # where its status changes are POSTed, and the API key that created it (SPEC §10)
    status_callback: str | None = None
    api_key_id: int | None = None


class NewMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller supplies to send; the database fills in the rest."""

    to_address: str
    body: str
    from_address: str | None = None
    channel: str | None = None
    scheduled_at: datetime | None = None
    properties: dict[str, Any] = {}
    client_ref: str | None = None
    direction: str = "out"
    status_callback: str | None = None
    api_key_id: int | None = None


MESSAGE_COLUMNS = tuple(Message.__struct_fields__)
