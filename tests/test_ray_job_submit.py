"""`ray job submit --working-dir . -- python -m jobs.<stage>` against a local head that the
test starts (`ray start --head --block`), as a user would on a cluster."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port
from selfee.testing.selfee_model import question_file

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


def test_the_readme_path_local_sh_then_the_printed_submit_command(
    selfee_model_dir: Path, tmp_path: Path
) -> None:
    """As the README says it, from a shell without the project's environment: start the head
    with cluster/local.sh, run the `ray job submit` line it prints (with a job of our own
    after its `--`), read the job's output, stop the head. Before local.sh put the .venv on
    the head's PATH, the job ran the system Python: ModuleNotFoundError: selfee."""
    venv_bin = str(Path(sys.executable).parent)
    shell_path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIRTUAL_ENV")}
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    env |= {
        "PATH": shell_path, "NUM_CPUS": "2", "RAY_PORT": str(free_port()),
        "DASHBOARD_PORT": str(dashboard), "RAY_TEMP_DIR": temp_dir,
        "RAY_START_ARGS": " ".join([  # every port its own: the test session's Ray holds defaults
            f"--ray-client-server-port {free_port()}",
            f"--dashboard-agent-listen-port {free_port()}",
            f"--dashboard-agent-grpc-port {free_port()}",
            f"--runtime-env-agent-port {free_port()}", f"--metrics-export-port {free_port()}",
        ]),
    }  # fmt: skip
    assert shutil.which("python", path=shell_path) != sys.executable
    local = str(REPO / "cluster" / "local.sh")
    try:
        started = subprocess.run([local, "start"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=180)  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        lines = started.stdout.splitlines()
        assert "export RAY_AUTH_MODE=token" in "\n".join(lines)
        printed = next(line for line in lines if line.startswith("submit: "))
        words = shlex.split(printed.removeprefix("submit: "))
        assert words[words.index("--address") + 1] == f"http://127.0.0.1:{dashboard}"
        submit = words[: words.index("--") + 1]  # the printed command, our job after `--`
        questions = question_file(tmp_path / "question.jsonl", 2)
        output = tmp_path / "answers.jsonl"
        job = ["python", "-m", "jobs.infer", "--model", str(selfee_model_dir), "--questions",
               str(questions), "--output", str(output), "--max-new-tokens", "40"]  # fmt: skip
        for _ in range(15):  # the head's job agent comes up a little after its dashboard
            done = subprocess.run(submit + job, cwd=REPO, capture_output=True, text=True,
                                  timeout=600, env={**env, "RAY_AUTH_MODE": "token"})  # fmt: skip
            if "No available agent" not in done.stderr + done.stdout:
                break
            time.sleep(2)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "[infer] answers:" in done.stdout and "ModuleNotFoundError" not in done.stdout
        assert len(output.read_text().splitlines()) == 2
    finally:
        stopped = subprocess.run([local, "stop"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=120)  # fmt: skip
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    left = subprocess.run(["pgrep", "-f", f"{temp_dir}/session_"], capture_output=True)
    assert left.returncode == 1  # nothing of that head is left; the session's Ray runs on


def test_jobs_find_the_package_in_the_uploaded_working_dir(tmp_path: Path) -> None:
    """On a cluster whose Python has the dependencies but not this package, the copy of the
    repo that --working-dir uploads is used."""
    copy = tmp_path / "workdir"
    shutil.copytree(REPO / "jobs", copy / "jobs")
    shutil.copytree(REPO / "platform" / "selfee", copy / "platform" / "selfee")
    probe = "import jobs, selfee; print(selfee.__file__)"
    done = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, '.'); "
                           "sys.path += [p for p in __import__('site').getsitepackages()]; "
                           + probe], cwd=copy, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(copy / "platform" / "selfee"))


def test_an_embedded_run_ignores_a_head_started_on_this_machine(tmp_path: Path) -> None:
    """`ray start` leaves the head's address in <ray temp dir>/ray_current_cluster, and a plain
    ray.init() joins it (and refuses num_cpus): a stage without ray.address runs its own Ray.
    Before: `selfee collect` failed with 'When connecting to an existing cluster, num_cpus
    and num_gpus must not be provided' while `cluster/local.sh start` was up."""
    root = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        (Path(root) / "ray").mkdir()
        (Path(root) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
        source = tmp_path / "gsm8k.jsonl"
        source.write_text(json.dumps({"question": "What is 1+1?", "answer": "2\n#### 2"}) + "\n")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": root}
        done = subprocess.run(
            [sys.executable, "-m", "selfee.cli", "collect", "--source", f"gsm8k={source}",
             "--output", str(tmp_path / "out"), "--ray.num-cpus", "1", "--no-ray.dashboard"],
            capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert (tmp_path / "out" / "instructions.parquet").is_file()
    finally:
        shutil.rmtree(root, ignore_errors=True)
