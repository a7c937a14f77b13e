"""Logging in and out for the browser pages: a session cookie (HttpOnly, SameSite=Strict) and
a CSRF token the pages send back on writes. Failed logins are counted per user name and per
address in the database (shared by every api process) and refused beyond the limit."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Any

import anyio.to_thread
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import Cookie

from smsbus.access import PASSWORD_HASHER, hash_secret, new_secret, verify_password
from smsbus_api.auth import SESSION_COOKIE, principal_of, scope
from smsbus_api.problems import ProblemError

COUNT_RECENT_FAILURES = """
SELECT (SELECT count(*) FROM login_failures
        WHERE user_name = %(name)s AND failed_at > now() - %(window)s) AS by_user,
       (SELECT count(*) FROM login_failures
        WHERE address = %(address)s AND failed_at > now() - %(window)s) AS by_address
"""
RECORD_FAILURE = """
WITH forgotten AS (DELETE FROM login_failures WHERE failed_at < now() - %(window)s)
INSERT INTO login_failures (user_name, address) VALUES (%(name)s, %(address)s)
"""
SELECT_USER = "SELECT id, password_hash, role FROM users WHERE name = %(name)s AND disabled_at IS NULL"
INSERT_SESSION = """
INSERT INTO api_sessions (token_sha256, user_id, csrf_token, expires_at)
VALUES (%(token_sha256)s, %(user_id)s, %(csrf_token)s, now() + %(lifetime)s)
"""
DELETE_SESSION = "DELETE FROM api_sessions WHERE token_sha256 = %(token_sha256)s"
DELETE_EXPIRED_SESSIONS = "DELETE FROM api_sessions WHERE expires_at < now()"

# verified against when the user does not exist, so that the answer takes as long either way
DECOY_HASH = PASSWORD_HASHER.hash(secrets.token_urlsafe(16))


class Login(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern="^[^\x00]*$")]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class SessionInfo(msgspec.Struct):
    user: str
    role: str
    # send it back as X-CSRF-Token on every write made with the cookie
    csrf_token: str


@post("/v1/session", opt=scope(None), status_code=201, summary="Log in (sets the session cookie)")
async def log_in(request: Request[Any, Any, Any], data: Login) -> Response[SessionInfo]:
    state = request.app.state
    settings = state.settings
    window = timedelta(seconds=settings.login_window_s)
    address = request.client.host if request.client else "unknown"
    params = {"name": data.name, "address": address, "window": window}
    async with state.db.pool.connection() as conn:
        counts = await (await conn.execute(COUNT_RECENT_FAILURES, params)).fetchone()
        assert counts is not None
        if (counts["by_user"] >= settings.max_failed_logins_per_user
                or counts["by_address"] >= settings.max_failed_logins_per_address):
            raise ProblemError(429, "too many failed logins; try again later",
                               headers={"Retry-After": str(int(settings.login_window_s))})
        user = await (await conn.execute(SELECT_USER, {"name": data.name})).fetchone()
        password_hash = user["password_hash"] if user else DECOY_HASH
        good = await anyio.to_thread.run_sync(verify_password, password_hash, data.password)
        if user is None or not good:
            await conn.execute(RECORD_FAILURE, params)
            raise ProblemError(401, "wrong user name or password")
        token, csrf_token = new_secret(), new_secret()
        await conn.execute(DELETE_EXPIRED_SESSIONS)
        await conn.execute(INSERT_SESSION, {
            "token_sha256": hash_secret(token), "user_id": user["id"], "csrf_token": csrf_token,
            "lifetime": timedelta(seconds=settings.session_lifetime_s),
        })
    cookie = Cookie(
        key=SESSION_COOKIE, value=token, httponly=True, samesite="strict", path="/",
        secure=settings.secure_cookies, max_age=int(settings.session_lifetime_s),
    )
    return Response(SessionInfo(user=data.name, role=user["role"], csrf_token=csrf_token),
                    status_code=201, cookies=[cookie])


@get("/v1/session", opt=scope("read"), summary="Who is logged in, and the CSRF token")
async def show_session(request: Request[Any, Any, Any]) -> SessionInfo:
    principal = principal_of(request)
    if principal.kind != "user" or principal.role is None or principal.csrf_token is None:
        raise ProblemError(404, "this request came with an API key, not a session")
    return SessionInfo(user=principal.name, role=principal.role, csrf_token=principal.csrf_token)


class LoggedOut(msgspec.Struct):
    logged_out: bool


@delete("/v1/session", opt=scope("read"), status_code=200, summary="Log out (ends the session of the cookie sent)")
async def log_out(request: Request[Any, Any, Any]) -> Response[LoggedOut]:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with request.app.state.db.pool.connection() as conn:
            await conn.execute(DELETE_SESSION, {"token_sha256": hash_secret(token)})
    response = Response(LoggedOut(bool(token)), status_code=200)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


ROUTES = [log_in, show_session, log_out]
