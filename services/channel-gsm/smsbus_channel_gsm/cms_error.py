"""Every +CMS ERROR code a modem answers to AT+CMGS, with its class: permanent (fail at once)
or temporary (retry with backoff, up to max_attempts). The codes are the RP cause values of
TS 24.011 E.2 (1-127), the TP-FCS values of TS 23.040 9.2.3.22 (128-255) and the ME/network
errors of TS 27.005 3.2.5 (300-500). As the SMPP channel's command_status table: a code
nobody can place (vendor-specific, reserved) is temporary, bounded by max_attempts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorClass(enum.StrEnum):
    PERMANENT = "permanent"
    TEMPORARY = "temporary"


@dataclass(frozen=True)
class CmsError:
    description: str
    error_class: ErrorClass


P, T = ErrorClass.PERMANENT, ErrorClass.TEMPORARY

CMS_ERRORS: dict[int, CmsError] = {
    # TS 24.011 E.2: RP cause
    1: CmsError("unassigned (unallocated) number", P),
    8: CmsError("operator determined barring", P),
    10: CmsError("call barred", P),
    21: CmsError("short message transfer rejected", P),
    27: CmsError("destination out of service", P),
    28: CmsError("unidentified subscriber", P),
    29: CmsError("facility rejected", P),
    30: CmsError("unknown subscriber", P),
    38: CmsError("network out of order", T),
    41: CmsError("temporary failure", T),
    42: CmsError("congestion", T),
    47: CmsError("resources unavailable, unspecified", T),
    50: CmsError("requested facility not subscribed", P),
    69: CmsError("requested facility not implemented", P),
    81: CmsError("invalid short message transfer reference value", T),
    95: CmsError("invalid message, unspecified", P),
    96: CmsError("invalid mandatory information", P),
    97: CmsError("message type non-existent or not implemented", P),
    98: CmsError("message not compatible with short message protocol state", P),
    99: CmsError("information element non-existent or not implemented", P),
    111: CmsError("protocol error, unspecified", P),
    127: CmsError("interworking, unspecified", P),
    # TS 23.040 9.2.3.22: TP-FCS
    128: CmsError("telematic interworking not supported", P),
    129: CmsError("short message type 0 not supported", P),
    130: CmsError("cannot replace short message", P),
    143: CmsError("unspecified TP-PID error", P),
    144: CmsError("data coding scheme (alphabet) not supported", P),
    145: CmsError("message class not supported", P),
    159: CmsError("unspecified TP-DCS error", P),
    160: CmsError("command cannot be actioned", P),
    161: CmsError("command unsupported", P),
    175: CmsError("unspecified TP-Command error", P),
    176: CmsError("TPDU not supported", P),
    192: CmsError("SC busy", T),
    193: CmsError("no SC subscription", P),
    194: CmsError("SC system failure", T),
    195: CmsError("invalid SME address", P),
    196: CmsError("destination SME barred", P),
    197: CmsError("SM rejected: duplicate SM", P),
    198: CmsError("TP-VPF not supported", P),
    199: CmsError("TP-VP not supported", P),
    208: CmsError("SIM SMS storage full", T),
    209: CmsError("no SMS storage capability in SIM", P),
    210: CmsError("error in MS", T),
    211: CmsError("memory capacity exceeded", T),
    212: CmsError("SIM application toolkit busy", T),
    213: CmsError("SIM data download error", T),
    255: CmsError("unspecified error cause", T),
    # TS 27.005 3.2.5: ME and network errors (a SIM or network problem an operator can fix
    # while the message waits is temporary)
    300: CmsError("ME failure", T),
    301: CmsError("SMS service of ME reserved", P),
    302: CmsError("operation not allowed", P),
    303: CmsError("operation not supported", P),
    304: CmsError("invalid PDU mode parameter", P),
    305: CmsError("invalid text mode parameter", P),
    310: CmsError("SIM not inserted", T),
    311: CmsError("SIM PIN required", T),
    312: CmsError("PH-SIM PIN required", T),
    313: CmsError("SIM failure", T),
    314: CmsError("SIM busy", T),
    315: CmsError("SIM wrong", T),
    316: CmsError("SIM PUK required", T),
    317: CmsError("SIM PIN2 required", T),
    318: CmsError("SIM PUK2 required", T),
    320: CmsError("memory failure", T),
    321: CmsError("invalid memory index", P),
    322: CmsError("memory full", T),
    330: CmsError("SMSC address unknown", T),
    331: CmsError("no network service", T),
    332: CmsError("network timeout", T),
    340: CmsError("no +CNMA acknowledgement expected", P),
    500: CmsError("unknown error", T),
}

# a plain ERROR (no code) or a code in no table: nobody can say, so try again
UNKNOWN_CLASS = ErrorClass.TEMPORARY


def classify(code: int | None) -> ErrorClass:
    known = CMS_ERRORS.get(code) if code is not None else None
    return known.error_class if known else UNKNOWN_CLASS


def describe(final: str, code: int | None) -> str:
    """The modem's answer as `error` stores it: `+CMS ERROR: 331 (no network service, temporary)`."""
    known = CMS_ERRORS.get(code) if code is not None else None
    if known is None:
        return f"{final} (unknown code, {UNKNOWN_CLASS})"
    return f"{final} ({known.description}, {known.error_class})"
