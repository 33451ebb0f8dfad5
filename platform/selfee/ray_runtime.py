"""Connecting a job to Ray: an embedded Ray on a laptop, or the cluster a config names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray

from selfee.config import RayConfig


@contextmanager
def ray_runtime(cfg: RayConfig) -> Iterator[bool]:
    """Use the Ray this process already has, or start/connect one and shut it down after.

    Yields True when this call started the connection (and so owns its shutdown).
    """
    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.address, num_cpus=cfg.num_cpus, include_dashboard=False)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
