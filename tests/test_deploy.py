"""The files in deploy/ stay true: the supervisord config renders, the dashboard's metrics exist."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client.metrics import MetricWrapperBase

from smsbus.config import Settings
from smsbus.supervisor import ChannelProgram, render_channel_programs, render_config

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


# every service's metrics: each module that defines some, imported so that they register
SERVICE_MODULES = (
    "smsbus.metrics",
    "smsbus_broker.broker",
    "smsbus_router.router",
    "smsbus_triggers.triggers",
    "smsbus_archiver.archiver",
    "smsbus_channel_smpp.channel_smpp",
    "smsbus_channel_gsm.channel_gsm",
    "smsbus_webhooks.webhooks",
    "smsbus_api.messages",
    "smsbus_api.events",
    "smsbus_campaigns.campaigns",
)
# labels Prometheus adds to every series, and a histogram's bucket bound
SCRAPE_LABELS = {"job", "instance", "le"}
# defined but deliberately not on the dashboard
NOT_ON_THE_DASHBOARD = {"smsbus_gsm_signal_rssi"}  # the same reading as smsbus_gsm_signal_dbm
# PromQL names that are neither metrics nor labels in a selector or `by (...)`
METRIC_NAME = re.compile(r"\bsmsbus_[a-z0-9_]+")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def registered_metrics() -> dict[str, set[str]]:
    """Every smsbus metric the services define, by its name without the type's suffix, with
    its label names (prometheus_client keeps those on the collector only)."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    found: dict[str, set[str]] = {}
    for collector in set(prometheus_client.REGISTRY._names_to_collectors.values()):
        if not isinstance(collector, MetricWrapperBase):
            continue  # the process and platform collectors
        for family in collector.describe():
            if family.name.startswith("smsbus_"):
                found[family.name] = set(collector._labelnames)
    return found


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def test_every_dashboard_expression_names_existing_metrics_and_labels() -> None:
    registered = registered_metrics()
    dashboard = json.loads((DEPLOY / "grafana" / "smsbus-dashboard.json").read_text())
    used: set[str] = set()
    panels = [p for p in dashboard_panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            where = f"panel {panel['title']!r}: {expr}"
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where
            names = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in METRIC_NAME.findall(expr)}
            assert names, where
            unknown = names - registered.keys()
            assert not unknown, f"{where}: no such metric {sorted(unknown)}"
            labels = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
            labels |= set(MATCHER.findall(expr))
            known = SCRAPE_LABELS.union(*(registered[name] for name in names))
            assert labels <= known, f"{where}: no such label {sorted(labels - known)}"
            used |= names
    missing = registered.keys() - used - NOT_ON_THE_DASHBOARD
    assert not missing, f"metrics no panel shows: {sorted(missing)}"


def test_prometheus_scrapes_every_service_on_its_default_metrics_port() -> None:
    from smsbus.archive import ArchiverSettings
    from smsbus_api.api import ApiSettings
    from smsbus_broker.broker import BrokerSettings
    from smsbus_campaigns.campaigns import CampaignsSettings
    from smsbus_router.router import RouterSettings
    from smsbus_triggers.triggers import TriggersSettings
    from smsbus_webhooks.webhooks import WebhooksSettings

    text = (DEPLOY / "prometheus.yml").read_text()
    # the jobs in force (not commented out) and their one target each
    job = r"(?m)^  - job_name: (\S+)\n    static_configs:\n      - targets: \[\"127\.0\.0\.1:(\d+)\"\]"
    scraped = dict(re.findall(job, text))
    defaults = {
        "broker": BrokerSettings().metrics_port,
        "router": RouterSettings().metrics_port,
        "triggers": TriggersSettings().metrics_port,
        "archiver": ArchiverSettings().metrics_port,
        "webhooks": WebhooksSettings().metrics_port,
        # the api serves /metrics on its own HTTP port
        "api": ApiSettings().port,
        "campaigns": CampaignsSettings().metrics_port,
    }
    assert scraped == {job: str(port) for job, port in defaults.items()}


def test_started_as_root_every_program_runs_as_the_service_user(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "var"), deploy_dir=str(DEPLOY), service_user="smsbus")
    parsed = configparser.RawConfigParser()
    parsed.read(render_config(settings, nodaemon=True))
    parsed.read(render_channel_programs(settings, [ChannelProgram("kpn", "smpp", 10)]))
    programs = [section for section in parsed.sections() if section.startswith("program:")]
    assert {"program:postgres", "program:broker", "program:channel-kpn"} <= set(programs)
    expected = "smsbus" if os.geteuid() == 0 else None  # supervisord cannot switch users otherwise
    assert {parsed[p].get("user") for p in programs} == {expected}


def test_the_systemd_unit_runs_unprivileged_and_confined() -> None:
    unit = configparser.RawConfigParser(strict=False)
    unit.read(DEPLOY / "smsbus.service")
    service = unit["Service"]
    assert service["User"] == "smsbus" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    # the data directory stays writable: it is the working directory's var/
    assert service["ReadWritePaths"] == service["WorkingDirectory"] + "/var"
