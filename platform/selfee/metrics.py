"""Metrics for the Ray dashboard: what each stage is doing, as Prometheus series.

Recorded with ``ray.util.metrics`` wherever the work happens (the job's driver, a Serve
replica, a Ray Train worker); every node exports them on its metrics port, the dashboard's
Metrics view shows them once Prometheus and Grafana are set up (``ray metrics
launch-prometheus``; README: "Watching a run"). Ray prefixes each name with ``ray_`` and
counters end in ``_total`` (``selfee_llm_requests`` → ``ray_selfee_llm_requests_total``).
Outside Ray (a plain script) recording does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    kind: Kind
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


# Every metric the platform exports (the README lists them from here).
METRICS: dict[str, MetricSpec] = {
    # augment and judge: calls to the teacher / judge LLM
    "selfee_llm_requests": MetricSpec(
        "counter", "HTTP requests sent to the LLM, retries included", ("stage",)
    ),
    "selfee_llm_rate_limited": MetricSpec("counter", "requests answered 429", ("stage",)),
    "selfee_llm_retries": MetricSpec("counter", "requests sent again after a failure", ("stage",)),
    "selfee_llm_tokens": MetricSpec("counter", "tokens the LLM reported", ("stage", "kind")),
    "selfee_llm_cost_usd": MetricSpec("counter", "cost at the configured prices", ("stage",)),
    "selfee_rows": MetricSpec("counter", "rows finished", ("stage", "outcome")),
    # infer, eval and serve: chains under revision control
    # (model: the answers' model_id; on Serve, the name a request asked for)
    "selfee_chains": MetricSpec("counter", "chains finished", ("stage", "model", "finish_reason")),
    "selfee_revisions": MetricSpec("counter", "revisions written", ("stage", "model")),
    "selfee_forced_rewrites": MetricSpec(
        "counter", "revisions forced by min_revisions", ("stage", "model")
    ),
    "selfee_generated_tokens": MetricSpec("counter", "tokens generated", ("stage", "model")),
    "selfee_tokens_per_second": MetricSpec(
        "gauge", "generated tokens per second, latest", ("stage", "model")
    ),
    "selfee_time_to_first_token_seconds": MetricSpec(
        "histogram",
        "from a request's arrival to its first generated text",
        ("stage", "model"),
        (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    ),
    # train
    "selfee_train_loss": MetricSpec("gauge", "training loss at the latest step", ("run",)),
    "selfee_train_tokens_per_second": MetricSpec("gauge", "training tokens per second", ("run",)),
    "selfee_train_step": MetricSpec("gauge", "optimizer steps done", ("run",)),
}

_made: dict[str, Any] = {}


def _metric(name: str) -> Any | None:
    import ray

    if not ray.is_initialized():
        return None
    if name not in _made:
        from ray.util import metrics

        spec = METRICS[name]
        if spec.kind == "counter":
            _made[name] = metrics.Counter(name, spec.description, spec.tags)
        elif spec.kind == "gauge":
            _made[name] = metrics.Gauge(name, spec.description, spec.tags)
        else:
            _made[name] = metrics.Histogram(name, spec.description, list(spec.boundaries),
                                            spec.tags)  # fmt: skip
    return _made[name]


def record(name: str, value: float = 1.0, **tags: str) -> None:
    """Count (counter), set (gauge) or observe (histogram) ``value`` for ``name``."""
    spec = METRICS[name]
    if set(tags) != set(spec.tags):
        raise ValueError(f"{name} takes tags {spec.tags}, got {tuple(tags)}")
    if spec.kind == "counter" and value <= 0:
        return
    metric = _metric(name)
    if metric is None:
        return
    tags = {k: str(v) for k, v in tags.items()}
    if spec.kind == "counter":
        metric.inc(value, tags=tags)
    elif spec.kind == "gauge":
        metric.set(value, tags=tags)
    else:
        metric.observe(value, tags=tags)


def record_llm_row(stage: str, usage: dict[str, Any], error: bool, cost: float) -> None:
    """One row of an LLM job (augment, judge) finished."""
    record("selfee_rows", 1, stage=stage, outcome="failed" if error else "done")
    record("selfee_llm_requests", usage.get("requests", 0), stage=stage)
    record("selfee_llm_rate_limited", usage.get("rate_limited", 0), stage=stage)
    record("selfee_llm_retries", usage.get("retries", 0), stage=stage)
    record("selfee_llm_tokens", usage.get("prompt_tokens", 0), stage=stage, kind="prompt")
    record("selfee_llm_tokens", usage.get("completion_tokens", 0), stage=stage, kind="completion")
    record("selfee_llm_cost_usd", cost, stage=stage)


def record_chain(stage: str, model: str, result: dict[str, Any]) -> None:
    """One chain (a ``RevisionResult.summary()``) of ``model`` finished."""
    record("selfee_chains", 1, stage=stage, model=model,
           finish_reason=result.get("finish_reason", "unknown"))  # fmt: skip
    record("selfee_revisions", result.get("revisions", 0), stage=stage, model=model)
    record("selfee_forced_rewrites", result.get("forced_rewrites", 0), stage=stage, model=model)
    record("selfee_generated_tokens", result.get("tokens", 0), stage=stage, model=model)
