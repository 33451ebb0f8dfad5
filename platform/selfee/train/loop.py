"""What each Ray Train worker runs: DeepSpeed around a Hugging Face causal LM.

Read it like a script: load the tokenized examples, build the model, wrap it in DeepSpeed
(ZeRO-1/2/3, AdamW, cosine schedule with warmup), restore the latest checkpoint if Ray Train
hands one over (a restart after a failure, or a resumed run), then step through
length-grouped (or packed) micro-batches; report metrics and checkpoints through
``ray.train.report``.

The tokenized set lives once in Ray's object store, cut into one shard per rank (a
materialized Ray Data dataset each, ``shard_name``). Every rank computes the same seeded
plan from the examples' lengths (sent with the settings): which examples are in which
shard (``sft.deal_units``, once per run) and each epoch's micro-batches
(``RankDeal.epoch_plan``). A rank reads its own shard once and trains only on it: no rank holds
or reads the whole set, and a resumed run continues with exactly the batches it would have
seen.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfee.adapter import wrap_for_training
from selfee.metrics import record as record_metric
from selfee.model_spec import build_model
from selfee.train import sft
from selfee.train.deepspeed_config import use_cpu_accelerator_unless_cuda, zero_stage

DS_TAG = "deepspeed"  # DeepSpeed's tag folder inside every checkpoint
STATE_FILE = "trainer_state.json"
# Ray Train's controller takes one report per health check (2 s) and ``report`` blocks
# while one is pending: metrics go to Ray Train at most this often (and with every
# checkpoint); every logged step is printed and kept in the checkpoint's history.
REPORT_INTERVAL_S = 10.0
FAULT_DELAY_S = 6.0  # three of Ray Train's 2 s health checks


@dataclass
class TrainSettings:
    """Everything a worker needs, as plain data (it travels to the workers)."""

    model: dict[str, Any]
    deepspeed: dict[str, Any]
    micro_batch_size: int
    accumulation: int
    epochs: int
    max_steps: int | None
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    seed: int
    batching: str
    max_context: int  # a packed row's width
    gradient_checkpointing: bool
    log_every_steps: int
    checkpoint_every_steps: int
    pad_id: int
    adapter: dict[str, Any] | None = None  # {"kind": "lora" | "qlora", **LoraSettings}
    fault_injection_step: int | None = None
    # the plan's input, in example order: each example's length, and its row's ``idx``
    lengths: list[int] = field(default_factory=list)
    example_ids: list[int] = field(default_factory=list)

    @property
    def pack_width(self) -> int | None:
        """A packed row's width (``max_context``); None when batches are not packed."""
        return self.max_context if self.batching == "packed" else None


@dataclass
class TrainerState:
    """Saved with every checkpoint: where the run is and what it has logged."""

    step: int = 0
    restarts: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def shard_name(rank: int) -> str:
    """The Ray Train dataset that holds ``rank``'s shard of the SFT set."""
    return f"shard_{rank}"


def plan_deal(settings: TrainSettings, world_size: int) -> sft.RankDeal:
    """Which examples each rank holds for the whole run (its shard); made once per run."""
    return sft.deal_units(settings.lengths, world_size, settings.batching, settings.pack_width)


def plan_batches(settings: TrainSettings, deal: sft.RankDeal, epoch: int) -> list[list[list[int]]]:
    """The epoch's micro-batches of every rank, ``[rank][j]``: the same plan on every rank."""
    return deal.epoch_plan(settings.micro_batch_size, settings.seed + epoch)


def plan_steps(settings: TrainSettings, deal: sft.RankDeal) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps of the run). The tail of an epoch that cannot
    fill a whole optimizer step is left out (a different tail each epoch, by the shuffle);
    every epoch has as many micro-batches as the first."""
    micro_batches = len(plan_batches(settings, deal, 0)[0])
    per_epoch = micro_batches // settings.accumulation
    if per_epoch == 0:
        unit = "rows" if settings.pack_width else "examples"
        raise ValueError(
            f"{len(settings.lengths)} examples make {micro_batches} micro-batches of "
            f"{settings.micro_batch_size} {unit} per worker; one optimizer step needs "
            f"{settings.accumulation} on each of {len(deal.held)}: lower global_batch_size "
            "or add data"
        )
    return per_epoch, settings.max_steps or settings.epochs * per_epoch


def train_loop_per_worker(config: dict[str, Any]) -> None:
    settings = TrainSettings(**config)
    use_cpu_accelerator_unless_cuda()
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import get_cosine_schedule_with_warmup

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    lengths = settings.lengths
    deal = plan_deal(settings, world)
    examples = load_examples(
        ray.train.get_dataset_shard(shard_name(rank)),
        {settings.example_ids[i]: i for i in deal.shard(rank)},
    )
    steps_per_epoch, total_steps = plan_steps(settings, deal)

    # The model, DeepSpeed, AdamW and the cosine schedule.
    keep_alive = None
    if zero_stage(settings.deepspeed) == 3 and settings.model["kind"] != "tiny":
        from transformers.integrations import HfDeepSpeedConfig

        # DeepSpeed must see Ray Train's process group before from_pretrained partitions
        deepspeed.init_distributed(dist_backend=dist.get_backend())
        keep_alive = HfDeepSpeedConfig(settings.deepspeed)  # from_pretrained shards at load
    adapter = settings.adapter
    quantized = adapter is not None and adapter["kind"] == "qlora"
    model = build_model(settings.model, settings.model.get("seed", settings.seed), quantized)
    # what this worker holds after loading: under ZeRO-3 with an HF base, its partition only
    loaded = sum(getattr(p, "ds_tensor", p).numel() for p in model.parameters())
    # no KV cache in training (with one, transformers would not see packed rows' boundaries)
    model.config.use_cache = False
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter is not None:  # the base frozen, the low-rank weights trained
        model = wrap_for_training(model, adapter, quantized, settings.gradient_checkpointing)
        if rank == 0:
            trained, total = model.get_nb_trainable_parameters()
            print(f"[train] {adapter['kind']}: {trained:,} of {total:,} parameters trained "
                  f"({trained / total:.2%}), rank {adapter['rank']}", flush=True)  # fmt: skip
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.weight_decay), lr=settings.learning_rate
    )
    warmup = math.ceil(settings.warmup_ratio * total_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=settings.deepspeed
    )
    del keep_alive

    # Continue from the checkpoint Ray Train hands over, if any.
    state = TrainerState()
    resumed = False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            # an adapter's checkpoints hold its own weights only; the base comes from disk
            engine.load_checkpoint(folder, tag=DS_TAG, load_module_strict=adapter is None)
            state = TrainerState(**json.loads((Path(folder) / STATE_FILE).read_text()))
        state.restarts += 1
        resumed = True
        if rank == 0:
            print(f"[train] resumed from step {state.step} (restart {state.restarts})", flush=True)

    def all_reduce(values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=engine.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    started, start_step = time.monotonic(), state.step
    last_report = started
    window_start, window_tokens, window_losses = time.monotonic(), 0, []
    while state.step < total_steps:
        epoch, first = divmod(state.step, steps_per_epoch)
        mine = plan_batches(settings, deal, epoch)[rank]
        for in_epoch in range(first, steps_per_epoch):
            if state.step >= total_steps:
                break
            step_batches = mine[
                in_epoch * settings.accumulation : (in_epoch + 1) * settings.accumulation
            ]
            for planned in step_batches:
                batch = sft.collate([examples[i] for i in planned], settings.pad_id,
                                    pack_width=settings.pack_width)  # fmt: skip
                batch = {k: v.to(engine.device) for k, v in batch.items()}
                loss = engine(**batch).loss
                engine.backward(loss)
                engine.step()
                window_losses.append(loss.item())
                window_tokens += sum(lengths[i] for i in planned)
            state.step += 1
            step = state.step

            if step == settings.fault_injection_step and rank == min(1, world - 1) and not resumed:
                # Wait until the controller has taken the last checkpoint: it collects one
                # report per health check, and a checkpoint still queued dies with the worker.
                time.sleep(FAULT_DELAY_S)
                print(
                    f"[train] fault injection: killing worker rank {rank} at step {step}",
                    flush=True,
                )
                os.kill(os.getpid(), signal.SIGKILL)

            checkpoint_now = step % settings.checkpoint_every_steps == 0 or step == total_steps
            if step % settings.log_every_steps and not checkpoint_now:
                continue
            # One collective carries the metrics and rank 0's clock, so every rank agrees
            # on whether this step reports to Ray Train.
            since_report = time.monotonic() - last_report if rank == 0 else 0.0
            loss_sum, loss_count, tokens, since_report, held, loaded_sum = all_reduce(
                [sum(window_losses), len(window_losses), window_tokens, since_report,
                 len(examples), loaded]
            )  # fmt: skip
            elapsed = time.monotonic() - window_start
            metrics = {
                "step": step,
                "epoch": epoch + 1,
                "loss": loss_sum / loss_count,
                "lr": float(engine.get_lr()[0]),
                "tokens_per_s": tokens / max(elapsed, 1e-9),
                "tokens": tokens,
                "seconds": elapsed,
                "restarts": state.restarts,
                "examples_held": int(held),  # all ranks together: the set, once
                "parameters_loaded": int(loaded_sum),  # all ranks: the model once under ZeRO-3
            }
            state.history.append(metrics)
            if rank == 0:
                elapsed_run = time.monotonic() - started
                print(
                    progress_line(metrics, total_steps, elapsed_run, step - start_step), flush=True
                )
                run = context.get_experiment_name()
                record_metric("selfee_train_loss", metrics["loss"], run=run)
                record_metric("selfee_train_tokens_per_second", metrics["tokens_per_s"], run=run)
                record_metric("selfee_train_step", step, run=run)
            if checkpoint_now:
                report_checkpoint(engine, state, metrics, rank, frozen=adapter is None)
                last_report = time.monotonic()
            elif since_report >= REPORT_INTERVAL_S:
                ray.train.report(metrics)
                last_report = time.monotonic()
            window_start, window_tokens, window_losses = time.monotonic(), 0, []


def progress_line(metrics: dict[str, float], total: int, elapsed: float, done: int) -> str:
    from selfee.progress import format_duration

    eta = elapsed / max(done, 1) * (total - metrics["step"])
    return (
        f"[train] step {metrics['step']}/{total} · epoch {metrics['epoch']} · loss {metrics['loss']:.4f}"
        f" · lr {metrics['lr']:.2e} · {metrics['tokens_per_s']:,.0f} tokens/s"
        f" · ETA {format_duration(eta)}"
    )


def report_checkpoint(
    engine: Any, state: TrainerState, metrics: dict[str, float], rank: int, frozen: bool = True
) -> None:
    """Every rank writes its DeepSpeed shards; Ray Train gathers them into one checkpoint.
    ``frozen``: with the frozen parameters (an adapter run leaves its frozen base out)."""
    import ray.train

    folder = tempfile.mkdtemp(prefix="selfee-ckpt-")
    try:
        engine.save_checkpoint(folder, tag=DS_TAG, exclude_frozen_parameters=not frozen)
        if rank == 0:
            (Path(folder) / STATE_FILE).write_text(json.dumps(asdict(state)))
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"checkpoint_{state.step:06d}",
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def parameter_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norms (the usual AdamW practice)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # DeepSpeed drops an empty group (LoRA trains no norm), which the schedule would count
    return [group for group in groups if group["params"]]


def load_examples(shard: Any, wanted: dict[int, int]) -> dict[int, tuple[Any, Any]]:
    """The shard's examples (``wanted``: idx → position in the plan), as (input_ids, labels)
    int32 arrays by position; one streamed pass over the shard."""
    import numpy as np
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # one pass over a materialized shard
    examples: dict[int, tuple[Any, Any]] = {}
    for table in shard.iter_batches(batch_size=4096, batch_format="pyarrow"):
        keep = [(row, wanted[idx]) for row, idx in enumerate(table.column("idx").to_pylist())
                if idx in wanted]  # fmt: skip
        if not keep:
            continue
        ids = _split_lists(table.column("input_ids"), np)
        labels = _split_lists(table.column("labels"), np)
        for row, position in keep:
            examples[position] = (ids[row], labels[row])
    if len(examples) != len(wanted):
        raise RuntimeError(f"the shard lacks {len(wanted) - len(examples)} planned examples")
    return examples


def _split_lists(column: Any, np: Any) -> list[Any]:
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy().astype(np.int32)
    offsets = array.offsets.to_numpy() - array.offsets[0].as_py()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(array))]
