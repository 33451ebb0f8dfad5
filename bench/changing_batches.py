"""The HF engine when every call batches different chains, as in a serving replica: does a
chain keep its KV cache from one of its calls to the next?

Chains of a SelFee model (``--size 27m`` trained here, or ``--model``) with forced
revisions (``--min-revisions``, far more than fit, so the controller rewrites every
verdict until ``--tokens`` are spent) are stepped in calls of at most ``--batch`` chains
picked at random among those not finished (seeded): a chain's next call has other
neighbours, or comes after calls without it, as a replica's batches do under load. The
engine as it is (chains parked while absent) against ``parked_tokens=0`` (a chain absent
from a call loses its cache). Both give the same texts (checked).

    .venv/bin/python bench/changing_batches.py [--size 27m | --model DIR] [--chains 8]
"""

from __future__ import annotations

import argparse
import datetime
import random
import tempfile
import time
from pathlib import Path

import torch

from results import append_rows, machine
from selfee.engines.hf import HFEngine
from selfee.revision import MAX_REVISIONS, RevisionController, RevisionSettings
from tiny_model import QUESTIONS, add_model_option, model_dir, model_label, prompt


def serve_like(engine: HFEngine, chains: int, batch: int, tokens: int, seed: int) -> dict:
    """Step every chain to its end in calls of random subsets; totals and texts."""
    settings = RevisionSettings(min_revisions=MAX_REVISIONS, max_new_tokens=tokens)
    controllers = [RevisionController(prompt(i % len(QUESTIONS)) + " " * (i // len(QUESTIONS)),
                                      settings, key=f"chain{i}") for i in range(chains)]  # fmt: skip
    pick = random.Random(seed)
    calls = 0
    started = time.perf_counter()
    while active := [c for c in controllers if not c.done]:
        group = pick.sample(active, min(batch, len(active)))
        requests = [c.next_request() for c in group]
        ready = [(c, r) for c, r in zip(group, requests, strict=True) if r is not None]
        if ready:
            done = engine.complete_batch([r for _, r in ready])
            for (controller, _), completion in zip(ready, done, strict=True):
                controller.feed(completion)
            calls += 1
    seconds = time.perf_counter() - started
    results = [c.result() for c in controllers]
    return {
        "seconds": seconds,
        "tokens": sum(r.tokens for r in results),
        "evaluated": sum(r.prompt_tokens for r in results),
        "rewrites": sum(r.forced_rewrites for r in results),
        "calls": calls,
        "texts": [r.text for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="chains per call, at most")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per chain")
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, in turns")
    args = parser.parse_args()
    if args.size == "tiny" and args.model is None:
        args.size = "27m"  # where a prefill costs what it does on a real model
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp), args.size)
        loaded = HFEngine.load(model, device="cpu", dtype="float32")
        sides = {"parked (the engine)": None, "parked_tokens=0": 0}
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for r in range(args.runs):
            for side in list(sides)[:: 1 if r % 2 == 0 else -1]:
                engine = HFEngine(loaded.model, loaded.tokenizer, parked_tokens=sides[side])
                runs[side].append(serve_like(engine, args.chains, args.batch, args.tokens, r))
                run = runs[side][-1]
                print(f"{side}: {run['tokens'] / run['seconds']:,.0f} tok/s, {run['evaluated']:,} "
                      f"prompt tokens evaluated, {run['rewrites']} rewrites, {run['calls']} calls",
                      flush=True)  # fmt: skip
            assert runs["parked (the engine)"][-1]["texts"] == runs["parked_tokens=0"][-1]["texts"]
        rows = []
        for side, done in runs.items():
            best = max(done, key=lambda run: run["tokens"] / run["seconds"])
            rows.append(f"| {datetime.date.today()} | {machine()} | {model_label(args.model, args.size)} | "
                        f"{args.chains} chains of {args.tokens} tokens, calls of ≤ {args.batch} | {side} | "
                        f"{best['rewrites']} | {best['evaluated']:,} | **{best['tokens'] / best['seconds']:,.0f}** |")  # fmt: skip
    append_rows(
        "\n## HF engine: chains batched with changing neighbours (`bench/changing_batches.py`)\n\n"
        "| date | machine | model | work | engine | forced rewrites | prompt tokens evaluated | "
        "tokens/s (best run) |\n|---|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
