"""The api service (SPEC §10): the REST API, live events and the Kannel/Jasmin send URLs over
HTTP, served by uvicorn. Stateless: sessions and login failures live in the database, so any
number of copies can run behind a proxy. It moves no status itself except through the shared
queue code (cancel, requeue, reprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import FrameType
from typing import Annotated

import msgspec
import uvicorn

import smsbus.config as config
import smsbus.log as log
from smsbus.config import Port, Seconds
from smsbus.errors import ConfigError

SERVICE = "api"

logger = logging.getLogger(SERVICE)

PoolSize = Annotated[int, msgspec.Meta(ge=1, le=200)]


class ApiSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[api]` in smsbus.toml; SMSBUS_API_<FIELD> overrides."""

    host: str = "127.0.0.1"
    port: Port = 8025
    # database connections shared by the request handlers
    pool_size: PoolSize = 8
    # the largest request body accepted (a batch of 10,000 messages fits)
    max_request_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 8 * 1024 * 1024
    # how long a browser session lasts without a new login
    session_lifetime_s: Annotated[float, msgspec.Meta(gt=0)] = 12 * 3600
    # the session cookie only over HTTPS (set when a TLS proxy is in front)
    secure_cookies: bool = False
    # failed logins allowed per user name and per address within login_window_s
    max_failed_logins_per_user: Annotated[int, msgspec.Meta(ge=1)] = 5
    max_failed_logins_per_address: Annotated[int, msgspec.Meta(ge=1)] = 20
    login_window_s: Annotated[float, msgspec.Meta(gt=0)] = 900
    # a revoked key is refused by every copy within this time (keys are looked up this seldom)
    key_cache_s: Seconds = 1.0
    # /v1/events: how far back Last-Event-ID can resume, and how many events may wait for
    # one client before it is dropped as too slow
    events_resume_window_s: Seconds = 60.0
    events_client_queue: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # the uvicorn event loop ("uvloop" or "asyncio") and HTTP parser ("httptools" or "h11")
    event_loop: str = "uvloop"
    http_parser: str = "httptools"


class Server(uvicorn.Server):
    """uvicorn raises SIGTERM again after its graceful shutdown, so the process ends by the
    signal; like every other service, a stop asked for is a clean exit 0. Event streams never
    end by themselves: they are cut at once, or the shutdown would wait for them."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        with contextlib.suppress(RuntimeError):  # no loop running yet: no streams either
            asyncio.get_running_loop().call_soon(self.on_exit)


def load_settings() -> ApiSettings:
    return config.load_section(SERVICE, ApiSettings)


def main() -> None:
    """supervisord's `api` program; bad settings exit 1 naming the setting (FATAL)."""
    try:
        shared = config.load()
        settings = load_settings()
    except ConfigError as e:
        raise SystemExit(f"smsbus-api: {e}") from None
    log.configure(SERVICE, shared.log_level)
    from smsbus_api.app import create_app

    app = create_app(shared, settings)
    logger.info("listening host=%s port=%d", settings.host, settings.port)
    server = Server(uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=settings.event_loop,
        http=settings.http_parser,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=3,
        lifespan="on",
    ), on_exit=app.state.events.disconnect_all)
    server.run()
