"""/healthz (the process answers), /readyz (the database answers and its migrations are
current) and /metrics (prometheus_client's exposition). Public, as Prometheus scrapes them."""

from __future__ import annotations

from typing import Any

import msgspec
import prometheus_client
from litestar import Request, Response, get

from smsbus.migrate import available_migrations
from smsbus_api.auth import scope

SELECT_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) AS version FROM schema_migrations"


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    detail: str = ""


@get("/healthz", opt=scope(None), summary="The process is up", include_in_schema=True)
async def healthz() -> Health:
    return Health("ok")


@get("/readyz", opt=scope(None), summary="The database is reachable and migrated")
async def readyz(request: Request[Any, Any, Any]) -> Response[Health]:
    wanted = max((version for version, _, _ in available_migrations()), default=0)
    try:
        async with request.app.state.db.pool.connection(timeout=2) as conn:
            row = await (await conn.execute(SELECT_SCHEMA_VERSION)).fetchone()
    except Exception as e:  # any failure means not ready; the reason is in the answer
        return Response(Health("unavailable", f"database: {type(e).__name__}"), status_code=503)
    version = int(row["version"]) if row else 0
    if version < wanted:
        return Response(Health("unavailable", f"schema at {version}, this api needs {wanted}"), status_code=503)
    return Response(Health("ok"))


@get("/metrics", opt=scope(None), summary="Prometheus metrics", media_type=prometheus_client.CONTENT_TYPE_LATEST)
async def metrics() -> Response[bytes]:
    return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
