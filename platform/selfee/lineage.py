"""Lineage: a manifest beside each stage's output, and reuse of outputs that are current.

A manifest names the stage's inputs with their content hashes, its config, the code version,
counts and timings. A stage whose inputs (by hash) and config are unchanged since its
manifest was written, and whose outputs still exist, is not run again. Manifests chain:
a stage's inputs are earlier stages' outputs, so the report can list the chain from raw
data to reviews.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfee import __version__

MANIFEST = "manifest.json"


BIG_FILE = 256 << 20  # larger files (model weights) are fingerprinted by size and time


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in order). Files over
    256 MB count by size and modification time: hashing a 13B model would take minutes."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        stat = file.stat()
        if stat.st_size > BIG_FILE:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            continue
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"selfee {__version__}" + (f" ({commit})" if commit else "")


def describe_inputs(inputs: dict[str, Path]) -> dict[str, dict[str, str]]:  # also outputs
    return {name: {"path": str(p), "sha256": content_hash(p)} for name, p in inputs.items()}


def run_stage(
    name: str,
    folder: Path,
    inputs: dict[str, Path],
    config: dict[str, Any],
    outputs: dict[str, Path],
    work: Callable[[], dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Run ``work`` unless the manifest in ``folder`` says its outputs are current; write
    the manifest after a run. Returns the manifest (``reused`` says which happened)."""
    path = folder / MANIFEST
    described = describe_inputs(inputs)
    if path.is_file():
        old = json.loads(path.read_text())
        same = old.get("inputs") == described and old.get("config") == config
        if same and all(p.exists() for p in outputs.values()):
            say(f"{name}: inputs and config unchanged since {old['finished']}, reusing {folder}")
            return {**old, "reused": True, "manifest": str(path)}
    started = time.time()
    counts = work()
    manifest = write_manifest(
        path, name, inputs, config, outputs, counts, time.time() - started, described
    )
    return {**manifest, "reused": False, "manifest": str(path)}


def write_manifest(
    path: Path,
    stage: str,
    inputs: dict[str, Path],
    config: dict[str, Any],
    outputs: dict[str, Path],
    counts: dict[str, Any],
    seconds: float,
    described_inputs: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """What a stage read (with hashes), how, and what it wrote; every job writes one.
    ``described_inputs``: the inputs' hashes when the caller has them already."""
    if described_inputs is None:
        present = {k: Path(v) for k, v in inputs.items() if Path(v).exists()}
        described_inputs = describe_inputs(present)
    manifest = {
        "stage": stage,
        "inputs": described_inputs,
        "config": config,
        "code": code_version(),
        "outputs": describe_inputs({k: Path(v) for k, v in outputs.items() if Path(v).exists()}),
        "counts": counts,
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
