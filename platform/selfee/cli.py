"""The ``selfee`` command: one subcommand per stage that exists.

Each subcommand takes ``--config FILE`` plus one option per config key (same names as in
the YAML). ``python -m jobs.<stage>`` runs the same code for ``ray job submit``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from selfee import __version__
from selfee.augment.config import AugmentConfig
from selfee.collect.config import CollectConfig
from selfee.config import StageConfig
from selfee.config_cli import add_config_arguments, config_from_args
from selfee.console import note, quiet_run, say
from selfee.errors import ConfigError, JobFailed
from selfee.eval.config import EvalConfig
from selfee.export.config import ExportGGUFConfig, ExportMergedConfig
from selfee.infer.config import InferConfig
from selfee.judge.config import JudgeConfig, ReportConfig
from selfee.quickstart_config import QuickstartConfig
from selfee.serve.config import DemoConfig, ServeConfig
from selfee.teacher.config import TeacherConfig
from selfee.train.config import DeltaApplyConfig, DeltaMakeConfig, TrainConfig


def _run_teacher(cfg: TeacherConfig) -> None:
    from selfee.teacher.server import serve_forever

    serve_forever(cfg)


def _run_collect(cfg: CollectConfig) -> None:
    from selfee.collect.job import run_collect

    run_collect(cfg)


def _run_augment(cfg: AugmentConfig) -> None:
    from selfee.augment.job import run_augment

    run_augment(cfg)


def _run_train(cfg: TrainConfig) -> None:
    from selfee.train.job import run_train

    run_train(cfg)


def _run_delta_apply(cfg: DeltaApplyConfig) -> None:
    from selfee.train.delta import apply_delta

    done = apply_delta(cfg.base, cfg.delta, cfg.output)
    say(f"restored {done['tensors']} tensors into {done['output']}")


def _run_delta_make(cfg: DeltaMakeConfig) -> None:
    from selfee.train.delta import make_delta

    done = make_delta(cfg.base, cfg.target, cfg.output)
    say(f"wrote the delta of {done['tensors']} tensors to {done['output']}")
    if done["inexact_elements"]:
        print(
            f"warning: {done['inexact_elements']} elements do not come back bit for bit "
            "with 'selfee delta apply' (weights far from the base's)",
            file=sys.stderr,
        )


def _run_export_gguf(cfg: ExportGGUFConfig) -> None:
    from selfee.export.gguf import run_export

    run_export(cfg)


def _run_export_merged(cfg: ExportMergedConfig) -> None:
    from selfee.export.merged import merge_adapter

    done = merge_adapter(cfg)
    how = "one tensor at a time" if done["merge"] == "streamed" else done["merge"]
    say(f"merged the adapter into its base {done['base']} ({how}): {done['parameters']:,} "
        f"parameters ({done['dtype']}) in {done['model']}")  # fmt: skip


def _run_infer(cfg: InferConfig) -> None:
    from selfee.infer.job import run_infer

    summary = run_infer(cfg)
    if summary["failed"]:
        raise JobFailed(f"{len(summary['failed'])} questions failed; re-run to try them again")


def _run_serve(cfg: ServeConfig) -> None:
    from selfee.serve.app import serve_forever

    serve_forever(cfg)


def _run_demo(cfg: DemoConfig) -> None:
    from selfee.serve.demo import run_demo

    run_demo(cfg)


def _run_judge(cfg: JudgeConfig) -> None:
    from selfee.judge.job import run_judge

    run_judge(cfg)


def _run_report(cfg: ReportConfig) -> None:
    from selfee.judge import report

    cfg.require()
    try:
        reports = report.build_report(
            cfg.reviews, cfg.questions, cfg.model_a, cfg.model_b, cfg.answers, cfg.bootstrap
        )
    except report.ReportError as e:  # files that cannot be compared: a usage error
        note(f"selfee report: error: {e}")
        raise SystemExit(2) from None
    for warning in (w for r in reports for w in r["warnings"]):
        note(f"selfee report: warning: {warning}")
    say(report.to_json(reports) if cfg.print_json else report.format_table(reports))
    if cfg.plot is not None:
        written = report.plot(reports, cfg.plot)
        (note if cfg.print_json else say)(f"plot: {written}")


def _run_eval(cfg: EvalConfig) -> None:
    from selfee.eval import report
    from selfee.eval.job import run_eval

    summary = run_eval(cfg)
    say(report.to_json(summary) if cfg.print_json else report.format_table(summary))
    for one in cfg.one_model_configs().values():
        if one.plot is not None:
            (note if cfg.print_json else say)(f"plot: {one.plot}")


def _run_quickstart(cfg: QuickstartConfig) -> None:
    from selfee.quickstart import run_quickstart

    summary = run_quickstart(cfg)
    if summary["errors"]:
        raise SystemExit(1)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: type[StageConfig] | None
    run: Callable[[Any], None] | None
    children: tuple[Command, ...] = ()
    quiet: bool = False  # a batch stage: libraries' output to the run's log (selfee.console)


COMMANDS = [
    Command(
        "teacher",
        "run the offline teacher: an OpenAI-compatible server with deterministic SelFee-shaped "
        "replies, optional rate limit, latency and faults",
        TeacherConfig,
        _run_teacher,
    ),
    Command(
        "collect",
        "collect instruction data from local files of the SelFee sources (alpaca, aqua, gsm8k, "
        "math, conala, mbpp, code_contests, drrepair, flan, sharegpt) with Ray Data",
        CollectConfig,
        _run_collect,
        quiet=True,
    ),
    Command(
        "augment",
        "augment instructions with a teacher LLM: answer, critique, revise until the critique "
        "says 'Revision is not needed' (async, rate-limited, resumable, on Ray Data)",
        AugmentConfig,
        _run_augment,
        quiet=True,
    ),
    Command(
        "train",
        "fine-tune a causal LM (tiny, or a Hugging Face directory) on SelFee chains, fully or "
        "with LoRA / QLoRA adapters, with Ray Train + DeepSpeed ZeRO-1/2/3: each worker reads "
        "its own shard, checkpoints, resume, export (merged model or adapter)",
        TrainConfig,
        _run_train,
        quiet=True,
    ),
    Command(
        "delta",
        "delta weights: 'apply' restores SelFee's released weights from LLaMA, 'make' writes "
        "one for publishing",
        None,
        None,
        children=(
            Command(
                "apply",
                "output = base (+ zero rows for added tokens such as [PAD]) + delta",
                DeltaApplyConfig,
                _run_delta_apply,
            ),
            Command("make", "delta = target - base", DeltaMakeConfig, _run_delta_make),
        ),
    ),
    Command(
        "export",
        "export a trained model for other runtimes: 'gguf' writes llama.cpp files (f16, q8_0, "
        "k-quants) with llama.cpp's own converter and quantizer, measured against the model; "
        "'merged' folds a LoRA adapter into its base",
        None,
        None,
        children=(
            Command(
                "gguf",
                "GGUF files for llama.cpp, each measured against the source model",
                ExportGGUFConfig,
                _run_export_gguf,
                quiet=True,
            ),
            Command(
                "merged",
                "a LoRA adapter folded into its base: a full Hugging Face model (for the GGUF "
                "export and the delta commands, and vLLM at full speed)",
                ExportMergedConfig,
                _run_export_merged,
            ),
        ),
    ),
    Command(
        "infer",
        "batch inference with revision control: questions in, SelFee/FastChat answers out "
        "(--min-revisions N forces revisions, --max-revisions M caps them); engines hf, "
        "llama_cpp (GGUF), vllm or an OpenAI-compatible endpoint; model actors on Ray Data, "
        "resumable",
        InferConfig,
        _run_infer,
        quiet=True,
    ),
    Command(
        "serve",
        "serve a SelFee model on Ray Serve: OpenAI-compatible /v1/chat/completions and "
        "/v1/completions (token streaming too), min_revisions / max_revisions per request, "
        "engines hf, llama_cpp (GGUF) or vllm (Ray Serve LLM), autoscaled replicas",
        ServeConfig,
        _run_serve,
    ),
    Command(
        "demo",
        "the Gradio demo: chat with a SelFee endpoint (--endpoint URL), see the answer, each "
        "feedback and each revision; local only unless --share",
        DemoConfig,
        _run_demo,
    ),
    Command(
        "judge",
        "judge two answer files pairwise with an LLM, every question in both orders (Ray "
        "Data, rate-limited, cached), then print the report",
        JudgeConfig,
        _run_judge,
        quiet=True,
    ),
    Command(
        "report",
        "compare models from review files (X_vs_Y.jsonl + Y_vs_X.jsonl): totals, relative "
        "score, wins/ties/losses, per category, position consistency; --json, --plot",
        ReportConfig,
        _run_report,
    ),
    Command(
        "eval",
        "does revision help? accuracy at each turn (answer, revision 1..N) on GSM8K, MATH, "
        "AQuA or code (run in a sandbox), with bootstrap CIs, flips, the verdict's precision "
        "and recall, autonomous stopping and equal-compute baselines; scores --answers FILE or "
        "generates with --model; --json, --plot",
        EvalConfig,
        _run_eval,
        quiet=True,
    ),
    Command(
        "quickstart",
        "SelFee end to end on embedded Ray (or --ray.address): offline teacher on Ray Serve, "
        "augment, train a tiny model, infer autonomous and with forced revisions, judge, "
        "report; --serve leaves the endpoint and the demo running",
        QuickstartConfig,
        _run_quickstart,
        quiet=True,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfee",
        description="SelFee on Ray: self-revising LLMs, from a laptop to a GPU cluster.",
    )
    parser.add_argument("--version", action="version", version=f"selfee {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        _add_command(sub, command, f"selfee {command.name}")
    return parser


def _add_command(sub: Any, command: Command, full_name: str) -> None:
    p = sub.add_parser(command.name, help=command.help, description=command.help)
    if command.children:
        inner = p.add_subparsers(dest=f"{command.name}_action", metavar="ACTION", required=True)
        for child in command.children:
            _add_command(inner, child, f"{full_name} {child.name}")
        return
    assert command.config is not None
    add_config_arguments(p, command.config)
    if command.quiet:
        p.add_argument("--verbose", action="store_true", help="show every library's output "
                       "on the console, and the traceback of an error")  # fmt: skip
    p.set_defaults(_command=command, _full_name=full_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args._command
    name: str = args._full_name
    assert command.config is not None and command.run is not None
    try:
        cfg = config_from_args(command.config, args)
    except ConfigError as e:
        parser.exit(2, f"{name}: error: {e}\n")
    if (missing := cfg.missing()) is not None:  # a usage error: before any log or Ray
        parser.exit(2, f"{name}: error: {missing}\n")
    verbose = getattr(args, "verbose", False) or bool(os.environ.get("SELFEE_DEBUG"))
    with quiet_run(name, verbose) if command.quiet else nullcontext() as log:
        where = f"; log: {log}" if log else ""
        try:
            command.run(cfg)
        except KeyboardInterrupt:
            note(f"{name}: interrupted{where}")
            return 130
        except (ConfigError, JobFailed, OSError, ValueError) as e:
            if verbose:
                raise
            note(f"{name}: error: {e} ({_more(command)}{where})")
            return 1
        except Exception as e:
            if verbose or log is None:
                raise
            traceback.print_exc()  # into the log
            note(f"{name}: error: {type(e).__name__}: {e} (the traceback is in {log})")
            return 1
    return 0


def _more(command: Command) -> str:
    return (
        "--verbose shows the traceback" if command.quiet else "SELFEE_DEBUG=1 shows the traceback"
    )


def run_stage(name: str, argv: Sequence[str] | None = None) -> int:
    """Entry for ``python -m jobs.<name>``: the same parser as ``selfee <name>``."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
