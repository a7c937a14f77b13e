"""One HTTP request to a callback receiver, with the standard library's http.client: a timeout
on connect and on every read, the whole reply bounded in size and in time, credentials in the
URL sent as Basic authentication and masked in every error text.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from smsbus.redact import redact_text
from smsbus_webhooks.formats import USER_AGENT, Request

# what a receiver may answer; more is cut off (only Jasmin's reply is ever read)
MAX_REPLY_BYTES = 64 * 1024
CHUNK_BYTES = 8192


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    # nothing will ever reach this URL (not http(s), no host): give up at once
    permanent: bool = False
    # in words, credentials masked
    error: str | None = None
    http_status: int | None = None


class _BadUrl(Exception):
    pass


def send(request: Request, timeout_s: float) -> Outcome:
    """Make the request; delivered only for a 2xx (with the expected reply, when one is)."""
    try:
        connection, target, headers = _prepare(request, timeout_s)
    except _BadUrl as e:
        return Outcome(False, permanent=True, error=str(e))
    deadline = time.monotonic() + timeout_s
    try:
        connection.request(request.method, target, body=request.body or None, headers=headers)
        response = connection.getresponse()
        reply = _read_bounded(response, connection, deadline)
    except TimeoutError:
        return Outcome(False, error=f"no answer within {timeout_s:g} s")
    except (OSError, http.client.HTTPException) as e:
        return Outcome(False, error=redact_text(f"{type(e).__name__}: {e}", request.url))
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        return Outcome(False, error=f"HTTP {response.status}", http_status=response.status)
    if request.expected_reply is not None and reply.strip() != request.expected_reply:
        return Outcome(False, error=f"reply was not {request.expected_reply.decode()}", http_status=response.status)
    return Outcome(True, http_status=response.status)


def _prepare(request: Request, timeout_s: float) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """The connection (not yet open), the request target and the headers; _BadUrl (words
    without the URL) when nothing could ever be sent there."""
    try:
        parts = urlsplit(request.url)
        port = parts.port
    except ValueError:
        raise _BadUrl("the URL cannot be parsed (bad port or brackets)") from None
    if parts.scheme not in ("http", "https"):
        raise _BadUrl(f"not an http or https URL (scheme {parts.scheme[:10]!r})")
    if not parts.hostname:
        raise _BadUrl("the URL names no host")
    if any(ord(c) < 33 or ord(c) >= 127 for c in request.url):
        raise _BadUrl("the URL contains spaces, control or non-ASCII characters (percent-encode them)")
    headers = {"User-Agent": USER_AGENT, "Connection": "close", **request.headers}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout_s)
    return connection, target, headers


def _read_bounded(
    response: http.client.HTTPResponse, connection: http.client.HTTPConnection, deadline: float
) -> bytes:
    """At most MAX_REPLY_BYTES, and no later than the deadline: a receiver that drips its
    reply byte by byte cannot hold a worker beyond the timeout."""
    reply = b""
    while len(reply) < MAX_REPLY_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if connection.sock is not None:
            connection.sock.settimeout(remaining)
        chunk = response.read1(CHUNK_BYTES)
        if not chunk:
            break
        reply += chunk
    return reply[:MAX_REPLY_BYTES]
