"""Who may use the HTTP API (SPEC §13): API keys and users, for `smsbus api-keys|users` and the api.

An API key is `<name>.<secret>` shown once; the secret is 256 random bits of which only the
SHA-256 is stored. Users have argon2id password hashes (argon2-cffi). Both are plain rows.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

import argon2
import msgspec
import psycopg

from smsbus.db import translate_refusal
from smsbus.errors import SmsbusError

SCOPES = ("send", "read", "admin")
ROLES = ("admin", "operator", "agent")
# bytes of randomness in a key's secret and in a session token: 256 bits
SECRET_BYTES = 32
MIN_PASSWORD_LENGTH = 10

# argon2id at OWASP's recommended minimum (19 MiB, 2 passes): the library's default 64 MiB per
# hash would make each login, and the api's peak memory, cost three times as much
PASSWORD_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    role: str
    created_at: datetime
    disabled_at: datetime | None


class NotFound(SmsbusError):
    """No such key or user (the text names which)."""


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise SmsbusError(f"scopes: expected some of {', '.join(SCOPES)}, got {', '.join(unknown) or 'none'}")
    return [s for s in SCOPES if s in scopes]


INSERT_API_KEY = """
INSERT INTO api_keys (name, secret_sha256, scopes, callback_secret)
VALUES (%(name)s, %(secret_sha256)s, %(scopes)s, %(callback_secret)s)
RETURNING id
"""
SELECT_API_KEYS = """
SELECT id, name, scopes, created_at, last_used_at, revoked_at FROM api_keys ORDER BY name
"""
REVOKE_API_KEY = """
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE name = %(name)s RETURNING id
"""


class CreatedKey(msgspec.Struct, frozen=True, kw_only=True):
    """What `create_api_key` hands back once: the key as the caller must send it."""

    id: int
    name: str
    key: str
    callback_secret: str


def create_api_key(conn: psycopg.Connection[Any], name: str, scopes: list[str]) -> CreatedKey:
    """In the caller's transaction. The key is `<name>.<secret>`: the name finds the row's owner
    in logs; only SHA-256(secret) is stored, so the key cannot be shown again."""
    if not name or "." in name or not name.isprintable():
        raise SmsbusError("name: expected a non-empty printable name without '.'")
    secret = new_secret()
    callback_secret = new_secret()
    params = {
        "name": name,
        "secret_sha256": hash_secret(secret),
        "scopes": check_scopes(scopes),
        "callback_secret": callback_secret,
    }
    try:
        row = conn.execute(INSERT_API_KEY, params).fetchone()
    except psycopg.errors.IntegrityError as e:
        raise translate_refusal(e) from None
    assert row is not None
    key_id = int(row["id"] if isinstance(row, dict) else row[0])
    return CreatedKey(id=key_id, name=name, key=f"{name}.{secret}", callback_secret=callback_secret)


def list_api_keys(conn: psycopg.Connection[Any]) -> list[ApiKey]:
    cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
    return [msgspec.convert(row, ApiKey) for row in cursor.execute(SELECT_API_KEYS)]


def revoke_api_key(conn: psycopg.Connection[Any], name: str) -> None:
    if conn.execute(REVOKE_API_KEY, {"name": name}).fetchone() is None:
        raise NotFound(f"no API key named {name!r}")


def split_key(key: str) -> tuple[str, str]:
    """(name, secret) of a presented key; both empty when it has no '.'."""
    name, dot, secret = key.rpartition(".")
    return (name, secret) if dot and name and secret else ("", "")


INSERT_USER = """
INSERT INTO users (name, password_hash, role) VALUES (%(name)s, %(password_hash)s, %(role)s)
RETURNING id
"""
SELECT_USERS = "SELECT id, name, role, created_at, disabled_at FROM users ORDER BY name"
DISABLE_USER = """
UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE name = %(name)s RETURNING id
"""
DELETE_USER_SESSIONS = "DELETE FROM api_sessions WHERE user_id = %(id)s"
SET_PASSWORD = "UPDATE users SET password_hash = %(password_hash)s WHERE name = %(name)s RETURNING id"
COUNT_USERS = "SELECT count(*) AS users FROM users"


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise SmsbusError(f"password: must be at least {MIN_PASSWORD_LENGTH} characters")


def add_user(conn: psycopg.Connection[Any], name: str, role: str, password: str) -> int:
    if role not in ROLES:
        raise SmsbusError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    if not name or not name.isprintable():
        raise SmsbusError("name: expected a non-empty printable name")
    check_password(password)
    params = {"name": name, "role": role, "password_hash": PASSWORD_HASHER.hash(password)}
    try:
        row = conn.execute(INSERT_USER, params).fetchone()
    except psycopg.errors.IntegrityError as e:
        raise translate_refusal(e) from None
    assert row is not None
    return int(row["id"] if isinstance(row, dict) else row[0])


def list_users(conn: psycopg.Connection[Any]) -> list[User]:
    cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
    return [msgspec.convert(row, User) for row in cursor.execute(SELECT_USERS)]


def disable_user(conn: psycopg.Connection[Any], name: str) -> None:
    """Disabled users cannot log in, and their open sessions end now."""
    row = conn.execute(DISABLE_USER, {"name": name}).fetchone()
    if row is None:
        raise NotFound(f"no user named {name!r}")
    conn.execute(DELETE_USER_SESSIONS, {"id": row["id"] if isinstance(row, dict) else row[0]})


def set_password(conn: psycopg.Connection[Any], name: str, password: str) -> None:
    """A new password ends the user's open sessions."""
    check_password(password)
    row = conn.execute(SET_PASSWORD, {"name": name, "password_hash": PASSWORD_HASHER.hash(password)}).fetchone()
    if row is None:
        raise NotFound(f"no user named {name!r}")
    conn.execute(DELETE_USER_SESSIONS, {"id": row["id"] if isinstance(row, dict) else row[0]})


def has_users(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(COUNT_USERS).fetchone()
    assert row is not None
    return int(row["users"] if isinstance(row, dict) else row[0]) > 0


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return PASSWORD_HASHER.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
