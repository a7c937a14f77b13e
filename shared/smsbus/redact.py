"""Secrets out of what we log and store as errors (SPEC §13): a URL's user name, password and
query (callback URLs carry tokens there), and any text that may quote such a URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """`https://user:pw@host/path?token=x` -> `https://***@host/path?***`; the scheme, host,
    port and path stay, enough to tell which receiver is meant."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"<unparsable URL of {len(url)} characters>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, MASK if parts.query else "", ""))


def redact_text(text: str, url: str) -> str:
    """`text` (an exception's words, say) with `url` and its secret parts masked wherever
    they appear."""
    redacted = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.password, parts.username, parts.query]
    except ValueError:
        secrets = []
    for secret in secrets:
        if secret:
            redacted = redacted.replace(secret, MASK)
    return redacted
