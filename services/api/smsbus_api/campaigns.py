"""/v1/campaigns: create, add recipients, preview with the cost, start/pause/resume/cancel, and
progress (SPEC §12), through the very functions `smsbus campaigns` calls (smsbus.campaigns).
The campaigns service does the feeding."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post

import smsbus.campaigns as campaigns
from smsbus.campaigns import Campaign, Estimate, LoadReport, NewCampaign, Progress
from smsbus_api.auth import scope
from smsbus_api.configuration import in_transaction

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern="^[^\x00]*$")]
Template = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000, pattern="^[^\x00]*$")]
Value = Annotated[str, msgspec.Meta(max_length=10_000, pattern="^[^\x00]*$")]
# one request's recipients; larger lists go in several requests (or `smsbus campaigns load`)
MAX_RECIPIENTS_PER_REQUEST = 10_000


class CampaignIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Text
    template: Template
    sender: Text | None = None
    channel: Text | None = None
    rate_per_s: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 10.0
    start_at: datetime | None = None
    # "09:00-18:00" in time_zone; null: any time
    allowed_hours: Annotated[str, msgspec.Meta(max_length=20, pattern="^[^\x00]*$")] | None = None
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern="^[A-Za-z0-9_+/-]+$")] = "UTC"
    default_region: Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")] | None = None


class RecipientsIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # each recipient: "address" (any form; normalised to E.164) and the template's fields
    recipients: Annotated[list[dict[Text, Value]], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS_PER_REQUEST)]
    address_column: Text = campaigns.ADDRESS_FIELD


class StartIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    at: datetime | None = None


class PreviewOut(msgspec.Struct):
    texts: list[dict[str, Any]]
    estimate: Estimate
    rejected: list[dict[str, Any]]


@get("/v1/campaigns", opt=scope("read"), summary="Every campaign")
async def list_campaigns(request: Request[Any, Any, Any]) -> list[Campaign]:
    return await in_transaction(request, campaigns.list_campaigns)


@get("/v1/campaigns/{name:str}", opt=scope("read"), summary="A campaign (name or id) and its progress")
async def show_campaign(request: Request[Any, Any, Any], name: str) -> Progress:
    return await in_transaction(request, lambda conn: campaigns.progress(conn, name))


@post("/v1/campaigns", opt=scope("send"), status_code=201, summary="Create a DRAFT campaign")
async def create_campaign(request: Request[Any, Any, Any], data: CampaignIn) -> Campaign:
    new = NewCampaign(**msgspec.structs.asdict(data))
    return await in_transaction(request, lambda conn: campaigns.create_campaign(conn, new))


@post("/v1/campaigns/{name:str}/recipients", opt=scope("send"), status_code=200,
      summary="Add recipients (invalid, duplicate and opted-out ones are counted and kept in the report)")
async def add_recipients(request: Request[Any, Any, Any], name: str, data: RecipientsIn) -> LoadReport:
    header = list(dict.fromkeys(field for row in data.recipients for field in row))
    rows = [[row.get(field, "") for field in header] for row in data.recipients]
    return await in_transaction(request, lambda conn: campaigns.load_rows(
        conn, name, header, rows, address_column=data.address_column))


@get("/v1/campaigns/{name:str}/preview", opt=scope("read"),
     summary="The first texts, the messages and SMS parts still to send, the first rejected rows")
async def preview_campaign(request: Request[Any, Any, Any], name: str) -> PreviewOut:
    def work(conn: Any) -> PreviewOut:
        texts = [{"address": address, "text": text, "encoding": encoding, "parts": parts}
                 for address, text in campaigns.preview(conn, name, 5)
                 for encoding, parts in [campaigns.count_parts(text)]]
        return PreviewOut(texts, campaigns.estimate(conn, name), campaigns.rejected_rows(conn, name, 20))

    return await in_transaction(request, work)


@post("/v1/campaigns/{name:str}/start", opt=scope("send"), status_code=200,
      summary="RUNNING now, or SCHEDULED until `at`")
async def start_campaign(request: Request[Any, Any, Any], name: str, data: StartIn | None = None) -> Campaign:
    at = data.at if data is not None else None
    return await in_transaction(request, lambda conn: campaigns.start_campaign(conn, name, at))


@post("/v1/campaigns/{name:str}/pause", opt=scope("send"), status_code=200, summary="Stop feeding")
async def pause_campaign(request: Request[Any, Any, Any], name: str) -> Campaign:
    return await in_transaction(request, lambda conn: campaigns.pause_campaign(conn, name))


@post("/v1/campaigns/{name:str}/resume", opt=scope("send"), status_code=200, summary="Feed again")
async def resume_campaign(request: Request[Any, Any, Any], name: str) -> Campaign:
    return await in_transaction(request, lambda conn: campaigns.resume_campaign(conn, name))


@post("/v1/campaigns/{name:str}/cancel", opt=scope("send"), status_code=200,
      summary="End it; recipients without a message become CANCELLED")
async def cancel_campaign(request: Request[Any, Any, Any], name: str) -> Campaign:
    return await in_transaction(request, lambda conn: campaigns.cancel_campaign(conn, name))


ROUTES = [list_campaigns, show_campaign, create_campaign, add_recipients, preview_campaign, start_campaign,
          pause_campaign, resume_campaign, cancel_campaign]
