"""Who is calling, and may they (SPEC §13). Every route names the scope it needs in its `opt`
(send, read, admin; None: public); one guard checks it for all of them.

Callers prove themselves with an API key (`Authorization: Bearer <key>` or `X-API-Key`), or
with a user's session cookie (HttpOnly, SameSite=Strict), whose writes must also carry the
session's CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from smsbus.access import hash_secret, split_key
from smsbus_api.database import Database
from smsbus_api.problems import ProblemError

SCOPE = "scope"
SESSION_COOKIE = "smsbus_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLE_SCOPES = {
    "agent": frozenset({"send", "read"}),
    "operator": frozenset({"send", "read", "admin"}),
    "admin": frozenset({"send", "read", "admin"}),
}
# how many presented keys (good or bad) are remembered between lookups
KEY_CACHE_ENTRIES = 10_000

# Authenticates and records the use in one statement, at most once per key_cache_s per key.
USE_API_KEY = """
UPDATE api_keys SET last_used_at = now()
WHERE secret_sha256 = %(secret_sha256)s AND name = %(name)s AND revoked_at IS NULL
RETURNING id, name, scopes
"""
SELECT_SESSION = """
SELECT s.csrf_token, u.id, u.name, u.role FROM api_sessions AS s JOIN users AS u ON u.id = s.user_id
WHERE s.token_sha256 = %(token_sha256)s AND s.expires_at > now() AND u.disabled_at IS NULL
"""


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The caller of a request: a key or a logged-in user."""

    kind: str  # "key" or "user"
    id: int
    name: str
    scopes: frozenset[str]
    role: str | None = None
    csrf_token: str | None = None

    @property
    def api_key_id(self) -> int | None:
        return self.id if self.kind == "key" else None


def scope(name: str | None) -> dict[str, Any]:
    """A route's opt: the scope it needs (None: anyone)."""
    return {SCOPE: name}


class KeyCache:
    """Keys seen lately, good or bad, so that the hot path skips the lookup; entries live
    key_cache_s, which bounds how long a revoked key keeps working on this process."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self.entries: dict[bytes, tuple[float, Principal | None]] = {}

    async def find(self, db: Database, key: str) -> Principal | None:
        name, secret = split_key(key)
        if not secret:
            return None
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self.entries.get(digest)
        if cached is not None and cached[0] > now:
            principal = cached[1]
            return principal if principal is not None and principal.name == name else None
        async with db.pool.connection() as conn:
            row = await (await conn.execute(USE_API_KEY, {"secret_sha256": digest, "name": name})).fetchone()
        principal = None
        if row is not None:
            principal = Principal(kind="key", id=row["id"], name=row["name"], scopes=frozenset(row["scopes"]))
        if len(self.entries) >= KEY_CACHE_ENTRIES:
            self.entries.clear()
        self.entries[digest] = (now + self.lifetime_s, principal)
        return principal


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    state = connection.app.state
    authorization = connection.headers.get("authorization", "")
    key = connection.headers.get("x-api-key")
    if authorization[:7].lower() == "bearer ":
        key = authorization[7:].strip()
    if key:
        principal: Principal | None = await state.key_cache.find(state.db, key)
        return principal
    token = connection.cookies.get(SESSION_COOKIE)
    if token:
        return await find_session(state.db, token)
    return None


async def find_session(db: Database, token: str) -> Principal | None:
    async with db.pool.connection() as conn:
        row = await (await conn.execute(SELECT_SESSION, {"token_sha256": hash_secret(token)})).fetchone()
    if row is None:
        return None
    return Principal(
        kind="user", id=row["id"], name=row["name"], role=row["role"],
        scopes=ROLE_SCOPES[row["role"]], csrf_token=row["csrf_token"],
    )


UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="smsbus"'}


async def require_scope(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The one guard: 401 without valid credentials, 403 without the route's scope or, for a
    cookie-authenticated write, without the session's CSRF token."""
    needed = handler.opt.get(SCOPE)
    if needed is None:
        return
    principal = await authenticate(connection)
    if principal is None:
        raise ProblemError(401, "an API key (Authorization: Bearer or X-API-Key) or a session is required",
                           headers=UNAUTHORIZED_HEADERS)
    if needed not in principal.scopes:
        raise ProblemError(403, f"this key or user lacks the scope {needed!r}")
    if principal.csrf_token is not None and connection.scope.get("method", "GET") not in SAFE_METHODS:
        presented = connection.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(presented.encode(), principal.csrf_token.encode()):
            raise ProblemError(403, "a write with a session cookie needs the session's X-CSRF-Token header")
    connection.state.principal = principal


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal: Principal = connection.state.principal
    return principal
