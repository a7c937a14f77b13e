"""RFC 9457 problem+json for every refusal: the status, what was wrong, and the field or the
database constraint that refused it, so a caller can fix the request without reading logs."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from smsbus.errors import InvalidMessage, SmsbusError

PROBLEM_JSON = "application/problem+json"

log = logging.getLogger("api")

# "Expected `str`, got `int` - at `$[3].to_address`" -> [3].to_address
FIELD_IN_MSGSPEC_ERROR = re.compile(r" - at `\$\.?([^`]*)`")
# "Object contains unknown field `colour`", "Object missing required field `body`"
NAMED_FIELD = re.compile(r"field `([^`]+)`")
# litestar's name for the whole body, not a field of it
WHOLE_BODY = "data"
# the messages table's CHECK constraints name their column: messages_to_address_format
CONSTRAINT_FIELDS = {
    "messages_to_address_format": "to_address",
    "messages_from_address_format": "from_address",
    "messages_out_has_to_address": "to_address",
    "messages_body_not_empty": "body",
    "messages_properties_is_object": "properties",
    "messages_channel_not_empty": "channel",
    "messages_status_callback_is_http": "status_callback",
    "messages_client_ref_key": "client_ref",
}


class Problem(msgspec.Struct, omit_defaults=True):
    """The body of every error response (RFC 9457)."""

    title: str
    status: int
    detail: str = ""
    type: str = "about:blank"
    # the request field that was wrong (`[3].to_address` in a batch), when one was
    field: str | None = None
    # the database constraint that refused the row, when one did
    constraint: str | None = None


class ProblemError(HTTPException):
    """Raised by handlers: becomes a problem+json response."""

    def __init__(
        self, status: int, detail: str, *, field: str | None = None, constraint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.field = field
        self.constraint = constraint


def problem_response(
    status: int, detail: str, *, field: str | None = None, constraint: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    title = _TITLES.get(status, "Error")
    return Response(
        Problem(title=title, status=status, detail=detail, field=field, constraint=constraint),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
    422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error",
    503: "Service Unavailable",
}


def field_of(text: str) -> str | None:
    match = FIELD_IN_MSGSPEC_ERROR.search(text) or NAMED_FIELD.search(text)
    return match.group(1) if match else None


def invalid_row(error: InvalidMessage, prefix: str = "") -> ProblemError:
    field = CONSTRAINT_FIELDS.get(error.constraint or "")
    return ProblemError(
        422, str(error), field=prefix + field if field else None, constraint=error.constraint
    )


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if isinstance(exc, ProblemError):
        return problem_response(
            exc.status_code, exc.detail, field=exc.field, constraint=exc.constraint, headers=exc.headers
        )
    detail = exc.detail
    field = None
    if isinstance(exc, ValidationException) or exc.status_code == 400:
        # litestar puts msgspec's own words in `extra`; they name the field
        extras = _extras(exc)
        keys = [str(e["key"]) for e in extras if e.get("key") and e.get("key") != WHOLE_BODY]
        texts = [str(e.get("message", "")) for e in extras]
        field = next((f for f in [path_in_body(exc), *keys, *map(field_of, [detail, *texts])] if f), None)
        if any(texts):
            detail = "; ".join(f"{field}: {t}" if field else t for t in texts if t)
    return problem_response(exc.status_code, detail, field=field, headers=exc.headers)


def path_in_body(exc: HTTPException) -> str | None:
    """Where in the body msgspec found the fault (`[3].to_address` in a batch): litestar keeps
    only the last key, the cause says the whole path (`$.data[3].to_address`)."""
    if not isinstance(exc.__cause__, msgspec.ValidationError):
        return None
    path = field_of(str(exc.__cause__))
    if path is None or not path.startswith(WHOLE_BODY):
        return None
    return path[len(WHOLE_BODY):].lstrip(".") or None


def _extras(exc: HTTPException) -> list[dict[str, Any]]:
    extra = exc.extra
    if isinstance(extra, list):
        return [e for e in extra if isinstance(e, dict)]
    if isinstance(extra, dict):
        return [extra]
    return []


def handle_smsbus_error(request: Request[Any, Any, Any], exc: SmsbusError) -> Response[Problem]:
    """A refusal by the shared code (the CLI prints the same words)."""
    if isinstance(exc, InvalidMessage):
        refused = invalid_row(exc)
        return problem_response(422, refused.detail, field=refused.field, constraint=refused.constraint)
    status = 404 if "no " in str(exc)[:4] or type(exc).__name__.endswith("NotFound") else 422
    return problem_response(status, str(exc), field=_field_named(str(exc)))


def _field_named(text: str) -> str | None:
    """The shared code starts its refusals with the field: `scopes: expected ...`."""
    head, colon, _ = text.partition(":")
    return head if colon and head.replace("_", "").isalnum() and head.islower() else None


def handle_data_error(request: Request[Any, Any, Any], exc: psycopg.DataError) -> Response[Problem]:
    """A value PostgreSQL cannot take (a NUL in a text, a number out of range) that no field
    check caught: the caller's input, refused as such."""
    detail = exc.diag.message_primary or type(exc).__name__
    return problem_response(400, f"a value PostgreSQL cannot store: {detail}")


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.exception("request failed method=%s path=%s", request.method, request.url.path)
    return problem_response(500, "the server failed on this request; the error is in its log")
