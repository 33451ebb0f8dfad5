"""Training throughput: Ray Train + DeepSpeed against a plain PyTorch loop, and padding waste.

Same tiny model (random init, LLaMA architecture), same tokenized chains, same
length-grouped micro-batches. The plain loop is one process with torch's default threads;
the Ray path is ``selfee train`` (2 workers x 1 CPU, ZeRO-2 or ZeRO-1, gloo), timed by its own
tokens/s over its training steps (start-up and checkpoints excluded on both sides).
The two sides run in pairs, back to back (``--pairs``); a row gives the median of the
pairs' ratios and their range: a shared 2-core VM's speed drifts by ±10% from one minute
to the next, which one pair's two runs share.

    .venv/bin/python bench/train_throughput.py [--chains 400] [--steps 30] [--adapter lora]
        [--deepspeed zero1] [--size 32m] [--pairs 3]

``--adapter lora``: both sides train LoRA adapters (rank 16, every linear layer) on the
same model saved as a base directory, as ``selfee train --adapter lora`` does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from results import append_rows, machine
from selfee.adapter import wrap_for_training
from selfee.model_spec import build_model, tiny_llama_config
from selfee.records import write_jsonl
from selfee.tokenizer import train_tiny_tokenizer
from selfee.train import sft
from selfee.train.config import TrainConfig

WORDS = (
    "the a model answer feedback revision score code list value result because of to and is".split()
)
REPO = Path(__file__).resolve().parents[1]
SIZES = {  # the model and the batch: the 32M one keeps a run of a few steps in minutes here
    "tiny": {"tiny": {"hidden_size": 256, "num_layers": 4, "num_heads": 8,
                      "intermediate_size": 688, "vocab_size": 2048},
             "max_context": 1024, "global_batch_size": 16, "micro_batch_size": 4},
    "32m": {"tiny": {"hidden_size": 512, "num_layers": 10, "num_heads": 8,
                     "intermediate_size": 1376, "vocab_size": 2048},
            "max_context": 512, "global_batch_size": 8, "micro_batch_size": 2},
}  # fmt: skip


def varied_chains(n: int, seed: int = 0) -> list[dict]:
    """Chains whose lengths vary like real ones: 1-4 outputs of 5-250 words each."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "."

    rows = []
    for i in range(n):
        outputs = [{"output": text(5, 250), "feedback": text(5, 40) + " Revision is needed."}
                   for _ in range(rng.randint(1, 4))]  # fmt: skip
        outputs[-1]["feedback"] = text(5, 40) + " Revision is not needed."
        rows.append({"id": str(i), "dataset": "bench", "instruction": text(5, 30), "input": "",
                     "output": "", "outputs": outputs, "error": None})  # fmt: skip
    return rows


def plain_loop_tokens_per_s(cfg: TrainConfig, spec: dict, tokenizer, examples, steps: int) -> float:
    model = build_model(spec, 0)
    if cfg.adapter != "none":
        model = wrap_for_training(model, cfg.lora.model_dump(), quantized=False,
                                  checkpointing=False)  # fmt: skip
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.learning_rate)
    model.config.use_cache = False  # as in training (packed rows need it off)
    lengths = [len(ids) for ids, _ in examples]
    width = cfg.max_context if cfg.batching == "packed" else None
    batches = sft.make_batches(lengths, cfg.micro_batch_size, 0, cfg.batching, width)
    per_step = cfg.global_batch_size // cfg.micro_batch_size
    tokens, seconds = 0, 0.0
    for step in range(steps + 1):  # step 0 warms up
        start = time.perf_counter()
        step_tokens = 0
        for k in range(per_step):
            batch = batches[(step * per_step + k) % len(batches)]
            inputs = sft.collate([examples[i] for i in batch], tokenizer.pad_token_id,
                                 pack_width=width)  # fmt: skip
            loss = model(**inputs).loss / per_step
            loss.backward()
            step_tokens += sum(lengths[i] for i in batch)
        optimizer.step()
        optimizer.zero_grad()
        if step:
            tokens, seconds = tokens + step_tokens, seconds + time.perf_counter() - start
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=400)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--adapter", choices=["none", "lora"], default="none")
    parser.add_argument("--deepspeed", choices=["zero1", "zero2"], default="zero2",
                        help="zero1 reduces gradients once per optimizer step; zero2 at every "
                        "micro-batch")  # fmt: skip
    parser.add_argument("--batching", choices=["length-grouped", "packed"],
                        default="length-grouped",
                        help="packed: both sides train on rows of max_context tokens "
                        "(micro-batches of 1 row, 4 rows a step)")  # fmt: skip
    parser.add_argument("--size", choices=list(SIZES), default="tiny",
                        help="tiny: 3.4M parameters; 32m: where all-reduce no longer dominates")  # fmt: skip
    parser.add_argument("--global-batch-size", type=int, default=None,
                        help="examples per optimizer step (default: the size's, tiny 16, 32m 8); "
                        "the all-reduce is paid once per step, so more examples dilute it")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=3,
                        help="plain loop + Ray Train runs, back to back; the row is their median")  # fmt: skip
    args = parser.parse_args()

    rows = varied_chains(args.chains)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_jsonl(work / "chains.jsonl", rows)
    settings = dict(
        data=work / "chains.jsonl", output=work / "run", model="tiny", **SIZES[args.size],
        num_workers=2, gradient_checkpointing=False, learning_rate=1e-3, max_steps=args.steps,
        checkpoint_every_steps=10_000, log_every_steps=1,
        deepspeed=args.deepspeed, ray={"dashboard": False}, batching=args.batching,
    )  # fmt: skip
    if args.batching == "packed":  # a row of 1024 holds 2.2 examples on average (tiny)
        settings.update(global_batch_size=4, micro_batch_size=1)
    if args.global_batch_size:
        settings.update(global_batch_size=args.global_batch_size)
    cfg = TrainConfig(**settings)

    texts = [sft.chain_text(r) for r in rows]
    tokenizer = train_tiny_tokenizer(texts, cfg.tiny.vocab_size)
    spec = {"kind": "tiny", "config": tiny_llama_config(cfg.tiny.model_dump(), tokenizer,
                                                        cfg.max_context), "seed": 0}  # fmt: skip
    if args.adapter != "none":  # the same model, saved as the base the adapter trains on
        build_model(spec, 0).save_pretrained(work / "base")
        tokenizer.save_pretrained(work / "base")
        cfg = TrainConfig(**{**settings, "model": str(work / "base"), "adapter": args.adapter})
    tokenized = [sft.tokenize_chain(tokenizer, r, max_context=cfg.max_context) for r in rows]
    examples = [(e.input_ids, e.labels) for e in tokenized if e.status != "dropped"]
    lengths = [len(ids) for ids, _ in examples]

    padding = {}
    for micro in (4, 8, 16):
        for grouping in ("length-grouped", "random", "packed"):
            width = cfg.max_context if grouping == "packed" else None
            batches = sft.make_batches(lengths, micro, 0, grouping, width)
            padding[(micro, grouping)] = sft.padding_efficiency(batches, lengths, 8, width)

    from selfee.train.job import run_train

    def ray_tokens_per_s(pair: int) -> float:
        summary = run_train(cfg.model_copy(update={"output": work / f"run{pair}"}))
        history = summary["history"][1:]  # the first step includes DeepSpeed's warm-up
        return sum(h["tokens"] for h in history) / sum(h["seconds"] for h in history)

    pairs = []  # (plain, ray) tokens/s, run back to back
    for pair in range(args.pairs):
        pairs.append((plain_loop_tokens_per_s(cfg, spec, tokenizer, examples, args.steps),
                      ray_tokens_per_s(pair)))  # fmt: skip
        print(f"pair {pair + 1}/{args.pairs}: plain {pairs[-1][0]:,.0f} tokens/s, "
              f"Ray Train {pairs[-1][1]:,.0f} tokens/s", flush=True)  # fmt: skip
    ratios = sorted(r / p for p, r in pairs)
    plain = statistics.median(p for p, _ in pairs)
    ray_tps = statistics.median(r for _, r in pairs)
    ratio = f"**{statistics.median(ratios):.2f}**"
    if len(ratios) > 1:
        ratio += f" (median of {len(ratios)} pairs, {ratios[0]:.2f} to {ratios[-1]:.2f})"

    today = datetime.date.today().isoformat()
    params = sum(p.numel() for p in build_model(spec, 0).parameters())
    what = f"tiny LLaMA {params / 1e6:.1f}M"
    if cfg.adapter != "none":
        what += f" + {cfg.adapter} r{cfg.lora.rank} (all linear layers)"
    if cfg.batching == "packed":
        what += f", packed rows of {cfg.max_context}"
    what += f", global batch {cfg.global_batch_size}"
    append_rows(
        "\n## Training throughput (`bench/train_throughput.py`)\n\n"
        "| date | machine | model | chains | steps | plain PyTorch (1 process) | Ray Train + "
        "DeepSpeed (2 workers x 1 CPU) | DeepSpeed, ranks' micro-batches | ratio |\n"
        "|---|---|---|---|---|---|---|---|---|\n",
        [f"| {today} | {machine()} | {what} | {len(examples)} | "
         f"{args.steps} | {plain:,.0f} tokens/s | {ray_tps:,.0f} tokens/s | "
         f"{args.deepspeed}, balanced | {ratio} |"],
    )  # fmt: skip
    if cfg.adapter == "none" and cfg.batching != "packed":  # the same every time: once
        append_rows(
            "\n## Padding: real tokens / computed tokens (`bench/train_throughput.py`)\n\n"
            "| date | examples | max length | micro batch (examples; rows when packed) | "
            "length-grouped | packed | random, pad to longest (upstream) |"
            "\n|---|---|---|---|---|---|---|\n",
            [
                f"| {today} | {len(examples)} | {cfg.max_context} | {micro} | "
                f"**{padding[(micro, 'length-grouped')]:.3f}** | "
                f"**{padding[(micro, 'packed')]:.3f}** | {padding[(micro, 'random')]:.3f} |"
                for micro in (4, 8, 16)
            ],
        )
    print(json.dumps({"pairs": pairs, "ratios": ratios,
                      "padding": {f"{m}/{g}": v for (m, g), v in padding.items()}}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
