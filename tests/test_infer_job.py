"""Batch inference on the shared local Ray: model actors, answer files, resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import check_manifest
from selfee.chain import final_answer, parse, render_prompt
from selfee.cli import main
from selfee.errors import ConfigError
from selfee.infer.config import InferConfig
from selfee.infer.job import run_infer
from selfee.records import read_jsonl
from selfee.testing.selfee_model import question_file

ANSWER_FIELDS = {"question_id", "text", "whole_generation", "answer_id", "model_id", "metadata"}


def config(model: Path | str, tmp_path: Path, n: int = 6, **overrides) -> InferConfig:
    values = {
        "model": str(model),
        "questions": question_file(tmp_path / "question.jsonl", n),
        "output": tmp_path / "answers" / "selfee-tiny.jsonl",
        "batch_size": 2,
        "concurrency": 2,
        "progress_interval_s": 0.5,
        **overrides,
    }
    return InferConfig(**values)


def test_answers_in_the_fastchat_format_with_forced_revisions(
    ray_session: None, selfee_model_dir: Path, tmp_path: Path
) -> None:
    cfg = config(selfee_model_dir, tmp_path, min_revisions=2, max_new_tokens=300)
    summary = run_infer(cfg)
    rows = list(read_jsonl(cfg.output))
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4, 5, 6]  # question order
    for row in rows:
        assert set(row) == ANSWER_FIELDS and row["model_id"] == "model"
        assert row["text"] == final_answer(row["whole_generation"])
        assert parse(row["whole_generation"]).prompt.endswith("### Answer:\n")
        meta = row["metadata"]
        assert meta["revisions"] >= 2 and meta["forced_rewrites"] >= 1
        assert meta["settings"]["min_revisions"] == 2 and meta["latency_s"] > 0
        assert meta["device"].startswith("cpu")
    assert summary["answers"] == 6 and summary["generated"] == 6 and not summary["failed"]
    manifest = check_manifest(cfg.output.with_name("selfee-tiny.manifest.json"), "infer")
    assert set(manifest["inputs"]) == {"questions", "model"}
    written = json.loads(cfg.output.with_name("selfee-tiny.summary.json").read_text())
    assert written["revisions"] == summary["revisions"]


def test_a_rerun_generates_only_what_is_missing(
    ray_session: None, selfee_model_dir: Path, tmp_path: Path
) -> None:
    first = run_infer(config(selfee_model_dir, tmp_path, limit=3))
    assert first["generated"] == 3
    before = {
        r["question_id"]: r["answer_id"]
        for r in read_jsonl(tmp_path / "answers" / "selfee-tiny.jsonl")
    }
    more = run_infer(config(selfee_model_dir, tmp_path))
    assert (more["generated"], more["answers"]) == (3, 6)
    rows = list(read_jsonl(tmp_path / "answers" / "selfee-tiny.jsonl"))
    assert {r["question_id"]: r["answer_id"] for r in rows[:3]} == before
    again = run_infer(config(selfee_model_dir, tmp_path))
    assert again["generated"] == 0 and again["answers"] == 6
    changed = run_infer(config(selfee_model_dir, tmp_path, max_revisions=0))  # new settings
    assert changed["generated"] == 6 and changed["revisions"] == {"0": 6}
    journal = tmp_path / "answers" / "selfee-tiny.journal.jsonl"
    assert len(journal.read_text().splitlines()) == 12  # both settings' answers are kept
    fresh = run_infer(config(selfee_model_dir, tmp_path, max_revisions=0, overwrite=True))
    assert fresh["generated"] == 6 and len(journal.read_text().splitlines()) == 6


def test_a_failing_question_is_reported_and_the_others_are_kept(
    ray_session: None, selfee_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(selfee_model_dir, tmp_path, n=4)
    rows = list(read_jsonl(cfg.questions))
    rows[1]["text"] = "word " * 5000  # longer than the model's context
    cfg.questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_infer(cfg)
    assert list(summary["failed"]) == ["2"] and "context" in summary["failed"]["2"]
    assert [r["question_id"] for r in read_jsonl(cfg.output)] == [1, 3, 4]
    code = main(["infer", "--model", str(selfee_model_dir), "--questions", str(cfg.questions),
                 "--output", str(cfg.output), "--batch-size", "2"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr()
    assert "1 questions failed; re-run to try them again" in err.err
    assert "3 answered before, 1 to generate" in err.out


def test_an_openai_compatible_endpoint_as_the_engine(
    ray_session: None, start_teacher, tmp_path: Path
) -> None:
    teacher = start_teacher(needed_fraction=0.0)
    cfg = config("offline-teacher", tmp_path, base_url=teacher.base_url, min_revisions=1)
    summary = run_infer(cfg)
    rows = list(read_jsonl(cfg.output))
    assert len(rows) == 6 and summary["revisions"] == {"1": 6}
    assert all(r["metadata"]["forced_rewrites"] == 1 for r in rows)
    assert all(r["metadata"]["device"] == f"endpoint {teacher.base_url}" for r in rows)


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["--questions", "q.jsonl", "--output", "a.jsonl"], 2, "give --model DIR"),
        (["--model", "nowhere", "--questions", "q.jsonl", "--output", "a.jsonl"], 1,
         "--model: nowhere: no such file or directory"),
        (["--model", ".", "--questions", "q.jsonl", "--output", "a.jsonl"], 1,
         "is not a Hugging Face model directory"),
        (["--model", "x.gguf", "--engine", "hf", "--questions", "q.jsonl", "--output",
          "a.jsonl"], 1, "x.gguf is a GGUF file: engine hf reads a Hugging Face directory"),
        (["--model", "notes.txt", "--engine", "hf", "--questions", "q.jsonl", "--output",
          "a.jsonl"], 1, "is not a Hugging Face model directory"),
        (["--min-revisions", "3", "--max-revisions", "1"], 2,
         "min_revisions (3) is above max_revisions (1)"),
        (["--min-revisions", "-1"], 2, "invalid option --min-revisions"),
    ],
)  # fmt: skip
def test_user_mistakes_are_clear_errors(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("not a model")
    try:
        returned = main(["infer", *argv])
    except SystemExit as e:  # option errors exit from the parser
        returned = e.code
    assert returned == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_question_file_problems_name_the_line(selfee_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(selfee_model_dir, tmp_path)
    cfg.questions.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2}\n')
    with pytest.raises(
        ConfigError,
        match="line 2 needs 'question_id' and a string 'text' "
        r"\(question.jsonl\) or 'id' and 'instruction' \(Instruction rows\)",
    ):
        run_infer(cfg)
    cfg.questions.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(ConfigError, match="line 2 repeats question_id 1"):
        run_infer(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        run_infer(config(selfee_model_dir, tmp_path, questions=tmp_path / "missing.jsonl"))


def test_collected_instruction_rows_are_questions_for_infer_and_eval(
    ray_session: None, selfee_model_dir: Path, tmp_path: Path
) -> None:
    """``selfee collect``'s rows go straight to infer (id → question_id, instruction and
    input → text, dataset → category), and its answers to ``selfee eval --answers``."""
    from selfee.eval.config import EvalConfig
    from selfee.eval.job import run_eval

    rows = [{"id": f"g{i}", "dataset": "gsm8k", "instruction": f"What is {i} + {i}?",
             "input": "Show your work." if i == 2 else "", "output": f"#### {2 * i}",
             "meta": {"final_answer": str(2 * i)}} for i in (1, 2)]  # fmt: skip
    questions = tmp_path / "instructions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(selfee_model_dir, tmp_path, questions=questions, min_revisions=1,
                 max_new_tokens=120)  # fmt: skip
    run_infer(cfg)
    answers = list(read_jsonl(cfg.output))
    assert [a["question_id"] for a in answers] == ["g1", "g2"]
    # the SelFee prompt training renders for an instruction with an input
    assert answers[0]["whole_generation"].startswith(render_prompt("What is 1 + 1?"))
    assert answers[1]["whole_generation"].startswith(
        render_prompt("What is 2 + 2?", "Show your work.")
    )
    assert "### Input:\nShow your work.\n\n### Answer:" in answers[1]["whole_generation"]
    report = run_eval(EvalConfig(task="gsm8k", questions=questions, answers=cfg.output,
                                 output=tmp_path / "eval", bootstrap=100))  # fmt: skip
    assert report["n"] == 2 and report["without_answer"] == []


def test_an_endpoint_that_refuses_the_key_stops_infer_before_any_actor(
    start_teacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint path checks the URL and key first, as augment and judge do."""
    monkeypatch.setenv("TEACHER_KEY", "sk-right-key-123")
    monkeypatch.setenv("WRONG_KEY", "sk-wrong-key-456")
    teacher = start_teacher(api_key_env="TEACHER_KEY")
    cfg = config("offline-teacher", tmp_path, base_url=teacher.base_url, api_key_env="WRONG_KEY")
    with pytest.raises(ConfigError, match="rejected the API key") as refused:
        run_infer(cfg)
    assert "sk-wrong-key-456" not in str(refused.value)
    assert not cfg.output.exists()
    with pytest.raises(ConfigError, match="rpm 1 is too low for 2 workers"):
        run_infer(config("offline-teacher", tmp_path, base_url=teacher.base_url, rpm=1,
                         api_key_env="TEACHER_KEY"))  # fmt: skip


def test_adapters_beside_the_model_answer_in_one_run_as_each_alone(
    ray_session: None, adapter_models: dict[str, Path], tmp_path: Path
) -> None:
    """One engine holds the base and two adapters; every question goes to each model, and
    each model's answer file (journal, summary, manifest) is what a run of it alone leaves."""
    paths = adapter_models
    adapters = {"math": paths["math"], "code": paths["code"]}
    cfg = config(paths["base"], tmp_path, n=3, output=tmp_path / "answers" / "{model}.jsonl",
                 adapters=adapters, max_new_tokens=40, min_revisions=1, batch_size=9,
                 concurrency=1)  # fmt: skip
    summary = run_infer(cfg)
    folder = tmp_path / "answers"
    assert set(summary["models"]) == {"base", "math", "code"} and summary["failed"] == {}
    together = {}
    for name in ("base", "math", "code"):
        rows = list(read_jsonl(folder / f"{name}.jsonl"))
        assert [r["question_id"] for r in rows] == [1, 2, 3]
        assert {r["model_id"] for r in rows} == {name}
        assert rows[0]["metadata"]["model"] == str(paths[name])
        assert summary["models"][name]["generated"] == 3
        manifest = check_manifest(folder / f"{name}.manifest.json", "infer")
        assert manifest["outputs"]["answers"]["path"] == str(folder / f"{name}.jsonl")
        together[name] = rows
    texts = {name: [r["whole_generation"] for r in rows] for name, rows in together.items()}
    assert texts["math"] != texts["base"] != texts["code"] != texts["math"]
    # the nine chains were one batch (one call, one latency): the adapters mixed in it
    assert len({r["metadata"].pop("latency_s") for rows in together.values() for r in rows}) == 1

    # each alone (an adapter merged into its base: the engine's other path) writes the same
    for name in ("base", "math"):
        alone = config(paths[name], tmp_path, n=3, output=tmp_path / "alone" / f"{name}.jsonl",
                       max_new_tokens=40, min_revisions=1, model_id=name, batch_size=9,
                       concurrency=1)  # fmt: skip
        run_infer(alone)
        rows = list(read_jsonl(alone.output))
        assert all(r["metadata"].pop("latency_s") > 0 for r in rows)
        assert rows == together[name]  # answer ids, texts, metadata

    # a re-run generates nothing; a model added later generates only its own answers
    again = run_infer(cfg)
    assert [s["generated"] for s in again["models"].values()] == [0, 0, 0]
    (folder / "code.journal.jsonl").unlink()
    again = run_infer(cfg)
    assert {n: s["generated"] for n, s in again["models"].items()} == {
        "base": 0, "math": 0, "code": 3
    }  # fmt: skip
    rows = list(read_jsonl(folder / "code.jsonl"))
    assert [r["whole_generation"] for r in rows] == texts["code"]


def test_adapters_that_infer_cannot_run_are_refused_before_any_actor(
    adapter_models: dict[str, Path], tmp_path: Path
) -> None:
    paths = adapter_models
    adapters = {"math": paths["math"]}

    def refusal(**overrides: object) -> str:
        values = {"adapters": adapters, "output": tmp_path / "{model}.jsonl", **overrides}
        with pytest.raises(ConfigError) as caught:
            run_infer(config(paths["base"], tmp_path, n=1, **values))
        return str(caught.value)

    assert refusal(output=tmp_path / "a.jsonl") == (
        "--output: with --adapters each model writes its own answer file: put {model} in it, "
        f"e.g. {tmp_path / '{model}.jsonl'}"
    )
    assert refusal(adapters={"x": paths["elsewhere"]}).startswith(
        f"adapters: x: {paths['elsewhere']} was trained on {paths['other_base']}"
    )
    assert refusal(engine="vllm").startswith("adapters: vLLM on CPUs cannot run the base itself")
    with pytest.raises(ValueError, match="adapters: an endpoint's adapters are model names"):
        config(paths["base"], tmp_path, adapters=adapters, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match=r"'base' is the model's own name \(model_id\)"):
        config(paths["base"], tmp_path, adapters={"base": paths["math"]})
    # on the command line: NAME=DIR pairs, the same refusals, exit 1 with one line
    argv = ["infer", "--model", str(paths["base"]), "--questions", str(tmp_path / "question.jsonl"),
            "--adapters", f"math={paths['math']}", "--output", str(tmp_path / "a.jsonl")]  # fmt: skip
    assert main(argv) == 1
