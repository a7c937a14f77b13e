"""Every SMPP 3.4 command_status (§5.1.3) with its class: permanent (fail at once), temporary
(retry with backoff) or throttling (slow the whole bind down, keep the attempt).
A channel's `error_classes` setting overrides the class of any code.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class ErrorClass(enum.StrEnum):
    PERMANENT = "permanent"
    TEMPORARY = "temporary"
    THROTTLING = "throttling"


@dataclass(frozen=True)
class CommandStatus:
    name: str
    description: str
    error_class: ErrorClass


P, T, S = ErrorClass.PERMANENT, ErrorClass.TEMPORARY, ErrorClass.THROTTLING

ESME_ROK = 0x00000000
ESME_RSYSERR = 0x00000008
ESME_RINVDSTADR = 0x0000000B
ESME_RMSGQFUL = 0x00000014
ESME_RTHROTTLED = 0x00000058
ESME_RX_T_APPN = 0x00000064
ESME_RX_P_APPN = 0x00000065

COMMAND_STATUSES: dict[int, CommandStatus] = {
    0x00000001: CommandStatus("ESME_RINVMSGLEN", "Message Length is invalid", P),
    0x00000002: CommandStatus("ESME_RINVCMDLEN", "Command Length is invalid", P),
    0x00000003: CommandStatus("ESME_RINVCMDID", "Invalid Command ID", P),
    # the bind went wrong, not the message: send it again once bound
    0x00000004: CommandStatus("ESME_RINVBNDSTS", "Incorrect BIND Status for given command", T),
    0x00000005: CommandStatus("ESME_RALYBND", "ESME Already in Bound State", T),
    0x00000006: CommandStatus("ESME_RINVPRTFLG", "Invalid Priority Flag", P),
    0x00000007: CommandStatus("ESME_RINVREGDLVFLG", "Invalid Registered Delivery Flag", P),
    0x00000008: CommandStatus("ESME_RSYSERR", "System Error", T),
    0x0000000A: CommandStatus("ESME_RINVSRCADR", "Invalid Source Address", P),
    0x0000000B: CommandStatus("ESME_RINVDSTADR", "Invalid Destination Address", P),
    0x0000000C: CommandStatus("ESME_RINVMSGID", "Message ID is invalid", P),
    0x0000000D: CommandStatus("ESME_RBINDFAIL", "Bind Failed", T),
    0x0000000E: CommandStatus("ESME_RINVPASWD", "Invalid Password", P),
    0x0000000F: CommandStatus("ESME_RINVSYSID", "Invalid System ID", P),
    0x00000011: CommandStatus("ESME_RCANCELFAIL", "Cancel SM Failed", P),
    0x00000013: CommandStatus("ESME_RREPLACEFAIL", "Replace SM Failed", P),
    0x00000014: CommandStatus("ESME_RMSGQFUL", "Message Queue Full", S),
    0x00000015: CommandStatus("ESME_RINVSERTYP", "Invalid Service Type", P),
    0x00000033: CommandStatus("ESME_RINVNUMDESTS", "Invalid number of destinations", P),
    0x00000034: CommandStatus("ESME_RINVDLNAME", "Invalid Distribution List name", P),
    0x00000040: CommandStatus("ESME_RINVDESTFLAG", "Destination flag is invalid (submit_multi)", P),
    0x00000042: CommandStatus("ESME_RINVSUBREP", "Invalid 'submit with replace' request", P),
    0x00000043: CommandStatus("ESME_RINVESMCLASS", "Invalid esm_class field data", P),
    0x00000044: CommandStatus("ESME_RCNTSUBDL", "Cannot Submit to Distribution List", P),
    0x00000045: CommandStatus("ESME_RSUBMITFAIL", "submit_sm or submit_multi failed", T),
    0x00000048: CommandStatus("ESME_RINVSRCTON", "Invalid Source address TON", P),
    0x00000049: CommandStatus("ESME_RINVSRCNPI", "Invalid Source address NPI", P),
    0x00000050: CommandStatus("ESME_RINVDSTTON", "Invalid Destination address TON", P),
    0x00000051: CommandStatus("ESME_RINVDSTNPI", "Invalid Destination address NPI", P),
    0x00000053: CommandStatus("ESME_RINVSYSTYP", "Invalid system_type field", P),
    0x00000054: CommandStatus("ESME_RINVREPFLAG", "Invalid replace_if_present flag", P),
    0x00000055: CommandStatus("ESME_RINVNUMMSGS", "Invalid number of messages", P),
    0x00000058: CommandStatus("ESME_RTHROTTLED", "Throttling error (ESME has exceeded allowed message limits)", S),
    0x00000061: CommandStatus("ESME_RINVSCHED", "Invalid Scheduled Delivery Time", P),
    0x00000062: CommandStatus("ESME_RINVEXPIRY", "Invalid message validity period (Expiry time)", P),
    0x00000063: CommandStatus("ESME_RINVDFTMSGID", "Predefined Message Invalid or Not Found", P),
    0x00000064: CommandStatus("ESME_RX_T_APPN", "ESME Receiver Temporary App Error Code", T),
    0x00000065: CommandStatus("ESME_RX_P_APPN", "ESME Receiver Permanent App Error Code", P),
    0x00000066: CommandStatus("ESME_RX_R_APPN", "ESME Receiver Reject Message Error Code", P),
    0x00000067: CommandStatus("ESME_RQUERYFAIL", "query_sm request failed", T),
    0x000000C0: CommandStatus("ESME_RINVOPTPARSTREAM", "Error in the optional part of the PDU Body", P),
    0x000000C1: CommandStatus("ESME_ROPTPARNOTALLWD", "Optional Parameter not allowed", P),
    0x000000C2: CommandStatus("ESME_RINVPARLEN", "Invalid Parameter Length", P),
    0x000000C3: CommandStatus("ESME_RMISSINGOPTPARAM", "Expected Optional Parameter missing", P),
    0x000000C4: CommandStatus("ESME_RINVOPTPARAMVAL", "Invalid Optional Parameter Value", P),
    0x000000FE: CommandStatus("ESME_RDELIVERYFAILURE", "Delivery Failure (used for data_sm_resp)", T),
    0x000000FF: CommandStatus("ESME_RUNKNOWNERR", "Unknown Error", T),
}

# reserved and SMSC vendor-specific codes (0x0400-0x04FF): nobody can say, so try again
UNKNOWN_CLASS = ErrorClass.TEMPORARY


def classify(code: int, overrides: Mapping[int, ErrorClass]) -> ErrorClass:
    if code in overrides:
        return overrides[code]
    known = COMMAND_STATUSES.get(code)
    return known.error_class if known else UNKNOWN_CLASS


def describe(code: int) -> str:
    """The error as `error` stores it: `0x0000000B ESME_RINVDSTADR: Invalid Destination Address`."""
    known = COMMAND_STATUSES.get(code)
    if known is None:
        return f"0x{code:08X} unknown command_status (reserved or vendor-specific)"
    return f"0x{code:08X} {known.name}: {known.description}"


def status_label(code: int) -> str:
    """The metrics label: the code for ESME_ROK and the table's codes, else "other" (an SMSC
    inventing codes must not create a time series each)."""
    return f"0x{code:08X}" if code == ESME_ROK or code in COMMAND_STATUSES else "other"


def parse_overrides(settings: Mapping[str, str]) -> dict[int, ErrorClass]:
    """The `error_classes` setting ({"0x0B": "temporary"}); validated by SmppSettings."""
    return {int(code, 0): ErrorClass(error_class) for code, error_class in settings.items()}
