"""The Ray shell shared by jobs that call an LLM per row (augment, judge).

``resolve_endpoint`` picks the endpoint (configured, OpenAI, or the offline teacher);
``preflight`` fails fast on a wrong URL or key; ``fan_out`` runs rows through a fixed pool of
Ray Data actors (``LLMWorker`` subclasses), each with its share of the job's rate limits
(``selfee.ratelimit`` explains why the split is static) and many rows in flight on asyncio.
The driver receives every finished row as soon as its block is done and hands it to
``on_finished`` (which journals it), through ``selfee.driver.drain`` as every fan-out does.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai

from selfee.driver import drain
from selfee.errors import ConfigError
from selfee.llm import OFFLINE_KEY, EndpointRejected, Secret, TeacherCall
from selfee.llm_config import LLMJobConfig
from selfee.progress import Progress
from selfee.ratelimit import LimitError, RateLimiter, WorkerShare, split_limits, workers_for

OPENAI_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
ROWS_PER_BLOCK = 8
FATAL = "fatal"  # a row that carries this key stops the job (the endpoint refuses us)

Say = Callable[[str], None]


@dataclass(frozen=True)
class ResolvedEndpoint:
    base_url: str
    model: str
    secret: Secret
    offline: bool


def in_cluster(cfg: LLMJobConfig) -> bool:
    """Workers may run on other machines (``ray.address`` set, or under ``ray job submit``)."""
    return cfg.ray.address is not None or "RAY_ADDRESS" in os.environ


@contextmanager
def resolve_endpoint(cfg: LLMJobConfig, say: Say) -> Iterator[ResolvedEndpoint]:
    """The configured endpoint; OpenAI when only a key is set; else an offline teacher that
    runs for the duration of the ``with`` block (reachable from the cluster's nodes)."""
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

    cluster = in_cluster(cfg)
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


class LLMWorker:
    """One Ray Data actor: its share of the limits, one HTTP client, many rows in flight.

    Subclasses say what one row is (``process``); rows arrive as blocks of a few rows and
    leave as one JSON string each.
    """

    def __init__(
        self, endpoint: ResolvedEndpoint, share: WorkerShare, cfg: LLMJobConfig, slots: int
    ) -> None:
        self.endpoint = endpoint
        self.share = share
        self.cfg = cfg
        self.slots_n = slots
        self._ready = False

    async def process(self, call: TeacherCall, record: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def call_settings(self, record: dict[str, Any]) -> dict[str, Any]:
        """Per-row overrides of ``TeacherCall`` settings (e.g. a reviewer's temperature)."""
        return {}

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

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        if not self._ready:
            self._start()
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        results = await asyncio.gather(*(self.one(row) for row in rows))
        return {"row": [json.dumps(r, ensure_ascii=False) for r in results]}

    async def one(self, record: dict[str, Any]) -> dict[str, Any]:
        async with self.slots:
            settings = {
                "policy": self.cfg.retry,
                "max_tokens": self.cfg.max_tokens,
                "temperature": self.cfg.temperature,
                **self.call_settings(record),
            }
            call = TeacherCall(
                self.client, self.endpoint.model, self.limiter, self.endpoint.secret, **settings
            )
            try:
                result = await self.process(call, record)
            except EndpointRejected as e:  # the job stops; this row is not done
                return {"id": record["id"], FATAL: str(e)}
            result["usage"] = call.usage.as_dict()
            return result


def fan_out(
    cfg: LLMJobConfig,
    endpoint: ResolvedEndpoint,
    todo: list[dict[str, Any]],
    worker: type[LLMWorker],
    on_finished: Callable[[dict[str, Any]], None],
    progress: Progress,
    say: Say,
    worker_kwargs: dict[str, Any] | None = None,
) -> str | None:
    """Run ``todo`` through ``worker`` actors; returns why the endpoint refused us, if it did."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    workers = min(workers_for(cfg.rpm, cfg.workers), len(todo))
    if workers < cfg.workers:
        say(f"using {workers} workers (rpm {cfg.rpm}, {len(todo)} rows)")
    try:
        share = split_limits(cfg.rpm, cfg.tpm, workers, cfg.max_context)
    except LimitError as e:
        raise ConfigError(str(e)) from None
    # Rows reach a worker in blocks, and a block's call ends with its slowest row: small
    # blocks keep the slots full; a few blocks held in reserve cover the stragglers; holding
    # little more than that keeps the work left at the end spread evenly over the workers
    # (a worker's unused share of the limits is not lent to the others).
    slots = max(1, math.ceil(cfg.concurrency / workers))
    block_rows = max(1, min(ROWS_PER_BLOCK, slots // 8))
    running = math.ceil(slots / block_rows)
    calls = running + max(1, math.ceil(running / 4))
    DataContext.get_current().enable_progress_bars = False
    kwargs = {"endpoint": endpoint, "share": share, "cfg": cfg, "slots": slots}
    dataset = ray.data.from_items(todo, override_num_blocks=math.ceil(len(todo) / block_rows))
    dataset = dataset.map_batches(
        worker,
        fn_constructor_kwargs={**kwargs, **(worker_kwargs or {})},
        batch_size=None,
        compute=ActorPoolStrategy(
            size=workers, max_tasks_in_flight_per_actor=calls, max_concurrent_calls_per_actor=calls
        ),
        num_cpus=cfg.worker_cpus,
    )
    limits = ", ".join(f"{k} {v}" for k, v in (("rpm", cfg.rpm), ("tpm", cfg.tpm)) if v)
    say(f"{len(todo)} rows on {workers} workers x {slots} in flight ({limits or 'no rate limits'})")
    progress.started = time.monotonic()
    fatal: list[str] = []

    def on_row(row: dict[str, Any]) -> bool:
        if FATAL in row:
            fatal.append(row[FATAL])
            return True
        on_finished(row)
        progress.add(row["usage"], bool(row.get("error")))
        return False

    drain(dataset, progress.stage or "llm", "rows", "row", len(todo), on_row, progress.line,
          progress.short, cfg.progress_interval_s, say)  # fmt: skip
    return fatal[0] if fatal else None
