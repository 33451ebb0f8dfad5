"""Connecting a job to Ray: the cluster a config names, the one ``ray job submit`` runs it
on ($RAY_ADDRESS), or else an embedded Ray of its own."""

from __future__ import annotations

import os
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
        address = cfg.address or os.environ.get("RAY_ADDRESS") or None
        embedded = address is None
        context = ray.init(
            # "local": a new Ray even where `ray start` runs a head on this machine (Ray
            # would join that one, and refuse num_cpus)
            address="local" if embedded else address,
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
