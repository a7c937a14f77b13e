"""The app factory: every route, the one scope guard, problem+json errors, the OpenAPI 3.1
document at /v1/openapi.json and its documentation page (served from the local
swagger-ui-bundle wheel: no CDN)."""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from smsbus.config import Settings
from smsbus.errors import SmsbusError
from smsbus_api import health, messages, sessions
from smsbus_api.api import ApiSettings
from smsbus_api.auth import KeyCache, require_scope
from smsbus_api.database import Database
from smsbus_api.problems import handle_http_exception, handle_smsbus_error, handle_unexpected

VERSION = "1.0.0"
# Swagger UI's files, from the swagger-ui-bundle wheel (these servers often have no internet)
DOCS_ASSETS = "/v1/docs-assets"

ROUTES = [*health.ROUTES, *sessions.ROUTES, *messages.ROUTES]


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="smsbus API",
        version=VERSION,
        path="/v1",
        description="Send, track and configure smsbus over HTTP (SPEC §10). Errors are RFC 9457 problem+json.",
        components=Components(security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer", description="an API key"),
            "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
        }),
        security=[{"bearer": []}, {"apiKey": []}],
        render_plugins=[SwaggerRenderPlugin(
            js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
            path="/docs",
        )],
    )


def create_app(shared: Settings, settings: ApiSettings) -> Litestar:
    db = Database(shared.resolved_database_url(), settings.pool_size)
    state = State({"db": db, "settings": settings, "shared": shared, "key_cache": KeyCache(settings.key_cache_s)})
    return Litestar(
        route_handlers=[
            *ROUTES,
            create_static_files_router(DOCS_ASSETS, [swagger_ui_path], opt={"scope": None},
                                       include_in_schema=False),
        ],
        guards=[require_scope],
        state=state,
        on_startup=[db.open],
        on_shutdown=[db.close],
        exception_handlers={
            HTTPException: handle_http_exception,
            SmsbusError: handle_smsbus_error,
            Exception: handle_unexpected,
        },
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_request_bytes,
        debug=False,
    )
