"""The api against its own contract: every route refuses callers without a key, with a revoked
key or without the route's scope (a walk over the route table), and schemathesis sends
generated requests to every operation of /v1/openapi.json (authenticated): no 5xx, and every
answer conforms to the document."""

from __future__ import annotations

import re
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from smsbus.config import Settings
from smsbus_api.api import ApiSettings
from smsbus_api.app import create_app
from tests.peers.api import Api

# Not checked: that the server accepts every request the document allows (positive data
# acceptance): the table refuses more than a schema can say (a channel that is disabled, a
# trigger's SQL), with 422 and the field; and the key in Authorization makes X-API-Key moot.

NOT_CHECKED = [ignored_auth, positive_data_acceptance]

# answers without a key by design: probes, the docs, logging in, and the Kannel/Jasmin URLs
# (which check their own username/password and answer as those gateways do)
PUBLIC = {
    "/healthz", "/readyz", "/metrics", "/v1/session:POST", "/cgi-bin/sendsms", "/send",
    "/v1", "/v1/{path:str}", "/v1/docs", "/v1/openapi.json", "/v1/oauth2-redirect.html",
    "/v1/docs-assets/{file_path:path}", "/static/{file_path:path}",
}
PLACEHOLDER = re.compile(r"\{([a-z_]+)(?::[a-z]+)?\}")
EXAMPLES = {"message_id": "1", "kind": "routing", "name": "kpn", "ref": "first"}
# a key lacking the scope a route needs
LACKING = {"send": "read", "read": "send", "admin": "read"}


def guarded_routes() -> list[tuple[str, str, str]]:
    """(method, path, scope) of every route handler that needs a scope."""
    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused"), ApiSettings())
    found = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            needed = handler.opt.get("scope")
            for method in sorted(getattr(handler, "http_methods", ())):
                if method in ("HEAD", "OPTIONS"):
                    continue
                if needed is None:
                    # the browser pages answer a login page without a session (tests/web)
                    page = not handler.include_in_schema and not route.path.startswith(("/v1", "/cgi-bin", "/send"))
                    public = page or route.path in PUBLIC or f"{route.path}:{method}" in PUBLIC
                    assert public, f"{method} {route.path} needs no scope"
                    continue
                found.append((method, PLACEHOLDER.sub(lambda m: EXAMPLES.get(m.group(1), "1"), route.path), needed))
    return found


def test_every_route_refuses_no_key_a_revoked_key_and_a_key_without_its_scope(api: Api) -> None:
    revoked = api.create_key("revoked", ["send", "read", "admin"])
    with psycopg.connect(api.database_url) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'revoked'")
    routes = guarded_routes()
    assert len(routes) > 30
    with httpx.Client(base_url=api.url, timeout=10) as client:
        for method, path, needed in routes:
            without = client.request(method, path)
            with_revoked = client.request(method, path, headers={"Authorization": f"Bearer {revoked}"})
            lacking = client.request(method, path, headers={"X-API-Key": api.keys[LACKING[needed]]})
            assert (without.status_code, with_revoked.status_code, lacking.status_code) == (401, 401, 403), \
                f"{method} {path}: {without.text} {with_revoked.text} {lacking.text}"
            assert without.headers["content-type"].startswith("application/problem+json")


@pytest.fixture
def contract(api: Api) -> Any:
    return schemathesis.openapi.from_url(f"{api.url}/v1/openapi.json")


def test_generated_requests_get_no_5xx_and_answers_fit_the_document(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/v1/openapi.json")
    # the event stream never ends by itself (tests/test_api_events.py covers it)
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [o for o in operations if o.path != "/v1/events"]
    assert len(operations) > 30
    headers = {"Authorization": f"Bearer {api.keys['all']}"}
    failures = []
    for operation in operations:
        strategy = operation.as_strategy()

        @settings(max_examples=4, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(base_url=api.url, headers=headers, excluded_checks=NOT_CHECKED)

        try:
            given(strategy)(check)()
        except Exception as e:  # collected, to name every failing operation at once
            failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:800]}")
    assert not failures, "\n\n".join(failures)
