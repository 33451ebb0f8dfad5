"""The offline teacher as a Ray Serve application (the same FastAPI app as ``selfee teacher``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from selfee.config import TAKE_EVERY_REQUEST
from selfee.teacher.config import TeacherConfig
from selfee.teacher.server import create_app


def teacher_application(config: TeacherConfig | None = None) -> Application:
    """One replica, so ``/stats`` and the server-side rate limit cover all traffic; it takes
    every request at once, as an API does (at 5 at a time, Serve's default, the added
    latency would become a queue)."""
    config = config or TeacherConfig()

    def build_asgi_app() -> FastAPI:  # a plain function: Serve calls it on the replica
        return create_app(config)

    ingress = serve.ingress(build_asgi_app)()
    deployment = serve.deployment(
        name="OfflineTeacher",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=TAKE_EVERY_REQUEST,
    )(ingress)
    return deployment.bind()


def build(args: dict[str, Any]) -> Application:
    """Builder for ``serve run serve_apps.teacher_app:build rpm=60 fault_rate=0.1``."""
    return teacher_application(TeacherConfig.model_validate(args))
