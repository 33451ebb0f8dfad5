"""vLLM on a LoRA adapter: applied to each request on its base, against the same adapter
merged into the weights (what ``lora.export`` chooses between for ``engine: vllm``).

The base is a LLaMA of 36M parameters built from a config (random weights that never end
early, as in ``bench/serve_load.py --engines``); the adapter has rank 16 on every linear
layer (the training default) with random weights. Each engine generates ``--tokens``
greedy tokens for each of ``--requests`` different prompts, one at a time and all at once;
the rows give tokens/s and how many of the adapter's outputs equal the merged model's.

    .venv/bin/python bench/vllm_lora.py [--tokens 128] [--requests 16]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import tempfile
import time
from pathlib import Path

from engine_speed import build_model

from results import append_rows, machine
from selfee.engines.vllm import VLLMEngine
from selfee.revision import Completion, CompletionRequest
from selfee.testing.chains import write_random_adapter

RANK = 16


def write_adapter(base: Path, adapter: Path, merged: Path) -> None:
    """A rank-16 adapter on every linear layer with random weights, and the same merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    wrapped = write_random_adapter(model, base, adapter, tokenizer, RANK)
    wrapped.merge_and_unload().save_pretrained(merged, safe_serialization=True)
    tokenizer.save_pretrained(merged)


def timed_run(engine: VLLMEngine, prompts: list[str], tokens: int, at_once: bool
              ) -> tuple[float, list[Completion]]:  # fmt: skip
    requests = [CompletionRequest(prompt=p, stop=(), max_tokens=tokens) for p in prompts]

    async def all_of_them() -> list[Completion]:
        if at_once:
            return list(await asyncio.gather(*(engine.acomplete(r) for r in requests)))
        return [await engine.acomplete(r) for r in requests]

    started = time.perf_counter()
    done = engine.run(all_of_them)
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="greedy tokens per request")
    parser.add_argument("--requests", type=int, default=16, help="different prompts")
    args = parser.parse_args()
    prompts = [f"### Human: Question {i}: what is {i} plus {i + 1}?\n\n### Assistant:"
               for i in range(args.requests)]  # fmt: skip
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(Path(tmp) / "base", hidden=512, layers=8, mlp=1536)
        write_adapter(base, Path(tmp) / "adapter", Path(tmp) / "merged")
        for form in ("merged", "adapter"):
            engine = VLLMEngine(Path(tmp) / form, seed=0)
            try:
                timed_run(engine, prompts[:2], 8, True)  # warm-up
                for at_once in (False, True):
                    seconds, done = timed_run(engine, prompts, args.tokens, at_once)
                    made = sum(c.tokens for c in done)
                    outputs[form, at_once] = [c.text for c in done]
                    rows.append((form, at_once, made / seconds))
                    print(f"{form}, {'all at once' if at_once else 'one at a time'}: "
                          f"{made / seconds:,.0f} tokens/s", flush=True)  # fmt: skip
            finally:
                engine.close()
    merged_rate = {at_once: rate for form, at_once, rate in rows if form == "merged"}
    same = {at_once: sum(a == m for a, m in zip(outputs["adapter", at_once],
                                                 outputs["merged", at_once], strict=True))
            for at_once in (False, True)}  # fmt: skip
    append_rows(
        "\n## vLLM: a LoRA adapter applied per request vs merged (`bench/vllm_lora.py`)\n\n"
        "| date | machine | model | form | requests | tokens/s | vs merged | outputs equal to "
        "merged |\n|---|---|---|---|---|---|---|---|\n",
        [f"| {datetime.date.today()} | {machine()} | LLaMA 36M + LoRA r{RANK} (all linear "
         f"layers), {args.tokens} tokens/request | {form} | {args.requests} "
         f"{'at once' if at_once else 'one at a time'} | **{rate:,.0f}** | "
         f"{rate / merged_rate[at_once]:.2f}x | {same[at_once]}/{args.requests} |"
         for form, at_once, rate in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
