"""The Ray shell of training: SFT set on Ray Data, TorchTrainer + DeepSpeed, export.

The driver reads the chains, builds the SFT set (``build_sft``: the tokenizer, then every
chain tokenized on Ray Data), hands it to a ``TorchTrainer`` (``trainer``) whose workers run
``selfee.train.loop``, and exports the last checkpoint as a Hugging Face directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from selfee.adapter import check_qlora_backend
from selfee.config import dump_config
from selfee.errors import ConfigError
from selfee.ray_runtime import ray_runtime
from selfee.stage import Stage
from selfee.train import sft
from selfee.train.build_sft import build_sft_dataset, make_tokenizer_and_spec
from selfee.train.config import TrainConfig
from selfee.train.deepspeed_config import load_deepspeed_config, zero_stage
from selfee.train.export import export_model
from selfee.train.loop import STATE_FILE, plan_batches, plan_deal, plan_steps
from selfee.train.resume import RESUMABLE_CHANGES, legacy_record, prepare_output
from selfee.train.trainer import check_resources, fit, worker_settings


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TrainStage(Stage[TrainConfig]):
    name = "train"

    def inputs(self) -> dict[str, Path]:
        base = {} if self.cfg.model == "tiny" else {"base": Path(self.cfg.model)}
        return {"chains": Path(str(self.cfg.data)), **base}

    def outputs(self) -> dict[str, Path]:
        return {"model": self.folder() / "model"}

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        keys = ("examples", "steps", "first_loss", "final_loss", "tokens_per_s")
        return {k: summary[k] for k in keys}

    def legacy_record(self) -> dict[str, Any] | None:
        return legacy_record(self.folder())

    def run(self) -> dict[str, Any]:
        return _run(self)


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Everything a user can get wrong (data, DeepSpeed config, output folder) is checked
    before Ray starts and before the output folder records a run."""
    return TrainStage(cfg).run()


def _run(stage: TrainStage) -> dict[str, Any]:
    cfg = stage.cfg
    cfg.require()
    rows, skipped = sft.read_chains(cfg.data)
    if not rows:
        why = f": all {skipped} rows carry an error (re-run augment with --retry-errors)"
        raise ConfigError(f"{cfg.data} holds no chains to train on{why if skipped else ''}")
    raw_ds_config = load_deepspeed_config(cfg.deepspeed)
    if cfg.adapter == "qlora":
        check_qlora_backend(cfg.use_gpu)
    out = Path(cfg.output)
    storage = cfg.storage_path or str((out / "checkpoints").resolve())
    fingerprint = {
        "config": {k: v for k, v in dump_config(cfg).items() if k not in RESUMABLE_CHANGES},
        "data_sha256": file_sha256(Path(cfg.data)),
    }
    run_name, resuming = prepare_output(stage, fingerprint, storage)
    log(
        f"{len(rows)} chains from {cfg.data}"
        + (f" ({skipped} error rows skipped)" if skipped else "")
    )
    if cfg.tiny_defaults_used:
        log("a tiny model: its defaults (configs/train-tiny.yaml), not SelFee 7B's, for "
            + ", ".join(f"{k}={v}" for k, v in cfg.tiny_defaults_used.items())
            + " (set any of them to override)")  # fmt: skip

    tokenizer, spec = make_tokenizer_and_spec(cfg, rows, out, resuming)
    settings = worker_settings(cfg, spec, raw_ds_config, tokenizer.pad_token_id)
    t0 = time.monotonic()
    with ray_runtime(cfg.ray) as started_ray:
        check_resources(cfg, strict=started_ray)
        dataset, counts = build_sft_dataset(rows, tokenizer, cfg)
        log(
            f"SFT set: {counts['examples']} examples, {counts['truncated']} truncated, "
            f"{counts['dropped']} dropped (over max_context {cfg.max_context}); "
            f"{counts['tokens']:,} tokens, {counts['target_tokens']:,} with loss"
        )
        settings = replace(settings, lengths=counts["lengths"], example_ids=counts["example_ids"])
        deal = plan_deal(settings, cfg.num_workers)
        steps_per_epoch, total_steps = plan_steps(settings, deal)
        log(
            f"{total_steps} steps ({steps_per_epoch}/epoch) · global batch {cfg.global_batch_size}"
            f" = {cfg.micro_batch_size} micro x {cfg.accumulation()} accumulation x "
            f"{cfg.num_workers} workers · ZeRO-{zero_stage(settings.deepspeed)} · "
            f"{'full fine-tuning' if cfg.adapter == 'none' else cfg.adapter} · "
            f"{'bf16' if cfg.bf16() else 'fp32'} on {'GPU' if cfg.use_gpu else 'CPU'}"
        )
        result = fit(cfg, settings, deal, dataset, storage, run_name)
        with result.checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / STATE_FILE).read_text())
            model_dir = export_model(
                folder,
                spec,
                tokenizer,
                out / "model",
                metadata={
                    "objective": cfg.objective,
                    "loss_on": cfg.loss_on.kinds(),
                    "base_model": cfg.model,
                    "data": str(cfg.data),
                    "data_sha256": fingerprint["data_sha256"],
                    "config_sha256": hashlib.sha256(
                        json.dumps(fingerprint["config"], sort_keys=True).encode()
                    ).hexdigest(),
                    "steps": state["step"],
                },
                dtype="bfloat16" if cfg.bf16() else "float32",
                adapter=settings.adapter,
            )
    history = state["history"]
    batches = [b for rank in plan_batches(settings, deal, 0) for b in rank]
    summary = {
        "chains": len(rows),
        "skipped_error_rows": skipped,
        **{k: v for k, v in counts.items() if k not in ("lengths", "example_ids")},
        "padding_efficiency": round(
            sft.padding_efficiency(batches, counts["lengths"], 8, settings.pack_width), 4
        ),
        "steps": state["step"],
        "restarts": state["restarts"],
        "accumulation": cfg.accumulation(),
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "tokens_per_s": round(
            sum(h["tokens"] for h in history) / max(sum(h["seconds"] for h in history), 1e-9), 1
        ),
        "seconds": round(time.monotonic() - t0, 1),
        "model": str(model_dir),
        "checkpoints": f"{storage}/{run_name}",
        "history": history,
        "tiny_defaults_used": cfg.tiny_defaults_used,
    }
    stage.finish(summary)
    log(
        f"done in {summary['seconds']} s: loss {summary['first_loss']:.3f} → "
        f"{summary['final_loss']:.3f} over {summary['steps']} steps"
        + (f" ({summary['restarts']} restarts from checkpoints)" if summary["restarts"] else "")
    )
    if cfg.adapter != "none" and cfg.lora.export == "adapter":
        log(f"adapter: {model_dir} on base {cfg.model}  (selfee infer/serve/eval --model "
            f"{model_dir} load both; peft: PeftModel.from_pretrained)")  # fmt: skip
    else:
        log(f"model: {model_dir}  (load with AutoModelForCausalLM.from_pretrained)")
    log(f"summary: {out / 'summary.json'}  checkpoints: {storage}/{run_name}")
    return summary
