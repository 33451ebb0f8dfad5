"""Host memory of exporting a full fine-tune from its ZeRO-3 checkpoint: the weights
gathered, cast and written one at a time (``selfee train``'s export now) against DeepSpeed's
``zero_to_fp32`` gathering them all, a model given them and ``save_pretrained`` (what the
export did before).

A LLaMA of about 300M parameters built from a config trains one step under ``selfee train``
(Ray Train, 2 workers, ZeRO-3, CPU) to make a real checkpoint; each export then runs in a
child process of its own. Rows: peak anonymous memory (sampled every 20 ms: the weights
held, without the checkpoint's memory-mapped file pages, which the kernel can drop), peak
resident memory (``VmHWM``, those pages included), seconds, and whether the files are the
same bit for bit.

    .venv/bin/python bench/export_memory.py [--layers 24]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_rows, machine

# Runs in each child: the export given, while a thread samples RssAnon; prints both peaks.
CHILD = """
import threading, time
peak = [0]
def status(key):
    text = open('/proc/self/status').read()
    return int(text.split(key + ':')[1].split()[0])
def sample():
    while True:
        peak[0] = max(peak[0], status('RssAnon'))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
{code}
peak[0] = max(peak[0], status('RssAnon'))
print('PEAKS', peak[0], status('VmHWM'))
"""

BEFORE = """
import json, torch
from pathlib import Path
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer
from selfee.model_spec import model_config
from selfee.train.loop import DS_TAG
spec = json.loads(Path('{spec}').read_text())
state = get_fp32_state_dict_from_zero_checkpoint('{checkpoint}', tag=DS_TAG)
config = model_config(spec)
config.use_cache = True
with torch.device('meta'):
    model = AutoModelForCausalLM.from_config(config)
model.load_state_dict(state, strict=False, assign=True)
model.to(torch.{dtype}).save_pretrained('{out}', safe_serialization=True)
"""

NOW = """
import json
from pathlib import Path
from transformers import AutoTokenizer
from selfee.train.export import export_model
spec = json.loads(Path('{spec}').read_text())
export_model('{checkpoint}', spec, AutoTokenizer.from_pretrained('{tokenizer}'), Path('{out}'),
             {{}}, dtype='{dtype}')
"""


def train_one_step(folder: Path, layers: int) -> tuple[Path, Path, int]:
    """A real ZeRO-3 checkpoint of a ~300M LLaMA; its spec saved beside it."""
    import math

    from selfee.export.shards import model_files, read_entries
    from selfee.records import write_jsonl
    from selfee.testing.chains import make_chains
    from selfee.train.config import TrainConfig
    from selfee.train.job import run_train

    chains = folder / "chains.jsonl"
    write_jsonl(chains, make_chains(16))
    repo = Path(__file__).resolve().parents[1]
    cfg = TrainConfig(
        data=chains, output=folder / "run", model="tiny", max_context=128,
        tiny={"hidden_size": 1024, "num_layers": layers, "num_heads": 16,
              "intermediate_size": 2816, "vocab_size": 400},
        global_batch_size=2, micro_batch_size=1, num_workers=2, max_steps=1,
        checkpoint_every_steps=1, deepspeed=repo / "configs" / "deepspeed" / "zero3.json",
    )  # fmt: skip
    summary = run_train(cfg)
    checkpoint = max(Path(summary["checkpoints"]).glob("checkpoint_0*"))
    model = Path(summary["model"])
    config = json.loads((model / "config.json").read_text())
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"kind": "tiny", "config": config}))
    parameters = sum(math.prod(e.shape) for e in read_entries(model_files(model) or []))
    return checkpoint, spec, parameters


def child(code: str) -> tuple[int, int, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(code=code)],
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the child failed:\n{done.stderr[-3000:]}")
    anon, hwm = (int(x) // 1024 for x in done.stdout.rsplit("PEAKS", 1)[1].split()[:2])
    return anon, hwm, seconds


def same_files(a: Path, b: Path) -> str:
    import torch
    from safetensors.torch import load_file

    ours, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if ours.keys() != theirs.keys():
        return "different tensors"
    return f"{sum(torch.equal(ours[k], theirs[k]) for k in ours)}/{len(ours)} tensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="blocks of the LLaMA (24: ~300M)")
    parser.add_argument("--dtype", default="bfloat16", help="the exported weights' type")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint, spec, parameters = train_one_step(folder, args.layers)
        tokenizer = checkpoint.parents[2] / "tokenizer"
        rows = []
        for form, template in (("zero_to_fp32 whole + save_pretrained (before)", BEFORE),
                               ("one weight at a time (now)", NOW)):  # fmt: skip
            out = folder / ("before" if template is BEFORE else "now")
            code = template.format(spec=spec, checkpoint=checkpoint, tokenizer=tokenizer,
                                   out=out, dtype=args.dtype)  # fmt: skip
            anon, hwm, seconds = child(code)
            equal = same_files(out, folder / "before") if template is NOW else ""
            print(f"{form}: anonymous {anon:,} MB, resident {hwm:,} MB, {seconds:.1f} s {equal}")
            rows.append(f"| {datetime.date.today()} | {machine()} | LLaMA {parameters / 1e6:,.0f}M, "
                        f"ZeRO-3 checkpoint of 2 ranks, exported in {args.dtype} | {form} | "
                        f"**{anon:,}** | {hwm:,} | {seconds:.1f} | {equal} |")  # fmt: skip
    append_rows(
        "\n## Exporting a full fine-tune: host memory (`bench/export_memory.py`)\n\n"
        "| date | machine | model | export | peak anonymous memory (MB) | peak RSS incl. mapped "
        "checkpoint (MB) | seconds | files equal to before |\n|---|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
