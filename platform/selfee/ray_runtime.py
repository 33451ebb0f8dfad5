"""Connecting a job to Ray: the cluster a config names, the one ``ray job submit`` runs it
on ($RAY_ADDRESS), or else an embedded Ray of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from selfee.config import RayConfig
from selfee.console import note

# What an embedded Ray's processes inherit unless the environment says otherwise. Ray Serve
# gives its HTTP proxy 5 s to start, three times, then kills it, and ``serve.start`` fails:
# on a busy 2-core machine the proxy's start took longer every time (measured with two busy
# processes beside it). 30 s each gives a slow start room and still ends a dead one.
PROXY_WAIT = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
EMBEDDED_ENV = {PROXY_WAIT: "30"}


def cluster_address(cfg: RayConfig) -> str | None:
    """The cluster to join: the config's, else $RAY_ADDRESS (``ray job submit``); None: none."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def will_embed(cfg: RayConfig) -> bool:
    """Whether ``ray_runtime`` would start a Ray of its own, here (Serve's proxy among its
    processes, on this machine)."""
    return not ray.is_initialized() and cluster_address(cfg) is None


@contextmanager
def ray_runtime(cfg: RayConfig) -> Iterator[bool]:
    """Use the Ray this process already has, or start/connect one and shut it down after.

    Yields True when this call started the connection (and so owns its shutdown).
    """
    started = not ray.is_initialized()
    if started:
        address = cluster_address(cfg)
        embedded = address is None
        if embedded:
            for name, value in EMBEDDED_ENV.items():
                os.environ.setdefault(name, value)
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
