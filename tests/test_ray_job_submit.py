"""`ray job submit --working-dir . -- python -m jobs.<stage>` against a local head that the
test starts (`ray start --head --block`), as a user would on a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from selfee_model import question_file

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head(tmp_path: Path):
    """A separate one-node cluster with the dashboard (the job server); stopped after."""
    dashboard = free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--port", str(free_port()), "--num-cpus", "2",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
         "--temp-dir", str(tmp_path / "ray")],
        stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = subprocess.run(
            [RAY, "job", "list", "--address", address], capture_output=True, text=True
        )
        if done.returncode == 0:
            break
        assert head.poll() is None, (tmp_path / "head.log").read_text()
        time.sleep(2)
    yield address
    head.terminate()
    head.wait(timeout=60)


def test_ray_job_submit_runs_batch_inference(
    ray_head: str, selfee_model_dir: Path, tmp_path: Path
) -> None:
    questions = question_file(tmp_path / "question.jsonl", 4)
    output = tmp_path / "answers" / "submitted.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--working-dir", ".", "--",
         "python", "-m", "jobs.infer", "--model", str(selfee_model_dir),
         "--questions", str(questions), "--output", str(output), "--min-revisions", "1",
         "--batch-size", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    assert "[infer] answers:" in done.stdout  # the job's own output reached the submitter
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4]
    assert all(r["metadata"]["revisions"] >= 1 for r in rows)
