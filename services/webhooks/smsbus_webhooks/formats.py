"""What a callback looks like on the wire, per style (properties.callback_style):

- smsbus (default): POST of JSON, signed with HMAC-SHA256 of `<timestamp>.<body>` under the
  message's API key's callback_secret (X-Smsbus-Signature: sha256=<hex>, X-Smsbus-Timestamp).
- kannel: GET on the dlr-url with Kannel's escapes expanded (%d the DLR type, %p, %P, %A ...),
  only for the DLR types properties.dlr_mask asks for, as Kannel's smsbox does.
- jasmin: Jasmin's form fields (id, message_status, level, and the receipt's fields at level
  2/3) by properties.dlr_method (POST by default) for the levels properties.dlr_level asks for;
  the receiver must answer `ACK/Jasmin`, as Jasmin requires.

Pure functions: no database, no network.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from smsbus.statuses import Status

SIGNATURE_HEADER = "X-Smsbus-Signature"
TIMESTAMP_HEADER = "X-Smsbus-Timestamp"
EVENT_HEADER = "X-Smsbus-Event-Id"
USER_AGENT = "smsbus-webhooks/0.1"

STYLE_SMSBUS = "smsbus"
STYLE_KANNEL = "kannel"
STYLE_JASMIN = "jasmin"
JASMIN_ACKNOWLEDGEMENT = b"ACK/Jasmin"

# Kannel's DLR types (dlr_mask bits); a status without one (SENDING, NOREPORT, ...) is never
# reported in Kannel style, as Kannel itself has nothing to say then
KANNEL_DLR_TYPES: Mapping[str, int] = {
    Status.DELIVERED: 1,
    Status.NOTDELIVERED: 2,
    Status.SENT: 8,
    Status.FAILED: 16,
    Status.NOCHANNEL: 16,
    Status.BLOCKED: 16,
    Status.DAILYLIMIT: 16,
}
# Jasmin level 1 is the SMSC's answer to the submit, level 2 the terminal's receipt
JASMIN_SUBMIT_STATUSES = frozenset({Status.SENT, Status.FAILED, Status.NOCHANNEL, Status.BLOCKED, Status.DAILYLIMIT})
RECEIPT_STATES: Mapping[str, str] = {
    Status.DELIVERED: "DELIVRD",
    Status.NOTDELIVERED: "UNDELIV",
    Status.NOREPORT: "UNKNOWN",
}
# Kannel's %c (0 7-bit, 1 8-bit, 2 UCS-2) from the properties.coding the api stores
KANNEL_CODINGS: Mapping[str, str] = {"gsm7": "0", "8bit": "1", "ucs2": "2"}
ESME_CODE = re.compile(r"\bESME_[A-Z0-9]+\b")
RECEIPT_ERROR = re.compile(r"(?i)\berr:\s*([0-9]{1,3})\b")
RECEIPT_STATE = re.compile(r"(?i)\bstat:\s*([A-Z]{7})\b")
KANNEL_ESCAPE = re.compile(r"%(.)")


class Unsendable(Exception):
    """A callback that can never be made (no secret to sign with, an unknown style): the
    outbox row is given up at once, with these words as its error."""


@dataclass(frozen=True)
class Callback:
    """One outbox row as claimed, with the signing secret of its message's key."""

    id: int
    message_id: int
    status: str
    previous_status: str
    changed_at: datetime
    url: str
    message: Mapping[str, Any]
    api_key_id: int | None = None
    # None: no key named (a message from SQL or the CLI), or the key is gone (key_found)
    secret: str | None = None
    key_found: bool = False

    @property
    def properties(self) -> Mapping[str, Any]:
        value = self.message.get("properties")
        return value if isinstance(value, dict) else {}

    @property
    def style(self) -> str:
        return str(self.properties.get("callback_style") or STYLE_SMSBUS)


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # the reply body the receiver must send for the callback to count as taken (Jasmin)
    expected_reply: bytes | None = None


def build_request(callback: Callback, now: datetime) -> Request | None:
    """The HTTP request for this callback; None when its style does not report this status
    (a Kannel dlr_mask, a Jasmin dlr_level)."""
    if callback.style == STYLE_SMSBUS:
        return smsbus_request(callback, now)
    if callback.style == STYLE_KANNEL:
        return kannel_request(callback)
    if callback.style == STYLE_JASMIN:
        return jasmin_request(callback)
    raise Unsendable(f"unknown properties.callback_style {callback.style[:40]!r} (expected smsbus, kannel or jasmin)")


# -- smsbus: signed JSON ----------------------------------------------------------------


def smsbus_payload(callback: Callback) -> dict[str, Any]:
    """The JSON body: the change and what an integrator matches it with; never the text."""
    message = callback.message
    return {
        "event_id": callback.id,
        "message_id": callback.message_id,
        "status": callback.status,
        "previous_status": callback.previous_status,
        "changed_at": _iso(callback.changed_at),
        "client_ref": message.get("client_ref"),
        "to": message.get("to_address"),
        "from": message.get("from_address"),
        "channel": message.get("channel"),
        "parts": message.get("parts"),
        "provider_id": message.get("provider_id"),
        "error": message.get("error"),
        "sent_at": message.get("sent_at"),
        "report_at": message.get("report_at"),
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Smsbus-Signature value: a receiver computes the same and compares in constant time."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def smsbus_request(callback: Callback, now: datetime) -> Request:
    if callback.api_key_id is not None and not callback.key_found:
        # never send unsigned what its sender expects signed
        raise Unsendable(f"API key {callback.api_key_id} no longer exists: nothing to sign the callback with")
    body = json.dumps(smsbus_payload(callback), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", EVENT_HEADER: str(callback.id)}
    if callback.secret is not None:
        # a fresh timestamp per attempt lets receivers refuse old replays
        timestamp = str(int(now.timestamp()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(callback.secret, timestamp, body)
    return Request("POST", callback.url, body, headers)


# -- Kannel: GET on the dlr-url with its escapes ----------------------------------------


def kannel_request(callback: Callback) -> Request | None:
    dlr_type = KANNEL_DLR_TYPES.get(callback.status)
    mask = _int_property(callback.properties, "dlr_mask")
    # as smsbox: no dlr_mask, no report
    if dlr_type is None or not mask & dlr_type:
        return None
    return Request("GET", expand_kannel_escapes(callback.url, kannel_values(callback, dlr_type)))


def kannel_values(callback: Callback, dlr_type: int) -> dict[str, str]:
    """Kannel's escapes as its DLR sees them: %p is the original's receiver, %P its sender."""
    message = callback.message
    to_address = str(message.get("to_address") or "")
    from_address = str(message.get("from_address") or "")
    body = str(message.get("body") or "")
    return {
        "d": str(dlr_type),
        "A": _kannel_smsc_reply(callback, dlr_type),
        "p": to_address,
        "P": from_address,
        "q": to_address,
        "Q": from_address,
        "i": str(message.get("channel") or ""),
        "I": str(callback.message_id),
        "F": str(message.get("provider_id") or ""),
        "T": str(int(callback.changed_at.timestamp())),
        "t": callback.changed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "a": body,
        "b": body,
        "c": KANNEL_CODINGS.get(str(callback.properties.get("coding")), "0"),
        "%": "%",
    }


def expand_kannel_escapes(url: str, values: Mapping[str, str]) -> str:
    """Each %x with a value becomes that value URL-encoded; an unknown %x stays as written,
    as in Kannel."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "%":
            return "%"
        value = values.get(key)
        return match.group(0) if value is None else quote(value, safe="")

    return KANNEL_ESCAPE.sub(replace, url)


def _kannel_smsc_reply(callback: Callback, dlr_type: int) -> str:
    error = str(callback.message.get("error") or "")
    if dlr_type == 8:
        return "ACK/"
    if dlr_type == 16:
        return f"NACK/{error}"
    return receipt_text(callback)


# -- Jasmin: form fields, level 1 (submit) and 2 (receipt) -------------------------------


def jasmin_request(callback: Callback) -> Request | None:
    requested = _int_property(callback.properties, "dlr_level") or 1
    if callback.status in JASMIN_SUBMIT_STATUSES:
        if requested not in (1, 3):
            return None
        status, level = _jasmin_submit_status(callback), "1"
    elif callback.status in RECEIPT_STATES:
        if requested not in (2, 3):
            return None
        status, level = _receipt_state(callback), str(requested)
    else:
        return None
    fields = {"id": str(callback.message_id), "message_status": status, "level": level}
    if level != "1":
        fields.update(receipt_fields(callback))
    encoded = urlencode(fields)
    headers = {"Accept": "text/plain"}
    method = str(callback.properties.get("dlr_method") or "POST").upper()
    if method == "GET":
        separator = "&" if "?" in callback.url else "?"
        return Request("GET", callback.url + separator + encoded, b"", headers, JASMIN_ACKNOWLEDGEMENT)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return Request("POST", callback.url, encoded.encode(), headers, JASMIN_ACKNOWLEDGEMENT)


def _jasmin_submit_status(callback: Callback) -> str:
    if callback.status == Status.SENT:
        return "ESME_ROK"
    code = ESME_CODE.search(str(callback.message.get("error") or ""))
    # the SMSC's own code when it gave one; else the generic "submit failed"
    return code.group(0) if code else "ESME_RSUBMITFAIL"


# -- the receipt's fields, as an SMSC writes them (SMPP 3.4 appendix B) -----------------


def _receipt_state(callback: Callback) -> str:
    named = RECEIPT_STATE.search(str(callback.message.get("error") or ""))
    if callback.status == Status.NOTDELIVERED and named:
        return named.group(1).upper()
    return RECEIPT_STATES.get(callback.status, "UNKNOWN")


def receipt_fields(callback: Callback) -> dict[str, str]:
    message = callback.message
    error = RECEIPT_ERROR.search(str(message.get("error") or ""))
    delivered = callback.status == Status.DELIVERED
    return {
        "id_smsc": str(message.get("provider_id") or ""),
        "sub": "001",
        "dlvrd": "001" if delivered else "000",
        "subdate": _receipt_time(message.get("sent_at")),
        "donedate": _receipt_time(message.get("report_at")) or _receipt_time(callback.changed_at.isoformat()),
        "err": f"{int(error.group(1)):03d}" if error else "000",
        "text": str(message.get("body") or "")[:20],
    }


def receipt_text(callback: Callback) -> str:
    """The receipt as an SMSC's deliver_sm text: Kannel's %A for types 1 and 2."""
    fields = receipt_fields(callback)
    return (
        f"id:{fields['id_smsc']} sub:{fields['sub']} dlvrd:{fields['dlvrd']} submit date:{fields['subdate']}"
        f" done date:{fields['donedate']} stat:{_receipt_state(callback)} err:{fields['err']} text:{fields['text']}"
    )


def _receipt_time(value: Any) -> str:
    """YYMMDDhhmm (UTC) from the snapshot's ISO time; empty when there is none."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value)).astimezone(UTC).strftime("%y%m%d%H%M")
    except ValueError:
        return ""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _int_property(properties: Mapping[str, Any], name: str) -> int:
    """A number the api stored (as number or text); 0 when absent or not a number."""
    value = properties.get(name)
    try:
        return int(value) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0
