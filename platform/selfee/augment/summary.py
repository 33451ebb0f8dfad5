"""What an augmentation run made: counts of chains, stops, errors, tokens and cost."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from selfee.augment.config import AugmentConfig
from selfee.augment.resume import CHAINS
from selfee.progress import format_duration


def log(message: str) -> None:
    print(f"[augment] {message}", flush=True)


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
        f"{summary['errors']} with errors) in {out / CHAINS}"
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
