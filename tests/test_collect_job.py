"""The collection job through a real local Ray: all sources, filters, caps, dedup, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collect_data import write_sources
from conftest import check_manifest
from selfee.collect.config import CollectConfig
from selfee.collect.job import CollectError, run_collect
from selfee.records import read_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sources(tmp_path_factory.mktemp("collect-sources"))


def config(sources: dict[str, Path], out: Path, **kwargs) -> CollectConfig:
    specs = [{"name": name, "path": str(path)} for name, path in sources.items()]
    return CollectConfig.model_validate({"sources": specs, "output": str(out), **kwargs})


def test_all_sources_through_ray(ray_session: None, sources, tmp_path: Path) -> None:
    summary = run_collect(config(sources, tmp_path / "a", jsonl=True, flan_per_task=10))
    manifest = check_manifest(tmp_path / "a" / "manifest.json", "collect")
    assert manifest["counts"]["rows_out"] == summary["rows_out"]
    rows = read_rows(tmp_path / "a" / "instructions.parquet")
    assert rows == read_rows(tmp_path / "a" / "instructions.jsonl")
    assert {r["dataset"] for r in rows} == set(sources)
    assert set(rows[0]) == {"id", "dataset", "instruction", "input", "output", "meta"}
    per = summary["sources"]
    assert per["alpaca"] == {"rows_in": 3, "rows_out": 2, "dropped": {"duplicate": 1}}
    assert per["flan"]["dropped"] == {"excluded task": 3, "per-task cap": 5}
    assert per["flan"]["rows_out"] == 11  # 10 of 15 sentiment rows + 1 translation
    assert per["sharegpt"]["dropped"] == {
        "not English": 1,
        "asks nothing": 1,
        "no model turn": 1,
        "duplicate": 1,
    }
    assert per["code_contests"]["dropped"] == {"no solution": 1}
    assert summary["rows_out"] == len(rows) == sum(s["rows_out"] for s in per.values())
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["rows_out"] == len(rows)

    again = run_collect(config(sources, tmp_path / "b", flan_per_task=10))
    assert [r["id"] for r in read_rows(tmp_path / "b" / "instructions.parquet")] == [
        r["id"] for r in rows
    ]
    assert again["sources"] == summary["sources"]


def test_caps_and_fractions_are_seeded(ray_session: None, sources, tmp_path: Path) -> None:
    flan = {"flan": sources["flan"]}

    def ids(seed: int, name: str, **spec) -> list[str]:
        cfg = CollectConfig.model_validate({
            "sources": [{"name": "flan", "path": str(flan["flan"]), **spec}],
            "output": str(tmp_path / name), "seed": seed, "flan_per_task": 100})  # fmt: skip
        summary = run_collect(cfg)
        assert summary["rows_out"] == len(read_rows(tmp_path / name / "instructions.parquet"))
        return [r["id"] for r in read_rows(tmp_path / name / "instructions.parquet")]

    capped = ids(1, "c1", cap=5)
    assert len(capped) == 5 and capped == ids(1, "c2", cap=5)
    assert capped != ids(2, "c3", cap=5)
    assert len(ids(1, "f1", fraction=0.5)) == 8  # half of 16 kept rows


def test_cross_source_duplicates_keep_the_first_source(ray_session: None, tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "red"}]))
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"inputs": "name a colour", "targets": "blue", "task": "t"}) + "\n")
    cfg = CollectConfig.model_validate(
        {"sources": ["alpaca=" + str(a), "flan=" + str(b)], "output": str(tmp_path / "o")}
    )
    summary = run_collect(cfg)
    assert [r["dataset"] for r in read_rows(tmp_path / "o" / "instructions.parquet")] == ["alpaca"]
    assert summary["sources"]["flan"]["dropped"] == {"duplicate": 1}


def test_malformed_rows_stop_or_are_counted(ray_session: None, tmp_path: Path) -> None:
    bad = tmp_path / "gsm.jsonl"
    bad.write_text(
        '{"question": "What is 1+1?", "answer": "2\\n#### 2"}\nnot json\n{"question": 5}\n'
    )
    cfg = {"sources": [f"gsm8k={bad}"], "output": str(tmp_path / "o")}
    with pytest.raises(CollectError, match=rf"{bad}:2: invalid JSON"):
        run_collect(CollectConfig.model_validate(cfg))
    assert not (tmp_path / "o" / "instructions.parquet").exists()
    summary = run_collect(CollectConfig.model_validate({**cfg, "skip_bad_rows": True}))
    assert summary["sources"]["gsm8k"] == {"rows_in": 3, "rows_out": 1, "dropped": {"malformed": 2}}
    assert any(f"{bad}:3" in m for m in summary["malformed_rows"])


def test_cli_with_sources_and_no_config(sources, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobs.collect", "--source", f"gsm8k={sources['gsm8k']}",
         "--source", f"mbpp={sources['mbpp']}", "--output", str(tmp_path / "o"),
         "--ray.num-cpus", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gsm8k" in done.stdout and "total" in done.stdout
    assert len(read_rows(tmp_path / "o" / "instructions.parquet")) == 3
    assert "[collect] shaping: 100%|" in done.stderr and " 3/3 " in done.stderr  # the bar


def test_cli_user_errors_have_no_traceback(tmp_path: Path) -> None:
    for argv, message in [
        (["--source", "nosuch=x.json"], "invalid option --sources"),
        (["--source", "gsm8k"], "NAME=PATH"),
        (["--source", f"gsm8k={tmp_path / 'missing.jsonl'}"], "no such file or folder"),
        ([], "no sources"),
    ]:
        done = subprocess.run([sys.executable, "-m", "selfee.cli", "collect", *argv,
                               "--output", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode in (1, 2) and message in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr


def test_unreadable_source_files_are_one_line_errors_or_counted_skips(
    ray_session: None, tmp_path: Path
) -> None:
    """Binary, Latin-1 and absurdly nested files: one line naming the file and line (no Ray
    traceback), or with skip_bad_rows a counted skip while the good rows go on."""
    good = json.dumps({"question": "What is 1+1?", "answer": "2\n#### 2"})
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(
        (good + "\n" + '{"question": "Café?", "answer": "#### 1"}\n').encode("latin-1")
    )
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    nested_line = tmp_path / "nested_line.jsonl"
    nested_line.write_text(good + "\n" + '{"question": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
    expected = {binary: f"{binary}: a binary file", latin1: f"{latin1}:2: not UTF-8 text (byte 0xe9",
                nested: f"{nested}: JSON nested too deeply",
                nested_line: f"{nested_line}:2: JSON nested too deeply"}  # fmt: skip
    for path, message in expected.items():
        done = subprocess.run([sys.executable, "-m", "selfee.cli", "collect", "--source",
                               f"gsm8k={path}", "--output", str(tmp_path / "o"),
                               "--ray.num-cpus", "1", "--no-ray.dashboard"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 1, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if "selfee collect: error:" in line]
        assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "RayTaskError" not in done.stderr
    cfg = {"sources": [f"gsm8k={p}" for p in expected], "output": str(tmp_path / "s"),
           "skip_bad_rows": True}  # fmt: skip
    summary = run_collect(CollectConfig.model_validate(cfg))
    assert summary["sources"]["gsm8k"] == {"rows_in": 6, "rows_out": 1,
                                           "dropped": {"malformed": 4, "duplicate": 1}}  # fmt: skip


def test_cap_holds_for_identical_rows_without_dedup(ray_session: None, tmp_path: Path) -> None:
    """Identical rows share an id; a cap counts rows, not ids."""
    same = [{"instruction": "Name a colour.", "input": "", "output": "red"}] * 4
    path = tmp_path / "a.json"
    path.write_text(json.dumps(same))
    flan = tmp_path / "f.jsonl"
    flan.write_text("".join(json.dumps({"inputs": "same", "targets": "x", "task": "t"}) + "\n"
                            for _ in range(3)))  # fmt: skip
    cfg = CollectConfig.model_validate({
        "sources": [{"name": "alpaca", "path": str(path), "cap": 2},
                    {"name": "flan", "path": str(flan)}],
        "output": str(tmp_path / "o"), "dedup": False, "flan_per_task": 1})  # fmt: skip
    summary = run_collect(cfg)
    assert summary["sources"]["alpaca"] == {"rows_in": 4, "rows_out": 2, "dropped": {"over cap": 2}}
    assert summary["sources"]["flan"] == {
        "rows_in": 3,
        "rows_out": 1,
        "dropped": {"per-task cap": 2},
    }
