"""`smsbus api-keys create|list|revoke` and `smsbus users add|list|disable|passwd` (SPEC §13).

A key is printed once at creation and never again. Passwords come from a prompt (or one line
of stdin when it is not a terminal), never from the command line, where `ps` would show them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from smsbus import access, config, db
from smsbus.errors import SmsbusError


def register(commands: Any) -> None:
    keys = commands.add_parser("api-keys", help="keys for the HTTP API").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("name")
    create.add_argument("--scopes", default="send,read", help=f"comma-separated: {','.join(access.SCOPES)}")
    create.set_defaults(handler=run_create_key)
    keys.add_parser("list", help="names, scopes, last use; never the secrets").set_defaults(handler=run_list_keys)
    revoke = keys.add_parser("revoke", help="refuse this key from now on")
    revoke.add_argument("name")
    revoke.set_defaults(handler=run_revoke_key)

    users = commands.add_parser("users", help="people who log in to the web pages").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    add = users.add_parser("add", help="add a user; the password is asked for (or read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=access.ROLES, required=True)
    add.set_defaults(handler=run_add_user)
    users.add_parser("list", help="names, roles, disabled or not").set_defaults(handler=run_list_users)
    disable = users.add_parser("disable", help="refuse logins and end the user's sessions")
    disable.add_argument("name")
    disable.set_defaults(handler=run_disable_user)
    passwd = users.add_parser("passwd", help="set a new password (asked for, or read from stdin)")
    passwd.add_argument("name")
    passwd.set_defaults(handler=run_set_password)


@contextmanager
def _transaction() -> Iterator[psycopg.Connection[Any]]:
    with db.connect(config.load().resolved_database_url(), application="smsbus-cli") as conn:
        yield conn
        conn.commit()


def run_create_key(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    with _transaction() as conn:
        created = access.create_api_key(conn, args.name, scopes)
    print(created.key)
    print(f"callback secret: {created.callback_secret}", file=sys.stderr)
    print("(shown once: store the key now; callbacks of its messages are signed with the callback secret)",
          file=sys.stderr)
    return 0


def run_list_keys(args: argparse.Namespace) -> int:
    with _transaction() as conn:
        keys = access.list_api_keys(conn)
    print(f"{'name':24} {'scopes':18} {'last used':25} revoked")
    for key in keys:
        last_used = key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        print(f"{key.name:24} {','.join(key.scopes):18} {last_used:25} {revoked}")
    return 0


def run_revoke_key(args: argparse.Namespace) -> int:
    with _transaction() as conn:
        access.revoke_api_key(conn, args.name)
    print(f"revoked {args.name}")
    return 0


def read_password(prompt: str) -> str:
    """From the terminal (asked twice), or the first line of stdin for scripts."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("again: ") != first:
        raise SmsbusError("password: the two entries differ")
    return first


def run_add_user(args: argparse.Namespace) -> int:
    password = read_password(f"password for {args.name}: ")
    with _transaction() as conn:
        access.add_user(conn, args.name, args.role, password)
    print(f"added {args.name} ({args.role})")
    return 0


def run_list_users(args: argparse.Namespace) -> int:
    with _transaction() as conn:
        users = access.list_users(conn)
    print(f"{'name':24} {'role':9} disabled")
    for user in users:
        disabled = user.disabled_at.isoformat(timespec="seconds") if user.disabled_at else "-"
        print(f"{user.name:24} {user.role:9} {disabled}")
    return 0


def run_disable_user(args: argparse.Namespace) -> int:
    with _transaction() as conn:
        access.disable_user(conn, args.name)
    print(f"disabled {args.name}")
    return 0


def run_set_password(args: argparse.Namespace) -> int:
    password = read_password(f"new password for {args.name}: ")
    with _transaction() as conn:
        access.set_password(conn, args.name, password)
    print(f"password of {args.name} changed")
    return 0
