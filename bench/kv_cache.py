"""The HF engine's KV cache (``selfee.engines.hf_cache.GrowingCache``) against transformers'
``DynamicCache``, which the engine used before and which copies the whole cache at every
token: tokens/s of one uninterrupted generation of N tokens, one chain and a batch.

The model is a LLaMA of 28M parameters built from a config (hidden 512, 8 layers; random
weights, no EOS: every run makes N tokens per chain), fp32, on ``--threads`` threads. The two caches run in
pairs, back to back, in turns; a row gives the median of each side and of the pairs'
ratios. Both produce the same tokens (checked here on every run).

    .venv/bin/python bench/kv_cache.py [--tokens 512 1536] [--batch 1 8] [--pairs 3]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from engine_speed import PROMPT, build_model
from transformers import DynamicCache

from results import append_rows, machine
from selfee.engines import hf_cache
from selfee.engines.hf import HFEngine
from selfee.revision import CompletionRequest


def generate(model, tokenizer, batch: int, n: int, cache: str) -> tuple[float, list]:  # type: ignore[no-untyped-def]
    """Seconds for ``batch`` chains of ``n`` tokens in one call, and their tokens."""
    engine = HFEngine(model, tokenizer)
    requests = [CompletionRequest(PROMPT + " " * i, (), n, key=str(i)) for i in range(batch)]
    replaced = DynamicCache if cache == "DynamicCache" else hf_cache.GrowingCache
    with mock.patch.object(hf_cache, "GrowingCache", replaced):
        started = time.perf_counter()
        done = engine.complete_batch(requests)
        seconds = time.perf_counter() - started
    assert all(c.tokens == n for c in done)
    return seconds, [c.ids for c in done]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1536])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf = HFEngine.load(
            build_model(Path(tmp) / "bench-36m", hidden=512, mlp=1536), "cpu", "float32"
        )
        params = sum(p.numel() for p in hf.model.parameters()) / 1e6
        generate(hf.model, hf.tokenizer, 1, 8, "GrowingCache")  # warm-up
        for batch in args.batch:
            for n in args.tokens:
                runs: dict[str, list[float]] = {"DynamicCache": [], "GrowingCache": []}
                for pair in range(args.pairs):
                    order = ["DynamicCache", "GrowingCache"][:: 1 if pair % 2 == 0 else -1]
                    ids = {}
                    for cache in order:
                        seconds, ids[cache] = generate(hf.model, hf.tokenizer, batch, n, cache)
                        runs[cache].append(batch * n / seconds)
                    assert ids["DynamicCache"] == ids["GrowingCache"], "the caches disagree"
                before, after = (statistics.median(runs[c]) for c in runs)
                ratios = sorted(
                    a / b for a, b in zip(runs["GrowingCache"], runs["DynamicCache"], strict=True)
                )
                print(f"batch {batch}, {n} tokens: DynamicCache {before:,.0f} tok/s, "
                      f"GrowingCache {after:,.0f} tok/s, {statistics.median(ratios):.2f}x", flush=True)  # fmt: skip
                rows.append(f"| {datetime.date.today()} | {machine()}, {args.threads} threads | "
                            f"LLaMA {params:.0f}M fp32 | {batch} | {n} | {before:,.1f} | {after:,.1f} | "
                            f"**{statistics.median(ratios):.2f}x** ({ratios[0]:.2f}-{ratios[-1]:.2f}, "
                            f"{args.pairs} pairs) | yes |")  # fmt: skip
    append_rows(
        "\n## HF engine: its KV cache against DynamicCache (`bench/kv_cache.py`)\n\n"
        "| date | machine | model | chains | tokens each | DynamicCache tok/s | GrowingCache tok/s "
        "| ratio (median, range) | same tokens |\n|---|---|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
