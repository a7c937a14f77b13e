"""Reading a service's /metrics as Prometheus would, with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Series = tuple[str, frozenset[tuple[str, str]]]


def scrape(port: int) -> dict[Series, float]:
    """A process's /metrics: the value of every sample by (name, labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(name: str, **labels: str) -> Series:
    return name, frozenset(labels.items())


def value(port: int, name: str, **labels: str) -> float:
    """One sample's value; 0 while the series does not exist yet (a counter never incremented)."""
    return scrape(port).get(series(name, **labels), 0.0)
