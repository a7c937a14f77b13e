"""The api service as a real process (uvicorn, as supervisord runs it), and keys to call it with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from smsbus import access
from tests.peers.processes import ServiceProcess, free_port, start_service


@dataclass
class Api:
    process: ServiceProcess
    url: str
    database_url: str
    # keys by scope set: "send", "read", "admin", "all"
    keys: dict[str, str]

    def client(self, key: str | None = "all", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)

    def create_key(self, name: str, scopes: list[str]) -> str:
        with psycopg.connect(self.database_url) as conn:
            return access.create_api_key(conn, name, scopes).key


@pytest.fixture
def api_settings() -> dict[str, str]:
    """[api] settings for the `api` fixture (a test module may override this fixture)."""
    return {}


@pytest.fixture
def api(service_env: dict[str, str], database_url: str, tmp_path: Path, api_settings: dict[str, str]) -> Iterator[Api]:
    port = free_port()
    env = dict(service_env, SMSBUS_API_PORT=str(port), SMSBUS_API_KEY_CACHE_S="0")
    env.update({f"SMSBUS_API_{k.upper()}": v for k, v in api_settings.items()})
    with psycopg.connect(database_url) as conn:
        keys = {
            name: access.create_api_key(conn, f"test-{name}", scopes).key
            for name, scopes in {
                "send": ["send"], "read": ["read"], "admin": ["admin"], "all": ["send", "read", "admin"],
            }.items()
        }
    process = start_service(["smsbus-api"], env, tmp_path / "api.log")
    process.wait_for_port(port)
    yield Api(process, f"http://127.0.0.1:{port}", database_url, keys)
    code, seconds = process.stop()
    assert code == 0, process.log()
    assert seconds < 5, f"took {seconds:.1f} s to stop"
