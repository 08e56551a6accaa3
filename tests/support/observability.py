"""Shared pieces of the metrics and health tests: scraping, the console script, cleanup."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from outboxkit.routing import Routing

#: The installed ``outboxkit`` console script, next to this interpreter.
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "outboxkit")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """GET ``url`` (a /metrics endpoint) and parse it: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels``, ``None`` when absent."""
    return samples.get((name, tuple(sorted(labels.items()))))


def get_status(url: str) -> tuple[int, bytes]:
    """GET ``url``; the status code and body, also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def drop_outbox(db: sa.Engine, routing: Routing, redis_url: str, *services: str) -> None:
    """Drop the services' tables and delete their Redis streams."""
    import redis

    with db.begin() as conn:
        for service in services:
            table = routing.route_of_service(service).table
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(*(routing.route_of_service(s).topic for s in services))
    finally:
        client.close()
