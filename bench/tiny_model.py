"""The SelFee model the revision, inference and serving benchmarks run: the tests' tiny one
(``selfee.testing.selfee_model``, 0.2M parameters, trained here in ~10 s), the same chains
learned by a 27M model (``--size 27m``: a token costs what it does on a small real model;
~8 min to train on 2 cores), or a model directory (``--model``)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from selfee.testing.selfee_model import QUESTIONS, prompt, train_selfee_model

__all__ = ["QUESTIONS", "add_model_option", "model_dir", "model_label", "prompt"]

SHAPES = {
    "tiny": {},  # the tests' model
    # 8 layers of 512 (8 heads of 64): the body of a 36M LLaMA with a 400-token vocabulary.
    # Fewer steps at a lower rate than the tiny model: it learns the chains (loss 0.04) and,
    # forced on, writes a verdict every ~50-120 tokens — revision control's worst case.
    "27m": {"hidden": 512, "layers": 8, "mlp": 1536, "steps": 150, "lr": 1e-3},
}


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, help="a SelFee model dir (default: train one of --size)"
    )
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny",
                        help="the SelFee model to train when no --model is given")  # fmt: skip


def model_dir(given: Path | None, workdir: Path, size: str = "tiny") -> Path:
    return given or train_selfee_model(workdir / "model", **SHAPES[size])


def model_label(given: Path | None, size: str = "tiny") -> str:
    """What a results row calls the model: its architecture and size, not a folder name."""
    if given is None:
        return f"SelFee {size} (trained here)"
    from safetensors import safe_open

    params = 0
    for weights in sorted(given.glob("*.safetensors")):
        with safe_open(weights, framework="pt") as f:
            params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    kind = json.loads((given / "config.json").read_text()).get("model_type", "model")
    return f"{kind} {params / 1e6:.1f}M ({given})"
