"""Connecting a job to Ray: an embedded Ray on a laptop, or the cluster a config names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray

from selfee.config import RayConfig
from selfee.console import note


@contextmanager
def ray_runtime(cfg: RayConfig) -> Iterator[bool]:
    """Use the Ray this process already has, or start/connect one and shut it down after.

    Yields True when this call started the connection (and so owns its shutdown).
    """
    started = not ray.is_initialized()
    if started:
        embedded = cfg.address is None
        context = ray.init(
            address=cfg.address,
            num_cpus=cfg.num_cpus if embedded else None,
            include_dashboard=cfg.dashboard if embedded else None,
        )
        if embedded and cfg.dashboard and context.dashboard_url:
            note(f"Ray dashboard: http://{context.dashboard_url}")
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
