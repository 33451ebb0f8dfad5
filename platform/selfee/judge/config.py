"""``selfee judge`` and ``selfee report`` settings: pairwise reviews and their tables."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from selfee.config import StageConfig
from selfee.llm_config import LLMJobConfig


class JudgeConfig(LLMJobConfig):
    """Pairwise judging of two answer files, in both orders (SelFee / Vicuna evaluation)."""

    renamed: ClassVar[dict[str, str]] = {**LLMJobConfig.renamed, "out_dir": "output"}

    questions: Path | None = Field(
        None, description="questions (question.jsonl format, or Instruction rows: collect)"
    )
    answers: list[Path] = Field(
        default_factory=list, description="exactly two answer files: A.jsonl B.jsonl"
    )
    output: Path = Field(Path("outputs/judge"), description="reviews, cache and report")
    prompts: Path | None = Field(
        None, description="upstream prompt.jsonl (with --reviewers): reproduce that setting"
    )
    reviewers: Path | None = Field(None, description="upstream reviewer.jsonl (with --prompts)")
    unparsed_retries: int = Field(
        2, ge=0, le=10, description="ask again this often when no score can be read"
    )
    temperature: float = Field(0.2, ge=0, le=2, description="judge sampling temperature")
    max_context: int = Field(
        8192, ge=256, description="the judge's context window (prompt + reply)"
    )

    @model_validator(mode="after")
    def _pairs(self) -> JudgeConfig:
        if (self.prompts is None) != (self.reviewers is None):
            raise ValueError("give both --prompts and --reviewers (upstream files), or neither")
        return self

    def missing(self) -> str | None:
        if self.questions is None or len(self.answers) != 2:
            return "give --questions Q.jsonl and --answers A.jsonl B.jsonl (two files)"
        return None


class ReportConfig(StageConfig):
    """Tables (and a plot) comparing models from their review files."""

    reviews: list[Path] = Field(
        default_factory=list, description="review files X_vs_Y.jsonl and Y_vs_X.jsonl (pairs)"
    )
    questions: Path | None = Field(None, description="questions, for per-category figures")
    answers: list[Path] = Field(
        default_factory=list, description="answer files, for answer lengths the reviews lack"
    )
    model_a: str | None = Field(None, description="which model is A (default: first named)")
    model_b: str | None = Field(None, description="which model is B")
    print_json: bool = Field(
        False,
        description="print one JSON object instead of tables",
        json_schema_extra={"cli_aliases": ["--json"]},
    )
    plot: Path | None = Field(
        None, description="write per-category bars, win/tie/loss and win rates with their "
        "intervals here (.png)",
    )  # fmt: skip
    bootstrap: int = Field(2000, ge=100, le=100000, description="bootstrap resamples for CIs")

    def missing(self) -> str | None:
        if not self.reviews:
            return "give the review files: --reviews D/A_vs_B.jsonl D/B_vs_A.jsonl"
        return None
