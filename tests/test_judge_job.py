"""The judge job on the shared local Ray, against offline teachers in judge mode over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import check_manifest
from selfee.errors import ConfigError
from selfee.judge import parse_score
from selfee.judge.config import JudgeConfig
from selfee.judge.job import run_judge
from selfee.llm_config import RetryConfig
from selfee.prompts import CODING_JUDGE, GENERAL_JUDGE, MATH_JUDGE
from selfee.records import read_jsonl, write_jsonl

CATEGORIES = ["generic", "coding", "math", "writing"]


def write_inputs(tmp_path: Path, n: int = 12) -> tuple[Path, Path, Path]:
    questions = [{"question_id": i, "text": f"Question {i}?", "category": CATEGORIES[i % 4]}
                 for i in range(1, n + 1)]  # fmt: skip
    short = [{"question_id": q["question_id"], "answer_id": f"s{q['question_id']}",
              "text": "A short answer."} for q in questions]  # fmt: skip
    long = [{"question_id": q["question_id"], "answer_id": f"l{q['question_id']}",
             "text": "A long and detailed answer with examples. " * (10 + q["question_id"])}
            for q in questions]  # fmt: skip
    paths = tmp_path / "question.jsonl", tmp_path / "terse.jsonl", tmp_path / "verbose.jsonl"
    for path, rows in zip(paths, (questions, short, long), strict=True):
        write_jsonl(path, rows)
    return paths


def config(teacher, paths, out: Path, **overrides) -> JudgeConfig:
    questions, a, b = paths
    return JudgeConfig(
        questions=questions, answers=[a, b], output=out, base_url=teacher.base_url,
        model="offline-teacher", workers=2, concurrency=6, progress_interval_s=0.5,
        retry=RetryConfig(max_retries=0, backoff_s=0.01, timeout_s=2), **overrides,
    )  # fmt: skip


def requests(teacher) -> int:
    return httpx.get(f"{teacher.url}/stats").json()["received"]


def test_both_orders_routing_failures_and_cache(ray_session, start_teacher, tmp_path: Path) -> None:
    paths = write_inputs(tmp_path)
    out = tmp_path / "judge"
    flaky = start_teacher(
        judge_unparseable_fraction=0.2, fault_rate=0.15, fault_kinds=["500"], seed=5
    )
    reports = run_judge(config(flaky, paths, out))
    assert set(check_manifest(out / "manifest.json", "judge")["outputs"]) == {
        "terse_vs_verbose", "verbose_vs_terse",
    }  # fmt: skip

    ab = list(read_jsonl(out / "terse_vs_verbose.jsonl"))
    ba = list(read_jsonl(out / "verbose_vs_terse.jsonl"))
    assert [r["question_id"] for r in ab] == [r["question_id"] for r in ba] == list(range(1, 13))
    assert all(r["answer1_id"].startswith("s") and r["answer2_id"].startswith("l") for r in ab)
    assert all(r["answer1_id"].startswith("l") for r in ba)
    reviewers = {r["metadata"]["category"]: r["reviewer_id"] for r in ab}
    assert reviewers == {"generic": "selfee-judge-general", "coding": "selfee-judge-coding",
                         "math": "selfee-judge-math", "writing": "selfee-judge-general"}  # fmt: skip
    unparsed = [r for r in ab + ba if not r["metadata"]["parsed"]]
    failed = [r for r in unparsed if r["metadata"]["error"]]
    assert unparsed and failed and len(unparsed) > len(failed)  # both kinds happened
    for review in ab + ba:
        if review["metadata"]["parsed"]:
            assert list(parse_score(review["text"])) == review["score"]
        else:
            assert review["score"] == [-1.0, -1.0]
    report = reports[0]
    assert report["unparsed"] == len(unparsed)
    assert report["win"] + report["tie"] + report["loss"] == 24 - len(unparsed)
    assert report["loss"] > report["win"]  # the offline judge prefers the detailed answers
    saved = json.loads((out / "report.json").read_text())
    assert saved["reports"][0]["relative_percent"] == report["relative_percent"]

    # a re-run asks only for what failed or could not be read, never for cached judgments
    healthy = start_teacher()
    again = run_judge(config(healthy, paths, out))
    assert requests(healthy) == len(unparsed) and again[0]["unparsed"] == 0
    # ... and once everything is cached, a third run makes no request at all
    idle = start_teacher()
    third = run_judge(config(idle, paths, out))
    assert requests(idle) == 0 and third == again
    assert all(r["metadata"]["cached"] for r in read_jsonl(out / "terse_vs_verbose.jsonl"))


def test_unparseable_judgments_are_asked_again(ray_session, start_teacher, tmp_path) -> None:
    paths = write_inputs(tmp_path, n=4)
    teacher = start_teacher(judge_unparseable_fraction=1.0)
    reports = run_judge(config(teacher, paths, tmp_path / "judge", unparsed_retries=2))
    assert requests(teacher) == 8 * 3  # every judgment: the first try and two more
    assert reports[0]["unparsed"] == 8 and reports[0]["relative_percent"] is None


def test_upstream_templates_reproduce_the_original_setting(
    ray_session, start_teacher, tmp_path: Path, reference: Path
) -> None:
    paths = write_inputs(tmp_path, n=4)
    teacher = start_teacher()
    run_judge(config(teacher, paths, tmp_path / "judge", prompts=reference / "prompt.jsonl",
                     reviewers=reference / "reviewer.jsonl"))  # fmt: skip
    ab = list(read_jsonl(tmp_path / "judge" / "terse_vs_verbose.jsonl"))
    assert {r["reviewer_id"] for r in ab} == {
        "gpt-4-0328-default",
        "gpt-4-0328-coding",
        "gpt-4-0328-math",
    }


def test_our_templates_differ_by_category() -> None:
    prompts = {t.prompt for t in (GENERAL_JUDGE, CODING_JUDGE, MATH_JUDGE)}
    assert len(prompts) == 3
    for template in (GENERAL_JUDGE, CODING_JUDGE, MATH_JUDGE):
        user = template.messages("Q?", "one", "two")[1]["content"]
        assert "one" in user and "two" in user and user.index("one") < user.index("two")


def test_user_mistakes(
    tmp_path: Path, start_teacher, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    paths = write_inputs(tmp_path, n=2)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # no endpoint: an offline teacher
    with pytest.raises(ConfigError, match="two different names"):  # ... that never starts
        run_judge(JudgeConfig(questions=paths[0], answers=[paths[1], paths[1]],
                              output=tmp_path / "k"))  # fmt: skip
    assert "offline teacher" not in capsys.readouterr().out.lower()
    teacher = start_teacher()
    with pytest.raises(ConfigError, match="--answers"):
        run_judge(JudgeConfig(questions=paths[0], answers=[paths[1]], base_url=teacher.base_url,
                              model="m"))  # fmt: skip
    with pytest.raises(ConfigError, match="two different names"):
        run_judge(config(teacher, (paths[0], paths[1], paths[1]), tmp_path / "j"))
    with pytest.raises(ValueError, match="both --prompts and --reviewers"):
        JudgeConfig(prompts=paths[0])
    bare = paths[2].read_text() + "42\n"  # a bare number where an answer should be
    paths[2].write_text(bare)
    with pytest.raises(
        ConfigError, match=rf"{paths[2]}:{bare.count(chr(10))} is not a JSON object"
    ):
        run_judge(config(teacher, paths, tmp_path / "j"))


def test_collected_instruction_rows_are_judged_with_their_input_and_category(
    tmp_path: Path,
) -> None:
    """``selfee collect``'s rows as the questions: the judge reads each with its input, and
    a math or code dataset's questions go to the math or coding template."""
    from selfee.collect.sources import SOURCES
    from selfee.judge.plan import model_names, plan
    from selfee.judge.report import read_categories
    from selfee.records import DATASET_CATEGORY

    assert set(DATASET_CATEGORY) <= set(SOURCES)
    rows = [{"id": "g1", "dataset": "gsm8k", "instruction": "How many apples?",
             "input": "Ann has 3 apples and buys 2.", "output": "#### 5"},
            {"id": "c1", "dataset": "mbpp", "instruction": "Write f.", "input": "", "output": ""},
            {"id": "a1", "dataset": "alpaca", "instruction": "Name a color.", "input": ""}]  # fmt: skip
    write_jsonl(tmp_path / "instructions.jsonl", rows)
    for name in ("one", "two"):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"question_id": r["id"], "text": f"{name} says"}
                                                for r in rows])  # fmt: skip
    cfg = JudgeConfig(questions=tmp_path / "instructions.jsonl", model="judge",
                      answers=[tmp_path / "one.jsonl", tmp_path / "two.jsonl"])  # fmt: skip
    tasks, skipped = plan(cfg, "judge", model_names(cfg))
    assert skipped == 0 and [t["question_id"] for t in tasks] == [
        "g1",
        "g1",
        "c1",
        "c1",
        "a1",
        "a1",
    ]
    assert [t["category"] for t in tasks[::2]] == ["math", "coding", "alpaca"]
    assert [t["reviewer_id"] for t in tasks[::2]] == [
        "selfee-judge-math", "selfee-judge-coding", "selfee-judge-general"
    ]  # fmt: skip
    assert "How many apples?\n\nAnn has 3 apples and buys 2." in tasks[0]["user"]
    # and `selfee report --questions` finds the same categories
    assert read_categories(cfg.questions) == {"g1": "math", "c1": "coding", "a1": "alpaca"}
