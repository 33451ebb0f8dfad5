"""The cluster files name configs and apps that exist and validate with the same models."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from selfee.cli import COMMANDS
from selfee.config import load_config
from selfee.serve.config import DemoConfig, ServeConfig

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "cluster" / "kuberay"
CONFIG_OF = {c.name: c.config for c in COMMANDS if c.config is not None}


def entrypoint_config(entrypoint: str):
    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "-m"] and words[2].startswith("jobs.")
    stage = words[2].removeprefix("jobs.")
    assert (REPO / "jobs" / f"{stage}.py").is_file()
    config = Path(words[words.index("--config") + 1])
    return load_config(CONFIG_OF[stage], REPO / config)


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-augment.yaml", "rayjob-judge.yaml"])
def test_rayjobs_run_stages_with_configs_that_validate(name: str) -> None:
    spec = yaml.safe_load((KUBERAY / name).read_text())
    assert spec["kind"] == "RayJob"
    entrypoint_config(spec["spec"]["entrypoint"])


def test_gpu_configs_are_complete_and_validate() -> None:
    for name in ["selfee-7b.yaml", "selfee-13b.yaml"]:
        cfg = load_config(CONFIG_OF["train"], REPO / "configs" / name)
        assert cfg.use_gpu and cfg.bf16() and cfg.num_workers >= 8
    for name, adapter in [("selfee-7b-lora.yaml", "lora"), ("selfee-13b-lora.yaml", "qlora")]:
        cfg = load_config(CONFIG_OF["train"], REPO / "configs" / name)
        assert cfg.use_gpu and cfg.bf16() and cfg.adapter == adapter and cfg.num_workers <= 2
        assert cfg.learning_rate == 2e-4 and cfg.lora.export == "merged"
    infer = load_config(CONFIG_OF["infer"], REPO / "configs" / "infer.yaml")
    assert infer.gpus_per_actor == 1 and infer.min_revisions == 3
    assert infer.engine == "vllm"  # what GPU users run


def test_rayservice_apps_match_the_serve_config() -> None:
    spec = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    apps = yaml.safe_load(spec["spec"]["serveConfigV2"])["applications"]
    local = yaml.safe_load((REPO / "configs" / "serve" / "selfee.yaml").read_text())["applications"]
    assert [a["import_path"] for a in apps] == [a["import_path"] for a in local]
    serving = ServeConfig.model_validate(apps[0]["args"])
    assert serving.gpus_per_replica == 1 and serving.engine == "vllm" and serving.prefix_affinity
    DemoConfig.model_validate(apps[1]["args"])
    for app in local:
        module = app["import_path"].split(":")[0].replace(".", "/") + ".py"
        assert (REPO / module).is_file()


def test_launcher_and_raycluster_parse_and_the_image_holds_the_repo() -> None:
    launcher = yaml.safe_load((REPO / "cluster" / "gpu-cluster.yaml").read_text())
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())["kind"] == "RayCluster"
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    for folder in ["platform", "jobs", "serve_apps", "configs"]:
        assert f"COPY --chown=ray:users {folder} ./{folder}" in dockerfile
