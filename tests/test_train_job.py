"""The training job on the shared local Ray: Ray Train + DeepSpeed on 2 CPU workers.

A ZeRO-3 run whose loss falls and whose export loads and generates; a worker killed
mid-run (SIGKILL) and the run finishing from its last checkpoint; a failed run resumed on
request, and the guards around resuming.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from metrics_endpoint import value, wait_for
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import check_manifest
from selfee import chain
from selfee.errors import ConfigError, JobFailed
from selfee.records import write_jsonl
from selfee.testing.chains import make_chains, write_pad_less_base
from selfee.train.config import TrainConfig
from selfee.train.export import export_model
from selfee.train.job import run_train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chains_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chains") / "chains.jsonl"
    rows = make_chains(48, revisions=1)
    rows.append({**rows[0], "id": "broken", "outputs": [], "error": "teacher timed out"})
    write_jsonl(path, rows)
    return path


def tiny_config(chains: Path, output: Path, **overrides: object) -> TrainConfig:
    settings: dict = {
        "data": chains,
        "output": output,
        "model": "tiny",
        "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
                 "vocab_size": 400},
        "max_context": 128,
        "global_batch_size": 16,
        "micro_batch_size": 4,
        "num_workers": 2,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.1,
        "gradient_checkpointing": False,
        "deepspeed": REPO / "configs" / "deepspeed" / "zero2.json",
        "max_steps": 8,
        "checkpoint_every_steps": 3,
        "keep_checkpoints": 2,
    }  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def test_zero3_run_learns_exports_and_generates(
    ray_session: None, chains_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(
        chains_file,
        tmp_path / "run",
        deepspeed=REPO / "configs" / "deepspeed" / "zero3.json",
        gradient_checkpointing=True,
        max_steps=36,
        learning_rate=5e-3,
        checkpoint_every_steps=18,
    )
    summary = run_train(cfg)
    manifest = check_manifest(cfg.output / "manifest.json", "train")
    assert manifest["counts"]["steps"] == 36 and set(manifest["outputs"]) == {"model"}

    assert summary["chains"] == 48 and summary["skipped_error_rows"] == 1
    assert summary["examples"] == 48 and summary["steps"] == 36
    assert summary["accumulation"] == 2  # 16 = 4 micro x 2 accumulation x 2 workers
    assert [h["step"] for h in summary["history"]] == list(range(1, 37))
    # each worker read its own shard: together they held each of the 48 examples once (a
    # worker holding the whole set would make this 96)
    assert {h["examples_held"] for h in summary["history"]} == {48}
    assert summary["final_loss"] < 0.4 * summary["first_loss"], [
        h["loss"] for h in summary["history"]
    ]
    # the Ray dashboard's series for this run (rank 0 records them at every logged step)
    run = summary["checkpoints"].rsplit("/", 1)[1]
    series = wait_for(lambda s: value(s, "ray_selfee_train_step", run=run) == 36)
    assert value(series, "ray_selfee_train_step", run=run) == 36
    assert 0 < value(series, "ray_selfee_train_loss", run=run) < summary["first_loss"]
    assert value(series, "ray_selfee_train_tokens_per_second", run=run) > 0

    model_dir = Path(summary["model"])
    assert (model_dir / "model.safetensors").is_file()
    meta = json.loads((model_dir / "selfee.json").read_text())
    assert meta["prompt_format"] == "selfee" and meta["objective"] == "full" and meta["steps"] == 36
    assert len(meta["data_sha256"]) == 64 and len(meta["config_sha256"]) == 64

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = chain.render_prompt("What color is the car?")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    # Words of the chains, from the exported weights (random weights would not find them).
    assert "color" in text or "Revision is" in text, text

    # the export gathers ZeRO-3's weights one at a time from the ranks' files (a 13B model
    # is never whole in host memory): exported again with the step of DeepSpeed's
    # zero_to_fp32 that gathers them all at once failing, the same files
    import deepspeed.utils.zero_to_fp32 as zero_to_fp32

    def all_at_once(*args: object, **kwargs: object) -> None:
        raise AssertionError("the export gathered every weight at once")

    monkeypatch.setattr(zero_to_fp32, "to_torch_tensor", all_at_once)
    checkpoint = max(Path(summary["checkpoints"]).glob("checkpoint_0*"))
    spec = {"kind": "tiny", "config": json.loads((model_dir / "config.json").read_text())}
    again = export_model(checkpoint, spec, tokenizer, tmp_path / "again", meta)
    ours, theirs = (
        load_file(again / "model.safetensors"),
        load_file(model_dir / "model.safetensors"),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for name in ("config.json", "generation_config.json", "selfee.json"):
        assert json.loads((again / name).read_text()) == json.loads((model_dir / name).read_text())


def test_a_killed_worker_resumes_from_the_last_checkpoint(
    ray_session: None, chains_file: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(chains_file, tmp_path / "run", fault_injection_step=5, max_failures=1)
    summary = run_train(cfg)

    assert summary["restarts"] == 1 and summary["steps"] == 8
    # Steps 4-5 ran twice (before the kill and after the restart from step 3); the history
    # kept in checkpoints reads as one run.
    assert [h["step"] for h in summary["history"]] == list(range(1, 9))
    assert [h["restarts"] for h in summary["history"]] == [0, 0, 0] + [1] * 5
    kept = sorted(p.name for p in Path(summary["checkpoints"]).glob("checkpoint_0*"))
    assert kept == ["checkpoint_000006", "checkpoint_000008"]  # keep_checkpoints: 2
    # the restarted workers trained the batches the run would have trained without the
    # kill: the same tokens at every step, the same losses from the restored weights
    unbroken = run_train(tiny_config(chains_file, tmp_path / "unbroken"))["history"]
    assert [h["tokens"] for h in summary["history"]] == [h["tokens"] for h in unbroken]
    assert [h["loss"] for h in summary["history"]] == pytest.approx(
        [h["loss"] for h in unbroken], rel=1e-4
    )


def test_packed_rows_train_and_a_killed_worker_resumes_with_the_same_rows(
    ray_session: None, chains_file: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(chains_file, tmp_path / "run", batching="packed", micro_batch_size=2,
                      global_batch_size=8, max_steps=8, fault_injection_step=5, max_failures=1)  # fmt: skip
    summary = run_train(cfg)
    assert summary["restarts"] == 1 and summary["steps"] == 8
    assert [h["step"] for h in summary["history"]] == list(range(1, 9))
    assert summary["final_loss"] < summary["first_loss"]
    # the rows hold every example, each in one worker's shard, before and after the restart
    assert {h["examples_held"] for h in summary["history"]} == {48}
    # rows of 128 tokens hold 1-3 of these 50-110-token chains: little padding is left
    assert summary["padding_efficiency"] > 0.9


def test_each_worker_is_handed_only_its_own_shard(ray_session: None) -> None:
    """The datasets the workers get: rank r's holds exactly the examples of its shard."""
    import ray.data

    from selfee.train.loop import shard_name
    from selfee.train.sft import deal_units
    from selfee.train.trainer import shard_datasets

    lengths = [5 + (7 * i) % 40 for i in range(30)]
    ids = [2 * i + 1 for i in range(30)]  # rows' idx: dropped chains leave gaps
    rows = [{"idx": idx, "input_ids": [1] * n, "labels": [1] * n}
            for idx, n in zip(ids, lengths, strict=True)]  # fmt: skip
    deal = deal_units(lengths, 3, "length-grouped")
    shards = shard_datasets(ray.data.from_items(rows, override_num_blocks=4), ids, deal)
    assert set(shards) == {shard_name(r) for r in range(3)}
    for rank in range(3):
        shard = deal.shard(rank)
        got = shards[shard_name(rank)].take_all()
        assert sorted(row["idx"] for row in got) == sorted(ids[i] for i in shard)
        assert all(len(row["input_ids"]) == lengths[ids.index(row["idx"])] for row in got)


def test_a_failed_run_resumes_on_request_and_only_unchanged(
    ray_session: None, chains_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(JobFailed, match="--resume"):
        run_train(tiny_config(chains_file, out, fault_injection_step=4, max_failures=0))
    with pytest.raises(ConfigError, match="holds an earlier run"):
        run_train(tiny_config(chains_file, out))
    with pytest.raises(ConfigError, match="learning_rate changed"):
        run_train(tiny_config(chains_file, out, resume=True, learning_rate=1e-3))
    with pytest.raises(ConfigError, match=r"num_workers changed .* split per worker: resume "
                       r"with the run's num_workers, 2\)"):  # fmt: skip
        run_train(tiny_config(chains_file, out, resume=True, num_workers=1))

    summary = run_train(tiny_config(chains_file, out, resume=True))
    assert summary["restarts"] == 1 and summary["steps"] == 8
    assert [h["step"] for h in summary["history"]] == list(range(1, 9))

    again = run_train(tiny_config(chains_file, out, overwrite=True, max_steps=3))
    assert again["restarts"] == 0 and again["steps"] == 3
    assert again["checkpoints"] != summary["checkpoints"]  # a new run never restores the old


def test_a_run_that_failed_before_its_first_checkpoint_blocks_nothing(
    ray_session: None, chains_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(JobFailed):  # killed at step 1; the first checkpoint is at step 3
        run_train(tiny_config(chains_file, out, fault_injection_step=1, max_failures=0))
    assert (out / "manifest.json").is_file()  # the run recorded itself (run.json before)
    with pytest.raises(ConfigError, match="holds no run with a checkpoint to continue"):
        run_train(tiny_config(chains_file, out, resume=True))
    summary = run_train(tiny_config(chains_file, out, max_steps=3, learning_rate=1e-3))
    assert summary["steps"] == 3 and summary["restarts"] == 0


def test_unusable_data_is_refused_before_ray_starts(
    chains_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import selfee.train.job

    monkeypatch.setattr(selfee.train.job, "ray_runtime", lambda *a: pytest.fail("Ray started"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    all_errors = tmp_path / "errors.jsonl"
    write_jsonl(all_errors, [{"id": "a", "instruction": "x", "outputs": [], "error": "timeout"}])
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(
        chains_file.read_bytes().splitlines()[0]
        + b"\n"
        + '{"instruction": "Café"}\n'.encode("latin-1")
    )
    for data, message in [
        (empty, "holds no chains to train on"),
        (all_errors, "all 1 rows carry an error (re-run augment with --retry-errors)"),
        (latin1, f"{latin1}:2 is not UTF-8 text (byte 0xe9"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_train(tiny_config(data, tmp_path / data.stem))
        assert not (tmp_path / data.stem / "manifest.json").exists()  # nothing recorded


def test_the_default_deepspeed_config_ships_with_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfee.train.deepspeed_config import load_deepspeed_config

    monkeypatch.chdir(tmp_path)  # not the repository
    for stage, name in ((1, Path("zero1")), (2, TrainConfig().deepspeed), (3, Path("zero3"))):
        shipped = load_deepspeed_config(name)
        assert shipped["zero_optimization"]["stage"] == stage
        # configs/deepspeed/ holds the same files, for users to copy and edit
        assert shipped == json.loads(
            (REPO / "configs" / "deepspeed" / f"zero{stage}.json").read_text()
        )
    with pytest.raises(FileNotFoundError, match="zero1 / zero2 / zero3 for the ones the package"):
        load_deepspeed_config("zero9")


def test_a_hugging_face_base_gains_pad_and_round_trips_through_a_delta(
    ray_session: None, chains_file: Path, tmp_path: Path
) -> None:
    """The path of a real base model: an HF directory whose tokenizer has no pad token
    (like LLaMA's) gets [PAD] with a zero embedding row, trains, exports, and the delta
    between base and result restores the result exactly."""
    from safetensors.torch import load_file

    from selfee.train.delta import apply_delta, make_delta

    base_dir = write_pad_less_base(tmp_path / "base")
    no_pad = AutoTokenizer.from_pretrained(base_dir)
    assert no_pad.pad_token is None
    summary = run_train(
        tiny_config(chains_file, tmp_path / "run", model=str(base_dir), max_steps=3)
    )
    model_dir = Path(summary["model"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.pad_token == "[PAD]" and len(tokenizer) == len(no_pad) + 1
    weights = load_file(model_dir / "model.safetensors")
    embedding = weights["model.embed_tokens.weight"]
    assert embedding.shape[0] == len(no_pad) + 1
    assert embedding[tokenizer.pad_token_id].eq(0).all()  # padding never trains its row
    base_weights = load_file(base_dir / "model.safetensors")
    assert not torch.equal(embedding[: len(no_pad)], base_weights["model.embed_tokens.weight"])
    total = sum(w.numel() for w in weights.values())
    assert {h["parameters_loaded"] for h in summary["history"]} == {2 * total}  # ZeRO-2: whole

    # ZeRO-3: each worker loads only its partition of the base (transformers' DeepSpeed
    # integration set up before from_pretrained), and [PAD]'s new row still starts at zero
    zero3 = run_train(tiny_config(chains_file, tmp_path / "zero3", model=str(base_dir),
                                  max_steps=2, deepspeed="zero3", learning_rate=1e-9))  # fmt: skip
    loaded = zero3["history"][0]["parameters_loaded"]
    # partitions (padded to the world size), but for the embedding and head that transformers
    # rebuilds whole on each worker when it grows them (partitioned at DeepSpeed's initialize)
    grown = weights["model.embed_tokens.weight"].numel() + weights["lm_head.weight"].numel()
    assert total <= loaded < total + grown + 1000 < 2 * total, (loaded, total, grown)
    zero3_weights = load_file(Path(zero3["model"]) / "model.safetensors")
    assert zero3_weights["model.embed_tokens.weight"][tokenizer.pad_token_id].abs().max() < 1e-6

    make_delta(base_dir, model_dir, tmp_path / "delta")
    apply_delta(base_dir, tmp_path / "delta", tmp_path / "restored")
    restored = load_file(tmp_path / "restored" / "model.safetensors")
    assert restored.keys() == weights.keys()
    assert all(torch.equal(restored[k], weights[k]) for k in weights)
