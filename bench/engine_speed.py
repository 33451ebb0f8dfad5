"""Engines on one model: the HF engine (fp32) against llama.cpp f16 / q8_0 / q4_K_M.

The model is a LLaMA of about 70M parameters built from a config (random weights: speed
does not depend on what the weights say; on the 0.2M-parameter test model fixed costs
would hide everything), with the byte-level BPE tokenizer the tiny models use, exported by
``selfee export gguf``. All runs greedy, on ``--threads`` threads (default 2).

- tokens/s of one uninterrupted generation of N tokens on each engine;
- llama-cpp-python's own generation (``Llama.create_completion``, greedy) on the same
  file, against our revision controller driving our engine (random text holds no verdict,
  so that is one call): the cost of our per-token bookkeeping;
- enforced revisions on llama.cpp: the same N tokens in continuations of ~100 tokens, each
  continuation's prompt being the text so far plus a rewritten verdict and the next
  revision header (what revision control sends after a forced rewrite), against one call;
  random weights write tokens the tokenizer would not choose for their text, so the prompt
  re-tokenized differs from the cache early and much is evaluated again (reported);
- the real controller forcing revisions on the tests' trained tiny SelFee model (its
  tokens are the tokenizer's own), llama.cpp f16 and HF, against one uninterrupted call.

    .venv/bin/python bench/engine_speed.py [--tokens 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from revision_speed import NoEOSLlamaCpp, compare, enforced, plain, without_eos

from results import append_rows, machine
from selfee.chain import VERDICT_NEEDED, render_prompt, revision_header
from selfee.engines.hf import HFEngine
from selfee.engines.llama_cpp import LlamaCppEngine
from selfee.export.config import ExportGGUFConfig
from selfee.export.gguf import run_export
from selfee.revision import CompletionRequest, RevisionSettings, generate

PROMPT = render_prompt("Explain how a bicycle stays upright, step by step.")


def build_model(folder: Path, hidden: int = 768, layers: int = 8, mlp: int = 2048) -> Path:
    """58M parameters by default; every matrix has rows that are multiples of 256 (k-quants
    apply). Random weights that never end early (no EOS in the generation config)."""
    from importlib import resources

    from transformers import LlamaConfig, LlamaForCausalLM

    from selfee.tokenizer import train_tiny_tokenizer

    samples = Path(str(resources.files("selfee") / "samples"))
    texts = [p.read_text() for p in samples.glob("*.jsonl")] * 20
    tokenizer = train_tiny_tokenizer(texts, vocab_size=8192)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp,
        num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None  # never end early: every run makes N tokens
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def timed(fn, *args, **kwargs) -> tuple[float, Any]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


def best_rate(fn, tokens_of, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Tokens per second, the best of ``repeats`` runs (a busy 2-core machine is noisy)."""
    rates = []
    for _ in range(repeats):
        seconds, out = timed(fn)
        rates.append(tokens_of(out) / seconds)
    return max(rates)


def enforced_continuations(
    engine: LlamaCppEngine, n: int, every: int = 100
) -> tuple[float, int, float]:
    """N tokens in pieces of ``every``, each continuation adding a rewritten verdict and the
    next revision header, as revision control does; returns (seconds, tokens, prompt tokens
    evaluated per continuation)."""
    text, tokens, k, evaluated = PROMPT, 0, 1, []
    started = time.perf_counter()
    while tokens < n:
        done = engine.complete(CompletionRequest(text, (), min(every, n - tokens), key="forced"))
        tokens += done.tokens
        evaluated.append(done.prompt_tokens)
        text += done.text + " " + VERDICT_NEEDED + revision_header(k)
        k += 1
    continuations = evaluated[1:] or [0]
    return time.perf_counter() - started, tokens, sum(continuations) / len(continuations)


def trained_model_overhead(folder: Path, n: int, threads: int) -> list[tuple[str, str, int]]:
    """The real controller on the tests' trained tiny SelFee model (f16 GGUF and HF fp32):
    the most ``min_revisions`` allowed, far above what fits, so every verdict is rewritten
    until N tokens are spent, against one call that generates N tokens, in 5 back-to-back
    pairs; returns (engine, overhead: the pairs' median and range, rewrites)."""
    from tiny_model import model_dir, prompt

    model = model_dir(None, folder)
    export = run_export(ExportGGUFConfig(model=model, output=folder / "gguf", quant=["f16"],
                                         prompts=1, max_new_tokens=8))  # fmt: skip
    hf = HFEngine.load(model, device="cpu", dtype="float32")
    engines = [("llama.cpp f16", NoEOSLlamaCpp(export["files"][0]["file"], n_threads=threads)),
               ("hf fp32", without_eos(hf))]  # fmt: skip
    out = []
    for name, engine in engines:
        keys = itertools.count()  # a new chain for every run: nothing cached from the last
        runs = compare(lambda e=engine, k=keys: plain(e, prompt(0), n, key=f"p{next(k)}"),
                       lambda e=engine, k=keys: enforced(e, prompt(0), n, key=f"f{next(k)}"),
                       pairs=5)  # fmt: skip
        out.append((name, runs.overhead_cell(), runs.rewrites()))
        print(f"trained tiny model, {name}: {runs.summary()}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.tokens
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "bench-70m")
        export = run_export(ExportGGUFConfig(model=model, output=Path(tmp) / "gguf", prompts=1,
                                             max_new_tokens=8, quant=["f16", "q8_0", "q4_K_M"],
                                             threads=args.threads))  # fmt: skip
        params = export["files"][0]["parameters"]
        hf = HFEngine.load(model, device="cpu", dtype="float32")
        request = CompletionRequest(PROMPT, (), n, key="plain")
        hf.complete(CompletionRequest(PROMPT, (), 8, key="warm"))
        seconds, done = timed(HFEngine(hf.model, hf.tokenizer).complete, request)
        hf_rate = done.tokens / seconds
        size = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**20
        rows.append(("hf fp32", size, "-", hf_rate, "1.00x", "-", "-"))
        for file in export["files"]:
            from llama_cpp import Llama

            engine = LlamaCppEngine(file["file"], n_threads=args.threads)
            engine.complete(CompletionRequest(PROMPT, (), 8, key="warm"))
            # our revision controller driving the engine (no verdict in random text: one call)
            settings = RevisionSettings(max_new_tokens=n)
            ours = best_rate(
                lambda e=engine, s=settings: generate(e, PROMPT, s), lambda r: r.tokens
            )
            forced = [enforced_continuations(engine, n) for _ in range(3)]
            forced_rate = max(tokens / seconds for seconds, tokens, _ in forced)
            reevaluated = forced[0][2]
            overhead = ours / forced_rate - 1
            engine.close()
            raw = Llama(file["file"], n_ctx=2048, n_threads=args.threads, verbose=False)
            raw.create_completion(PROMPT, max_tokens=8, temperature=0.0)
            raw_rate = best_rate(
                lambda r=raw: r.create_completion(PROMPT, max_tokens=n, temperature=0.0, top_k=1),
                lambda out: out["usage"]["completion_tokens"],
            )
            del raw
            rows.append((f"llama.cpp {file['type']}", file["size_mb"], file["bits_per_weight"],
                         ours, f"{ours / hf_rate:.2f}x", f"{ours / raw_rate:.3f}",
                         f"{100 * overhead:+.1f}% ({reevaluated:.0f} tokens re-evaluated)"))  # fmt: skip
            print(rows[-1], flush=True)
        trained = trained_model_overhead(Path(tmp) / "tiny", 2048, args.threads)
    today, where = datetime.date.today(), machine()
    append_rows(
        "\n## Engines: HF fp32 against llama.cpp GGUF (`bench/engine_speed.py`)\n\n"
        "| date | machine | model | engine | file MB | bits/weight | tokens/s | vs HF | ours / "
        "llama-cpp-python's own | enforced revisions vs one call |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n",
        [f"| {today} | {where}, {args.threads} threads | LLaMA {params / 1e6:.0f}M, {n} tokens | "
         f"{name} | {mb:.1f} | {bpw} | **{rate:.1f}** | {vs} | {raw} | {forced} |"
         for name, mb, bpw, rate, vs, raw, forced in rows],
    )  # fmt: skip
    append_rows(
        "\n## Engines: forced revisions on a trained model (`bench/engine_speed.py`)\n\n"
        "| date | machine | model | engine | tokens | forced rewrites | enforced vs one call |\n"
        "|---|---|---|---|---|---|---|\n",
        [f"| {today} | {where}, {args.threads} threads | the tests' tiny SelFee model (0.2M) | "
         f"{name} | 2048 | {rewrites} | {overhead} |"
         for name, overhead, rewrites in trained],
    )  # fmt: skip


if __name__ == "__main__":
    main()
