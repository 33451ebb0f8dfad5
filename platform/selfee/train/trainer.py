"""The Ray Train shell: the workers' settings, the resources they need, and the
``TorchTrainer`` whose workers run ``selfee.train.loop``."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from selfee.errors import ConfigError, JobFailed
from selfee.train.config import TrainConfig
from selfee.train.deepspeed_config import fill_deepspeed_config
from selfee.train.loop import TrainSettings, shard_name, train_loop_per_worker
from selfee.train.sft import RankDeal


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


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


def shard_datasets(dataset: Any, example_ids: list[int], deal: RankDeal) -> dict[str, Any]:
    """The SFT set cut into the ranks' shards (``deal``; ``example_ids``: each example's
    ``idx``), one materialized dataset each: together they hold the set once, and each
    worker reads only its own."""
    import numpy as np

    world_size = len(deal.held)
    shard_of = np.full(max(example_ids, default=-1) + 1, -1, dtype=np.int32)
    for rank in range(world_size):
        shard_of[[example_ids[i] for i in deal.shard(rank)]] = rank
    tagged = dataset.map_batches(
        _tag_shard, fn_kwargs={"shard_of": shard_of}, batch_format="pyarrow"
    ).materialize()
    shards = {}
    for rank in range(world_size):
        shard = tagged.filter(expr=f"shard == {rank}").drop_columns(["shard"]).materialize()
        shards[shard_name(rank)] = shard
    return shards


def _tag_shard(table: Any, shard_of: Any) -> Any:
    import pyarrow as pa

    return table.append_column("shard", pa.array(shard_of[table.column("idx").to_numpy()]))


def fit(
    cfg: TrainConfig,
    settings: TrainSettings,
    deal: RankDeal,
    dataset: Any,
    storage: str,
    run_name: str,
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
        # one dataset per rank, not split by Ray Train: rank r reads shard r (loop.py)
        datasets=shard_datasets(dataset, settings.example_ids, deal),
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
            # Ray Train sends a worker's print to its log *and* on to stdout, where Ray
            # forwards it: every line reached the console twice (Ray 2.60)
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
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
