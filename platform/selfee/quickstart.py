"""SelFee end to end on one machine (embedded Ray) or a cluster (``--ray.address``).

Sample source files in all ten formats are collected into instructions (collect, Ray Data);
the offline teacher runs as a Ray Serve app and answers, critiques and revises them (augment); a tiny LLaMA learns the chains (train, Ray Train + DeepSpeed); the
model answers the sample questions twice — deciding by itself, then with forced revisions
(infer, revision control); the teacher judges the two answer sets in both orders (judge)
and the report compares them (table and plot). Each stage writes a manifest beside its
output and is skipped when its inputs and config have not changed. ``--serve`` leaves the
model's OpenAI-compatible endpoint and the Gradio demo running on Ray Serve.
"""

from __future__ import annotations

import collections
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from ray import serve

from selfee.augment.config import AugmentConfig
from selfee.augment.job import AugmentStage
from selfee.chain import detect_verdict, parse, render_prompt, render_target
from selfee.collect.config import CollectConfig, SourceSpec
from selfee.collect.samples import write_sample_sources
from selfee.config import dump_config
from selfee.console import details, say, wait_for_ctrl_c
from selfee.eval.config import EvalConfig
from selfee.export.config import ExportGGUFConfig
from selfee.infer.config import InferConfig
from selfee.judge.config import JudgeConfig
from selfee.quickstart_config import QuickstartConfig
from selfee.ray_runtime import ray_runtime
from selfee.records import read_jsonl, write_jsonl
from selfee.serve.config import DemoConfig, ServeConfig
from selfee.stage import run_or_reuse
from selfee.teacher.deployment import teacher_application
from selfee.train.config import TrainConfig

TEACHER_APP = "offline-teacher"


STAGE = "quickstart"


def log(message: str) -> None:
    print(f"[{STAGE}] {message}", flush=True)


def sample_path(name: str) -> Path:
    return Path(str(resources.files("selfee") / "samples" / name))


def sample_instructions_path() -> Path:
    return sample_path("instructions.jsonl")


def summarize(chains: list[dict[str, Any]], augmented: dict[str, Any]) -> dict[str, Any]:
    """The augment job's counts plus what the quickstart checks: verdicts, format round trip."""
    verdicts = collections.Counter(
        detect_verdict(step["feedback"]).value for c in chains for step in c["outputs"]
    )
    round_trip_ok = 0
    for c in chains:
        if c["outputs"] and not c["error"]:
            text = render_prompt(c["instruction"], c["input"]) + render_target(c["outputs"])
            round_trip_ok += parse(text).steps == c["outputs"]
    return {
        "chains": augmented.get("rows", len(chains)),
        "errors": augmented.get("errors", 0),
        "verdicts": dict(verdicts),
        "round_trip_ok": round_trip_ok,
    }


def run_quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    from selfee.serve.app import check_port_free, start_serve  # Serve's modules: once it runs

    questions = cfg.questions or sample_path("questions.jsonl")
    for path, what in ((cfg.instructions, "instructions"), (questions, "questions")):
        if path is not None and not any(True for _ in read_jsonl(path)):  # before Ray starts
            raise ValueError(f"{path} holds no {what}")
    check_port_free("127.0.0.1", cfg.serve_port, "--serve-port", cfg.ray)
    out = Path(cfg.output)
    t0 = time.monotonic()
    stages: dict[str, dict[str, Any]] = {}
    with ray_runtime(cfg.ray) as started_ray:
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        start_serve("127.0.0.1", cfg.serve_port, "--serve-port", logging_config=quiet)
        try:
            serve.run(teacher_application(cfg.teacher), name=TEACHER_APP,
                      route_prefix="/teacher", logging_config=quiet)  # fmt: skip
            teacher = f"http://127.0.0.1:{cfg.serve_port}/teacher/v1"
            log(
                f"1/9 offline teacher on Ray Serve at {teacher} (synthetic replies, not a real LLM)"
            )
            with details(show=(f"[{STAGE}]", "[train] step")):  # the stages' own lines: the log
                stages = run_stages(cfg, out, questions, teacher)
            teacher_stats = httpx.get(teacher.removesuffix("/v1") + "/stats", timeout=10).json()
            if cfg.serve:
                serve_model(cfg, out / "train" / "model", quiet)
        finally:
            if not started_ray:  # a Ray we joined keeps running: leave it as we found it
                serve.delete(TEACHER_APP)
    chains = list(read_jsonl(out / "augment" / "chains.jsonl"))
    summary = {
        **summarize(chains, stages["augment"]["counts"]),
        "stages": {
            k: {"reused": v["reused"], "seconds": v["seconds"], "counts": v["counts"]}
            for k, v in stages.items()
        },
        "teacher": teacher_stats,
        "seconds": round(time.monotonic() - t0, 1),
        "config": dump_config(cfg),
        "artifacts": artifacts(out),
        "lineage": [stage["manifest"] for stage in stages.values()],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print_summary(summary, stages)
    return summary


def run_stages(
    cfg: QuickstartConfig, out: Path, questions: Path, teacher: str
) -> dict[str, dict[str, Any]]:
    """Each stage through ``run_or_reuse``: run, or skipped when its own manifest says its
    outputs are current."""
    from selfee.collect.job import CollectStage
    from selfee.eval.job import EvalStage
    from selfee.export.gguf import ExportStage
    from selfee.infer.job import InferStage
    from selfee.judge.job import JudgeStage
    from selfee.train.job import TrainStage

    stages: dict[str, dict[str, Any]] = {}
    instructions = cfg.instructions
    if instructions is None:
        sources = write_sample_sources(out / "sources", cfg.sample_rows, cfg.teacher.seed)
        collect = CollectConfig(
            sources=[SourceSpec(name=name, path=path, cap=cfg.collect_cap)
                     for name, path in sources.items()],
            output=out / "collect", jsonl=True, seed=cfg.teacher.seed, ray=cfg.ray,
        )  # fmt: skip
        instructions = out / "collect" / "instructions.jsonl"
        log(f"2/9 collect: {len(sources)} sample sources in their own formats -> instructions "
            f"({cfg.collect_cap} per source)")  # fmt: skip
        stages["collect"] = run_or_reuse(CollectStage(collect), log)
    else:
        log(f"2/9 collect: skipped, augmenting {instructions}")
    augment = AugmentConfig(
        input=instructions, output=out / "augment", base_url=teacher, model=cfg.teacher.model,
        max_iterations=cfg.max_iterations, concurrency=cfg.concurrency, progress_interval_s=5,
        teacher=cfg.teacher, ray=cfg.ray,  # the teacher behind base_url: its settings count
    )  # fmt: skip
    chains = out / "augment" / "chains.jsonl"
    log("3/9 augment: the teacher answers, critiques and revises every instruction")
    stages["augment"] = run_or_reuse(AugmentStage(augment), log)

    train = TrainConfig(
        data=chains, model="tiny", tiny=cfg.tiny, output=out / "train", max_steps=cfg.train_steps,
        global_batch_size=8, micro_batch_size=4, num_workers=2, max_context=1024,
        learning_rate=cfg.learning_rate, warmup_ratio=0.05, checkpoint_every_steps=cfg.train_steps,
        keep_checkpoints=1, overwrite=True, log_every_steps=max(1, cfg.train_steps // 5),
        ray=cfg.ray,
    )  # fmt: skip
    model = out / "train" / "model"
    log(
        f"4/9 train: a tiny LLaMA learns the chains ({cfg.train_steps} steps, Ray Train + DeepSpeed)"
    )
    stages["train"] = run_or_reuse(TrainStage(train), log)

    gguf = {}
    if cfg.gguf:
        export = ExportGGUFConfig(model=model, quant=cfg.gguf, output=out / "export",
                                  eval_data=chains, prompts=4)  # fmt: skip
        exporting = ExportStage(export)
        gguf = exporting.outputs()
        log(f"5/9 export: GGUF files for llama.cpp ({', '.join(cfg.gguf)}), each measured "
            "against the trained model")  # fmt: skip
        stages["export"] = run_or_reuse(exporting, log)

    answers = {}
    runs = [
        ("autonomous", 0, model),
        (f"{cfg.forced_revisions}-revisions", cfg.forced_revisions, model),
    ]
    runs += [(kind, 0, path) for kind, path in gguf.items()]  # the same questions on llama.cpp
    for name, forced, weights in runs:
        path = out / "answers" / f"selfee-tiny-{name}.jsonl"
        budget = cfg.max_new_tokens * (1 + forced)  # room for the answer and each revision
        infer = InferConfig(
            model=str(weights), questions=questions, output=path,
            model_id=f"selfee-tiny-{name}", min_revisions=forced, max_new_tokens=budget,
            batch_size=8, concurrency=1, progress_interval_s=5, ray=cfg.ray,
        )  # fmt: skip
        engine = "llama.cpp" if weights.suffix == ".gguf" else "the HF engine (fp32)"
        log(f"6/9 infer ({name}): {engine} answers {questions.name} with revision control")
        stages[f"infer-{name}"] = run_or_reuse(InferStage(infer, f"infer-{name}"), log)
        if forced and not stages[f"infer-{name}"]["reused"]:
            _say_min_revisions_kept(stages[f"infer-{name}"]["counts"], infer)
        if weights == model:
            answers[name] = path

    judge = JudgeConfig(
        questions=questions, answers=list(answers.values()), output=out / "judge",
        base_url=teacher, model=cfg.teacher.model, progress_interval_s=5, teacher=cfg.teacher,
        ray=cfg.ray,
    )  # fmt: skip
    log("7/9 judge: the teacher compares the two answer sets, every question in both orders")
    judging = JudgeStage(judge)
    stages["judge"] = run_or_reuse(judging, log)
    log("8/9 report")
    reviews = list(judging.outputs().values())
    _report(reviews, questions, out / "judge" / "report.png", stages["judge"]["reused"])
    if gguf:
        for line in engines_table(out, "autonomous", list(gguf)).split("\n"):
            log(line)
    for task, dataset in EVAL_TASKS:
        checkable = [r for r in read_jsonl(instructions) if r.get("dataset") == dataset]
        if not checkable:
            log(f"9/9 eval ({task}): no {dataset} instructions to check answers against, skipped")
            continue
        folder = out / "eval" / task
        asked = out / "eval" / f"{task}-questions.jsonl"  # inputs are compared by content
        write_jsonl(asked, checkable)
        evaluate = EvalConfig(
            task=task, questions=asked, model=str(model), revisions=cfg.eval_revisions,
            samples=2, max_new_tokens=cfg.max_new_tokens, output=folder,
            plot=folder / "eval.png", progress_interval_s=5, ray=cfg.ray,
        )  # fmt: skip
        log(f"9/9 eval ({task}): does revision help? accuracy at each of {cfg.eval_revisions + 1} "
            f"turns on {len(checkable)} {dataset} questions (a tiny model: near zero)")  # fmt: skip
        stages[f"eval-{task}"] = run_or_reuse(EvalStage(evaluate, f"eval-{task}"), log)
        if not stages[f"eval-{task}"]["reused"]:
            _say_eval(stages[f"eval-{task}"]["summary"], evaluate)
    return stages


EVAL_TASKS = (("gsm8k", "gsm8k"), ("code", "mbpp"))  # (eval task, collected dataset)


def engines_table(out: Path, reference: str, others: list[str]) -> str:
    """The same questions on each engine: generation time (the answers of one batch share
    theirs), tokens/s and agreement with the fp32 run."""

    def rows(name: str) -> dict[Any, dict[str, Any]]:
        path = out / "answers" / f"selfee-tiny-{name}.jsonl"
        return {r["question_id"]: r for r in read_jsonl(path)}

    base = rows(reference)
    lines = [
        "engine          answers  tokens  seconds  tokens/s  same chain as fp32  same final answer"
    ]
    for name in [reference, *others]:
        got = rows(name)
        tokens = sum(r["metadata"]["tokens"] for r in got.values())
        seconds = max(sum({r["metadata"]["latency_s"] for r in got.values()}), 1e-9)
        chains = sum(
            got[q]["whole_generation"] == base[q]["whole_generation"] for q in got if q in base
        )
        finals = sum(got[q]["text"] == base[q]["text"] for q in got if q in base)
        label = "hf fp32" if name == reference else f"llama.cpp {name}"
        lines.append(f"{label:15s} {len(got):7d} {tokens:7d} {seconds:8.2f} {tokens / seconds:9.0f}"
                     f"  {chains:>8d}/{len(got):<9d} {finals:>8d}/{len(got)}")  # fmt: skip
    return "\n".join(lines)


def _say_min_revisions_kept(counts: dict[str, Any], infer: InferConfig) -> None:
    """min_revisions is a promise: say whether every answer kept it."""
    kept = sum(n for k, n in counts["revisions"].items() if int(k) >= infer.min_revisions)
    log(f"{kept} of {counts['answers']} answers have {infer.min_revisions} revisions or more "
        f"(budget {infer.max_new_tokens} tokens each)")  # fmt: skip


def _say_eval(done: dict[str, Any], evaluate: EvalConfig) -> None:
    from selfee.eval.report import format_table

    say(format_table(done))  # in the log; the console gets one line
    auto = done["autonomous"] or {}
    log(f"eval {done['task']}: accuracy per turn "
        + " → ".join(f"{100 * (t['accuracy'] or 0):.0f}%" for t in done["turns"])
        + f", autonomous {100 * (auto.get('accuracy') or 0):.0f}% ({done['n']} questions); "
        f"plot {evaluate.plot}")  # fmt: skip


def _report(reviews: list[Path], questions: Path, plot: Path, judge_reused: bool) -> None:
    from selfee.judge import report

    reports = report.build_report(reviews, questions)
    if judge_reused:  # otherwise the judge job has just printed the table
        say(report.format_table(reports))
    report.plot(reports, plot)
    for r in reports:  # the table is in the log; the console gets the figures that matter
        ci = r["relative_percent_ci"] or ["-", "-"]
        log(f"{r['model_a']} vs {r['model_b']}: {r['relative_percent']}% [{ci[0]}, {ci[1]}], "
            f"wins/ties/losses {r['win']}/{r['tie']}/{r['loss']}, length-controlled win rate "
            f"{100 * (r['length_controlled_win_rate'] or 0):.1f}%")  # fmt: skip
    log(f"plot: {plot}")


def serve_model(cfg: QuickstartConfig, model: Path, quiet: dict[str, Any]) -> None:
    """Leave the trained model's endpoint and the demo running until Ctrl-C."""
    from selfee.serve.app import selfee_application
    from selfee.serve.demo import demo_application

    serve_cfg = ServeConfig(
        model=model, model_name="selfee-tiny", max_replicas=1, cpus_per_replica=1
    )
    serve.run(selfee_application(serve_cfg), name="selfee", route_prefix="/", logging_config=quiet)
    endpoint = f"http://127.0.0.1:{cfg.serve_port}/v1"
    serve.run(demo_application(DemoConfig(endpoint=endpoint)), name="demo", route_prefix="/demo",
              logging_config=quiet)  # fmt: skip
    log(f"serving: OpenAI-compatible endpoint {endpoint} (model 'selfee-tiny')")
    log(f"serving: Gradio demo http://127.0.0.1:{cfg.serve_port}/demo/ ; Ctrl-C stops both")
    try:
        wait_for_ctrl_c()
    except KeyboardInterrupt:
        log("stopping the endpoint and the demo")


def artifacts(out: Path) -> dict[str, str]:
    names = {
        "instructions": out / "collect" / "instructions.jsonl",
        "chains": out / "augment" / "chains.jsonl",
        "model": out / "train" / "model",
        "answers": out / "answers",
        "reviews": out / "judge",
        "report plot": out / "judge" / "report.png",
        "eval plots": out / "eval",
        "summary": out / "summary.json",
    }
    return {k: str(v) for k, v in names.items()}


def print_summary(summary: dict[str, Any], stages: dict[str, dict[str, Any]]) -> None:
    log("done (teacher and judge: the OFFLINE TEACHER, synthetic replies — not real scores)")
    log(
        f"chains: {summary['chains']}  errors: {summary['errors']}  verdicts: {summary['verdicts']}"
    )
    log(f"SelFee format round trip: {summary['round_trip_ok']}/{summary['chains']} chains")
    for name, stage in stages.items():
        how = "reused" if stage["reused"] else f"{stage['seconds']} s"
        log(f"stage {name:22s} {how:>8s}  {json.dumps(stage['counts'], default=str)[:110]}")
    log(f"total {summary['seconds']} s")
    for name, path in summary["artifacts"].items():
        log(f"{name:12s} {path}")
    log("lineage (a manifest beside each stage's output): " + " → ".join(summary["lineage"]))
