"""The api's database connections: an async pool for the request handlers, and a small sync
pool for the shared code the CLI also runs (smsbus.channels, rules, triggers, queue moves),
which is called in a worker thread so that it never blocks the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from smsbus.db import session_options

APPLICATION = "smsbus-api"
SHARED_CODE_CONNECTIONS = 4

P = ParamSpec("P")
T = TypeVar("T")

AsyncConnection = psycopg.AsyncConnection[dict[str, Any]]


class Database:
    def __init__(self, url: str, pool_size: int) -> None:
        options = {
            "row_factory": dict_row,
            "application_name": APPLICATION,
            "options": session_options(),
            "connect_timeout": 5,
        }
        self.pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            url, min_size=min(2, pool_size), max_size=pool_size, open=False, timeout=10,
            kwargs={**options, "autocommit": True},
        )
        self.sync_pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            url, min_size=0, max_size=SHARED_CODE_CONNECTIONS, open=False, timeout=10, kwargs=options,
        )

    async def open(self) -> None:
        # wait=False: the api starts (and /healthz answers) while the database is still away
        await self.pool.open(wait=False)
        self.sync_pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()
        self.sync_pool.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A connection of the sync pool in a transaction: committed when the block ends."""
        with self.sync_pool.connection() as conn:
            yield conn

    def in_thread(self, function: Callable[P, T]) -> Callable[P, Awaitable[T]]:
        """`await db.in_thread(f)(args)`: f runs in a worker thread."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            return await anyio.to_thread.run_sync(lambda: function(*args, **kwargs))

        return call
