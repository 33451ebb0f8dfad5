"""Training across nodes, simulated on this machine: two Ray nodes (``ray.cluster_utils``),
one worker on each, the node of one worker killed mid-run, a node added back; the run goes
on from its last registered checkpoint and finishes (``tests/multinode_train.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from multinode_train import CHECKPOINT_EVERY, KILL_AFTER, STEPS

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def test_a_lost_node_and_the_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with log.open("w") as out:  # a file, not a pipe: Ray's lines would fill a pipe
        done = subprocess.run([sys.executable, str(HERE / "multinode_train.py"), str(tmp_path)],
                              stdout=out, stderr=subprocess.STDOUT, timeout=900)  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text[-4000:]
    assert "[test] removed a node after checkpoint_" in text and "[test] added a node" in text
    result = json.loads(next(line for line in text.splitlines() if line.startswith("RESULT "))[7:])
    summary = result["summary"]
    history = summary["history"]
    assert summary["steps"] == STEPS and summary["restarts"] == 1
    # no step trained twice in the final history, none missing
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    # it went on from a checkpoint (not from step 0): the steps before it are the first
    # attempt's, those after it the restart's
    resumed_at = next(h["step"] for h in history if h["restarts"] == 1) - 1
    # from the registered checkpoint the node was killed after, or a later one
    assert resumed_at >= int(KILL_AFTER.split("_")[1]) and resumed_at % CHECKPOINT_EVERY == 0
    # once: a worker's lines reach the console once (Ray Train's print patch doubled them)
    assert text.count(f"resumed from step {resumed_at} (restart 1)") == 1
    assert all(h["restarts"] == (h["step"] > resumed_at) for h in history)
    # and the loss curve goes on where it stopped, not from the random start
    before, after = history[resumed_at - 1]["loss"], history[resumed_at]["loss"]
    assert after < 1.5 * before < summary["first_loss"] and summary["final_loss"] < before
