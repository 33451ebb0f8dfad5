"""Progress of a job that calls an LLM per row: rows, requests, tokens, cost, ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from selfee import metrics
from selfee.llm_config import PricesConfig


@dataclass
class Progress:
    total: int
    prices: PricesConfig = field(default_factory=PricesConfig)
    stage: str = ""  # the metrics' stage label (selfee.metrics); empty: none recorded
    done: int = 0
    errors: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, usage: dict[str, Any], error: bool) -> None:
        self.done += 1
        self.errors += bool(error)
        self.requests += usage.get("requests", 0)
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.completion_tokens += usage.get("completion_tokens", 0)
        if self.stage:
            cost = self.prices.cost(
                usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            )
            metrics.record_llm_row(self.stage, usage, error, cost)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def cost(self) -> float:
        return self.prices.cost(self.prompt_tokens, self.completion_tokens)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def per_minute(self, count: int) -> float:
        return count / (max(self.elapsed_s, 1e-9) / 60)

    def short(self) -> str:
        """For a progress bar's postfix: what the bar itself does not show."""
        return (f"{self.errors} errors, {self.per_minute(self.requests):,.0f} req/min, "
                f"{self.tokens:,} tokens")  # fmt: skip

    def line(self) -> str:
        share = f"{100 * self.done / self.total:.0f}%" if self.total else "-"
        parts = [
            f"rows {self.done}/{self.total} ({share})",
            f"errors {self.errors}",
            f"requests {self.requests} ({self.per_minute(self.requests):.0f}/min)",
            f"tokens {self.tokens:,} ({self.per_minute(self.tokens):,.0f}/min)",
        ]
        if self.prices.prompt_per_million or self.prices.completion_per_million:
            parts.append(f"cost ${self.cost:,.4f}")
        parts.append(f"elapsed {format_duration(self.elapsed_s)}")
        parts.append(f"ETA {format_eta(self.elapsed_s, self.done, self.total)}")
        return " · ".join(parts)


def format_eta(elapsed_s: float, done: int, total: int) -> str:
    """The time left at the rate so far ("?" before anything is done)."""
    return format_duration(elapsed_s / done * (total - done)) if done else "?"


def format_duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
