"""Host memory of folding a LoRA adapter into its base (``selfee export merged``): one tensor
at a time (the command) against peft's merge with the base in memory (what it did before,
and still does for adapters it cannot stream), on LLaMA bases of two sizes saved in fp16.

Each form runs in a child process of its own; the row gives its peak resident memory (its
address space's high-water mark), its seconds, and whether its weights equal peft's bit for
bit. The floor row is a child that only imports torch and transformers and loads the
tokenizer: what any merge pays before it reads a weight.

    .venv/bin/python bench/merge_memory.py [--sizes 110m,1b]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_rows, machine
from selfee.testing.chains import write_random_adapter

RANK = 16
# hidden, layers, MLP width (LLaMA shapes; vocabulary 8,192)
SIZES = {"110m": (1024, 8, 2816), "1b": (2048, 22, 5632)}


def build_base_and_adapter(folder: Path, size: str) -> tuple[Path, int]:
    """A base saved in fp16 (as LLaMA's are) and a rank-16 adapter on every linear layer
    with random weights (peft starts B at zero: the adapter would change nothing)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfee.tokenizer import train_tiny_tokenizer

    hidden, layers, mlp = SIZES[size]
    base, adapter = folder / "base", folder / "adapter"
    texts = [f"question {i} and its answer {i * 7}" for i in range(2000)]
    tokenizer = train_tiny_tokenizer(texts, vocab_size=8192)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=hidden, intermediate_size=mlp,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64,
                         num_key_value_heads=hidden // 64, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(config).half()
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    write_random_adapter(model.float(), base, adapter, tokenizer, RANK)
    return adapter, parameters


def child(code: str) -> tuple[int, float]:
    """Peak resident memory (MB) and seconds of a Python child running ``code``. The peak is
    the child's own address space's (``VmHWM``): the kernel's ``ru_maxrss`` of a child starts
    at its parent's size when it forked, and this parent holds a model."""
    report = "; print('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the child failed: {code}\n{done.stderr[-2000:]}")
    peak_kb = int(done.stdout.rsplit("VmHWM", 1)[1].split()[0])
    return peak_kb // 1024, seconds


def same_weights(a: Path, b: Path) -> str:
    import torch
    from safetensors.torch import load_file

    ours, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    equal = (
        sum(torch.equal(ours[k], theirs[k]) for k in theirs) if ours.keys() == theirs.keys() else 0
    )
    return f"{equal}/{len(theirs)} tensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="110m,1b", help=f"comma-separated: {', '.join(SIZES)}")
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            adapter, parameters = build_base_and_adapter(Path(tmp), size)
            streamed, peft = Path(tmp) / "streamed", Path(tmp) / "peft"
            load = f"from selfee.tokenizer import load_tokenizer; t = load_tokenizer('{adapter}')"
            forms = {
                "floor (imports, tokenizer)": f"import torch, transformers, peft; {load}",
                "peft, base in memory": (
                    f"{load}; from pathlib import Path; from selfee.export.merged import "
                    f"write_in_memory; Path('{peft}').mkdir(); "
                    f"write_in_memory(Path('{adapter}'), t, Path('{peft}'), 'float16')"),
                "one tensor at a time": (
                    "from pathlib import Path; from selfee.export.merged import write_merged; "
                    f"assert write_merged(Path('{adapter}'), Path('{streamed}'))['merge'] "
                    "== 'streamed'"),
            }  # fmt: skip
            for form, code in forms.items():
                peak, seconds = child(code)
                equal = same_weights(streamed, peft) if form == "one tensor at a time" else ""
                print(f"{size} {form}: peak {peak:,} MB, {seconds:.1f} s {equal}", flush=True)
                rows.append(f"| {datetime.date.today()} | {machine()} | LLaMA {parameters / 1e6:,.0f}M "
                            f"fp16 ({parameters * 2 / 2**20:,.0f} MB) + LoRA r{RANK} | {form} | "
                            f"**{peak:,}** | {seconds:.1f} | {equal} |")  # fmt: skip
    append_rows(
        "\n## Merging a LoRA adapter: host memory (`bench/merge_memory.py`)\n\n"
        "| date | machine | base | merge | peak RSS (MB) | seconds | weights equal to peft's |\n"
        "|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
