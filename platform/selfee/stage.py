"""The one shape every stage has: a config, inputs, outputs, a run, and its record.

A stage is a ``Stage`` subclass: ``inputs()`` and ``outputs()`` name the files it reads and
leaves, ``run()`` does the work and returns its summary. What every job needs around that is
here, once:

- ``discard`` (``--overwrite``) removes the outputs and the record of an earlier run;
- ``keep_settings`` refuses to continue an output made with other settings (a resumed run
  must make the same rows), and records the settings before any work starts (augment;
  train, whose rules for continuing are its own, uses ``earlier`` and ``begin``);
- ``finish`` writes the summary file and the manifest: the one record of what made the output
  (inputs by hash, config, the settings a continuing run must share, code version, counts);
- ``run_or_reuse`` skips a stage whose manifest says its outputs are current (the quickstart).
"""

from __future__ import annotations

import json
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from selfee import lineage
from selfee.config import StageConfig, dump_config, with_new_names
from selfee.errors import ConfigError

C = TypeVar("C", bound=StageConfig)
Say = Callable[[str], None]


class Stage(ABC, Generic[C]):
    """One run of a stage on a config. ``label`` names it in a pipeline (``infer-autonomous``)."""

    name: ClassVar[str]
    summary_file: ClassVar[str] = "summary.json"

    def __init__(self, cfg: C, label: str | None = None) -> None:
        self.cfg = cfg
        self.label = label or self.name
        self.started = time.monotonic()
        self.settings: dict[str, Any] | None = None  # what a continuing run must share
        self.run_info: dict[str, Any] = {}  # what a continuing run needs (train: its run name)

    # --- what each stage says about itself ----------------------------------------------

    def folder(self) -> Path:
        return Path(self.cfg.output)  # type: ignore[attr-defined]

    def manifest_path(self) -> Path:
        return self.folder() / lineage.MANIFEST

    def summary_path(self) -> Path:
        return self.folder() / self.summary_file

    @abstractmethod
    def inputs(self) -> dict[str, Path]:
        """The files (or folders) the outputs are made from."""

    @abstractmethod
    def outputs(self) -> dict[str, Path]:
        """The files (or folders) a finished run leaves."""

    @abstractmethod
    def run(self) -> dict[str, Any]:
        """The work: returns the summary (after ``finish`` has written it)."""

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The figures of the summary that the manifest carries."""
        return {}

    def legacy_record(self) -> dict[str, Any] | None:
        """The record an earlier release kept instead of the manifest (``settings``, ``run``)."""
        return None

    # --- the same for every stage --------------------------------------------------------

    def earlier(self) -> dict[str, Any] | None:
        """The record of the run already in the output folder, if it kept its settings."""
        return earlier_record(self.manifest_path(), self.legacy_record)

    def discard(self, *parts: str) -> None:
        """``--overwrite``: the outputs, the summary, the record and ``parts`` of the folder."""
        remove([*self.outputs().values(), self.summary_path(), self.manifest_path(),
                *(self.folder() / p for p in parts)])  # fmt: skip

    def begin(self, settings: dict[str, Any], **run_info: Any) -> None:
        """Record the settings (and ``run_info``) of a run that is starting."""
        self.settings, self.run_info = settings, run_info
        record_running(self.manifest_path(), self.label, settings, run_info)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write the summary, then the manifest (returned)."""
        summary.setdefault("seconds", round(self.elapsed(), 1))
        summary.setdefault("config", dump_config(self.cfg))
        path = self.summary_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return lineage.write_manifest(
            self.manifest_path(), self.label, self.inputs(), summary["config"],
            self.outputs(), self.counts(summary),
            summary["seconds"], settings=self.settings, run_info=self.run_info,
        )  # fmt: skip

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def earlier_record(
    manifest: Path, legacy: Callable[[], dict[str, Any] | None]
) -> dict[str, Any] | None:
    record = lineage.read_manifest(manifest)
    if record is not None and isinstance(record.get("settings"), dict):
        return record
    return legacy()


def keep_settings(
    manifest: Path,
    label: str,
    settings: dict[str, Any],
    renamed: dict[str, str],
    refusal: Callable[[list[str]], str],
    legacy: Callable[[], dict[str, Any] | None] = lambda: None,
) -> None:
    """Refuse (``refusal(changed keys)``) to continue the output whose record is ``manifest``
    if it was made with other settings (``renamed``: keys renamed since, old -> new: a rename
    alone never blocks continuing); then record these settings, before any work."""
    earlier = earlier_record(manifest, legacy)
    if earlier is not None:
        changed = changed_keys(with_new_names(earlier["settings"], renamed), settings)
        if changed:
            raise ConfigError(refusal(changed))
    record_running(manifest, label, settings, {})


def changed_keys(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return sorted(k for k in earlier.keys() | now.keys() if earlier.get(k) != now.get(k))


def record_running(path: Path, label: str, settings: dict[str, Any], run_info: dict) -> None:
    """The manifest of a run that has started: its settings, no outputs yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"stage": label, "settings": settings, "run": run_info, "finished": None,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def remove(paths: list[Path]) -> None:
    for target in paths:
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def run_or_reuse(stage: Stage[Any], say: Say) -> dict[str, Any]:
    """Run ``stage`` unless its manifest says the outputs are current: same inputs (by
    hash), same config, every output still there. Returns the manifest; ``reused`` says
    which happened and ``summary`` is the run's summary (None when reused)."""
    path = stage.manifest_path()
    old = lineage.read_manifest(path)
    if old is not None and old.get("finished") and old.get("stage") == stage.label:
        same = (old.get("inputs") == lineage.describe_files(stage.inputs())
                and old.get("config") == dump_config(stage.cfg))  # fmt: skip
        if same and all(p.exists() for p in stage.outputs().values()):
            say(f"{stage.label}: inputs and config unchanged since {old['finished']}, "
                f"reusing {stage.folder()}")  # fmt: skip
            return {**old, "reused": True, "summary": None, "manifest": str(path)}
    summary = stage.run()
    manifest = lineage.read_manifest(path) or {}
    return {**manifest, "reused": False, "summary": summary, "manifest": str(path)}
