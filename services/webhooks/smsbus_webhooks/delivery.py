"""One HTTP request to a callback receiver, with the standard library's http.client: a timeout
on connect and on every read, the whole reply bounded in size and in time, credentials in the
URL sent as Basic authentication and masked in every error text, and never to an address in
the denied networks (by default the link-local ones, where cloud metadata services answer).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from smsbus.errors import ConfigError
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(setting: str, values: Sequence[str]) -> tuple[Network, ...]:
    """The denied networks of the settings, or ConfigError naming the bad one."""
    try:
        return tuple(ipaddress.ip_network(value, strict=False) for value in values)
    except ValueError as e:
        raise ConfigError(setting, f"not a network ({e}); e.g. 169.254.0.0/16") from None


def send(request: Request, timeout_s: float, denied: Sequence[Network] = ()) -> Outcome:
    """Make the request; delivered only for a 2xx (with the expected reply, when one is).
    The host's addresses in `denied` are never connected to, whatever the URL says."""
    try:
        connection, target, headers = _prepare(request, timeout_s)
    except _BadUrl as e:
        return Outcome(False, permanent=True, error=str(e))
    deadline = time.monotonic() + timeout_s
    try:
        _connect(connection, timeout_s, denied)
        connection.request(request.method, target, body=request.body or None, headers=headers)
        response = connection.getresponse()
        reply = _read_bounded(response, connection, deadline)
    except _BadUrl as e:
        return Outcome(False, permanent=True, error=str(e))
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


def _connect(connection: http.client.HTTPConnection, timeout_s: float, denied: Sequence[Network]) -> None:
    """Open the connection to an address of the host outside `denied`, checked on the very
    address connected to (a name resolved twice could answer differently the second time)."""
    port = connection.port
    addresses = socket.getaddrinfo(connection.host, port, type=socket.SOCK_STREAM)
    allowed = [a for a in addresses if not _is_denied(str(a[4][0]), denied)]
    if not allowed:
        raise _BadUrl("the host has only addresses that [webhooks] denied_networks refuses")
    family, kind, protocol, _, address = allowed[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.settimeout(timeout_s)
        sock.connect(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(connection, http.client.HTTPSConnection):
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=connection.host)
    except BaseException:
        sock.close()
        raise
    connection.sock = sock


def _is_denied(address: str, denied: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in denied)


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
    https = parts.scheme == "https"
    connection_type = http.client.HTTPSConnection if https else http.client.HTTPConnection
    # the port always given: http.client would read one out of a bare IPv6 address
    port = port or (443 if https else 80)
    return connection_type(parts.hostname, port, timeout=timeout_s), target, headers


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
