"""The Ray shell of training: SFT set on Ray Data, TorchTrainer + DeepSpeed, export.

The driver reads the chains, makes the tokenizer (the tiny model's is trained here, on the
run's own text), tokenizes with Ray Data, hands the set to a ``TorchTrainer`` whose workers
run ``selfee.train.loop``, and exports the last checkpoint as a Hugging Face directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from selfee import lineage
from selfee.config import dump_config, with_new_names
from selfee.errors import ConfigError, JobFailed
from selfee.ray_runtime import ray_runtime
from selfee.tokenizer import load_tokenizer, train_tiny_tokenizer
from selfee.train import sft
from selfee.train.config import TrainConfig
from selfee.train.export import export_model
from selfee.train.loop import (
    STATE_FILE,
    TrainSettings,
    plan_batches,
    plan_steps,
    train_loop_per_worker,
)
from selfee.train.model import (
    fill_deepspeed_config,
    hf_spec,
    load_deepspeed_config,
    tiny_llama_config,
    zero_stage,
)

RUN_FILE = "run.json"  # what the run in an output folder was started with
# Keys that may change when a run is resumed: they do not change what is learned.
RESUMABLE_CHANGES = {
    "resume", "overwrite", "ray", "log_every_steps", "checkpoint_every_steps",
    "keep_checkpoints", "max_failures", "fault_injection_step", "output", "storage_path",
}  # fmt: skip


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Everything a user can get wrong (data, DeepSpeed config, output folder) is checked
    before Ray starts and before the output folder records a run."""
    if cfg.data is None:
        raise ConfigError("give the chains to train on: --data outputs/augment/chains.jsonl")
    rows, skipped = sft.read_chains(cfg.data)
    if not rows:
        why = f": all {skipped} rows carry an error (re-run augment with --retry-errors)"
        raise ConfigError(f"{cfg.data} holds no chains to train on{why if skipped else ''}")
    raw_ds_config = load_deepspeed_config(cfg.deepspeed)
    out = Path(cfg.output)
    storage = cfg.storage_path or str((out / "checkpoints").resolve())
    fingerprint = {
        "config": {k: v for k, v in dump_config(cfg).items() if k not in RESUMABLE_CHANGES},
        "data_sha256": file_sha256(Path(cfg.data)),
    }
    run_name, resuming = prepare_output(cfg, out, fingerprint, storage)
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
        steps_per_epoch, total_steps = plan_steps(settings, cfg.num_workers)
        log(
            f"{total_steps} steps ({steps_per_epoch}/epoch) · global batch {cfg.global_batch_size}"
            f" = {cfg.micro_batch_size} micro x {cfg.accumulation()} accumulation x "
            f"{cfg.num_workers} workers · ZeRO-{zero_stage(settings.deepspeed)} · "
            f"{'full fine-tuning' if cfg.adapter == 'none' else cfg.adapter} · "
            f"{'bf16' if cfg.bf16() else 'fp32'} on {'GPU' if cfg.use_gpu else 'CPU'}"
        )
        result = fit(cfg, settings, dataset, storage, run_name)
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
    batches = plan_batches(settings, 0, cfg.num_workers)
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
        "config": dump_config(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    inputs = {"chains": Path(cfg.data)} | ({} if cfg.model == "tiny" else {"base": Path(cfg.model)})
    lineage.write_manifest(
        out / lineage.MANIFEST, "train", inputs, summary["config"], {"model": Path(model_dir)},
        {k: summary[k] for k in ("examples", "steps", "first_loss", "final_loss")},
        summary["seconds"],
    )  # fmt: skip
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


def worker_settings(
    cfg: TrainConfig, spec: dict[str, Any], raw_ds_config: dict[str, Any], pad_id: int
) -> TrainSettings:
    """The config's training keys (same names) plus what the driver worked out."""
    derived = {
        "model": spec,
        "deepspeed": fill_deepspeed_config(
            raw_ds_config,
            micro_batch_size=cfg.micro_batch_size,
            accumulation=cfg.accumulation(),
            world_size=cfg.num_workers,
            bf16=cfg.bf16(),
            max_grad_norm=cfg.max_grad_norm,
        ),
        "accumulation": cfg.accumulation(),
        "pad_id": pad_id,
        "adapter": None if cfg.adapter == "none" else {"kind": cfg.adapter, **cfg.lora.model_dump()},
        "lengths": [],  # the SFT set's: filled in once it is tokenized
        "example_ids": [],
    }  # fmt: skip
    same_names = {
        f.name: getattr(cfg, f.name) for f in fields(TrainSettings) if f.name not in derived
    }
    return TrainSettings(**same_names, **derived)


def prepare_output(
    cfg: TrainConfig, out: Path, fingerprint: dict[str, Any], storage: str
) -> tuple[str, bool]:
    """(the Ray Train run name, whether an earlier run is being resumed).

    One run per output folder. A new run gets a new name, so a shared ``storage_path``
    never hands it the checkpoints of a run that ``--overwrite`` discarded. A run that
    ended before its first checkpoint left nothing to resume: the next run starts over.
    """
    run_file = out / RUN_FILE
    earlier = _read_run_file(run_file)
    if earlier is not None and not cfg.overwrite and not _has_checkpoint(storage, earlier):
        log(f"the earlier run in {out} ended before its first checkpoint: starting over")
        earlier = None
    if earlier is None and cfg.resume:
        raise ConfigError(
            f"--resume: {out} holds no run with a checkpoint to continue; leave out --resume "
            "to start one"
        )
    if earlier is not None and cfg.overwrite:
        for part in ("checkpoints", "model", "tokenizer", RUN_FILE, "summary.json"):
            target = out / part
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        earlier = None
    if earlier is not None and not cfg.resume:
        raise ConfigError(
            f"{out} holds an earlier run: --resume continues it from its latest checkpoint, "
            "--overwrite starts over"
        )
    if earlier is not None:
        changed = sorted(
            key
            for key in set(earlier["config"]) | set(fingerprint["config"])
            if earlier["config"].get(key) != fingerprint["config"].get(key)
        )
        if earlier["data_sha256"] != fingerprint["data_sha256"]:
            changed.append("data (file content)")
        if changed:
            why = (" (DeepSpeed's ZeRO checkpoints are split per worker: resume with the "
                   f"run's num_workers, {earlier['config'].get('num_workers')})"
                   if "num_workers" in changed else "")  # fmt: skip
            raise ConfigError(
                f"cannot resume the run in {out}: {', '.join(changed)} changed since it started"
                f"{why}; --overwrite starts over"
            )
        log(f"resuming the run in {out} from its latest checkpoint")
        return earlier["run_name"], True
    out.mkdir(parents=True, exist_ok=True)
    run_name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_file.write_text(json.dumps({**fingerprint, "run_name": run_name}, indent=2) + "\n")
    return run_name, False


def _read_run_file(path: Path) -> dict[str, Any] | None:
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or torn by a crash: no run to continue
        return None
    if not isinstance(earlier, dict) or "run_name" not in earlier:
        return None
    return {**earlier, "config": with_new_names(earlier.get("config", {}), TrainConfig.renamed)}


def _has_checkpoint(storage: str, earlier: dict[str, Any]) -> bool:
    """Whether the run saved a checkpoint; a remote storage_path is taken on trust."""
    if "://" in storage:
        return True
    return any((Path(storage) / earlier["run_name"]).glob("checkpoint_*"))


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


def check_resources(cfg: TrainConfig, strict: bool) -> None:
    import ray

    have = ray.cluster_resources()
    need = {"CPU": cfg.num_workers * cfg.cpus_per_worker}
    if cfg.use_gpu:
        need["GPU"] = cfg.num_workers
    short = {k: (v, have.get(k, 0)) for k, v in need.items() if have.get(k, 0) < v}
    if not short:
        return
    what = ", ".join(
        f"{need_} {k} needed, {had:g} in the cluster" for k, (need_, had) in short.items()
    )
    if strict:
        hint = " (no GPU here: set use_gpu false)" if "GPU" in short else ""
        raise ConfigError(f"not enough resources for {cfg.num_workers} workers: {what}{hint}")
    log(f"waiting for resources: {what} (an autoscaler may add nodes)")


def fit(
    cfg: TrainConfig, settings: TrainSettings, dataset: Any, storage: str, run_name: str
) -> Any:
    from dataclasses import asdict

    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(settings),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets={"train": dataset},
        # not split: every rank streams the set and keeps its share of the plan (loop.py)
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as e:
        raise JobFailed(
            f"training failed ({cfg.max_failures} restarts allowed): {_root_cause(e)}. "
            f"Checkpoints so far are in {storage}/{run_name}; run again with --resume to "
            "continue from the latest one"
        ) from e


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
