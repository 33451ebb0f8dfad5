"""What needs the whole picture, deterministically: FLAN's per-task cap, per-source
sampling and caps, global de-duplication, and the counts of what was dropped and why."""

from __future__ import annotations

import collections
import json
from typing import Any

from selfee.collect import filters
from selfee.collect.config import CollectConfig
from selfee.config import dump_config
from selfee.records import stable_fraction


class CollectError(ValueError):
    pass


def chosen_positions(
    rows: list[dict[str, Any]], positions: list[int], keep: int, seed: int, salt: str
) -> list[int]:
    """``keep`` of ``positions``, chosen by a seeded hash of each row's id (so the same rows
    for the same seed, whatever the input order); rows with equal ids count one by one."""
    ranked = sorted(positions, key=lambda i: (stable_fraction(seed, salt, rows[i]["id"]), i))
    return ranked[:keep]


def select(rows: list[dict[str, Any]], keep: int, seed: int, salt: str) -> list[dict[str, Any]]:
    """A deterministic sample of ``keep`` rows, in their original order."""
    chosen = set(chosen_positions(rows, list(range(len(rows))), keep, seed, salt))
    return [row for i, row in enumerate(rows) if i in chosen]


def finish(
    results: list[dict[str, Any]], cfg: CollectConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Counts, bad-row policy, caps, sampling and de-duplication over all shaped rows."""
    per_source: dict[str, dict[str, Any]] = {
        spec.name: {"rows_in": 0, "rows_out": 0, "dropped": collections.Counter()}
        for spec in cfg.sources
    }
    bad_rows: list[str] = []
    by_order: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in results:
        stats = per_source[row["source"]]
        stats["rows_in"] += 1
        if row["status"] == "bad":
            if not cfg.skip_bad_rows:
                raise CollectError(
                    f"malformed input: {row['reason']} (set skip_bad_rows to count and skip such rows)"
                )
            bad_rows.append(row["reason"])
            stats["dropped"]["malformed"] += 1
        elif row["status"] == "skip":
            stats["dropped"][row["reason"]] += 1
        else:
            by_order[row["order"]].append(json.loads(row["record"]))

    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    for order, spec in enumerate(cfg.sources):
        rows = by_order.get(order, [])
        stats = per_source[spec.name]
        if spec.name == "flan":
            rows = _cap_per_task(rows, cfg.flan_per_task, cfg.seed, stats["dropped"])
        if spec.fraction < 1:
            n = len(rows)
            rows = select(rows, round(n * spec.fraction), cfg.seed, f"fraction:{order}")
            _count(stats["dropped"], "sampled out", n - len(rows))
        if spec.cap is not None and len(rows) > spec.cap:
            stats["dropped"]["over cap"] += len(rows) - spec.cap
            rows = select(rows, spec.cap, cfg.seed, f"cap:{order}")
        for row in rows:
            key = filters.normalize_for_dedup(row["instruction"] + "\n" + row["input"])
            if cfg.dedup and key in seen:
                stats["dropped"]["duplicate"] += 1
                continue
            seen.add(key)
            kept.append(row)
            stats["rows_out"] += 1

    summary = {
        "rows_in": sum(s["rows_in"] for s in per_source.values()),
        "rows_out": len(kept),
        "sources": {name: {**s, "dropped": dict(s["dropped"])} for name, s in per_source.items()},
        "malformed_rows": bad_rows[:100],
        "config": dump_config(cfg),
    }
    return kept, summary


def _cap_per_task(
    rows: list[dict[str, Any]], per_task: int, seed: int, dropped: collections.Counter
) -> list[dict[str, Any]]:
    tasks: dict[str, list[int]] = collections.defaultdict(list)
    for i, row in enumerate(rows):
        tasks[row["meta"]["task"]].append(i)
    keep: set[int] = set()
    for task, positions in tasks.items():
        keep.update(chosen_positions(rows, positions, per_task, seed, f"flan:{task}"))
    _count(dropped, "per-task cap", len(rows) - len(keep))
    return [row for i, row in enumerate(rows) if i in keep]


def _count(dropped: collections.Counter, reason: str, n: int) -> None:
    if n:
        dropped[reason] += n
