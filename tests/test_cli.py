"""The ``selfee`` command and the ``jobs`` entrypoints: subcommands, help, user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from selfee.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_only_built_stages_are_subcommands() -> None:
    assert [c.name for c in COMMANDS] == [
        "teacher",
        "collect",
        "augment",
        "train",
        "delta",
        "export",
        "infer",
        "serve",
        "demo",
        "judge",
        "report",
        "eval",
        "quickstart",
    ]
    help_text = build_parser().format_help()
    assert "teacher" in help_text and "quickstart" in help_text


def test_every_job_module_runs_the_same_parser() -> None:
    jobs = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__")
    assert jobs == [
        "augment",
        "collect",
        "eval",
        "export",
        "infer",
        "judge",
        "quickstart",
        "report",
        "train",
    ]
    done = run("-m", "jobs.quickstart", "--help")
    assert done.returncode == 0
    assert "--teacher.needed-fraction" in done.stdout


def test_export_gguf_runs_from_its_job_module() -> None:
    done = run("-m", "jobs.export", "gguf", "--help")
    assert done.returncode == 0
    for option in ["--model", "--quant", "--output", "--eval-data", "--converter-dir"]:
        assert option in done.stdout


def test_train_and_delta_help_name_their_options() -> None:
    done = run("-m", "jobs.train", "--help")
    assert done.returncode == 0
    for option in ["--data", "--model", "--output", "--num-workers", "--max-steps", "--resume"]:
        assert option in done.stdout
    done = run("-m", "selfee.cli", "delta", "apply", "--help")
    assert done.returncode == 0 and "--base" in done.stdout and "(required)" in done.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["collect"], "no sources: give --source NAME=PATH"),
        (["augment"], "give the instructions to augment: --input"),
        (["train", "--model", "tiny"], "give the chains to train on: --data"),
        (["infer", "--questions", "q.jsonl"], "give --model DIR"),
        (["eval", "--task", "gsm8k"], "give --task gsm8k|math|aqua|code and --questions"),
        (["eval", "--task", "gsm8k", "--questions", "q.jsonl"], "give --answers FILE.jsonl"),
        (["judge", "--answers", "a.jsonl"], "give --questions Q.jsonl and --answers"),
        (["report"], "give the review files: --reviews"),
        (["serve"], "--model: give a Hugging Face model directory"),
    ],
)  # fmt: skip
def test_a_missing_input_is_a_usage_error_before_anything_starts(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    """Exit 2 with one line: no run log, no Ray, no offline teacher, nothing written."""
    done = run("-m", "selfee.cli", *argv, cwd=tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"selfee {argv[0]}: error: ") and message in lines[0]
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no outputs/logs/…


def test_bad_option_value_exits_2_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["teacher", "--rpm", "-1"])
    assert caught.value.code == 2
    assert "invalid option --rpm" in capsys.readouterr().err


def test_unknown_key_in_file_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "q.yaml"
    bad.write_text("max_iteration: 3\n")
    done = run("-m", "selfee.cli", "quickstart", "--config", str(bad))
    assert done.returncode == 2
    assert "unknown key 'max_iteration'" in done.stderr
    assert "did you mean 'max_iterations'" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_instructions_file_is_a_clear_error(tmp_path: Path) -> None:
    done = run(
        "-m",
        "selfee.cli",
        "quickstart",
        "--instructions",
        str(tmp_path / "nope.jsonl"),
        "--output",
        str(tmp_path / "out"),
        "--serve-port",
        "8799",
        "--ray.num-cpus",
        "1",
    )
    assert done.returncode == 1
    assert "nope.jsonl" in done.stderr
    assert "Traceback" not in done.stderr


def test_configuration_docs_are_current() -> None:
    from selfee.config_docs import render

    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "regenerate: python -m selfee.config_docs > docs/configuration.md"
    )


def test_a_mapping_takes_name_value_pairs(capsys: pytest.CaptureFixture[str]) -> None:
    from selfee.config_cli import config_from_args
    from selfee.serve.config import ServeConfig

    parser = build_parser()
    args = parser.parse_args(["serve", "--model", "base", "--adapters", "math=runs/m", "code=c",
                              "--adapters", "chat=runs/chat"])  # fmt: skip
    cfg = config_from_args(ServeConfig, args)
    assert cfg.adapters == {"math": Path("runs/m"), "code": Path("c"), "chat": Path("runs/chat")}
    assert cfg.served_names() == ["base", "math", "code", "chat"]
    for argv, message in ((["math"], "'math' is not NAME=VALUE"),
                          (["a=x", "a=y"], "'a' is given twice")):  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            main(["serve", "--model", "base", "--adapters", *argv])
        assert caught.value.code == 2
        assert f"--adapters: {message}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the model's own name, taken
        main(["serve", "--model", "base", "--adapters", "base=x"])
    assert "'base' is the model's own name (model_name)" in capsys.readouterr().err
