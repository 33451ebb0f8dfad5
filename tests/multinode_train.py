"""A training run across two Ray nodes on this machine, one of them lost mid-run.

Ray's own ``ray.cluster_utils.Cluster`` starts a head (no CPUs: it runs the driver and Ray
Train's controller) and two worker nodes of one CPU each, so the two training workers land
on different nodes; checkpoints go to a folder every node reaches (on a real cluster: NFS
or s3://). Once Ray Train has registered a checkpoint (its controller lists it in the
run's ``checkpoint_manager_snapshot.json``: files on disk are not enough, a checkpoint still
queued for registration dies with the node), the second node is killed (its processes, not
gracefully), and a fresh node joins a few seconds later. Prints ``RESULT {json}``: the run's
summary and when the node went away.

    python tests/multinode_train.py OUTPUT_DIR     (run by tests/test_train_multinode.py)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

STEPS = 300  # about 15 s of training: the kill must come before the end
CHECKPOINT_EVERY = 20
KILL_AFTER = f"checkpoint_{2 * CHECKPOINT_EVERY:06d}"  # the node goes once this is registered


def registered(storage: Path) -> set[str]:
    """The checkpoints Ray Train's controller has registered so far."""
    names: set[str] = set()
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):  # being written
            continue
        names |= {r["checkpoint_dir_name"] for r in results}
    return names


def main(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from test_train_job import tiny_config

    from selfee.records import write_jsonl
    from selfee.testing.chains import make_chains
    from selfee.train.job import run_train

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    chains = out / "chains.jsonl"
    write_jsonl(chains, make_chains(48))
    shared = out / "shared-storage"
    cfg = tiny_config(chains, out / "run", max_steps=STEPS, checkpoint_every_steps=CHECKPOINT_EVERY,
                      max_failures=2, storage_path=str(shared), log_every_steps=1)  # fmt: skip
    summary: dict = {}
    failure: list[BaseException] = []

    def train() -> None:
        try:
            summary.update(run_train(cfg))
        except BaseException as e:  # reported below
            failure.append(e)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 300
    while not any(name >= KILL_AFTER for name in registered(shared)):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit(f"no {KILL_AFTER} before the run ended: {failure or summary}")
        time.sleep(0.1)
    cluster.remove_node(doomed, allow_graceful=False)
    print(f"[test] removed a node after {KILL_AFTER}", flush=True)
    time.sleep(5)
    cluster.add_node(num_cpus=1)
    print("[test] added a node", flush=True)
    thread.join(timeout=600)
    if failure:
        raise failure[0]
    print("RESULT " + json.dumps({"summary": summary, "killed_after": KILL_AFTER}), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
