"""One run per output folder: continue it (``--resume``), discard it (``--overwrite``), or
refuse, saying why. The run's settings and Ray Train run name are in the manifest
(``selfee.stage``); releases before it kept them in ``run.json``, still read."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfee.config import with_new_names
from selfee.errors import ConfigError
from selfee.stage import changed_keys
from selfee.train.config import TrainConfig

if TYPE_CHECKING:
    from selfee.train.job import TrainStage

RUN_FILE = "run.json"
# Keys that may change when a run is resumed: they do not change what is learned.
RESUMABLE_CHANGES = {
    "resume", "overwrite", "ray", "log_every_steps", "checkpoint_every_steps",
    "keep_checkpoints", "max_failures", "fault_injection_step", "output", "storage_path",
}  # fmt: skip


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def prepare_output(
    stage: TrainStage, fingerprint: dict[str, Any], storage: str
) -> tuple[str, bool]:
    """(the Ray Train run name, whether an earlier run is being resumed).

    One run per output folder. A new run gets a new name, so a shared ``storage_path``
    never hands it the checkpoints of a run that ``--overwrite`` discarded. A run that
    ended before its first checkpoint left nothing to resume: the next run starts over.
    """
    cfg, out = stage.cfg, stage.folder()
    record = stage.earlier()
    earlier = None if record is None else {**record["settings"], **record.get("run", {})}
    if earlier is not None and not cfg.overwrite and not _has_checkpoint(storage, earlier):
        log(f"the earlier run in {out} ended before its first checkpoint: starting over")
        earlier = None
    if earlier is None and cfg.resume:
        raise ConfigError(
            f"--resume: {out} holds no run with a checkpoint to continue; leave out --resume "
            "to start one"
        )
    if earlier is not None and cfg.overwrite:
        stage.discard("checkpoints", "tokenizer", RUN_FILE)
        earlier = None
    if earlier is not None and not cfg.resume:
        raise ConfigError(
            f"{out} holds an earlier run: --resume continues it from its latest checkpoint, "
            "--overwrite starts over"
        )
    if earlier is not None:
        changed = changed_keys(earlier["config"], fingerprint["config"])
        if earlier["data_sha256"] != fingerprint["data_sha256"]:
            changed.append("data (file content)")
        if changed:
            why = (" (DeepSpeed's ZeRO checkpoints are split per worker: resume with the "
                   f"run's num_workers, {earlier['config'].get('num_workers')})"
                   if "num_workers" in changed else "")  # fmt: skip
            raise ConfigError(
                f"cannot resume the run in {out}: {', '.join(changed)} changed since it started"
                f"{why}; --overwrite starts over"
            )
        log(f"resuming the run in {out} from its latest checkpoint")
        stage.begin(fingerprint, run_name=earlier["run_name"])
        return earlier["run_name"], True
    run_name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    stage.begin(fingerprint, run_name=run_name)
    return run_name, False


def read_run_file(path: Path) -> dict[str, Any] | None:
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or torn by a crash: no run to continue
        return None
    if not isinstance(earlier, dict) or "run_name" not in earlier:
        return None
    return {**earlier, "config": with_new_names(earlier.get("config", {}), TrainConfig.renamed)}


def _has_checkpoint(storage: str, earlier: dict[str, Any]) -> bool:
    """Whether the run saved a checkpoint; a remote storage_path is taken on trust."""
    if "://" in storage:
        return True
    return any((Path(storage) / earlier["run_name"]).glob("checkpoint_*"))


def legacy_record(out: Path) -> dict[str, Any] | None:
    """``run.json`` of an earlier release, as a manifest's ``settings`` and ``run``."""
    earlier = read_run_file(out / RUN_FILE)
    if earlier is None:
        return None
    settings = {"config": earlier["config"], "data_sha256": earlier.get("data_sha256")}
    return {"settings": settings, "run": {"run_name": earlier["run_name"]}}
