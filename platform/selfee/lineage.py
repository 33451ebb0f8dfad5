"""Lineage: the manifest beside each stage's output, the one record of what made it.

A manifest names the stage's inputs with their content hashes, its config, the settings a
run continuing the output must share, the code version, counts and timings
(``selfee.stage`` writes it and decides from it whether outputs are current). Manifests
chain: a stage's inputs are earlier stages' outputs, so the report can list the chain from
raw data to reviews.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
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


def describe_files(files: dict[str, Path]) -> dict[str, dict[str, str]]:
    """Path and content hash of each of ``files`` that exists."""
    return {name: {"path": str(p), "sha256": content_hash(Path(p))}
            for name, p in files.items() if Path(p).exists()}  # fmt: skip


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest, or None when there is none (or a crash tore it: nothing to trust)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_manifest(
    path: Path,
    stage: str,
    inputs: dict[str, Path],
    config: dict[str, Any],
    outputs: dict[str, Path],
    counts: dict[str, Any],
    seconds: float,
    settings: dict[str, Any] | None = None,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a stage read (with hashes), how, and what it wrote; every job writes one
    (``selfee.stage.Stage.finish``). ``settings``: what a run continuing the output must
    share; ``run_info``: what it needs to continue (train: the Ray Train run name)."""
    manifest = {
        "stage": stage,
        "inputs": describe_files(inputs),
        "config": config,
        **({"settings": settings} if settings is not None else {}),
        **({"run": run_info} if run_info else {}),
        "code": code_version(),
        "outputs": describe_files(outputs),
        "counts": counts,
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
