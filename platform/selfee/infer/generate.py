"""Generating answers on model actors: one engine per Ray Data actor, every answer
journaled on the driver as it arrives (``selfee.driver.drain``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfee import journal, metrics
from selfee.chain import render_prompt
from selfee.driver import drain
from selfee.engines import engine_name, load_engine
from selfee.errors import ConfigError
from selfee.infer.answers import result_fields, revision_settings
from selfee.infer.config import InferConfig
from selfee.llm import Secret
from selfee.llm_job import ResolvedEndpoint, preflight
from selfee.progress import format_duration, format_eta
from selfee.ratelimit import LimitError, WorkerShare, split_limits
from selfee.revision import RevisionSettings, generate_batch


def log(message: str) -> None:
    print(f"[infer] {message}", flush=True)


def endpoint_key(cfg: InferConfig) -> Secret:
    return Secret(os.environ.get(cfg.api_key_env, "") or "EMPTY")


def endpoint_share(cfg: InferConfig, actors: int) -> WorkerShare:
    """Each actor's part of the job's requests per minute, after a check that the endpoint
    answers and takes the key (one line, before any actor starts)."""
    assert cfg.base_url is not None
    endpoint = ResolvedEndpoint(cfg.base_url, str(cfg.model), endpoint_key(cfg), offline=False)
    for warning in asyncio.run(preflight(endpoint)):
        log(f"warning: {warning}")
    try:
        return split_limits(cfg.rpm, None, actors, 1)
    except LimitError as e:
        raise ConfigError(f"{e} (concurrency is the number of actors)") from None


class InferWorker:
    """One Ray Data actor: one engine (a model copy, or an endpoint client)."""

    def __init__(self, cfg: InferConfig, share: WorkerShare | None = None) -> None:
        self.cfg = cfg
        if cfg.base_url:
            from selfee.engines.completions_api import CompletionsAPIEngine

            self.engine: Any = CompletionsAPIEngine(
                cfg.base_url, str(cfg.model), endpoint_key(cfg), concurrency=cfg.batch_size,
                share=share, retry=cfg.retry,
            )  # fmt: skip
            self.where = f"endpoint {cfg.base_url}"
        else:
            import torch

            threads = max(1, int(cfg.cpus_per_actor))
            torch.set_num_threads(threads)
            self.engine = load_engine(str(cfg.model), cfg.engine, cfg.device, cfg.dtype, threads,
                                      cfg.gpus_per_actor, cfg.vllm, cfg.adapters)  # fmt: skip
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
            [render_prompt(q["text"], q.get("input") or "") for q in questions],
            [
                RevisionSettings(**q["settings"])
                if "settings" in q  # set per question (eval)
                else revision_settings(self.cfg, seed_offset=q["index"])
                for q in questions
            ],
            [q.get("adapter") for q in questions],
        )
        seconds = time.monotonic() - started
        return [
            {**q, "result": result_fields(r), "latency_s": seconds, "device": self.where}
            for q, r in zip(questions, results, strict=True)
        ]


@dataclass
class AnswerSink:
    """Where one model's answers go as they arrive: its journal, and the answers by id."""

    journal: Path
    fingerprint: str
    model_id: str
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    generated: int = 0


def generate_answers(
    cfg: InferConfig,
    work: list[dict[str, Any]],
    sinks: Mapping[str | None, AnswerSink],
    stage: str = "infer",
) -> None:
    """Generate ``work`` (rows with ``id``, ``index``, ``question_id``, ``text``, and
    optionally their own ``settings``, ``fingerprint`` and ``adapter``) on model actors.
    A row's answer goes to the sink of its adapter (None: the model's), journaled at once
    and put in its ``done`` under the row's id; a failure goes to its ``failed``."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from selfee.ray_runtime import ray_runtime

    actors = min(cfg.concurrency, math.ceil(len(work) / cfg.batch_size))
    share = endpoint_share(cfg, actors) if cfg.base_url else None
    with contextlib.ExitStack() as stack, ray_runtime(cfg.ray):
        journals = {a: stack.enter_context(journal.Journal(s.journal)) for a, s in sinks.items()}
        DataContext.get_current().enable_progress_bars = False
        items = [{"question": json.dumps(w)} for w in work]
        dataset = ray.data.from_items(
            items, override_num_blocks=math.ceil(len(items) / cfg.batch_size)
        )
        dataset = dataset.map_batches(
            InferWorker,
            fn_constructor_kwargs={"cfg": cfg, "share": share},
            batch_size=cfg.batch_size,
            compute=ActorPoolStrategy(size=actors),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor or None,
        )
        tally = _Tally(len(work), stage, cfg.answer_model_id())

        def on_row(row: dict[str, Any]) -> bool:
            tally.finished += 1
            sink = sinks[row.get("adapter")]
            if "error" in row:
                sink.failed[str(row["question_id"])] = row["error"]
                return False
            row.setdefault("fingerprint", sink.fingerprint)
            journals[row.get("adapter")].write(row)
            sink.done[row["id"]] = row
            sink.generated += 1
            tally.tokens += row["result"]["tokens"]
            metrics.record_chain(stage, sink.model_id, row["result"])
            return False

        drain(dataset, stage, "questions", "answer", len(work), on_row, tally.line,
              lambda: f"{tally.rate():,.0f} tokens/s", cfg.progress_interval_s, log)  # fmt: skip


@dataclass
class _Tally:
    """Progress of a generation run: for the bar, the periodic lines and the metrics."""

    total: int
    stage: str
    model: str
    finished: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.tokens / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        """The status line (every ``progress_interval_s``), with the tokens/s metric."""
        metrics.record("selfee_tokens_per_second", self.rate(), stage=self.stage, model=self.model)
        return _progress(self.finished, self.total, self.tokens, time.monotonic() - self.started)


def _progress(finished: int, total: int, tokens: int, seconds: float) -> str:
    return (
        f"questions {finished}/{total} ({100 * finished / total:.0f}%) · tokens {tokens:,} "
        f"({tokens / max(seconds, 1e-9):,.0f}/s) · elapsed {format_duration(seconds)} · "
        f"ETA {format_eta(seconds, finished, total)}"
    )
