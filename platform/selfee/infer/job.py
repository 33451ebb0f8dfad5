"""Batch inference: questions → SelFee chains with revision control → an answer file.

Model actors on Ray Data (``concurrency`` copies, each with its CPUs/GPUs) take questions
in batches and run ``selfee.revision.generate_batch`` on a local model (on vLLM every
question of a batch is in flight at once, continuously batched), or on an
OpenAI-compatible endpoint (``base_url``). Every finished answer goes to a journal beside
the answer file at once; a re-run (after a crash, Ctrl-C, or with more questions) generates
only what the journal lacks for the same model and settings. The answer file comes out in
the SelFee/FastChat format, in question order.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, NonNegativeInt

from selfee import journal, lineage, metrics
from selfee.chain import render_prompt
from selfee.config import dump_config
from selfee.console import detail, progress_bar
from selfee.engines import check_model, engine_for, engine_name, load_engine
from selfee.errors import ConfigError
from selfee.infer.config import InferConfig
from selfee.progress import format_duration, format_eta
from selfee.records import read_questions, write_jsonl
from selfee.revision import RevisionResult, RevisionSettings, generate_batch

SETTINGS_KEYS = tuple(RevisionSettings.model_fields)


class JournaledResult(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    text: str
    whole_generation: str
    revisions: NonNegativeInt
    forced_rewrites: NonNegativeInt
    tokens: NonNegativeInt
    prompt_tokens: NonNegativeInt
    finish_reason: str
    calls: NonNegativeInt


class JournaledAnswer(BaseModel):
    """A journal row, checked before it is trusted (a bad one is generated again)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    question_id: Any
    result: JournaledResult
    latency_s: float
    device: str
    fingerprint: str


def log(message: str) -> None:
    print(f"[infer] {message}", flush=True)


def generation_settings(cfg: RevisionSettings) -> dict[str, Any]:
    """The revision-control and sampling keys of a config, as plain data."""
    return {key: getattr(cfg, key) for key in SETTINGS_KEYS}


def revision_settings(cfg: RevisionSettings, seed_offset: int = 0) -> RevisionSettings:
    values = generation_settings(cfg)
    values["seed"] += seed_offset
    return RevisionSettings(**values)


def model_fingerprint(cfg: InferConfig) -> str:
    """What decides the answers: the model (its files' sizes and times), engine, settings."""
    parts: dict[str, Any] = {"settings": generation_settings(cfg)}
    if cfg.base_url:
        parts["endpoint"] = [cfg.base_url, cfg.model]
    else:
        model = Path(str(cfg.model))
        files = [model] if model.is_file() else [f for f in model.iterdir() if f.is_file()]
        parts["model"] = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        parts["engine"] = engine_for(model, cfg.engine, cfg.gpus_per_actor)
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_config(cfg: InferConfig) -> None:
    if cfg.questions is None or cfg.output is None or not cfg.model:
        raise ConfigError(
            "give --model DIR (or --base-url URL --model NAME), --questions Q.jsonl and "
            "--output A.jsonl"
        )
    if not cfg.base_url:
        try:
            check_model(cfg.model, cfg.engine, cfg.gpus_per_actor)
        except ValueError as e:
            raise ConfigError(f"--model: {e}; to use an endpoint, give --base-url too") from None
    if cfg.output.suffix != ".jsonl":
        raise ConfigError(f"--output must be a .jsonl file (got {cfg.output})")


class InferWorker:
    """One Ray Data actor: one engine (a model copy, or an endpoint client)."""

    def __init__(self, cfg: InferConfig) -> None:
        self.cfg = cfg
        if cfg.base_url:
            from selfee.engines.completions_api import CompletionsAPIEngine
            from selfee.llm import Secret

            key = Secret(os.environ.get(cfg.api_key_env, "") or "EMPTY")
            self.engine: Any = CompletionsAPIEngine(
                cfg.base_url, str(cfg.model), key, concurrency=cfg.batch_size
            )
            self.where = f"endpoint {cfg.base_url}"
        else:
            import torch

            threads = max(1, int(cfg.cpus_per_actor))
            torch.set_num_threads(threads)
            self.engine = load_engine(str(cfg.model), cfg.engine, cfg.device, cfg.dtype, threads,
                                      cfg.gpus_per_actor, cfg.vllm)  # fmt: skip
            self.where = engine_name(self.engine)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        questions = [json.loads(q) for q in batch["question"]]
        try:
            rows = self.generate(questions)
        except Exception:  # find the question that fails; the others go on
            rows = []
            for question in questions:
                try:
                    rows += self.generate([question])
                except Exception as e:  # recorded in the row, re-run later
                    rows.append({**question, "error": f"{type(e).__name__}: {e}"})
        return {"row": [json.dumps(row) for row in rows]}

    def generate(self, questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        started = time.monotonic()
        results = generate_batch(
            self.engine,
            [render_prompt(q["text"]) for q in questions],
            [
                RevisionSettings(**q["settings"])
                if "settings" in q  # set per question (eval)
                else revision_settings(self.cfg, seed_offset=q["index"])
                for q in questions
            ],
        )
        seconds = time.monotonic() - started
        return [
            {**q, "result": _result_fields(r), "latency_s": seconds, "device": self.where}
            for q, r in zip(questions, results, strict=True)
        ]


def _result_fields(result: RevisionResult) -> dict[str, Any]:
    return {
        "text": result.final_answer,
        "whole_generation": result.whole_generation,
        **result.summary(),
    }


def answer_row(row: dict[str, Any], cfg: InferConfig, model_id: str, fingerprint: str) -> dict:
    result = row["result"]
    settings = generation_settings(cfg)
    answer_id = hashlib.sha256(f"{model_id}:{row['question_id']}:{fingerprint}".encode())
    return {
        "question_id": row["question_id"],
        "text": result["text"],
        "whole_generation": result["whole_generation"],
        "answer_id": answer_id.hexdigest()[:22],
        "model_id": model_id,
        "metadata": {
            "revisions": result["revisions"],
            "forced_rewrites": result["forced_rewrites"],
            "tokens": result["tokens"],
            "prompt_tokens": result["prompt_tokens"],
            "cached_tokens": result.get("cached_tokens", 0),  # answers journaled before it
            "finish_reason": result["finish_reason"],
            "forced_verdicts": result.get("forced_verdicts", {}),
            "calls": result["calls"],
            "latency_s": round(row["latency_s"], 3),
            "device": row["device"],
            "model": str(cfg.model),
            "settings": settings,
            "fingerprint": fingerprint,
        },
    }


def run_infer(cfg: InferConfig) -> dict[str, Any]:
    check_config(cfg)
    assert cfg.questions is not None and cfg.output is not None
    questions = read_questions(cfg.questions)[: cfg.limit]
    model_id = cfg.model_id or Path(str(cfg.model)).name.removesuffix(".gguf")
    fingerprint = model_fingerprint(cfg)
    journal_path = cfg.output.with_name(cfg.output.stem + ".journal.jsonl")
    if cfg.overwrite:
        journal_path.unlink(missing_ok=True)
    saved = journal.read_journal(journal_path, JournaledAnswer)
    if saved.skipped:
        log(saved.describe(journal_path))
    done = {key: row for key, row in saved.rows.items() if row["fingerprint"] == fingerprint}
    work = []
    for index, q in enumerate(questions):
        key = json.dumps(q["question_id"])
        if key not in done:
            work.append(
                {"id": key, "index": index, "question_id": q["question_id"], "text": q["text"]}
            )
    log(
        f"{len(questions)} questions, {len(questions) - len(work)} answered before, "
        f"{len(work)} to generate with {model_id} (min_revisions {cfg.min_revisions}, "
        f"max_revisions {cfg.max_revisions}, max_new_tokens {cfg.max_new_tokens})"
    )
    started = time.monotonic()
    failed: dict[str, str] = {}
    if work:
        generate_answers(cfg, work, journal_path, fingerprint, done, failed)
    rows = [
        answer_row(done[key], cfg, model_id, fingerprint)
        for q in questions
        if (key := json.dumps(q["question_id"])) in done
    ]
    write_jsonl(cfg.output, rows)
    summary = _summary(rows, len(questions), failed, time.monotonic() - started, cfg)
    summary["generated"] = len(work) - len(failed)
    summary["journal_skipped"] = {"unreadable": saved.unreadable, "invalid": saved.invalid}
    (cfg.output.with_name(cfg.output.stem + ".summary.json")).write_text(
        json.dumps(summary, indent=2) + "\n"
    )
    inputs = {"questions": cfg.questions} | (
        {} if cfg.base_url else {"model": Path(str(cfg.model))}
    )
    lineage.write_manifest(
        cfg.output.with_name(cfg.output.stem + ".manifest.json"), "infer", inputs,
        summary["config"], {"answers": cfg.output},
        {k: summary[k] for k in ("answers", "revisions", "forced_rewrites", "tokens")},
        summary["seconds"],
    )  # fmt: skip
    log(
        f"answers: {cfg.output} ({len(rows)} of {len(questions)}); revisions "
        f"{summary['revisions']}; finish reasons {summary['finish_reasons']}"
    )
    if failed:
        first = next(iter(failed.items()))
        log(
            f"{len(failed)} questions failed (first: question {first[0]}: {first[1]}); "
            "re-run the same command to try them again"
        )
    return summary


def generate_answers(
    cfg: InferConfig,
    work: list[dict[str, Any]],
    journal_path: Path,
    fingerprint: str,
    done: dict[str, dict[str, Any]],
    failed: dict[str, str],
    stage: str = "infer",
) -> None:
    """Generate ``work`` (rows with ``id``, ``index``, ``question_id``, ``text``, and
    optionally their own ``settings`` and ``fingerprint``) on model actors; every answer is
    journaled at once and put in ``done`` under its id; failures go to ``failed``."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from selfee.ray_runtime import ray_runtime

    with journal.Journal(journal_path) as saved, ray_runtime(cfg.ray):
        DataContext.get_current().enable_progress_bars = False
        items = [{"question": json.dumps(w)} for w in work]
        dataset = ray.data.from_items(
            items, override_num_blocks=math.ceil(len(items) / cfg.batch_size)
        )
        actors = min(cfg.concurrency, math.ceil(len(items) / cfg.batch_size))
        dataset = dataset.map_batches(
            InferWorker,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=cfg.batch_size,
            compute=ActorPoolStrategy(size=actors),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor or None,
        )
        tally = _Tally(len(work))
        try:
            with progress_bar(stage, "questions", len(work), "q") as bar:
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    for text in batch["row"]:
                        row = json.loads(text)
                        tally.finished += 1
                        if "error" in row:
                            failed[str(row["question_id"])] = row["error"]
                            continue
                        row.setdefault("fingerprint", fingerprint)
                        saved.write(row)
                        done[row["id"]] = row
                        tally.tokens += row["result"]["tokens"]
                        metrics.record_chain(stage, row["result"])
                    bar.update(len(batch["row"]))
                    bar.set_postfix_str(f"{tally.rate():,.0f} tokens/s", refresh=False)
                    if time.monotonic() - tally.last_line >= cfg.progress_interval_s:
                        detail(f"[{stage}] {tally.line()}")
                        metrics.record("selfee_tokens_per_second", tally.rate(), stage=stage)
                        tally.last_line = time.monotonic()
        except KeyboardInterrupt:
            log(f"interrupted: {tally.finished} answers of this run are saved; re-run to continue")
            raise
        detail(f"[{stage}] {tally.line()}")


@dataclass
class _Tally:
    """Progress of a generation run: for the bar, the periodic lines and the metrics."""

    total: int
    finished: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    last_line: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.tokens / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        return _progress(self.finished, self.total, self.tokens, time.monotonic() - self.started)


def _progress(finished: int, total: int, tokens: int, seconds: float) -> str:
    return (
        f"questions {finished}/{total} ({100 * finished / total:.0f}%) · tokens {tokens:,} "
        f"({tokens / max(seconds, 1e-9):,.0f}/s) · elapsed {format_duration(seconds)} · "
        f"ETA {format_eta(seconds, finished, total)}"
    )


def _summary(
    rows: list[dict[str, Any]], total: int, failed: dict[str, str], seconds: float, cfg: InferConfig
) -> dict[str, Any]:
    meta = [r["metadata"] for r in rows]
    return {
        "answers": len(rows),
        "questions": total,
        "failed": failed,
        "revisions": {  # how many answers have k revisions (JSON keys are strings)
            str(k): n for k, n in sorted(collections.Counter(m["revisions"] for m in meta).items())
        },
        "forced_rewrites": sum(m["forced_rewrites"] for m in meta),
        "finish_reasons": dict(collections.Counter(m["finish_reason"] for m in meta)),
        "tokens": sum(m["tokens"] for m in meta),
        "seconds": round(seconds, 2),
        "output": str(cfg.output),
        "config": dump_config(cfg),
    }
