"""Load on the SelFee endpoint from a second process on 127.0.0.1.

1. 200 chat requests at concurrency 16, 20% of them malformed: every status is counted;
   the run fails if any is a 5xx.
2. Throughput of 64 valid requests at concurrency 16 with step batching
   (``max_batch_size`` 8) against one request at a time (``max_batch_size`` 1).
3. Serve overhead: p50/p99 latency of a 1-token request over HTTP against calling the
   same model in-process (``HFEngine.complete``, 1 token).

The model is the tests' tiny SelFee model (trained here unless ``--model``), one replica
with 1 CPU on a local Ray with 2 CPUs.

    .venv/bin/python bench/serve_load.py [--requests 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "What color is the car?"
MALFORMED = [
    {"model": "selfee"},
    {"messages": "hi"},
    {"messages": [{"role": "user", "content": 3}]},
    {"messages": [{"role": "user", "content": QUESTION}], "min_revisions": -2},
    {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": "many"},
    {"messages": [{"role": "user", "content": "word " * 6000}]},
]


# --- the client (second process) -------------------------------------------------------


async def load(url: str, total: int, concurrency: int, bad_share: float, max_tokens: int) -> dict:
    import httpx

    rng = random.Random(0)
    bodies = []
    for _ in range(total):
        if rng.random() < bad_share:
            bodies.append(rng.choice(MALFORMED))
        else:
            bodies.append({"messages": [{"role": "user", "content": QUESTION}],
                           "min_revisions": 1, "max_tokens": max_tokens})  # fmt: skip
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    tokens = 0
    slots = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        nonlocal tokens
        async with slots:
            started = time.perf_counter()
            try:
                r = await client.post(f"{url}/chat/completions", json=body)
                status = str(r.status_code)
                if r.status_code == 200:
                    tokens += r.json()["usage"]["completion_tokens"]
                    latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as e:
                status = type(e).__name__
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(one(client, b) for b in bodies))
    seconds = time.perf_counter() - started
    return {"statuses": statuses, "seconds": seconds, "tokens": tokens, "latencies": latencies}


def client_main(argv: list[str]) -> None:
    url, total, concurrency, bad_share, max_tokens = argv
    result = asyncio.run(load(url, int(total), int(concurrency), float(bad_share), int(max_tokens)))
    print(json.dumps(result))


def run_client(url: str, total: int, concurrency: int, bad_share: float, max_tokens: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--client", url, str(total), str(concurrency), str(bad_share),
         str(max_tokens)],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the server side ---------------------------------------------------------------------


def main() -> None:
    import ray
    from ray import serve

    from results import append_rows, machine
    from selfee.config import ServeConfig
    from selfee.engines.hf import HFEngine
    from selfee.revision import CompletionRequest
    from selfee.serve.app import selfee_application
    from tiny_model import add_model_option, model_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    today, where = datetime.date.today(), machine()
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp))

        def deploy(batch: int) -> str:
            serve.shutdown()
            serve.start(http_options={"host": "127.0.0.1", "port": 8765})
            cfg = ServeConfig(model=model, max_batch_size=batch, min_replicas=1, max_replicas=1,
                              cpus_per_replica=1)  # fmt: skip
            serve.run(selfee_application(cfg), name="selfee", route_prefix="/")
            return "http://127.0.0.1:8765/v1"

        url = deploy(8)
        mixed = run_client(url, args.requests, args.concurrency, 0.2, 128)
        server_errors = {s: n for s, n in mixed["statuses"].items() if s.startswith("5")}
        print(f"mixed load: {mixed['statuses']} in {mixed['seconds']:.1f} s", flush=True)

        throughput = {}
        for batch in (8, 1):
            url = deploy(batch)
            run = run_client(url, 64, args.concurrency, 0.0, 128)
            throughput[batch] = (64 / run["seconds"], run["tokens"] / run["seconds"])
            print(f"max_batch_size {batch}: {throughput[batch][0]:.2f} req/s, "
                  f"{throughput[batch][1]:,.0f} tokens/s", flush=True)  # fmt: skip

        url = deploy(8)
        one_token = run_client(url, 100, 1, 0.0, 1)["latencies"]
        engine = HFEngine.load(model, device="cpu", dtype="float32")
        direct = []
        for i in range(100):
            started = time.perf_counter()
            engine.complete(CompletionRequest(f"### Answer:\n{i}", (), 1, key=str(i)))
            direct.append(time.perf_counter() - started)
        serve.shutdown()
    ray.shutdown()
    http_p50, http_p99 = percentile(one_token, 0.5) * 1000, percentile(one_token, 0.99) * 1000
    direct_p50, direct_p99 = percentile(direct, 0.5) * 1000, percentile(direct, 0.99) * 1000
    print(f"1-token latency: HTTP p50 {http_p50:.1f} ms p99 {http_p99:.1f} ms; "
          f"direct p50 {direct_p50:.1f} ms p99 {direct_p99:.1f} ms", flush=True)  # fmt: skip
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(mixed["statuses"].items()))
    append_rows(
        "\n## Serving: load from a second process (`bench/serve_load.py`)\n\n"
        "| date | machine | requests (20% malformed) | concurrency | statuses | 5xx | "
        "batched (8) req/s · tokens/s | one at a time (1) req/s · tokens/s | "
        "1-token p50 / p99 over HTTP | the model called directly p50 / p99 |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n",
        [f"| {today} | {where} | {args.requests} | {args.concurrency} | {statuses} | "
         f"**{sum(server_errors.values())}** | **{throughput[8][0]:.2f} · {throughput[8][1]:,.0f}** | "
         f"{throughput[1][0]:.2f} · {throughput[1][1]:,.0f} | {http_p50:.1f} / {http_p99:.1f} ms | "
         f"{direct_p50:.1f} / {direct_p99:.1f} ms |"],
    )  # fmt: skip
    if server_errors:
        raise SystemExit(f"server errors under load: {server_errors}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
