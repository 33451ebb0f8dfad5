"""Shared fixtures: the published SelFee reference data, one local Ray, offline teachers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfee.teacher.config import TeacherConfig
from selfee.teacher.server import TeacherThread

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "selfee"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"the SelFee reference data is missing: expected {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (2 CPUs, no dashboard)."""
    import ray

    # "local": its own Ray even where `ray start` runs a head on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def serve_cleanup(ray_session: None) -> Iterator[None]:
    from ray import serve

    yield
    serve.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on, for as long as the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture
def start_teacher() -> Iterator:
    """Start offline teachers on free ports of 127.0.0.1: ``start_teacher(rpm=2)``."""
    running: list[TeacherThread] = []

    def start(**settings: object) -> TeacherThread:
        teacher = TeacherThread(TeacherConfig(port=0, **settings)).__enter__()
        running.append(teacher)
        return teacher

    yield start
    for teacher in running:
        teacher.__exit__(None, None, None)


@pytest.fixture(scope="session")
def selfee_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SelFee model trained for this session (seconds): one revision, then done."""
    from selfee.testing.selfee_model import train_selfee_model

    return train_selfee_model(tmp_path_factory.mktemp("selfee-model") / "model")


@pytest.fixture(scope="session")
def adapter_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pad-less base, two random adapters on it (math: rank 8, code: 16), and one on
    another base (elsewhere)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfee.testing.chains import write_pad_less_base, write_random_adapter

    folder = tmp_path_factory.mktemp("adapters")
    paths = {"base": write_pad_less_base(folder / "base"),
             "other_base": write_pad_less_base(folder / "other_base")}  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(paths["base"])
    for name, base, rank, seed in (("math", "base", 8, 1), ("code", "base", 16, 2),
                                   ("elsewhere", "other_base", 8, 3)):  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(paths[base])
        paths[name] = folder / name
        write_random_adapter(model, paths[base], paths[name], tokenizer, rank, seed)
    return paths


SERVE_STARTS = 3  # ports tried before a Serve that cannot bind fails the test


def start_serve() -> int:
    """A fresh Ray Serve, its HTTP proxy on a free port of 127.0.0.1; returns the port. A
    Serve left running (by a module whose setup failed before its shutdown) is shut down
    first: ``serve.start`` keeps a running Serve and its port, whatever port it is given.
    A port found free can be taken before the proxy binds it (Ray's own connections draw
    from the same ephemeral range): then another is tried."""
    from ray import serve

    serve.shutdown()
    for attempt in range(1, SERVE_STARTS + 1):
        port = free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            return port
        except Exception as e:  # Ray wraps the proxy's error in its own
            serve.shutdown()
            if "Failed to bind" not in str(e) or attempt == SERVE_STARTS:
                raise
    raise AssertionError("not reached")


def deploy_from_serve_config(
    config_file: str, app: str, port: int | None = None, **overrides: object
) -> str:
    """Deploy one application of ``configs/serve/<config_file>`` the way ``serve run`` does
    (its builder, args and route prefix; ``overrides`` win) on a fresh Serve, or next to the
    apps of the Serve already running on ``port``; returns its base URL."""
    import importlib

    import yaml
    from ray import serve

    spec = yaml.safe_load((REPO / "configs" / "serve" / config_file).read_text())
    app_spec = next(a for a in spec["applications"] if a["name"] == app)
    module, attr = app_spec["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    if port is None:
        port = start_serve()
    serve.run(builder({**app_spec["args"], **overrides}), name=app,
              route_prefix=app_spec["route_prefix"])  # fmt: skip
    return f"http://127.0.0.1:{port}{app_spec['route_prefix'].rstrip('/')}"


def deploy_selfee(model_dir: Path, **args: object) -> str:
    """The SelFee app of ``configs/serve/selfee.yaml`` with a small replica; returns /v1."""
    settings = {"model": str(model_dir), "max_replicas": 1, "cpus_per_replica": 0.5, **args}
    return deploy_from_serve_config("selfee.yaml", "selfee", **settings) + "/v1"


@contextlib.contextmanager
def selfee_serve(model_dir: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``selfee serve --model DIR`` in its own process, on its own embedded Ray; yields the
    /v1 URL once it says it is ready, and stops it with Ctrl-C (SIGINT)."""
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    command = [sys.executable, "-m", "selfee.cli", "serve", "--model", str(model_dir),
               "--port", str(port), "--ray.num-cpus", "2", "--no-ray.dashboard",
               "--cpus-per-replica", "0.5", "--max-replicas", "1"]  # fmt: skip
    # a file, not a pipe: Ray's log lines would fill a pipe
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               text=True, env=env)  # fmt: skip
    ready = f" at http://127.0.0.1:{port}/v1 (chat/completions"  # "[serve] NAME at URL (...)"
    try:
        deadline = time.monotonic() + 180
        while ready not in log.read_text():  # printed once serve.run has returned
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def check_manifest(path: Path, stage: str) -> dict:
    """A stage's manifest names its inputs and outputs with hashes that match the files."""
    import json

    from selfee.lineage import content_hash

    manifest = json.loads(path.read_text())
    assert manifest["stage"] == stage and manifest["inputs"] and manifest["outputs"]
    assert manifest["code"].startswith("selfee ") and manifest["config"]
    for entry in [*manifest["inputs"].values(), *manifest["outputs"].values()]:
        assert content_hash(Path(entry["path"])) == entry["sha256"]
    return manifest


@pytest.fixture(scope="session")
def vllm_engine(selfee_model_dir: Path) -> Iterator[object]:
    """One vLLM engine (CPU build) on the tiny model for the whole session: it takes 30-140 s
    to start."""
    from selfee.engines.vllm import VLLMEngine

    engine = VLLMEngine(selfee_model_dir)
    yield engine
    engine.close()
