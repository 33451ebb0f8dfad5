"""Stage configs: YAML + CLI overrides of the same names, errors that name the bad key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from selfee.augment.config import AugmentConfig
from selfee.collect.config import CollectConfig
from selfee.config import dump_config, load_config
from selfee.config_cli import add_config_arguments, config_from_args
from selfee.errors import ConfigError
from selfee.quickstart_config import QuickstartConfig
from selfee.teacher.config import TeacherConfig
from selfee.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def parse(cls, argv: list[str]):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def test_every_shipped_stage_config_validates() -> None:
    assert load_config(QuickstartConfig, REPO / "configs" / "quickstart.yaml").max_iterations == 3
    assert load_config(TeacherConfig, REPO / "configs" / "teacher.yaml").port == 8100
    collect = load_config(CollectConfig, REPO / "configs" / "collect.yaml")
    assert {s.name for s in collect.sources} == {
        "alpaca", "aqua", "gsm8k", "math", "conala", "mbpp", "code_contests", "drrepair", "flan",
        "sharegpt",
    }  # fmt: skip
    augment = load_config(AugmentConfig, REPO / "configs" / "augment.yaml")
    assert augment.max_iterations == 5 and augment.reuse_answer_datasets == ["sharegpt"]
    documented = augment.model_dump(exclude={"teacher"})  # the YAML documents the defaults
    assert documented == AugmentConfig(input=augment.input).model_dump(exclude={"teacher"})
    tiny = load_config(TrainConfig, REPO / "configs" / "train-tiny.yaml")
    assert tiny.model == "tiny" and tiny.accumulation() == 2 and not tiny.use_gpu


@pytest.mark.parametrize(("name", "micro", "accumulation"), [("7b", 4, 4), ("13b", 2, 8)])
def test_selfee_gpu_configs_carry_the_published_hyperparameters(
    name: str, micro: int, accumulation: int
) -> None:
    cfg = load_config(TrainConfig, REPO / "configs" / f"selfee-{name}.yaml")
    assert (cfg.global_batch_size, cfg.learning_rate, cfg.epochs, cfg.max_context) == (
        128,
        2e-5,
        3,
        2048,
    )
    assert (cfg.weight_decay, cfg.warmup_ratio, cfg.objective) == (0.0, 0.03, "full")
    assert (
        cfg.use_gpu
        and cfg.bf16()
        and (cfg.micro_batch_size, cfg.accumulation()) == (micro, accumulation)
    )
    assert (REPO / cfg.deepspeed).is_file()


def test_global_batch_must_split_into_micro_batches_and_workers() -> None:
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size 4 x num_workers 3"):
        TrainConfig(global_batch_size=128, micro_batch_size=4, num_workers=3)
    with pytest.raises(ValueError, match="nothing would be learned"):
        TrainConfig(loss_on={"answer": False, "feedback": False, "revisions": False})


def test_yaml_then_cli_overrides_with_same_names(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("max_iterations: 4\nteacher:\n  seed: 5\n  rpm: 100\nray:\n  num_cpus: 2\n")
    cfg = parse(
        QuickstartConfig,
        [
            "--config",
            str(path),
            "--max-iterations",
            "6",
            "--teacher.rpm",
            "none",
            "--teacher.fault_kinds",
            "429",
            "500",
        ],
    )
    assert cfg.max_iterations == 6  # CLI wins
    assert cfg.teacher.seed == 5  # YAML kept
    assert cfg.teacher.rpm is None  # "none" clears an optional key
    assert cfg.teacher.fault_kinds == ["429", "500"]
    assert cfg.ray.num_cpus == 2


def test_defaults_without_any_file() -> None:
    cfg = parse(TeacherConfig, [])
    assert cfg == TeacherConfig()


def test_unknown_yaml_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("teacher:\n  needed_fractoin: 0.3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(QuickstartConfig, path)
    message = str(caught.value)
    assert "teacher.needed_fractoin" in message and str(path) in message
    assert "did you mean 'needed_fraction'" in message


def test_invalid_value_names_key_and_origin(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"invalid option --fault-rate: .*less than or equal to 1"
    ):
        parse(TeacherConfig, ["--fault-rate", "1.5"])
    path = tmp_path / "t.yaml"
    path.write_text("port: high\n")
    with pytest.raises(ConfigError, match=r"invalid key 'port' in .*t.yaml"):
        load_config(TeacherConfig, path)


def test_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(TeacherConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TeacherConfig, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TeacherConfig, listy)


def test_every_config_key_is_a_cli_option() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, QuickstartConfig)
    options = {s for a in parser._actions for s in a.option_strings}
    for key in [
        "--output",
        "--max-iterations",
        "--ray.address",
        "--teacher.needed-fraction",
        "--teacher.later_needed_fraction",
        "--serve-port",
    ]:
        assert key in options


def test_renamed_keys_keep_working_for_a_release_with_a_warning(tmp_path: Path) -> None:
    """One name for the output folder everywhere (``output``); judge's ``out_dir`` and the
    quickstart's ``output_dir`` still work, in YAML and on the command line, and say so."""
    from selfee.config_cli import config_from_args
    from selfee.judge.config import JudgeConfig

    old = tmp_path / "judge.yaml"
    old.write_text("out_dir: elsewhere\n")
    with pytest.warns(FutureWarning, match="'out_dir' is now 'output'"):
        assert load_config(JudgeConfig, old).output == Path("elsewhere")
    with pytest.raises(ConfigError, match="out_dir is the old name of output: give output only"):
        load_config(JudgeConfig, old, {"output": "here"})

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, QuickstartConfig)
    with pytest.warns(FutureWarning, match="'output_dir' is now 'output'"):
        args = parser.parse_args(["--output-dir", "qs"])
    assert config_from_args(QuickstartConfig, args).output == Path("qs")
    assert "--output-dir" not in parser.format_help()  # the new name only in --help


def test_a_tiny_model_gets_tiny_model_defaults_unless_set() -> None:
    """SelFee's 7B settings (2e-5, global batch 128) teach a tiny random model nothing."""
    tiny = TrainConfig()
    assert (tiny.learning_rate, tiny.global_batch_size, tiny.max_context) == (1e-3, 8, 512)
    assert tiny.tiny_defaults_used["learning_rate"] == 1e-3
    assert not tiny.gradient_checkpointing and tiny.global_batch_size % (
        tiny.micro_batch_size * tiny.num_workers) == 0  # fmt: skip
    chosen = load_config(TrainConfig, None, {"learning_rate": 5e-4, "global_batch_size": 16})
    assert (chosen.learning_rate, chosen.global_batch_size) == (5e-4, 16)
    assert "learning_rate" not in chosen.tiny_defaults_used
    big = TrainConfig(model="/models/llama-7b")  # a real model keeps SelFee's settings
    assert (big.learning_rate, big.global_batch_size, big.tiny_defaults_used) == (2e-5, 128, {})
    assert dump_config(tiny)["learning_rate"] == 1e-3  # what the run records is what it used


def test_a_key_renamed_since_an_earlier_run_does_not_block_its_resume(tmp_path: Path) -> None:
    """Augment and train compare the settings an earlier run saved with today's: a key that
    was only renamed (context_tokens, max_length) must not read as a changed setting."""
    import json

    from selfee.augment import resume
    from selfee.augment.config import AugmentConfig
    from selfee.train.config import TrainConfig
    from selfee.train.resume import read_run_file

    (tmp_path / resume.STATE).write_text(json.dumps({"settings": {"context_tokens": 4096}}))
    resume.check_settings(tmp_path, {"max_context": 4096}, False, AugmentConfig.renamed)
    with pytest.raises(ConfigError, match="different: max_context"):
        resume.check_settings(tmp_path, {"max_context": 2048}, False, AugmentConfig.renamed)

    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"run_name": "r", "config": {"max_length": 512}}))
    assert read_run_file(run_file)["config"] == {"max_context": 512}
    with pytest.warns(FutureWarning, match="'max_length' is now 'max_context'"):
        assert TrainConfig(max_length=300).max_context == 300
