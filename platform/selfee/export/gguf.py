"""``selfee export gguf``: GGUF files of a model for llama.cpp, and what each one costs.

1. llama.cpp's converter writes the base file (f16, or f32 when asked for); a tokenizer
   trained from scratch gets its BPE pre-tokenizer declared (a GPT-2-style byte-level one
   is llama.cpp's ``gpt-2``), and the declaration is proved: the file's tokenizer must give
   the Hugging Face tokenizer's ids on 200+ strings, or the export fails.
2. llama.cpp's quantizer writes every other type from the base file. k-quants need rows
   that are multiples of 256; smaller tensors fall back to other types, so each file's
   tensor types are read back and reported.
3. Each file against the source model: identical greedy tokens on fixed prompts, mean
   absolute logit difference and perplexity on held chains (both fed the same token ids).

A LoRA adapter is folded into its base first (``selfee.export.merged``), in a folder of
the output that is removed after: the files are the merged model's.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfee import chain
from selfee.adapter import AdapterError, adapter_base, is_adapter
from selfee.console import progress_bar, say
from selfee.errors import ConfigError
from selfee.export.config import ExportGGUFConfig
from selfee.export.merged import write_merged
from selfee.export.tokenizer_check import strings as tokenizer_strings
from selfee.stage import Stage

FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q2_K": 10, "q3_K_M": 12, "q4_K_S": 14,
          "q4_K_M": 15, "q5_K_S": 16, "q5_K_M": 17, "q6_K": 18}  # fmt: skip
INSTRUCTIONS = [
    "Name a color.", "What is 12 times 7?", "Write a haiku about the sea.",
    "Explain what a list comprehension is.", "Give two tips for better sleep.",
    "Translate 'good morning' into French.", "What is the capital of Italy?",
    "Write a Python function that reverses a string.",
]  # fmt: skip


class ExportError(ValueError):
    """An export that cannot be done or whose files are wrong; the message says why."""


def log(message: str) -> None:
    print(f"[export] {message}", flush=True)


def converter_dir(cfg: ExportGGUFConfig) -> Path:
    folder = cfg.converter_dir or Path(
        os.environ.get("SELFEE_LLAMA_CPP_DIR") or Path(sys.prefix) / "share" / "llama.cpp"
    )
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ConfigError(
            f"llama.cpp's converter is not in {folder}: `make install-llama-cpp` unpacks it "
            "from the llama-cpp-python source distribution (or give --converter-dir)"
        )
    return folder


def declared_pre_tokenizer(model: Path) -> str | None:
    """``gpt-2`` for a byte-level BPE with GPT-2's split regex and no prefix space (what the
    tiny model's tokenizer is); None: let the converter recognize it (sentencepiece LLaMA,
    known BPE tokenizers)."""
    path = model / "tokenizer.json"
    if not path.is_file():
        return None
    pre = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if [p.get("type") for p in parts] == ["ByteLevel"]:
        p = parts[0]
        if p.get("use_regex", True) and not p.get("add_prefix_space", False):
            return "gpt-2"
    return None


def _tools(folder: Path, *args: str, log_file: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "selfee.export.llama_cpp_tools", args[0], str(folder), *args[1:]],
        capture_output=True, text=True,
    )  # fmt: skip
    with open(log_file, "a", encoding="utf-8") as f:
        f.write(done.stderr)
    if done.returncode != 0:
        tail = " | ".join(line for line in done.stderr.strip().splitlines()[-3:])
        raise ExportError(f"llama.cpp's {args[0]} failed: {tail} (log: {log_file})")
    return done.stdout


def quantize(source: Path, target: Path, kind: str) -> int:
    """llama.cpp's quantizer; returns how many tensors fell back to another type."""
    from selfee.engines.llama_cpp import LOG_LINES, bindings

    llama_cpp = bindings()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    LOG_LINES.clear()
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise ExportError(f"llama.cpp could not quantize {source} to {kind}")
    found = re.search(r"(\d+) of \d+ tensor\(s\) required fallback", "".join(LOG_LINES))
    return int(found.group(1)) if found else 0


def prove_tokenizer(gguf_engine: Any, hf_tokenizer: Any, path: Path) -> int:
    """The GGUF file's tokenizer gives the Hugging Face ids on every check string."""
    texts = tokenizer_strings()
    wrong = [t for t in texts if gguf_engine.tokenize(t) != hf_tokenizer(t)["input_ids"]]
    if wrong:
        raise ExportError(
            f"{path}: its tokenizer differs from the model's on {len(wrong)} of {len(texts)} "
            f"strings (first: {wrong[0]!r}); the declared pre-tokenizer is wrong for this model"
        )
    return len(texts)


def held_texts(cfg: ExportGGUFConfig) -> list[str]:
    if cfg.eval_data is None:
        return [t for t in tokenizer_strings() if "### Feedback" in t]
    from selfee.train.sft import read_chains

    rows, _ = read_chains(cfg.eval_data)
    return [chain.render_prompt(r["instruction"], r.get("input") or "")
            + chain.render_target(r["outputs"]) for r in rows[:16]]  # fmt: skip


@dataclass
class Reference:
    """The source model's side of every comparison, computed once for all files."""

    requests: list[Any]  # greedy requests on the fixed prompts
    greedy: list[tuple[int, ...]]  # the source model's tokens for each
    ids: list[list[int]]  # the held texts' token ids
    logits: list[Any]  # the source model's logits after every one of them
    nll: float  # its negative log-likelihood of the held texts


def reference(hf: Any, prompts: list[str], texts: list[str], new_tokens: int) -> Reference:
    import torch

    from selfee.revision import CompletionRequest

    requests = [CompletionRequest(p, (), new_tokens, key=f"p{i}") for i, p in enumerate(prompts)]
    ids = [hf.tokenizer(text)["input_ids"][: hf.max_context] for text in texts]
    logits = []
    with torch.inference_mode():
        for row in ids:
            out = hf.model(torch.tensor([row], device=hf.device)).logits[0]
            logits.append(out.float().cpu().numpy())
    return Reference(requests, [hf.complete(r).ids for r in requests], ids, logits,
                     sum(_nll(x, row) for x, row in zip(logits, ids, strict=True)))  # fmt: skip


def _nll(logits: Any, ids: list[int]) -> float:
    """Negative log-likelihood of ``ids[1:]`` under the logits after each earlier token."""
    import numpy as np

    shifted = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -float(logp[np.arange(len(ids) - 1), ids[1:]].sum())


def compare(source: Reference, gguf: Any) -> dict:
    """A GGUF file's engine against the source model, fed the same token ids."""
    import numpy as np

    identical = sum(
        gguf.complete(r).ids == ids for r, ids in zip(source.requests, source.greedy, strict=True)
    )
    diffs, nll = [], 0.0
    for ids, ours in zip(source.ids, source.logits, strict=True):
        theirs = gguf.score(ids)
        vocab = min(ours.shape[1], theirs.shape[1])
        diffs.append(float(np.abs(ours[:, :vocab] - theirs[:, :vocab]).mean()))
        nll += _nll(theirs[:, :vocab], ids)
    n = sum(len(ids) - 1 for ids in source.ids)
    return {
        "greedy_identical_percent": round(100 * identical / len(source.requests), 1),
        "mean_abs_logit_diff": round(sum(diffs) / len(diffs), 5),
        "perplexity": round(math.exp(nll / n), 4),
        "perplexity_source": round(math.exp(source.nll / n), 4),
    }


class ExportStage(Stage[ExportGGUFConfig]):
    name = "export"
    summary_file = "export.json"

    def inputs(self) -> dict[str, Path]:
        return {"model": Path(self.cfg.model)}

    def outputs(self) -> dict[str, Path]:
        name = Path(self.cfg.model).name
        return {kind: self.folder() / f"{name}-{kind}.gguf" for kind in self.cfg.quant}

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"files": len(summary["files"])}

    def run(self) -> dict[str, Any]:
        summary = export_files(self.cfg)
        self.finish(summary)
        say(format_table(summary))
        log(f"summary: {self.summary_path()}")
        return summary


def run_export(cfg: ExportGGUFConfig) -> dict[str, Any]:
    return ExportStage(cfg).run()


def export_files(cfg: ExportGGUFConfig) -> dict[str, Any]:
    """Convert, prove the tokenizer, quantize and measure each file; returns the summary.
    A LoRA adapter is first folded into its base, in a folder of the output removed after
    (llama.cpp's converter reads a full model); the files take the adapter's name."""
    started, model = time.monotonic(), Path(cfg.model)
    if not is_adapter(model):
        return convert_and_measure(cfg, model, model.name)
    try:
        adapter_base(model)
    except AdapterError as e:
        raise ConfigError(f"--model {e}") from None
    merged = Path(cfg.output) / f".{model.name}-merged"
    try:
        log(f"folding the adapter {model} into its base for the converter ({merged})")
        write_merged(model, merged)
        summary = convert_and_measure(cfg, merged, model.name)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    return {**summary, "model": str(model), "seconds": round(time.monotonic() - started, 1)}


def convert_and_measure(cfg: ExportGGUFConfig, model: Path, name: str) -> dict[str, Any]:
    started = time.monotonic()
    if not (model / "config.json").is_file():
        raise ConfigError(f"--model {model} is not a Hugging Face model directory (no config.json)")
    architectures = json.loads((model / "config.json").read_text()).get("architectures") or []
    if "LlamaForCausalLM" not in architectures:
        raise ConfigError(
            f"--model {model}: a LLaMA-architecture model is needed (got {architectures})"
        )
    folder = converter_dir(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "export.log"
    log_file.write_text("")
    base_type = "f32" if "f32" in cfg.quant else "f16"
    base = out / f"{name}-{base_type}.gguf"
    pre = declared_pre_tokenizer(model)
    kinds = list(dict.fromkeys(cfg.quant))  # in order, each once
    with progress_bar("export", "steps", 3 + len(kinds), "step") as bar:
        bar.set_postfix_str(f"converting to {base_type}")
        log(f"converting {model} to {base_type} with llama.cpp's converter"
            + (f" (BPE pre-tokenizer declared: {pre})" if pre else ""))  # fmt: skip
        _tools(folder, "convert", str(model), str(base), base_type,
               *(["--pre", pre] if pre else []), log_file=log_file)  # fmt: skip
        bar.update()

        from selfee.engines.hf import HFEngine
        from selfee.engines.llama_cpp import LlamaCppEngine

        bar.set_postfix_str("proving the tokenizer")
        hf = HFEngine.load(model, device="cpu", dtype="float32")
        base_engine = LlamaCppEngine(base, cfg.threads)
        checked = prove_tokenizer(base_engine, hf.tokenizer, base)
        base_engine.close()
        log(f"tokenizer proved: {checked} of {checked} strings give the model's own ids")
        bar.update()
        bar.set_postfix_str("the source model's reference outputs")
        prompts = [chain.render_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)] + " " * (i // 8))
                   for i in range(cfg.prompts)]  # fmt: skip
        source = reference(hf, prompts, held_texts(cfg), cfg.max_new_tokens)
        bar.update()
        files = []
        for kind in kinds:
            bar.set_postfix_str(f"{kind}: quantizing and measuring")
            path = base if kind == base_type else out / f"{name}-{kind}.gguf"
            fallback = 0 if path == base else quantize(base, path, kind)
            held = json.loads(_tools(folder, "inspect", str(path), log_file=log_file))
            engine = LlamaCppEngine(path, cfg.threads)
            measured = compare(source, engine)
            engine.close()
            files.append({"type": kind, "file": str(path),
                          "size_mb": round(path.stat().st_size / 2**20, 3),
                          "fallback_tensors": fallback, **held, **measured})  # fmt: skip
            log(f"{path.name}: {held['bits_per_weight']} bits/weight, "
                f"tensors {held['tensor_types']}")  # fmt: skip
            bar.update()
    if base_type not in cfg.quant:
        base.unlink()
    summary = {"model": str(model), "pre_tokenizer": pre or "recognized by the converter",
               "tokenizer_strings_checked": checked, "files": files,
               "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    return summary


def format_table(summary: dict[str, Any]) -> str:
    header = ["type", "tensor types", "bits/weight", "size MB", "greedy identical",
              "mean |Δlogit|", "perplexity (source)"]  # fmt: skip
    rows = [header]
    for f in summary["files"]:
        types = ", ".join(f"{k} {v}" for k, v in f["tensor_types"].items())
        rows.append([f["type"], types, f"{f['bits_per_weight']:g}", f"{f['size_mb']:g}",
                     f"{f['greedy_identical_percent']:g}%", f"{f['mean_abs_logit_diff']:g}",
                     f"{f['perplexity']:g} ({f['perplexity_source']:g})"])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
