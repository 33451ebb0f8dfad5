"""The augmentation job: Instruction rows → Chain rows, fanned out with Ray Data.

A fixed pool of Ray Data actors runs ``augment_record`` for many rows at once (asyncio inside
each actor); each actor keeps 1/N of the job's rate limits (``selfee.ratelimit`` explains
why). The driver is the only writer: it appends every finished row to the journal, prints
progress, and at the end rebuilds ``chains.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

from selfee.augment import journal
from selfee.augment.loop import LoopSettings, augment_record
from selfee.config import AugmentConfig, ConfigError, LLMJobConfig, dump_config
from selfee.llm import (
    OFFLINE_KEY,
    EndpointRejected,
    Secret,
    TeacherCall,
)
from selfee.progress import Progress, format_duration
from selfee.ratelimit import LimitError, RateLimiter, WorkerShare, split_limits, workers_for
from selfee.records import instruction_id, read_rows

OPENAI_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
ROWS_PER_BLOCK = 8


def log(message: str) -> None:
    print(f"[augment] {message}", flush=True)


# --- endpoint ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ResolvedEndpoint:
    base_url: str
    model: str
    secret: Secret
    offline: bool


@contextmanager
def resolve_endpoint(
    cfg: LLMJobConfig, say: Any = log, cluster: bool = False
) -> Iterator[ResolvedEndpoint]:
    """The configured endpoint; OpenAI when only a key is set; else an offline teacher that
    runs for the duration of the ``with`` block (reachable from the cluster when ``cluster``)."""
    key = os.environ.get(cfg.api_key_env, "")
    if cfg.base_url:
        if not cfg.model:
            raise ConfigError("model is required with base_url (e.g. --model gpt-4o-mini)")
        if not key:
            say(f"no API key in ${cfg.api_key_env}: sending requests without one")
        yield ResolvedEndpoint(cfg.base_url, cfg.model, Secret(key or OFFLINE_KEY), False)
        return
    if key:
        model = cfg.model or OPENAI_DEFAULT_MODEL
        say(f"using the OpenAI API ({model}) with the key in ${cfg.api_key_env}")
        yield ResolvedEndpoint(OPENAI_URL, model, Secret(key), False)
        return
    from selfee.teacher.server import BANNER, TeacherThread

    host = "0.0.0.0" if cluster else "127.0.0.1"
    with TeacherThread(cfg.teacher.model_copy(update={"host": host, "port": 0})) as teacher:
        url = teacher.base_url
        if cluster:
            import ray.util

            url = f"http://{ray.util.get_node_ip_address()}:{teacher.port}/v1"
        say(f"*** no endpoint and no ${cfg.api_key_env}: {BANNER}")
        say(f"*** offline teacher at {url}")
        yield ResolvedEndpoint(url, cfg.teacher.model, Secret(OFFLINE_KEY), True)


async def preflight(endpoint: ResolvedEndpoint, timeout_s: float = 30.0) -> list[str]:
    """Fail fast on a wrong URL or key, before any row is attempted. Returns warnings."""
    client = openai.AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.secret.reveal(),
        timeout=timeout_s,
        max_retries=1,
    )
    try:
        listed = await client.models.list()
        ids = [m.id for m in listed.data]
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise ConfigError(
            f"{endpoint.base_url} rejected the API key (HTTP {e.status_code}): "
            f"{endpoint.secret.redact(e.message)}"
        ) from None
    except openai.APIConnectionError:
        raise ConfigError(f"cannot reach {endpoint.base_url}: is the URL right?") from None
    except (openai.APIStatusError, ValueError):
        return []  # servers without /models are fine
    finally:
        await client.close()
    if ids and endpoint.model not in ids and not endpoint.offline:
        return [f"model '{endpoint.model}' is not among the {len(ids)} models the endpoint lists"]
    return []


# --- the Ray worker --------------------------------------------------------------------


class AugmentWorker:
    """One Ray Data actor: its share of the limits, one HTTP client, many rows in flight."""

    def __init__(
        self,
        endpoint: ResolvedEndpoint,
        share: WorkerShare,
        cfg: AugmentConfig,
        slots: int,
    ) -> None:
        self.endpoint = endpoint
        self.share = share
        self.cfg = cfg
        self.slots_n = slots
        self.base = LoopSettings(
            max_iterations=cfg.max_iterations,
            prompt_budget=cfg.context_tokens - cfg.max_tokens,
            prompts=cfg.prompts,
        )
        self._ready = False

    def _start(self) -> None:
        """Built on first use, inside the event loop that Ray Data runs us on."""
        self.client = openai.AsyncOpenAI(
            base_url=self.endpoint.base_url,
            api_key=self.endpoint.secret.reveal(),
            timeout=self.cfg.retry.timeout_s,
            max_retries=0,
        )
        self.limiter = RateLimiter(self.share)
        self.slots = asyncio.Semaphore(self.slots_n)
        self._ready = True

    def settings_for(self, dataset: str) -> LoopSettings:
        return dataclasses.replace(
            self.base,
            use_gold=dataset in self.cfg.gold_datasets,
            reuse_answer=dataset in self.cfg.reuse_answer_datasets,
        )

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        if not self._ready:
            self._start()
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        chains = await asyncio.gather(*(self.one(row) for row in rows))
        return {"id": [c["id"] for c in chains], "chain": [json.dumps(c) for c in chains]}

    async def one(self, record: dict[str, Any]) -> dict[str, Any]:
        async with self.slots:
            call = TeacherCall(
                self.client,
                self.endpoint.model,
                self.limiter,
                self.endpoint.secret,
                policy=self.cfg.retry,
                max_tokens=self.cfg.max_tokens,
                temperature=self.cfg.temperature,
            )
            try:
                chain = await augment_record(
                    call.chat, record, self.settings_for(record["dataset"])
                )
            except EndpointRejected as e:  # the job stops; this row is not done
                return {"id": record["id"], "fatal": str(e)}
            chain["usage"] = call.usage.as_dict()
            return chain


# --- the job ---------------------------------------------------------------------------


def read_instructions(path: Path, limit: int | None) -> list[dict[str, str]]:
    """Instruction rows with an id each (computed when missing), each id once."""
    try:
        rows = read_rows(path)
    except FileNotFoundError:
        raise ConfigError(f"input file {path} does not exist") from None
    seen: set[str] = set()
    records = []
    repeats = 0
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise ConfigError(f"{path}: row {n} has no 'instruction' text")
        dataset, input_ = str(row.get("dataset") or ""), str(row.get("input") or "")
        key = str(row.get("id") or instruction_id(dataset, row["instruction"], input_))
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        records.append({
            "id": key,
            "dataset": dataset,
            "instruction": row["instruction"],
            "input": input_,
            "output": str(row.get("output") or ""),
        })  # fmt: skip
        if limit is not None and len(records) >= limit:
            break
    if repeats:
        log(f"{repeats} input rows repeat an earlier id: each id is run once")
    return records


def run_settings(cfg: AugmentConfig, model: str) -> dict[str, Any]:
    """What makes two runs' chains comparable; a resumed run must match it."""
    return {
        "model": model,
        "max_iterations": cfg.max_iterations,
        "max_tokens": cfg.max_tokens,
        "context_tokens": cfg.context_tokens,
        "temperature": cfg.temperature,
        "gold_datasets": sorted(cfg.gold_datasets),
        "reuse_answer_datasets": sorted(cfg.reuse_answer_datasets),
        "prompts": dump_config(cfg.prompts),
    }


def run_augment(cfg: AugmentConfig) -> dict[str, Any]:
    if cfg.input is None:
        raise ConfigError("give the instructions to augment: --input FILE (.parquet or .jsonl)")
    inputs = read_instructions(cfg.input, cfg.limit)
    if not inputs:
        raise ConfigError(f"{cfg.input} holds no instructions")
    out = Path(cfg.output)
    from selfee.ray_runtime import ray_runtime

    cluster = cfg.ray.address is not None or "RAY_ADDRESS" in os.environ  # ray job submit
    with resolve_endpoint(cfg, cluster=cluster) as ep:
        journal.check_settings(out, run_settings(cfg, ep.model), cfg.overwrite)
        done, bad_lines = journal.read_journal(out / journal.JOURNAL)
        if bad_lines:
            log(f"skipped {bad_lines} unreadable journal lines (a crash mid-write)")
        todo = journal.pending(inputs, done, cfg.retry_errors)
        previous = sum(1 for row in inputs if row["id"] in done)
        if previous:
            errors = sum(1 for row in inputs if row["id"] in done and done[row["id"]]["error"])
            log(
                f"resuming: {previous} of {len(inputs)} rows already done ({errors} with "
                f"errors{', re-running them' if cfg.retry_errors else ''})"
            )
        started = time.monotonic()
        progress = Progress(total=len(todo), prices=cfg.prices)
        fatal = None
        if todo:
            for warning in asyncio.run(preflight(ep)):
                log(f"warning: {warning}")
            with ray_runtime(cfg.ray):
                fatal = _fan_out(cfg, ep, todo, out, done, progress)
        rows = journal.finalize(out, inputs, done)
    summary = summarize(rows, cfg)
    summary["run"] = {
        "rows_run": progress.done,
        "seconds": round(time.monotonic() - started, 1),
        "requests": progress.requests,
        "requests_per_minute": round(progress.requests / max(progress.elapsed_s, 1e-9) * 60, 1),
        "endpoint": ep.base_url,
        "model": ep.model,
        "offline_teacher": ep.offline,
    }
    summary["config"] = dump_config(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, out)
    if fatal:
        raise ConfigError(f"the endpoint refused the job: {fatal}; fix it and re-run to continue")
    return summary


def _fan_out(
    cfg: AugmentConfig,
    ep: ResolvedEndpoint,
    todo: list[dict[str, str]],
    out: Path,
    done: dict[str, dict[str, Any]],
    progress: Progress,
) -> str | None:
    """Run ``todo`` on Ray Data; every finished row goes to the journal and ``done``."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    blocks = math.ceil(len(todo) / ROWS_PER_BLOCK)
    workers = min(workers_for(cfg.rpm, cfg.workers), blocks)
    if workers < cfg.workers:
        log(f"using {workers} workers (rpm {cfg.rpm}, {len(todo)} rows)")
    try:
        share = split_limits(cfg.rpm, cfg.tpm, workers, cfg.context_tokens)
    except LimitError as e:
        raise ConfigError(str(e)) from None
    slots = max(1, math.ceil(cfg.concurrency / workers))
    calls = max(2, math.ceil(2 * slots / ROWS_PER_BLOCK))
    DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
        AugmentWorker,
        fn_constructor_kwargs={"endpoint": ep, "share": share, "cfg": cfg, "slots": slots},
        batch_size=None,
        compute=ActorPoolStrategy(
            size=workers, max_tasks_in_flight_per_actor=calls, max_concurrent_calls_per_actor=calls
        ),
        num_cpus=cfg.worker_cpus,
    )
    limits = ", ".join(
        f"{name} {value}" for name, value in (("rpm", cfg.rpm), ("tpm", cfg.tpm)) if value
    )
    log(
        f"{len(todo)} rows to run on {workers} workers x {slots} rows in flight "
        f"({limits or 'no rate limits'}) -> {out}"
    )
    last_print = progress.started = time.monotonic()
    fatal = None
    with journal.Journal(out / journal.JOURNAL) as jrnl:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for text in batch["chain"]:
                    row = json.loads(text)
                    if "fatal" in row:
                        fatal = fatal or row["fatal"]
                        continue
                    jrnl.write(row)
                    done[row["id"]] = row
                    progress.add(row["usage"], bool(row["error"]))
                if fatal:
                    break
                if time.monotonic() - last_print >= cfg.progress_interval_s:
                    log(progress.line())
                    last_print = time.monotonic()
        except KeyboardInterrupt:
            log(f"interrupted: {progress.done} rows of this run are saved; re-run to continue")
            raise
    log(progress.line())
    return fatal


# --- summary ---------------------------------------------------------------------------


def error_kind(error: str) -> str:
    return error.split(":", 1)[0].strip() or "error"


def summarize(rows: list[dict[str, Any]], cfg: AugmentConfig) -> dict[str, Any]:
    usage = collections.Counter()
    for row in rows:
        usage.update(row.get("usage") or {})
    errors = collections.Counter(error_kind(r["error"]) for r in rows if r.get("error"))
    return {
        "rows": len(rows),
        "complete": sum(1 for r in rows if not r.get("error")),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors.most_common()),
        "iterations": dict(sorted(collections.Counter(r["iteration"] for r in rows).items())),
        "stop_reasons": dict(collections.Counter(r.get("stop_reason") for r in rows)),
        "context_truncated": sum(1 for r in rows if r.get("iteration_truncated")),
        "usage": dict(usage),
        "cost_usd": round(cfg.prices.cost(usage["prompt_tokens"], usage["completion_tokens"]), 4),
    }


def print_summary(summary: dict[str, Any], out: Path) -> None:
    run = summary["run"]
    log(
        f"done: {summary['rows']} chains ({summary['complete']} complete, "
        f"{summary['errors']} with errors) in {out / journal.CHAINS}"
    )
    log(
        f"this run: {run['rows_run']} rows, {run['requests']} requests "
        f"({run['requests_per_minute']}/min) in {format_duration(run['seconds'])}"
    )
    log(f"outputs per chain (answer + revisions): {summary['iterations']}")
    log(f"why chains stopped: {summary['stop_reasons']}")
    if summary["errors"]:
        log(f"errors: {summary['errors_by_kind']} (re-run with --retry-errors to retry them)")
    if summary["context_truncated"]:
        log(f"chains whose prompts were cut to fit the context: {summary['context_truncated']}")
    usage = summary["usage"]
    cost = f", ~${summary['cost_usd']}" if summary["cost_usd"] else ""
    log(
        f"tokens: {usage.get('prompt_tokens', 0):,} prompt + "
        f"{usage.get('completion_tokens', 0):,} completion{cost}"
    )
    if run["offline_teacher"]:
        log("*** these chains come from the OFFLINE TEACHER: synthetic text, not real data")
    log(f"summary: {out / 'summary.json'}")
