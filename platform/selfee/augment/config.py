"""``selfee augment`` settings: the teacher's answer-critique-revise loop over instructions."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from selfee import prompts
from selfee.config import StageConfig
from selfee.llm_config import LLMJobConfig


class PromptsConfig(StageConfig):
    """The teacher prompts (the offline teacher understands only the defaults)."""

    critic_system: str = Field(prompts.CRITIC_SYSTEM, description="system message of the critic")
    critique_request: str = Field(
        prompts.CRITIQUE_REQUEST,
        description="what the critic is asked for; {which} becomes 'proposed' or 'revised proposed'",
    )
    revision_request: str = Field(prompts.REVISION_REQUEST, description="what a revision asks for")


GOLD_DATASETS = ["aqua", "gsm8k", "math", "conala", "mbpp", "code_contests", "drrepair", "flan"]


class AugmentConfig(LLMJobConfig):
    """Augmentation: a teacher answers, critiques and revises every instruction."""

    input: Path | None = Field(
        None, description="Instruction rows (collect output): .parquet or .jsonl"
    )
    output: Path = Field(Path("outputs/augment"), description="output folder")
    max_iterations: int = Field(
        5, ge=1, le=50, description="answer + revisions per chain (upstream: 5)"
    )
    gold_datasets: list[str] = Field(
        default_factory=lambda: list(GOLD_DATASETS),
        description="datasets whose 'output' is a gold answer the critic sees (never reveals)",
    )
    reuse_answer_datasets: list[str] = Field(
        default_factory=lambda: ["sharegpt"],
        description="datasets whose 'output' is used as the initial answer",
    )
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    retry_errors: bool = Field(False, description="also re-run rows that ended with an error")
    overwrite: bool = Field(False, description="discard earlier results in the output folder")
    limit: int | None = Field(None, ge=1, description="only the first N input rows (a trial run)")

    @model_validator(mode="after")
    def _gold_or_answer(self) -> AugmentConfig:
        both = sorted(set(self.gold_datasets) & set(self.reuse_answer_datasets))
        if both:
            raise ValueError(
                f"{', '.join(both)}: a dataset's output is either a gold answer or the "
                "initial answer, not both"
            )
        return self

    def missing(self) -> str | None:
        if self.input is None:
            return "give the instructions to augment: --input FILE (.parquet or .jsonl)"
        return None
