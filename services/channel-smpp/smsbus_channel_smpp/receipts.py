"""Delivery receipts: what a deliver_sm receipt says (receipted_message_id and message_state
TLVs, or the `id:... stat:...` text of SMPP 3.4 Appendix B), and provider ids normalised so
that a receipt always finds its message: case and leading zeros never matter, and a channel
whose SMSC writes the text id in decimal (or hex) while submit_sm_resp gave hex (or decimal)
says so with `receipt_id_format`. Guessing instead would match the wrong message: "80" is a
valid id in both bases.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

# esm_class bits 2-5: the message type; 0x04 is an SMSC delivery receipt (0x08, 0x10, 0x20
# are SME acknowledgements and intermediate notifications, which end nothing)
ESM_CLASS_TYPE_MASK = 0x3C
ESM_CLASS_DELIVERY_RECEIPT = 0x04
ESM_CLASS_UDHI = 0x40

# message_state TLV (0x0427) values, as the stat: text names them
MESSAGE_STATES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
DELIVERED_STATE = "DELIVRD"
# states that end a part without delivery; ENROUTE and ACCEPTD are on the way
FAILED_STATES = frozenset({"EXPIRED", "DELETED", "UNDELIV", "UNKNOWN", "REJECTD"})
FINAL_STATES = FAILED_STATES | {DELIVERED_STATE}

RECEIPT_FIELD = re.compile(r"(?i)\b(id|stat|err):\s*(\S+)")
HEX_DIGITS = frozenset(string.hexdigits)


@dataclass(frozen=True)
class Receipt:
    provider_id: str
    state: str
    error: str | None
    # the id came from the `id:` text (a TLV carries the id exactly as submit_sm_resp gave it)
    from_text: bool = False

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def delivered(self) -> bool:
        return self.state == DELIVERED_STATE


def is_receipt(esm_class: int) -> bool:
    return esm_class & ESM_CLASS_TYPE_MASK == ESM_CLASS_DELIVERY_RECEIPT


def parse_receipt(
    text: str, receipted_message_id: str | None = None, message_state: int | None = None
) -> Receipt | None:
    """The TLVs win over the text where both are given; None when no id can be found."""
    fields = {name.lower(): value for name, value in RECEIPT_FIELD.findall(text)}
    provider_id = receipted_message_id or fields.get("id")
    if not provider_id:
        return None
    state = MESSAGE_STATES.get(message_state or 0) or fields.get("stat", "UNKNOWN").upper()
    return Receipt(provider_id, state, fields.get("err"), from_text=not receipted_message_id)


def normalise_provider_id(provider_id: str) -> str:
    """Lower case without leading zeros: `00A1F` and `a1f` are one id."""
    cleaned = provider_id.strip().lower()
    return (cleaned.lstrip("0") or "0") if cleaned else cleaned


def receipt_key(receipt: Receipt, receipt_id_format: str) -> str:
    """The receipt's id as the matching part recorded it (normalised submit_sm_resp id).

    receipt_id_format: "same"; "decimal" (the text gives the decimal value of a hex id);
    "hex" (the text gives the hex value of a decimal id). An id that does not fit the
    format is compared as it is."""
    provider_id = normalise_provider_id(receipt.provider_id)
    if receipt.from_text and receipt_id_format == "decimal" and provider_id.isdigit():
        return format(int(provider_id), "x")
    if receipt.from_text and receipt_id_format == "hex" and all(c in HEX_DIGITS for c in provider_id):
        return str(int(provider_id, 16))
    return provider_id
