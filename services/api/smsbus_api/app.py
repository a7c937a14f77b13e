"""The app factory: every route, the one scope guard, problem+json errors, the OpenAPI 3.1
document at /v1/openapi.json and its documentation page (served from the local
swagger-ui-bundle wheel: no CDN)."""

from __future__ import annotations

import msgspec
import psycopg
from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from smsbus.config import Settings
from smsbus.errors import SmsbusError
from smsbus_api import campaigns, compat, configuration, events, health, messages, sessions
from smsbus_api.api import ApiSettings
from smsbus_api.auth import KeyCache, require_scope
from smsbus_api.database import Database
from smsbus_api.problems import (
    PROBLEM_JSON,
    handle_data_error,
    handle_http_exception,
    handle_smsbus_error,
    handle_unexpected,
)
from smsbus_api.web import web_router

VERSION = "1.0.0"
# Swagger UI's files, from the swagger-ui-bundle wheel (these servers often have no internet)
DOCS_ASSETS = "/v1/docs-assets"

# the request bodies, by the name the document gives them
INPUT_STRUCTS: dict[str, type[msgspec.Struct]] = {
    struct.__name__: struct
    for module in (messages, configuration, sessions, campaigns)
    for struct in vars(module).values()
    if isinstance(struct, type) and issubclass(struct, msgspec.Struct)
}

ROUTES = [
    *health.ROUTES, *sessions.ROUTES, *messages.ROUTES, *configuration.ROUTES, *campaigns.ROUTES, *events.ROUTES,
    *compat.ROUTES,
]


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
            favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
        )],
    )


def document_problems(app: Litestar) -> None:
    """Every operation may answer 4XX/5XX with problem+json (the scope guard alone gives 401
    and 403 everywhere): said once here rather than on each route."""
    schema = app.openapi_schema
    components = schema.components
    assert components is not None
    components.schemas = dict(components.schemas or {})
    components.schemas["Problem"] = Schema(
        type=OpenAPIType.OBJECT,
        required=["title", "status"],
        properties={
            "type": Schema(type=OpenAPIType.STRING), "title": Schema(type=OpenAPIType.STRING),
            "status": Schema(type=OpenAPIType.INTEGER), "detail": Schema(type=OpenAPIType.STRING),
            "field": Schema(type=OpenAPIType.STRING, description="the request field that was wrong"),
            "constraint": Schema(type=OpenAPIType.STRING, description="the database constraint that refused it"),
        },
    )
    problem = OpenAPIResponse(
        description="RFC 9457 problem details: what was wrong, and the field or constraint",
        content={PROBLEM_JSON: OpenAPIMediaType(schema=Reference("#/components/schemas/Problem"))},
    )
    # request bodies refuse unknown fields (forbid_unknown_fields): the document says so
    for name, component in components.schemas.items():
        struct = INPUT_STRUCTS.get(name)
        if isinstance(component, Schema) and struct is not None and struct.__struct_config__.forbid_unknown_fields:
            component.additional_properties = False
    for path in (schema.paths or {}).values():
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(path, method)
            if operation is not None:
                kept = {code: r for code, r in (operation.responses or {}).items() if code[0] not in "45"}
                operation.responses = {**kept, "4XX": problem, "5XX": problem}


def create_app(shared: Settings, settings: ApiSettings) -> Litestar:
    db = Database(shared.resolved_database_url(), settings.pool_size)
    hub = events.EventHub(shared.bus, db, settings.events_resume_window_s, settings.events_client_queue)
    state = State({
        "db": db, "settings": settings, "shared": shared, "key_cache": KeyCache(settings.key_cache_s), "events": hub,
    })
    app = Litestar(
        route_handlers=[
            *ROUTES,
            # the Web Messenger and the Manager (SPEC §11)
            web_router(),
            create_static_files_router(DOCS_ASSETS, [swagger_ui_path], opt={"scope": None},
                                       include_in_schema=False),
        ],
        guards=[require_scope],
        state=state,
        on_startup=[db.open, hub.start],
        on_shutdown=[hub.stop, db.close],
        exception_handlers={
            HTTPException: handle_http_exception,
            SmsbusError: handle_smsbus_error,
            psycopg.DataError: handle_data_error,
            Exception: handle_unexpected,
        },
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_request_bytes,
        debug=False,
        # smsbus.log configured the process's logging (one line per event, to stdout)
        logging_config=None,
    )
    document_problems(app)
    return app
