"""The files in deploy/ stay true: the supervisord config renders, the dashboard's metrics exist."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import prometheus_client

from smsbus.config import Settings
from smsbus.supervisor import render_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_supervisord_config_renders_with_and_without_embedded_postgres(tmp_path: Path) -> None:
    embedded = Settings(data_dir=str(tmp_path / "a"), deploy_dir=str(DEPLOY))
    parsed = configparser.RawConfigParser()
    parsed.read(render_config(embedded, nodaemon=True))
    assert {"program:postgres", "program:broker", "supervisord"} <= set(parsed.sections())
    assert parsed["program:postgres"]["stopsignal"] == "INT"
    assert parsed["program:broker"]["autostart"] == "false"

    external = Settings(database_url="postgresql://app@db/smsbus", data_dir=str(tmp_path / "b"), deploy_dir=str(DEPLOY))
    parsed = configparser.RawConfigParser()
    parsed.read(render_config(external, nodaemon=False))
    assert "program:postgres" not in parsed.sections() and "program:broker" in parsed.sections()


def test_dashboard_uses_only_metrics_that_exist() -> None:
    import smsbus.metrics  # noqa: F401  (registers the shared metrics)
    import smsbus_broker.broker  # noqa: F401

    registered = {m.name for m in prometheus_client.REGISTRY.collect()}
    dashboard = json.loads((DEPLOY / "grafana" / "smsbus-dashboard.json").read_text())
    used = {
        re.sub(r"(_total|_bucket|_count|_sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"smsbus_[a-z_]+", target["expr"])
    }
    assert used and used <= registered, used - registered
