"""Building the SFT set: the tokenizer (the tiny model's is trained on the run's own text),
and every chain rendered and tokenized on Ray Data, with the counts the batch plan needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfee.errors import ConfigError
from selfee.model_spec import hf_spec, tiny_llama_config
from selfee.tokenizer import load_tokenizer, train_tiny_tokenizer
from selfee.train import sft
from selfee.train.config import TrainConfig


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def make_tokenizer_and_spec(
    cfg: TrainConfig, rows: list[dict[str, Any]], out: Path, resuming: bool
) -> tuple[Any, dict[str, Any]]:
    saved = out / "tokenizer"
    if cfg.model == "tiny":
        if resuming and saved.is_dir():
            tokenizer = load_tokenizer(saved)
        else:
            texts = (sft.chain_text(r) for r in rows)
            tokenizer = train_tiny_tokenizer(texts, cfg.tiny.vocab_size)
            log(f"tiny tokenizer trained on the run's text: {len(tokenizer)} tokens")
        spec = {
            "kind": "tiny",
            "config": tiny_llama_config(cfg.tiny.model_dump(), tokenizer, cfg.max_context),
            "seed": cfg.tiny.seed,
        }
    else:
        if not (Path(cfg.model) / "config.json").is_file():
            raise ConfigError(
                f"--model {cfg.model}: not 'tiny' and not a Hugging Face model directory "
                "(no config.json there)"
            )
        tokenizer = load_tokenizer(cfg.model)
        spec = hf_spec(cfg.model, tokenizer)
    tokenizer.save_pretrained(saved)
    return tokenizer, spec


def _tokenize_batch(batch: dict[str, Any], tokenizer: Any, options: dict[str, Any]) -> Any:
    import pyarrow as pa

    idx, ids, labels, status, length, target = [], [], [], [], [], []
    for i, text in zip(batch["idx"], batch["chain"], strict=True):
        example = sft.tokenize_chain(tokenizer, json.loads(text), **options)
        idx.append(int(i))
        ids.append(example.input_ids)
        labels.append(example.labels)
        status.append(example.status)
        length.append(len(example.input_ids))
        target.append(sum(label != sft.IGNORE for label in example.labels))
    return pa.table(
        {
            "idx": pa.array(idx, pa.int64()),
            "input_ids": pa.array(ids, pa.list_(pa.int32())),
            "labels": pa.array(labels, pa.list_(pa.int32())),
            "status": status,
            "length": pa.array(length, pa.int32()),
            "target_tokens": pa.array(target, pa.int32()),
        }
    )


def build_sft_dataset(
    rows: list[dict[str, Any]], tokenizer: Any, cfg: TrainConfig
) -> tuple[Any, dict[str, Any]]:
    """Render + tokenize on Ray Data; the over-length examples are counted, then dropped."""
    import ray.data

    options = {
        "objective": cfg.objective,
        "loss_on": cfg.loss_on.kinds(),
        "max_context": cfg.max_context,
        "overflow": cfg.overflow,
    }
    items = [{"idx": i, "chain": json.dumps(row, ensure_ascii=False)} for i, row in enumerate(rows)]
    blocks = max(1, min(64, len(items) // 256))
    tokenized = (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(
            _tokenize_batch,
            fn_kwargs={"tokenizer": tokenizer, "options": options},
            batch_size=256,
            batch_format="numpy",
        )
        .materialize()
    )
    summary = tokenized.select_columns(["idx", "status", "length", "target_tokens"]).to_pandas()
    kept = summary[summary.status != "dropped"].sort_values("idx")
    counts = {
        "examples": len(kept),
        "truncated": int((summary.status == "truncated").sum()),
        "dropped": int((summary.status == "dropped").sum()),
        "tokens": int(kept.length.sum()),
        "target_tokens": int(kept.target_tokens.sum()),
        "lengths": [int(n) for n in kept.length],  # the batch plan's input, in idx order
        "example_ids": [int(i) for i in kept.idx],
    }
    dataset = tokenized.filter(expr="status != 'dropped'").materialize()
    dataset.context.enable_progress_bars = False  # each worker reads it once, in a blink
    return dataset, counts
