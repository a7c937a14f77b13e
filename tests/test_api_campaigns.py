"""/v1/campaigns against the api process: the same shared code as `smsbus campaigns`."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.peers.api import Api


def test_a_campaign_is_created_loaded_previewed_started_paused_and_cancelled(
    api: Api, conn: psycopg.Connection[Any]
) -> None:
    with api.client() as client:
        created = client.post("/v1/campaigns", json={
            "name": "promo", "template": "Hi {name}", "rate_per_s": 5, "allowed_hours": "08:00-20:00",
            "time_zone": "Europe/Amsterdam", "default_region": "NL",
        })
        assert created.status_code == 201, created.text
        assert created.json()["state"] == "DRAFT"
        loaded = client.post("/v1/campaigns/promo/recipients", json={"recipients": [
            {"address": "06 12345001", "name": "Ann"}, {"address": "+31612345001", "name": "Ann again"},
            {"address": "nope", "name": "Bob"},
        ]})
        assert loaded.json() == {"rows": 3, "loaded": 1, "invalid": 1, "duplicate": 1, "opted_out": 0}
        preview = client.get("/v1/campaigns/promo/preview").json()
        assert preview["texts"] == [{"address": "+31612345001", "text": "Hi Ann", "encoding": "gsm7", "parts": 1}]
        assert preview["estimate"] == {"messages": 1, "parts": 1, "by_encoding": {"gsm7": 1}}
        assert client.post("/v1/campaigns/promo/start").json()["state"] == "RUNNING"
        assert client.post("/v1/campaigns/promo/pause").json()["state"] == "PAUSED"
        refused = client.post("/v1/campaigns/promo/pause")
        assert refused.status_code == 422 and "PAUSED: it cannot become PAUSED" in refused.json()["detail"]
        assert client.post("/v1/campaigns/promo/cancel").json()["state"] == "CANCELLED"
        shown = client.get("/v1/campaigns/promo").json()
        assert shown["recipients"] == {"CANCELLED": 1} and shown["rejected"] == {"invalid": 1, "duplicate": 1}
        assert [c["name"] for c in client.get("/v1/campaigns").json()] == ["promo"]

        bad = client.post("/v1/campaigns", json={"name": "x", "template": "Hi {name", "time_zone": "UTC"})
        assert bad.status_code == 422 and bad.json()["field"] == "template"
        zone = client.post("/v1/campaigns", json={"name": "x", "template": "Hi", "time_zone": "Mars/Base"})
        assert zone.status_code == 422 and zone.json()["field"] == "time_zone"
        assert client.get("/v1/campaigns/unknown").status_code == 404
    with api.client("read") as reader:
        assert reader.post("/v1/campaigns", json={"name": "y", "template": "Hi"}).status_code == 403
