"""The model the revision, inference and serving benchmarks run: the tests' tiny SelFee model
(``selfee.testing.selfee_model``, trained here in ~10 s), or a model directory (``--model``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfee.testing.selfee_model import QUESTIONS, prompt, train_selfee_model

__all__ = ["QUESTIONS", "add_model_option", "model_dir", "prompt"]


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, help="a SelFee model dir (default: train the tiny one)"
    )


def model_dir(given: Path | None, workdir: Path) -> Path:
    return given or train_selfee_model(workdir / "model")
