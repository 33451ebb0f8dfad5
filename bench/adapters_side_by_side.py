"""Several fine-tunes on one base (``selfee serve --adapters``): what serving three LoRA
adapters side by side costs against each merged into its own model.

The bases are LLaMAs built from a config (random weights that never end early); three
adapters of rank 16 on every linear layer with random weights, and each one merged into its
own copy. On each engine (hf, vllm), with the 36M base, ``--requests`` greedy requests of
``--tokens`` tokens run at once:

- on one adapter merged (one fine-tune served at full speed);
- on the three side by side (the first as the model, two beside it), every request on the
  same adapter;
- on the three side by side, the requests spread over the three (what a mixed batch costs),
  with how many outputs equal what each adapter's merged model writes.

Host memory (hf, the 171M base, each form in its own process, peak ``VmHWM``): the three
merged models loaded in three engines against the base with the three adapters in one.

    .venv/bin/python bench/adapters_side_by_side.py [--tokens 64] [--requests 6] [--engines hf,vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

from engine_speed import build_model
from merge_memory import child

from results import append_rows, machine
from selfee.revision import Completion, CompletionRequest
from selfee.testing.chains import write_random_adapter

RANK = 16
NAMES = ("math", "code", "chat")
SIZES = {"36M": (512, 8, 1536), "171M": (1024, 12, 2816)}  # hidden, layers, MLP width
SPEED_SIZE = "36M"  # speed on the smaller (2 cores), memory on the larger


def write_adapters(base: Path, folder: Path) -> dict[str, tuple[Path, Path]]:
    """Each name's adapter and the same adapter merged into a copy of the base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    made = {}
    for seed, name in enumerate(NAMES, 1):
        adapter, merged = folder / name, folder / f"{name}-merged"
        model = AutoModelForCausalLM.from_pretrained(base)
        wrapped = write_random_adapter(model, base, adapter, tokenizer, RANK, seed)
        wrapped.merge_and_unload().save_pretrained(merged, safe_serialization=True)
        tokenizer.save_pretrained(merged)
        made[name] = (adapter, merged)
    return made


def requests(
    prompts: list[str], tokens: int, adapters: list[str | None]
) -> list[CompletionRequest]:
    return [CompletionRequest(prompt, (), tokens, key=f"r{i}", adapter=adapter)
            for i, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True))]  # fmt: skip


def run_at_once(engine: Any, batch: list[CompletionRequest]) -> tuple[float, list[Completion]]:
    """All requests at once: one batch on the HF engine, concurrent on vLLM's. The best of
    three runs (a busy 2-core machine is noisy)."""

    async def together(fresh: list[CompletionRequest]) -> list[Completion]:
        return list(await asyncio.gather(*(engine.acomplete(r) for r in fresh)))

    best = None
    for run in range(3):  # new keys each run: no chain cached from the last
        fresh = [dataclasses.replace(r, key=f"{r.key}-{run}") for r in batch]
        started = time.perf_counter()
        if hasattr(engine, "acomplete"):
            done = engine.run(lambda fresh=fresh: together(fresh))
        else:
            done = engine.complete_batch(fresh)
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return best, done


def load(engine_name: str, model: Path, adapters: dict[str, Path] | None = None) -> Any:
    from selfee.engines import load_engine

    return load_engine(model, engine_name, "cpu", "float32", threads=2, adapters=adapters)


def close(engine: Any) -> None:
    if hasattr(engine, "close"):
        engine.close()


def engine_rows(
    engine_name: str, made: dict, prompts: list[str], tokens: int, model: str
) -> list[str]:
    """The first adapter is the model (a request that names none runs it; vLLM's CPU build
    cannot run the base itself beside adapters), the others beside it."""
    first = NAMES[0]
    spread = [NAMES[i % len(NAMES)] for i in range(len(prompts))]
    reference: dict[str, list[str]] = {}
    rates = {}
    for name in NAMES:  # each adapter merged: the reference texts (and one's speed)
        engine = load(engine_name, made[name][1])
        try:
            run_at_once(engine, requests(prompts[:2], 4, [None, None]))  # warm-up
            seconds, done = run_at_once(engine, requests(prompts, tokens, [None] * len(prompts)))
            reference[name] = [d.text for d in done]
            if name == first:
                rates["one adapter merged"] = sum(d.tokens for d in done) / seconds
        finally:
            close(engine)
    engine = load(engine_name, made[first][0], {name: made[name][0] for name in NAMES[1:]})
    equal = {}
    try:
        run_at_once(engine, requests(prompts[:2], 4, [None, None]))  # warm-up
        for form, adapters in (("3 side by side, all on one", [first] * len(prompts)),
                               ("3 side by side, spread over 3", spread)):  # fmt: skip
            asked = [None if name == first else name for name in adapters]
            seconds, done = run_at_once(engine, requests(prompts, tokens, asked))
            rates[form] = sum(d.tokens for d in done) / seconds
            expected = [reference[a][i] for i, a in enumerate(adapters)]
            equal[form] = sum(d.text == e for d, e in zip(done, expected, strict=True))
    finally:
        close(engine)
    rows = []
    for form, rate in rates.items():
        same = f"{equal[form]}/{len(prompts)}" if form in equal else ""
        print(f"{engine_name} {form}: {rate:,.0f} tokens/s {same}", flush=True)
        rows.append(f"| {datetime.date.today()} | {machine()} | {model}, {tokens} tokens "
                    f"each | {engine_name} | {form} | {len(prompts)} | **{rate:,.0f}** | "
                    f"{rate / rates['one adapter merged']:.2f}x | {same} |")  # fmt: skip
    return rows


def memory_rows(base: Path, made: dict, model: str) -> list[str]:
    """Each form answers one request per adapter (weights are read from memory-mapped files
    as they are first used: loading alone would not show them)."""
    setup = (
        "from pathlib import Path; from selfee.engines.hf import HFEngine; "
        "from selfee.revision import CompletionRequest; "
        "ask = lambda adapter=None: CompletionRequest('Hello', (), 4, adapter=adapter)"
    )
    merged = "; ".join(f"HFEngine.load(Path('{made[n][1]}'), 'cpu')" for n in NAMES)
    beside = ", ".join(f"'{n}': Path('{made[n][0]}')" for n in NAMES[1:])
    forms = {
        "floor (imports, tokenizer)": f"{setup}; from selfee.tokenizer import load_tokenizer; "
        f"load_tokenizer('{base}')",
        "3 merged models, 3 engines": f"{setup}; engines = [{merged.replace('; ', ', ')}]; "
        "[e.complete(ask()) for e in engines]",
        "base + 3 adapters side by side": f"{setup}; e = HFEngine.load("
        f"Path('{made[NAMES[0]][0]}'), 'cpu', adapters={{{beside}}}); "
        f"[e.complete(ask(a)) for a in (None, *{list(NAMES[1:])!r})]",
    }  # fmt: skip
    rows = []
    for form, code in forms.items():
        peak, _ = child(code)
        print(f"memory {form}: peak {peak:,} MB", flush=True)
        rows.append(f"| {datetime.date.today()} | {machine()} | {model} | {form} | **{peak:,}** |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per request")
    parser.add_argument("--requests", type=int, default=6, help="requests at once")
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm")
    args = parser.parse_args()
    prompts = [f"### Human: Question {i}: what is {i} plus {i + 1}?\n\n### Assistant:"
               for i in range(args.requests)]  # fmt: skip
    speed, memory = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size, (hidden, layers, mlp) in SIZES.items():
            folder = Path(tmp) / size
            base = build_model(folder / "base", hidden=hidden, layers=layers, mlp=mlp)
            made = write_adapters(base, folder)
            model = f"LLaMA {size} + 3 LoRA r{RANK}"
            if size == SPEED_SIZE:
                for engine_name in args.engines.split(","):
                    speed += engine_rows(engine_name, made, prompts, args.tokens, model)
            else:
                memory = memory_rows(base, made, model)
    append_rows(
        "\n## Several adapters on one base: speed (`bench/adapters_side_by_side.py`)\n\n"
        "LoRA on every linear layer; greedy, requests at once; outputs compared with each "
        "adapter merged into its own model.\n\n| date | machine | model | engine | form | "
        "requests | tokens/s | vs one merged | outputs equal |\n"
        "|---|---|---|---|---|---|---|---|---|\n",
        speed,
    )  # fmt: skip
    append_rows(
        "\n## Several adapters on one base: host memory (`bench/adapters_side_by_side.py`)\n\n"
        "HF engine, fp32; each form in its own process, answering one request per adapter.\n\n"
        "| date | machine | model | form | peak RSS (MB) |\n|---|---|---|---|---|\n",
        memory,
    )  # fmt: skip


if __name__ == "__main__":
    main()
