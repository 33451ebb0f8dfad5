"""Load on the SelFee endpoint from a second process on 127.0.0.1.

1. 200 chat requests at concurrency 16, 20% of them malformed: every status is counted;
   the run fails if any is a 5xx.
2. Throughput of 64 valid requests at concurrency 16 with step batching
   (``max_batch_size`` 8) against one request at a time (``max_batch_size`` 1).
3. Serve overhead: p50/p99 latency of a 1-token request over HTTP against calling the
   same model in-process (``HFEngine.complete``, 1 token); and Ray Serve's own floor on
   the same machine, with the same client: an ingress that answers at once, and one that
   calls a replica that answers at once (the hops every SelFee request takes, no work).

The model of 1-3 is the tests' tiny SelFee model (trained here unless ``--model``), one
replica with 1 CPU on a local Ray with 2 CPUs.

4. Engines under load (``--engines``): the same LLaMA of 36M parameters built from a config
   (random weights, 64 tokens per request) on the HF engine (fp32), llama.cpp (f16 GGUF)
   and vLLM (the CPU build, fp32), one replica with 2 CPUs each, streamed requests at
   concurrency 1, 4 and 16: requests/s, tokens/s, time to first token p50/p99.

    .venv/bin/python bench/serve_load.py [--requests 200] [--concurrency 16] [--engines ...]
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


async def load(url: str, total: int, concurrency: int, bad_share: float, max_tokens: int,
               stream: bool = False) -> dict:  # fmt: skip
    import httpx

    rng = random.Random(0)
    bodies = []
    for i in range(total):
        if rng.random() < bad_share:
            bodies.append(rng.choice(MALFORMED))
        else:  # a different question each: no request finds another's prefix cached
            bodies.append({"messages": [{"role": "user", "content": f"{QUESTION} ({i})"}],
                           "min_revisions": 1, "max_tokens": max_tokens, "stream": stream})  # fmt: skip
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    first_tokens: list[float] = []
    tokens = 0
    slots = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        nonlocal tokens
        async with slots:
            started = time.perf_counter()
            try:
                if body.get("stream"):
                    status = str(await streamed(client, body, started))
                else:
                    r = await client.post(f"{url}/chat/completions", json=body)
                    status = str(r.status_code)
                    if r.status_code == 200:
                        tokens += r.json()["usage"]["completion_tokens"]
                        latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as e:
                status = type(e).__name__
            statuses[status] = statuses.get(status, 0) + 1

    async def streamed(client: httpx.AsyncClient, body: dict, started: float) -> int:
        nonlocal tokens
        first = None
        async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                selfee = json.loads(line[6:]).get("selfee", {})
                if first is None and selfee.get("delta"):
                    first = time.perf_counter() - started
                if "usage" in selfee:
                    tokens += selfee["usage"]["completion_tokens"]
        if r.status_code == 200 and first is not None:
            first_tokens.append(first)
            latencies.append(time.perf_counter() - started)
        return r.status_code

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(one(client, b) for b in bodies))
    seconds = time.perf_counter() - started
    return {"statuses": statuses, "seconds": seconds, "tokens": tokens, "latencies": latencies,
            "first_tokens": first_tokens}  # fmt: skip


def client_main(argv: list[str]) -> None:
    url, total, concurrency, bad_share, max_tokens, stream = argv
    result = asyncio.run(load(url, int(total), int(concurrency), float(bad_share), int(max_tokens),
                              stream == "stream"))  # fmt: skip
    print(json.dumps(result))


def run_client(url: str, total: int, concurrency: int, bad_share: float, max_tokens: int,
               stream: bool = False) -> dict:  # fmt: skip
    done = subprocess.run(
        [sys.executable, __file__, "--client", url, str(total), str(concurrency), str(bad_share),
         str(max_tokens), "stream" if stream else "plain"],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the server side ---------------------------------------------------------------------


def ray_serve_floor() -> dict[str, list[float]]:
    """1-token-shaped requests on apps that do no work: proxy → ingress, and proxy →
    ingress → one replica (1 CPU, as the model's), one at a time."""
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class Replica:
        def step(self, body: dict) -> dict:
            return {"usage": {"completion_tokens": 1}}

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, replica: object = None) -> None:
            self.replica = replica

        @app.post("/v1/chat/completions")
        async def chat(self, body: dict) -> dict:
            if self.replica is None:
                return {"usage": {"completion_tokens": 1}}
            return await self.replica.step.remote(body)  # type: ignore[attr-defined]

    latencies = {}
    for name, bound in (("ingress", Ingress.bind()), ("replica", Ingress.bind(Replica.bind()))):
        url = run_alone(bound, "floor")
        run_client(url, 10, 1, 0.0, 1)  # warm-up
        latencies[name] = run_client(url, 100, 1, 0.0, 1)["latencies"]
    serve.shutdown()
    return latencies


def run_alone(app: object, name: str) -> str:
    """``app`` on a fresh Serve on 127.0.0.1:8765 (whatever ran before is gone); its /v1 URL."""
    from ray import serve

    serve.shutdown()
    serve.start(http_options={"host": "127.0.0.1", "port": 8765})
    serve.run(app, name=name, route_prefix="/")  # type: ignore[arg-type]
    return "http://127.0.0.1:8765/v1"


def deploy(**settings: object) -> str:
    """The SelFee app on the local Ray with one model replica; returns its /v1 URL."""
    from selfee.serve.app import selfee_application
    from selfee.serve.config import ServeConfig

    cfg = ServeConfig(**{"min_replicas": 1, "max_replicas": 1, "cpus_per_replica": 1, **settings})
    return run_alone(selfee_application(cfg), "selfee")


def engines_under_load(engines: list[str], tokens: int) -> None:
    """Part 4: each engine on the same 36M-parameter model, streamed requests."""
    from engine_speed import build_model
    from ray import serve

    from results import append_rows, machine
    from selfee.export.config import ExportGGUFConfig
    from selfee.export.gguf import run_export

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model", hidden=512, layers=8, mlp=1536)
        models = {"hf": model, "vllm": model}
        if "llama_cpp" in engines:
            export = run_export(ExportGGUFConfig(model=model, output=Path(tmp) / "gguf",
                                                 quant=["f16"], prompts=1, max_new_tokens=8))  # fmt: skip
            models["llama_cpp"] = export["files"][0]["file"]
        for engine in engines:
            url = deploy(model=models[engine], engine=engine, cpus_per_replica=2,
                         max_batch_size=16, vllm={"max_num_seqs": 16})  # fmt: skip
            run_client(url, 4, 4, 0.0, 8, stream=True)  # warm-up
            for concurrency, total in ((1, 8), (4, 16), (16, 32)):
                run = run_client(url, total, concurrency, 0.0, tokens, stream=True)
                assert run["statuses"] == {"200": total}, run["statuses"]
                firsts = run["first_tokens"]
                line = (f"{engine} at concurrency {concurrency}: {total / run['seconds']:.2f} req/s, "
                        f"{run['tokens'] / run['seconds']:,.0f} tokens/s, first token p50 "
                        f"{percentile(firsts, 0.5) * 1000:.0f} ms p99 {percentile(firsts, 0.99) * 1000:.0f} ms")  # fmt: skip
                print(line, flush=True)
                rows.append((engine, concurrency, total / run["seconds"],
                             run["tokens"] / run["seconds"], firsts))  # fmt: skip
        serve.shutdown()
    one_at_a_time = {e: rate for e, c, _, rate, _ in rows if c == 1}
    hf_rate = {c: rate for e, c, _, rate, _ in rows if e == "hf"}
    append_rows(
        "\n## Serving: engines under load (`bench/serve_load.py --engines`)\n\n"
        "| date | machine | model | engine | concurrency | requests/s | tokens/s | vs its own "
        "concurrency 1 | vs hf | first token p50 / p99 |\n|---|---|---|---|---|---|---|---|---|---|\n",
        [f"| {datetime.date.today()} | {machine()} | LLaMA 36M, {tokens} tokens/request, streamed | "
         f"{e} | {c} | {rps:.2f} | **{rate:,.0f}** | {rate / one_at_a_time[e]:.2f}x | "
         f"{rate / hf_rate[c]:.2f}x | {percentile(f, 0.5) * 1000:.0f} / {percentile(f, 0.99) * 1000:.0f} ms |"
         for e, c, rps, rate, f in rows],
    )  # fmt: skip


def main() -> None:
    import ray
    from ray import serve

    from results import append_rows, machine
    from selfee.engines.hf import HFEngine
    from selfee.revision import CompletionRequest
    from tiny_model import add_model_option, model_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engines", nargs="*", choices=["hf", "llama_cpp", "vllm"],
                        help="only part 4, on these engines (none named: all three)")  # fmt: skip
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request in part 4")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    if args.engines is not None:
        engines_under_load(args.engines or ["hf", "llama_cpp", "vllm"], args.tokens)
        ray.shutdown()
        return
    today, where = datetime.date.today(), machine()
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp), args.size)
        url = deploy(model=model, max_batch_size=8)
        mixed = run_client(url, args.requests, args.concurrency, 0.2, 128)
        server_errors = {s: n for s, n in mixed["statuses"].items() if s.startswith("5")}
        print(f"mixed load: {mixed['statuses']} in {mixed['seconds']:.1f} s", flush=True)

        throughput = {}
        for batch in (8, 1):
            url = deploy(model=model, max_batch_size=batch)
            run = run_client(url, 64, args.concurrency, 0.0, 128)
            throughput[batch] = (64 / run["seconds"], run["tokens"] / run["seconds"])
            print(f"max_batch_size {batch}: {throughput[batch][0]:.2f} req/s, "
                  f"{throughput[batch][1]:,.0f} tokens/s", flush=True)  # fmt: skip

        url = deploy(model=model, max_batch_size=8)
        run_client(url, 10, 1, 0.0, 1)  # warm-up
        one_token = run_client(url, 100, 1, 0.0, 1)["latencies"]
        floor = ray_serve_floor()
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
    ms = {name: [percentile(v, q) * 1000 for q in (0.5, 0.99)] for name, v in floor.items()}
    print(f"Ray Serve alone: proxy -> ingress p50 {ms['ingress'][0]:.1f} ms; proxy -> ingress "
          f"-> replica p50 {ms['replica'][0]:.1f} ms", flush=True)  # fmt: skip
    append_rows(
        "\n## Serving: Ray Serve's own floor (`bench/serve_load.py`, part 3)\n\n"
        "Apps that do no work, the same client: what any request through Ray Serve costs on "
        "the machine, against the SelFee endpoint's 1-token request (HF engine) and its model "
        "called in-process.\n\n"
        "| date | machine | proxy → ingress p50 / p99 | proxy → ingress → replica p50 / p99 | "
        "SelFee 1-token p50 / p99 | of which the model (in-process) p50 | SelFee over the floor "
        "(p50) |\n|---|---|---|---|---|---|---|\n",
        [f"| {today} | {where} | {ms['ingress'][0]:.1f} / {ms['ingress'][1]:.1f} ms | "
         f"{ms['replica'][0]:.1f} / {ms['replica'][1]:.1f} ms | {http_p50:.1f} / {http_p99:.1f} ms | "
         f"{direct_p50:.1f} ms | {http_p50 - direct_p50 - ms['replica'][0]:+.1f} ms |"],
    )  # fmt: skip
    if server_errors:
        raise SystemExit(f"server errors under load: {server_errors}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
