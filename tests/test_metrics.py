"""Metrics for the Ray dashboard, read where Prometheus reads them: the node's metrics
endpoint, after a small augment (against a rate-limited teacher), infer and Serve run."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from metrics_endpoint import scrape, value, wait_for
from ray import serve

from conftest import deploy_selfee
from selfee import metrics
from selfee.augment.config import AugmentConfig
from selfee.augment.job import run_augment
from selfee.infer.config import InferConfig
from selfee.infer.job import run_infer
from selfee.llm_config import RetryConfig
from selfee.records import make_instruction, write_jsonl
from selfee.testing.selfee_model import QUESTIONS, question_file


def test_augment_infer_and_serve_metrics(
    ray_session: None, start_teacher, selfee_model_dir: Path, tmp_path: Path
) -> None:
    before = scrape()
    # augment against a teacher that answers 429 to a third of the requests
    teacher = start_teacher(fault_rate=0.35, fault_kinds=["429"], needed_fraction=0.5)
    rows = [make_instruction("alpaca", f"Name colour {i}.") for i in range(6)]
    write_jsonl(tmp_path / "instructions.jsonl", rows)
    augment = AugmentConfig(
        input=tmp_path / "instructions.jsonl", output=tmp_path / "augment",
        base_url=teacher.base_url, model="offline-teacher", workers=1, concurrency=6,
        max_iterations=2, progress_interval_s=0.5,
        retry=RetryConfig(max_retries=8, backoff_s=0.05, max_backoff_s=0.5, timeout_s=5),
    )  # fmt: skip
    done = run_augment(augment)
    requests = done["run"]["requests"]
    infer = InferConfig(model=str(selfee_model_dir), questions=question_file(tmp_path / "q.jsonl", 3),
                        output=tmp_path / "answers.jsonl", min_revisions=1, max_new_tokens=80)  # fmt: skip
    infer_summary = run_infer(infer)
    base = deploy_selfee(selfee_model_dir)
    try:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
        for stream in (False, True):
            reply = client.chat.completions.create(
                model="model", messages=[{"role": "user", "content": QUESTIONS[0]}],
                max_tokens=40, stream=stream, extra_body={"min_revisions": 1},
            )  # fmt: skip
            if stream:
                list(reply)
        after = wait_for(lambda s: value(s, "ray_selfee_chains_total", stage="serve")
                         - value(before, "ray_selfee_chains_total", stage="serve") >= 2)  # fmt: skip
    finally:
        serve.shutdown()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # augment: requests, 429s, retries, tokens, rows
    assert grew("ray_selfee_llm_requests_total", stage="augment") == requests
    assert grew("ray_selfee_llm_rate_limited_total", stage="augment") >= 1
    assert grew("ray_selfee_llm_retries_total", stage="augment") >= 1
    assert grew("ray_selfee_llm_tokens_total", stage="augment", kind="completion") > 0
    assert grew("ray_selfee_rows_total", stage="augment", outcome="done") == 6
    # infer: chains, revisions, forced rewrites, tokens (labelled with the answers' model)
    assert grew("ray_selfee_chains_total", stage="infer") == 3
    assert grew("ray_selfee_chains_total", stage="infer", model=selfee_model_dir.name) == 3
    assert grew("ray_selfee_generated_tokens_total", stage="infer") == infer_summary["tokens"]
    assert grew("ray_selfee_revisions_total", stage="infer") >= 3
    # serve: chains by finish reason, time to first token
    assert grew("ray_selfee_chains_total", stage="serve") == 2
    assert grew("ray_selfee_chains_total", stage="serve", model="model") == 2  # as asked
    assert grew("ray_selfee_time_to_first_token_seconds_count", stage="serve") == 2
    assert grew("ray_selfee_forced_rewrites_total", stage="serve") >= 0
    reasons = {dict(labels).get("finish_reason") for (n, labels) in after
               if n == "ray_selfee_chains_total" and ("stage", "serve") in labels}  # fmt: skip
    assert reasons <= {"verdict", "eos", "budget", "max_revisions"} and reasons


def test_every_metric_is_documented_and_checked() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in metrics.METRICS:
        assert f"`{name}`" in readme, f"README lists every metric: {name} is missing"
    with pytest.raises(ValueError, match="takes tags"):
        metrics.record("selfee_chains", 1, stage="infer")  # finish_reason missing
