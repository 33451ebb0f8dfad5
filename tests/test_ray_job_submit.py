"""`ray job submit --working-dir . -- python -m jobs.<stage>` against a local head that the
test starts (`ray start --head --block`), as a user would on a cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port
from selfee_model import question_file

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 clusters started by `ray start` require a token; the job CLI sends the one `ray
# start` wrote to ~/.ray/auth_token only in token mode (README: troubleshooting).
CLIENT_ENV = {
    **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    "RAY_AUTH_MODE": "token",
    # an activated virtualenv, as a user's shell has it: the job's `python` is the venv's
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


@pytest.fixture
def ray_head(tmp_path: Path):
    """A separate one-node cluster with the dashboard (the job server); stopped after."""
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # Unix socket paths stay short
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--port", str(free_port()), "--num-cpus", "2",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
         "--temp-dir", temp_dir, "--disable-usage-stats",
         # every port its own: the test session's Ray holds the defaults
         "--dashboard-agent-listen-port", str(free_port()),
         "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()),
         "--metrics-export-port", str(free_port())],
        stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, env=CLIENT_ENV,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = subprocess.run(
            [RAY, "job", "list", "--address", address], capture_output=True, text=True,
            env=CLIENT_ENV,
        )  # fmt: skip
        if done.returncode == 0:
            break
        assert head.poll() is None, (tmp_path / "head.log").read_text()
        time.sleep(2)
    assert done.returncode == 0, done.stdout + done.stderr
    yield address
    head.terminate()
    head.wait(timeout=60)
    # `ray start --block` leaves its GCS, raylet and agents behind; `ray stop` would also
    # stop the test session's Ray, so end the processes of this head's session only
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_batch_inference(
    ray_head: str, selfee_model_dir: Path, tmp_path: Path
) -> None:
    questions = question_file(tmp_path / "question.jsonl", 4)
    output = tmp_path / "answers" / "submitted.jsonl"
    command = [RAY, "job", "submit", "--address", ray_head, "--working-dir", ".", "--",
               "python", "-m", "jobs.infer", "--model", str(selfee_model_dir),
               "--questions", str(questions), "--output", str(output), "--min-revisions", "1",
               "--batch-size", "2"]  # fmt: skip
    for _ in range(15):  # the head's job agent comes up a little after its dashboard
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=600, env=CLIENT_ENV
        )
        if "No available agent" not in done.stderr + done.stdout:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    assert "[infer] answers:" in done.stdout  # the job's own output reached the submitter
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4]
    assert all(r["metadata"]["revisions"] >= 1 for r in rows)
