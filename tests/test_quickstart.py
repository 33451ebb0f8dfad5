"""The whole pipeline on the shared local Ray, on an even smaller config than the quickstart:
every stage's output meets its contract, manifests chain the stages, a re-run reuses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from ray import serve

from conftest import free_port, taken_port
from selfee.chain import final_answer, parse, render_prompt, render_target
from selfee.collect.sources import SOURCES
from selfee.config import dump_config
from selfee.quickstart import run_quickstart, sample_instructions_path, sample_path
from selfee.quickstart_config import QuickstartConfig
from selfee.records import make_instruction, read_jsonl
from selfee.teacher.config import TeacherConfig
from selfee.train.config import TinyModelConfig

REPO = Path(__file__).resolve().parents[1]


def test_whole_pipeline_meets_every_stage_contract(serve_cleanup: None, tmp_path: Path) -> None:
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(
        json.dumps({"question_id": i, "text": f"Explain idea number {i}.", "category": c}) + "\n"
        for i, c in enumerate(["generic", "coding", "math", "generic"], 1)
    ))  # fmt: skip
    cfg = QuickstartConfig(
        output=tmp_path / "out",
        instructions=None,  # collect from the sample sources
        sample_rows=30,
        collect_cap=2,
        questions=questions,
        max_iterations=2,
        tiny=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             vocab_size=400),
        train_steps=4,
        max_new_tokens=48,
        serve_port=free_port(),
        teacher=TeacherConfig(needed_fraction=0.5, later_needed_fraction=1.0),
    )  # fmt: skip
    summary = run_quickstart(cfg)
    out = tmp_path / "out"

    rows = list(read_jsonl(out / "collect" / "instructions.jsonl"))  # Instruction contract
    assert {r["dataset"] for r in rows} == set(SOURCES) and len(rows) == 2 * len(SOURCES)
    for row in rows:
        assert row == make_instruction(row["dataset"], row["instruction"], row["input"],
                                       row["output"], **row["meta"])  # fmt: skip
    chains = list(read_jsonl(out / "augment" / "chains.jsonl"))  # Chain contract
    assert [c["id"] for c in chains] == [r["id"] for r in rows]
    for chain in chains:
        assert chain["error"] is None and chain["iteration"] == len(chain["outputs"]) >= 1
        text = render_prompt(chain["instruction"]) + render_target(chain["outputs"])
        assert parse(text).steps == chain["outputs"]
    assert summary["round_trip_ok"] == len(rows)

    model = out / "train" / "model"  # a Hugging Face directory with our metadata
    assert (model / "config.json").is_file() and (model / "selfee.json").is_file()

    for name in ["autonomous", "3-revisions"]:  # Answer contract
        answers = list(read_jsonl(out / "answers" / f"selfee-tiny-{name}.jsonl"))
        assert [a["question_id"] for a in answers] == [1, 2, 3, 4]
        for answer in answers:
            assert answer["model_id"] == f"selfee-tiny-{name}"
            assert answer["text"] == final_answer(answer["whole_generation"])
            assert {"revisions", "tokens", "latency_s", "finish_reason"} <= set(answer["metadata"])
            if name == "3-revisions":  # min_revisions is kept unless the budget runs out
                meta = answer["metadata"]
                assert meta["revisions"] >= 3 or meta["finish_reason"] == "budget", meta

    for kind in ["q8_0", "q4_K_M"]:  # the trained model as GGUF files, answering on llama.cpp
        assert (out / "export" / f"model-{kind}.gguf").stat().st_size > 0
        answers = list(read_jsonl(out / "answers" / f"selfee-tiny-{kind}.jsonl"))
        assert [a["question_id"] for a in answers] == [1, 2, 3, 4]
        assert all(a["metadata"]["device"] == f"llama.cpp model-{kind}.gguf" for a in answers)

    reviews = sorted((out / "judge").glob("*_vs_*.jsonl"))  # Review contract, both orders
    assert len(reviews) == 2
    for path in reviews:
        for review in read_jsonl(path):
            assert {"review_id", "question_id", "answer1_id", "answer2_id", "reviewer_id", "text",
                    "score", "metadata"} <= set(review)  # fmt: skip
            assert len(review["score"]) == 2
    assert (out / "judge" / "report.png").stat().st_size > 1000

    manifests = [json.loads(Path(p).read_text()) for p in summary["lineage"]]
    assert [m["stage"] for m in manifests] == [
        "collect", "augment", "train", "export", "infer-autonomous", "infer-3-revisions",
        "infer-q8_0", "infer-q4_K_M", "judge", "eval-gsm8k", "eval-code",
    ]  # fmt: skip
    for task in ("gsm8k", "code"):  # the eval stage: per-turn accuracy on checkable questions
        report = json.loads((out / "eval" / task / "eval.json").read_text())
        assert report["n"] == 2 and [t["turn"] for t in report["turns"]] == [0, 1, 2]
        assert report["autonomous"] is not None and report["baselines"]["first_answer"]
        assert (out / "eval" / task / "eval.png").stat().st_size > 1000
    # each stage's inputs are the outputs of the one before, by content hash
    produced = {o["sha256"] for m in manifests for o in m["outputs"].values()}
    for manifest in manifests[1:]:
        assert any(i["sha256"] in produced for i in manifest["inputs"].values())
    assert all(m["code"].startswith("selfee ") and "seconds" in m for m in manifests)

    # nothing changed: every stage is reused — run as a user runs it, from the command line,
    # whose console shows the quickstart's lines only (the libraries' output: the run's log)
    config = tmp_path / "quickstart.yaml"
    config.write_text(yaml.safe_dump(dump_config(cfg)))
    serve.shutdown()  # its own Ray serves the teacher on the same port (the same URL)
    done = subprocess.run(
        [sys.executable, "-m", "selfee.cli", "quickstart", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "SELFEE_LOG_DIR": str(tmp_path / "logs")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    console = (done.stdout + done.stderr).splitlines()
    assert len(console) < 80, "\n".join(console)
    noise = ("INFO", "WARNING", "Warning", "core_worker", "(pid=", "Token authentication")
    assert not [line for line in console if any(n in line for n in noise)], console
    log = next((tmp_path / "logs").glob("quickstart-*.log"))
    assert str(log) in done.stderr and "INFO" in log.read_text()  # Ray's lines are there
    again = json.loads((out / "summary.json").read_text())
    assert all(stage["reused"] for stage in again["stages"].values())
    assert again["seconds"] < summary["seconds"]


def test_shipped_samples_are_instruction_rows_and_questions() -> None:
    rows = list(read_jsonl(sample_instructions_path()))
    assert len(rows) >= 10
    for row in rows:
        assert set(row) == {"id", "dataset", "instruction", "input", "output", "meta"}
        assert row["id"] == make_instruction(row["dataset"], row["instruction"], row["input"])["id"]
    questions = list(read_jsonl(sample_path("questions.jsonl")))
    assert len(questions) >= 10
    assert all({"question_id", "text", "category"} == set(q) for q in questions)


def test_a_taken_serve_port_is_one_line(tmp_path: Path) -> None:
    """The quickstart checks its Serve port as ``selfee serve`` does, before Ray starts
    (not after minutes of training): a taken port is one line naming the quickstart's own
    option, not Serve's proxy traceback."""

    with taken_port() as port:
        done = subprocess.run(
            [sys.executable, "-m", "selfee.cli", "quickstart", "--serve-port", str(port),
             "--output", str(tmp_path / "out"), "--ray.num-cpus", "1"],
            capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"--serve-port {port}: 127.0.0.1:{port} is in use" in errors[0]
    assert "pick another --serve-port" in errors[0] and "Traceback" not in done.stderr
