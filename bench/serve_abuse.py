"""Abuse under load: 1,000 requests at concurrency 32 against the SelFee endpoint, half of
them abusive (``selfee.testing.abuse``: numbers tiny to huge, broken Unicode, nested JSON,
wrong types, bodies over the limit, odd headers), the rest valid and sharing batches with
them. Counts every status (the run fails on any 5xx, any valid request without a 200, any
stream without ``[DONE]``) and the model replica's memory before and after.

One replica (1 CPU) of the tests' tiny SelFee model (or ``--model``) on a local Ray with 2
CPUs; the requests go to 127.0.0.1 only.

    .venv/bin/python bench/serve_abuse.py [--requests 1000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import tempfile
import time
from pathlib import Path


def replica_rss_mb() -> float:
    """Resident memory of the model replica's process (Ray titles it after the deployment)."""
    import psutil

    sizes = [p.memory_info().rss for p in psutil.process_iter(["cmdline"])
             if "SelFeeModel" in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    if len(sizes) != 1:
        raise SystemExit(f"expected one SelFeeModel replica process, found {len(sizes)}")
    return sizes[0] / 2**20


def main() -> None:
    import ray
    from ray import serve

    from results import append_rows, machine
    from selfee.serve.app import selfee_application
    from selfee.serve.config import ServeConfig
    from selfee.testing import abuse
    from tiny_model import add_model_option, model_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp), args.size)
        serve.start(http_options={"host": "127.0.0.1", "port": 8766})
        cfg = ServeConfig(model=model, min_replicas=1, max_replicas=1, cpus_per_replica=1)
        serve.run(selfee_application(cfg), name="selfee", route_prefix="/")
        url = "http://127.0.0.1:8766/v1"
        asyncio.run(abuse.send(url, abuse.valid_probes(32), concurrency=4))  # warm-up
        before = replica_rss_mb()
        probes = abuse.mix(args.requests, abusive_share=0.5, seed=0, max_tokens=32)
        started = time.perf_counter()
        outcomes = asyncio.run(abuse.send(url, probes, args.concurrency))
        seconds = time.perf_counter() - started
        after = replica_rss_mb()
        serve.shutdown()
    ray.shutdown()
    problems = [o.problem for o in outcomes if o.problem]
    statuses = abuse.statuses(outcomes)
    server_errors = sum(n for s, n in statuses.items() if s.startswith("5"))
    valid = [o for o in outcomes if o.probe.valid]
    kinds = len({o.probe.name for o in outcomes if not o.probe.valid})
    print(f"{len(outcomes)} requests in {seconds:.1f} s: {statuses}; replica memory "
          f"{before:.0f} → {after:.0f} MB; problems: {len(problems)}", flush=True)  # fmt: skip
    shown = ", ".join(f"{s}: {n}" for s, n in statuses.items())
    append_rows(
        "\n## Serving: abusive requests mixed with valid ones (`bench/serve_abuse.py`)\n\n"
        "| date | machine | requests | abusive (kinds) | concurrency | statuses | 5xx | valid "
        "requests with 200 | streams ended | seconds | replica RSS before → after |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n",
        [f"| {datetime.date.today()} | {machine()} | {len(outcomes)} | "
         f"{len(outcomes) - len(valid)} ({kinds}) | {args.concurrency} | {shown} | "
         f"**{server_errors}** | {sum(o.status == 200 for o in valid)} / {len(valid)} | "
         f"{sum(o.text.endswith('data: [DONE]' + chr(10) * 2) for o in valid if o.probe.stream)}"
         f" / {sum(o.probe.stream for o in valid)} | {seconds:.1f} | "
         f"{before:.0f} → {after:.0f} MB |"],
    )  # fmt: skip
    if problems:
        raise SystemExit(f"{len(problems)} requests broke the rule: {problems[:5]}")


if __name__ == "__main__":
    main()
