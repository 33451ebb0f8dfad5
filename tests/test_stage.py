"""The stage protocol: one record (the manifest) says what made an output, whether a run may
continue it, and whether a pipeline may reuse it; --overwrite discards it the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from selfee.config import StageConfig
from selfee.errors import ConfigError
from selfee.stage import Stage, keep_settings, run_or_reuse


class CopyConfig(StageConfig):
    source: Path
    output: Path
    upper: bool = False
    renamed: ClassVar[dict[str, str]] = {"shout": "upper"}


class CopyStage(Stage[CopyConfig]):
    """A stage small enough to read: copies a file, upper-cased on request."""

    name = "copy"
    runs = 0

    def inputs(self) -> dict[str, Path]:
        return {"source": self.cfg.source}

    def outputs(self) -> dict[str, Path]:
        return {"copy": self.folder() / "copy.txt"}

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"chars": summary["chars"]}

    def run(self) -> dict[str, Any]:
        type(self).runs += 1
        self.settings = {"upper": self.cfg.upper}
        keep_settings(self.manifest_path(), self.label, self.settings, CopyConfig.renamed,
                      lambda changed: f"made with other settings: {', '.join(changed)}")  # fmt: skip
        text = self.cfg.source.read_text()
        self.outputs()["copy"].write_text(text.upper() if self.cfg.upper else text)
        summary = {"chars": len(text)}
        self.finish(summary)
        return summary


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.txt"
    path.write_text("hello")
    return path


def test_finish_writes_the_summary_and_the_one_record_of_what_made_the_output(
    source: Path, tmp_path: Path
) -> None:
    cfg = CopyConfig(source=source, output=tmp_path / "out")
    CopyStage(cfg, label="copy-plain").run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["chars"] == 5 and summary["config"]["upper"] is False and "seconds" in summary
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stage"] == "copy-plain" and manifest["counts"] == {"chars": 5}
    assert manifest["settings"] == {"upper": False} and manifest["finished"]
    assert set(manifest["inputs"]) == {"source"} and set(manifest["outputs"]) == {"copy"}
    assert len(manifest["inputs"]["source"]["sha256"]) == 64


def test_a_run_with_other_settings_is_refused_and_overwrite_discards_the_output(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    CopyStage(CopyConfig(source=source, output=out)).run()
    with pytest.raises(ConfigError, match="made with other settings: upper"):
        CopyStage(CopyConfig(source=source, output=out, upper=True)).run()
    assert (out / "copy.txt").read_text() == "hello"  # untouched
    stage = CopyStage(CopyConfig(source=source, output=out, upper=True))
    stage.discard("scratch")
    assert not any(out.iterdir())  # outputs, summary, manifest: gone
    stage.run()
    assert (out / "copy.txt").read_text() == "HELLO"


def test_settings_saved_under_an_old_key_name_still_match(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"stage": "copy", "settings": {"shout": True}}))
    CopyStage(CopyConfig(source=source, output=out, upper=True)).run()  # not refused
    with pytest.raises(ConfigError, match="upper"):
        CopyStage(CopyConfig(source=source, output=out, upper=False)).run()


def test_run_or_reuse_runs_only_what_is_not_current(source: Path, tmp_path: Path) -> None:
    cfg = CopyConfig(source=source, output=tmp_path / "out")
    CopyStage.runs = 0
    first = run_or_reuse(CopyStage(cfg), print)
    assert not first["reused"] and first["summary"]["chars"] == 5
    again = run_or_reuse(CopyStage(cfg), print)
    assert again["reused"] and again["counts"] == {"chars": 5} and CopyStage.runs == 1

    source.write_text("hello!")  # an input changed (by content)
    assert not run_or_reuse(CopyStage(cfg), print)["reused"]
    (tmp_path / "out" / "copy.txt").unlink()  # an output is missing
    assert not run_or_reuse(CopyStage(cfg), print)["reused"]
    assert not run_or_reuse(CopyStage(cfg, label="copy-other"), print)["reused"]  # another run
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())
    record["finished"] = None  # a run that never finished is never current
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(record))
    assert not run_or_reuse(CopyStage(cfg, label="copy-other"), print)["reused"]
    assert CopyStage.runs == 5


def test_a_training_run_recorded_by_an_earlier_release_is_still_found(tmp_path: Path) -> None:
    """Train kept its settings and run name in run.json before the manifest: still read."""
    from selfee.train.config import TrainConfig
    from selfee.train.job import TrainStage

    out = tmp_path / "run"
    out.mkdir()
    saved = {"config": {"max_length": 512}, "data_sha256": "abc", "run_name": "run-1"}
    (out / "run.json").write_text(json.dumps(saved))
    with pytest.warns(FutureWarning):
        earlier = TrainStage(TrainConfig(output=out, max_length=512)).earlier()
    assert earlier == {"settings": {"config": {"max_context": 512}, "data_sha256": "abc"},
                       "run": {"run_name": "run-1"}}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps({"settings": {"config": {}}, "run": {}}))
    assert TrainStage(TrainConfig(output=out)).earlier()["settings"] == {"config": {}}
