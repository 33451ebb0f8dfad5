"""Answers: the journal's rows, what decides them (the fingerprint), and the answer file's
rows (SelFee/FastChat format) and summary."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, NonNegativeInt

from selfee.engines import engine_for
from selfee.infer.config import InferConfig
from selfee.revision import RevisionResult, RevisionSettings

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


def result_fields(result: RevisionResult) -> dict[str, Any]:
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


def summarize(
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
        "output": str(cfg.answer_file()),
    }
