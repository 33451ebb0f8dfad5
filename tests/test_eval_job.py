"""`selfee eval` end to end on the shared local Ray: scoring published SelFee answers turn by
turn, hostile programs through the sandbox on Ray Data, bad input, resume, and generating
with the tiny SelFee model (every answer set, journaled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import check_manifest
from selfee.chain import feedback_header, render_prompt, revision_header
from selfee.cli import main
from selfee.errors import ConfigError
from selfee.eval.config import EvalConfig
from selfee.eval.job import run_eval
from selfee.records import read_jsonl, write_jsonl

GOLD = {68: "39", 69: "10", 70: "10"}  # f(2) = 39; 3x + 10 = 5(x - 2) → x = 10; length 10
JSON_KEYS = {"task", "n", "turns", "flips", "verdict", "autonomous", "baselines"}


def math_questions(reference: Path, path: Path) -> Path:
    rows = [
        {**q, "gold": GOLD[q["question_id"]]}
        for q in read_jsonl(reference / "question.jsonl")
        if q["question_id"] in GOLD
    ]
    write_jsonl(path, rows)
    return path


def test_published_selfee_answers_scored_turn_by_turn(
    ray_session: None, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """SelFee-13B with 3 forced revisions, on the three Vicuna math questions: right on two
    at every turn; on 3x + 10 = 5(x - 2) wrong throughout (-5/4, then -1/2), while every
    feedback says "Revision is needed." (the upstream forced verdicts)."""
    questions = math_questions(reference, tmp_path / "q.jsonl")
    answers = reference / "answer" / "selfee_13b_enforce_3_revisions.jsonl"
    plot = tmp_path / "eval.png"
    code = main(["eval", "--task", "gsm8k", "--questions", str(questions), "--answers",
                 str(answers), "--output", str(tmp_path / "out"), "--json", "--plot", str(plot)])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert JSON_KEYS <= set(result)
    assert result["n"] == 3 and result["task"] == "gsm8k"
    assert [t["turn"] for t in result["turns"]] == [0, 1, 2, 3]
    assert [t["accuracy"] for t in result["turns"]] == [pytest.approx(2 / 3, abs=1e-4)] * 4
    for turn in result["turns"]:
        assert set(turn) == {"turn", "accuracy", "ci", "n"} and turn["n"] == 3
    assert all(f["wrong_to_right"] == 0 and f["right_to_wrong"] == 0 for f in result["flips"])
    # the text's verdicts (no forced_verdicts in upstream files): all "needed"
    assert result["verdict"]["counts"]["tp"] == 4 and result["verdict"]["counts"]["fp"] == 8
    assert result["verdict"]["recall"] == 1.0
    assert result["autonomous"] is None and result["baselines"]["majority_vote"] is None
    assert len(result["answers_without_question"]) == 77  # the other Vicuna questions
    assert plot.stat().st_size > 10_000
    check_manifest(tmp_path / "out" / "eval.manifest.json", "eval")
    # a re-run scores nothing again
    again = run_eval(EvalConfig(task="gsm8k", questions=questions, answers=answers,
                                output=tmp_path / "out"))  # fmt: skip
    assert again["scored"]["now"] == 0 and again["turns"] == result["turns"]
    # --overwrite discards the saved scores (and the report and its record): all scored again
    fresh = run_eval(EvalConfig(task="gsm8k", questions=questions, answers=answers,
                                output=tmp_path / "out", overwrite=True))  # fmt: skip
    assert fresh["scored"]["now"] == fresh["scored"]["texts"] > 0
    assert fresh["turns"] == result["turns"]


def code_chain(steps: list[tuple[str, str]]) -> str:
    text = render_prompt("Write add(a, b).")
    for k, (program, verdict) in enumerate(steps):
        text += (revision_header(k) if k else "") + f"```python\n{program}\n```"
        text += feedback_header(k + 1) + f"Checked. {verdict}"
    return text


HOSTILE = {
    "loop": "while True:\n    pass",
    "fork": "import os\nwhile True:\n    os.fork()",
    "memory": "a = []\nwhile True:\n    a.append(b'x' * 10**7)",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
}
ADD = "def add(a, b):\n    return a + b"


def test_hostile_programs_fail_and_the_job_goes_on(ray_session: None, tmp_path: Path) -> None:
    questions, answers = [], []
    for n, (name, program) in enumerate(HOSTILE.items()):
        questions.append({"question_id": name, "text": "Write add(a, b).",
                          "gold": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]})  # fmt: skip
        steps = [(program, "Revision is needed."), (ADD, "Revision is not needed.")]
        if n % 2:  # these break a right answer again
            steps.append((program, "Revision is not needed."))
        answers.append({"question_id": name, "text": "", "whole_generation": code_chain(steps)})
    write_jsonl(tmp_path / "q.jsonl", questions)
    write_jsonl(tmp_path / "a.jsonl", answers)
    cfg = EvalConfig(task="code", questions=tmp_path / "q.jsonl", answers=tmp_path / "a.jsonl",
                     revisions=2, output=tmp_path / "out", sandbox={"time_s": 3})  # fmt: skip
    result = run_eval(cfg)
    assert [t["accuracy"] for t in result["turns"]] == [0.0, 1.0, 0.5]
    assert [(f["wrong_to_right"], f["right_to_wrong"]) for f in result["flips"]] == [(4, 0), (0, 2)]
    assert result["sandbox"]["timeout"] == 1 and result["sandbox"]["passed"] == 1
    assert result["sandbox"]["error"] == 3  # fork, memory, network: refused, not hung
    # "needed" on the four wrong first answers (tp), "not needed" on the four right ones
    # (tn) and on the two broken again (fn: wrong answers the verdict let through)
    counts = result["verdict"]["counts"]
    assert (counts["tp"], counts["tn"], counts["fn"], counts["fp"]) == (4, 4, 2, 0)
    assert result["verdict"]["precision"] == 1.0
    assert result["verdict"]["recall"] == pytest.approx(4 / 6, abs=1e-4)


def test_bad_input_is_a_clear_error_or_counted(
    ray_session: None, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    questions = math_questions(reference, tmp_path / "q.jsonl")
    others = tmp_path / "other.jsonl"
    write_jsonl(others, [{"question_id": "x1", "text": "The answer is 39."}])
    with pytest.raises(ConfigError, match="match none of the questions"):
        run_eval(EvalConfig(task="gsm8k", questions=questions, answers=others,
                            output=tmp_path / "o1"))  # fmt: skip
    with pytest.raises(ConfigError, match="is --task right"):
        run_eval(EvalConfig(task="code", questions=questions, answers=others,
                            output=tmp_path / "o2"))  # fmt: skip
    # an answer with no number: wrong, counted as unparsed; a missing answer: listed
    answers = tmp_path / "a.jsonl"
    write_jsonl(answers, [{"question_id": 68, "text": "It is thirty-nine."},
                          {"question_id": 69, "text": "x = 10"}])  # fmt: skip
    result = run_eval(EvalConfig(task="gsm8k", questions=questions, answers=answers,
                                 revisions=1, output=tmp_path / "o3"))  # fmt: skip
    assert result["n"] == 2 and result["turns"][0]["accuracy"] == 0.5
    assert result["unparsed"]["turns"] == 1 and result["without_answer"] == ["70"]
    # from the command line: one line, no traceback
    code = main(["eval", "--task", "gsm8k", "--questions", str(tmp_path / "none.jsonl"),
                 "--answers", str(answers)])  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("selfee eval: error: ") and "does not exist" in last
    with pytest.raises(SystemExit):
        main(["eval", "--task", "gsm8k", "--answers", str(answers), "--model", "m"])


def test_generating_with_the_tiny_model_every_answer_set_journaled(
    ray_session: None, selfee_model_dir: Path, tmp_path: Path
) -> None:
    rows = [{"id": f"g{i}", "dataset": "gsm8k", "instruction": f"Tom has {i} apples and buys "
             f"{i + 2} more. How many does he have?", "input": "Count them." if i else "",
             "output": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}",
             "meta": {"final_answer": str(2 * i + 2)}} for i in range(3)]  # fmt: skip
    write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    cfg = EvalConfig(task="gsm8k", questions=tmp_path / "gsm8k.jsonl", model=str(selfee_model_dir),
                     revisions=2, samples=2, max_new_tokens=40, output=tmp_path / "out",
                     batch_size=8, plot=tmp_path / "out" / "eval.png")  # fmt: skip
    result = run_eval(cfg)
    out = tmp_path / "out"
    counts = {run: len(list(read_jsonl(out / f"{run}.jsonl")))
              for run in ("forced", "autonomous", "first", "samples")}  # fmt: skip
    assert counts == {"forced": 3, "autonomous": 3, "first": 3, "samples": 6}
    for row in read_jsonl(out / "forced.jsonl"):  # an input below its instruction, as trained
        has_input = "### Instruction:\nTom has" in row["whole_generation"] and (
            "\n\n### Input:\nCount them.\n\n### Answer:\n" in row["whole_generation"])  # fmt: skip
        assert has_input == (row["question_id"] != "g0")
        meta = row["metadata"]
        assert meta["settings"]["min_revisions"] == 2 and meta["settings"]["max_new_tokens"] == 120
        assert meta["revisions"] == 2 or meta["finish_reason"] == "budget"
        assert "forced_verdicts" in meta
    for row in read_jsonl(out / "samples.jsonl"):
        assert row["metadata"]["settings"]["answer_only"] and "### Feedback" not in row["text"]
    assert result["n"] == 3 and len(result["turns"]) == 3
    assert result["baselines"]["first_answer"]["tokens"] > 0
    assert result["baselines"]["majority_vote"]["mean_samples"] >= 1
    assert result["autonomous"]["mean_revisions"] <= 2
    assert (out / "eval.png").exists() and not result["failed_generations"]
    again = run_eval(cfg)  # nothing is generated or scored twice
    assert again["scored"]["now"] == 0 and again["turns"] == result["turns"]
    assert len(list(read_jsonl(out / "generations.journal.jsonl"))) == 15


def test_autonomous_answers_are_scored_on_their_final_answer(
    ray_session: None, reference: Path, tmp_path: Path
) -> None:
    questions = math_questions(reference, tmp_path / "q.jsonl")
    forced = reference / "answer" / "selfee_13b_enforce_3_revisions.jsonl"
    autonomous = tmp_path / "autonomous.jsonl"  # stopped by the model: no revision, or one
    write_jsonl(autonomous, [
        {"question_id": 68, "text": "f(2) = 39", "whole_generation": "### Answer:\nf(2) = 39"
         "\n\n### Feedback 1:\nRight. Revision is not needed.", "metadata": {"revisions": 0}},
        {"question_id": 69, "text": "x = 10", "metadata": {"revisions": 1, "tokens": 90}},
        {"question_id": 70, "text": "It is 12.", "metadata": {"revisions": 0, "tokens": 30}},
    ])  # fmt: skip
    result = run_eval(EvalConfig(task="gsm8k", questions=questions, answers=forced,
                                 autonomous_answers=autonomous, output=tmp_path / "out"))  # fmt: skip
    auto = result["autonomous"]
    assert auto["accuracy"] == pytest.approx(2 / 3, abs=1e-4) and auto["n"] == 3
    assert auto["mean_revisions"] == pytest.approx(1 / 3, abs=0.01)
    assert auto["tokens"] == 60  # the mean over answers that report tokens
    with pytest.raises(ValueError, match="goes with --answers"):
        EvalConfig(task="gsm8k", questions=questions, autonomous_answers=autonomous, model="m")


def test_adapters_beside_the_model_are_evaluated_in_one_run_as_each_alone(
    ray_session: None, adapter_models: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """One generation pass on one engine (the base and two adapters); each model's answer
    sets, scores, report and plot in its own folder, as an evaluation of it alone leaves."""
    from selfee.eval import report

    rows = [{"question_id": i, "text": f"What is {i} + {i}?", "gold": f"#### {2 * i}"}
            for i in (1, 2)]  # fmt: skip
    write_jsonl(tmp_path / "q.jsonl", rows)
    settings = {"task": "gsm8k", "questions": tmp_path / "q.jsonl", "revisions": 1,
                "samples": 1, "max_new_tokens": 16, "bootstrap": 100, "batch_size": 16}  # fmt: skip
    out = tmp_path / "out"
    cfg = EvalConfig(**settings, model=str(adapter_models["base"]), output=out,
                     adapters={"math": adapter_models["math"], "code": adapter_models["code"]},
                     plot=out / "turns.png")  # fmt: skip
    result = run_eval(cfg)
    assert list(result["models"]) == ["base", "math", "code"]
    for name, one in result["models"].items():
        assert one["n"] == 2 and one["source"] == str(adapter_models[name])
        assert (out / name / "turns.png").exists() and (out / name / "eval.json").exists()
        check_manifest(out / name / "eval.manifest.json", "eval")
    forced = {name: [r["whole_generation"] for r in read_jsonl(out / name / "forced.jsonl")]
              for name in result["models"]}  # fmt: skip
    assert forced["math"] != forced["base"] != forced["code"] != forced["math"]

    alone = run_eval(EvalConfig(**settings, model=str(adapter_models["math"]), model_id="math",
                                output=tmp_path / "alone"))  # fmt: skip
    for run in ("forced", "autonomous", "first", "samples"):
        texts = [
            [r["whole_generation"], r["answer_id"]]
            for r in read_jsonl(out / "math" / f"{run}.jsonl")
        ]
        assert texts == [[r["whole_generation"], r["answer_id"]]
                         for r in read_jsonl(tmp_path / "alone" / f"{run}.jsonl")]  # fmt: skip
    assert alone["turns"] == result["models"]["math"]["turns"]

    table = report.format_table(result)
    assert "== math ==" in table and "gsm8k: accuracy by model" in table
    assert [line.split()[0] for line in table.splitlines()[-3:]] == ["base", "math", "code"]
    assert set(json.loads(report.to_json(result))["models"]["code"]) >= JSON_KEYS
    again = run_eval(cfg)  # nothing generated or scored twice
    assert all(one["scored"]["now"] == 0 for one in again["models"].values())

    # on the command line, and what cannot be evaluated side by side
    assert main(["eval", "--task", "gsm8k", "--questions", str(tmp_path / "q.jsonl"),
                 "--model", str(adapter_models["base"]), "--adapters",
                 f"math={adapter_models['math']}", "--output", str(out), "--revisions", "1",
                 "--samples", "1", "--max-new-tokens", "16", "--bootstrap", "100"]) == 0  # fmt: skip
    assert "gsm8k: accuracy by model" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--adapters go with --model DIR"):
        EvalConfig(**settings, answers=out / "math" / "forced.jsonl", adapters={"x": Path("y")})
