"""Reading the node's Prometheus metrics endpoint, as Prometheus would (metrics tests)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

import ray

SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def scrape() -> dict[tuple[str, frozenset], float]:
    """Every selfee series on this node: (name, labels) → value (summed over workers)."""
    port = ray.nodes()[0]["MetricsExportPort"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    series: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        match = SAMPLE_RE.match(line)
        if not match or not match["name"].startswith("ray_selfee_"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        mine = frozenset((k, v) for k, v in labels.items() if k in ("stage", "kind", "outcome",
                         "finish_reason", "run", "le", "model"))  # fmt: skip
        key = (match["name"], mine)
        series[key] = series.get(key, 0.0) + float(match["value"])
    return series


def value(series: dict, name: str, **labels: str) -> float:
    """The sum over series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, got), v in series.items() if n == name and want <= got)


def wait_for(check: Callable[[dict], bool], timeout: float = 60) -> dict:
    """Metrics reach the endpoint every few seconds: poll until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        series = scrape()
        if check(series) or time.monotonic() > deadline:
            return series
        time.sleep(2)
