"""The end-to-end slice that exists today, on embedded Ray or a cluster.

Deploys the offline teacher as a Ray Serve app, has it answer, critique and revise a small
instruction set (SelFee chains), renders every chain in the exact SelFee training format and
checks that it parses back. Stages join this slice as they are built.
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

from selfee.augment.job import run_augment
from selfee.chain import detect_verdict, parse, render_prompt, render_target
from selfee.config import AugmentConfig, QuickstartConfig, dump_config
from selfee.ray_runtime import ray_runtime
from selfee.records import read_jsonl, write_jsonl
from selfee.teacher.deployment import teacher_application

TEACHER_APP = "offline-teacher"


def log(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def sample_instructions_path() -> Path:
    return Path(str(resources.files("selfee") / "samples" / "instructions.jsonl"))


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
    usage = augmented["usage"]
    return {
        "chains": augmented["rows"],
        "errors": augmented["errors"],
        "iterations": augmented["iterations"],
        "stopped_at_max_iterations": augmented["stop_reasons"].get("max_iterations", 0),
        "verdicts": dict(verdicts),
        "requests": usage.get("requests", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "round_trip_ok": round_trip_ok,
    }


def run_quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    source = cfg.instructions or sample_instructions_path()
    if not any(True for _ in read_jsonl(source)):  # a bad file fails here, before Ray starts
        raise ValueError(f"{source} holds no instructions")
    out = Path(cfg.output_dir)
    t0 = time.monotonic()
    with ray_runtime(cfg.ray) as started_ray:
        try:
            quiet = {"log_level": "WARNING", "enable_access_log": False}
            serve.start(
                http_options={"host": "127.0.0.1", "port": cfg.serve_port}, logging_config=quiet
            )
            serve.run(
                teacher_application(cfg.teacher),
                name=TEACHER_APP,
                route_prefix="/teacher",
                logging_config=quiet,
            )
            base = f"http://127.0.0.1:{cfg.serve_port}/teacher"
            log(f"offline teacher on Ray Serve at {base}/v1 (synthetic replies, not a real LLM)")
            augment_cfg = AugmentConfig(
                input=source,
                output=out / "augment",
                base_url=f"{base}/v1",
                model=cfg.teacher.model,
                max_iterations=cfg.max_iterations,
                concurrency=cfg.concurrency,
                progress_interval_s=5,
                ray=cfg.ray,
            )
            augmented = run_augment(augment_cfg)
            chains = list(read_jsonl(out / "augment" / "chains.jsonl"))
            teacher_stats = httpx.get(f"{base}/stats", timeout=10).json()
        finally:
            if not started_ray:  # a Ray we joined keeps running: leave it as we found it
                serve.delete(TEACHER_APP)

    write_jsonl(
        out / "sft_preview.jsonl",
        (
            {
                "id": c["id"],
                "prompt": render_prompt(c["instruction"], c["input"]),
                "target": render_target(c["outputs"]),
            }
            for c in chains
            if c["outputs"]
        ),
    )
    summary = {
        **summarize(chains, augmented),
        "teacher": teacher_stats,
        "seconds": round(time.monotonic() - t0, 1),
        "config": dump_config(cfg),
        "artifacts": {
            "chains": str(out / "augment" / "chains.jsonl"),
            "sft_preview": str(out / "sft_preview.jsonl"),
            "summary": str(out / "summary.json"),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    log("done: the offline teacher wrote every chain (model 'offline-teacher': synthetic data)")
    log(
        f"chains: {summary['chains']}  errors: {summary['errors']}  "
        f"stopped at max_iterations: {summary['stopped_at_max_iterations']}"
    )
    log(f"outputs per chain (answer + revisions): {summary['iterations']}")
    log(f"verdicts: {summary['verdicts']}")
    log(
        f"teacher requests: {summary['requests']}  tokens: {summary['prompt_tokens']} prompt, "
        f"{summary['completion_tokens']} completion"
    )
    log(f"SelFee format round trip: {summary['round_trip_ok']}/{summary['chains']} chains")
    for name, path in summary["artifacts"].items():
        log(f"{name:12s} {path}")
