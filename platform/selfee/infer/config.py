"""``selfee infer`` settings: questions in, SelFee answers out, on Ray Data."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from selfee.config import RayConfig
from selfee.engines.config import ModelConfig
from selfee.revision import RevisionSettings


class InferConfig(RevisionSettings, ModelConfig):
    """Batch inference with revision control: questions in, SelFee/FastChat answers out."""

    model_config = ConfigDict(frozen=False)

    questions: Path | None = Field(None, description="questions (SelFee/Vicuna question.jsonl)")
    output: Path | None = Field(None, description="answer file to write (.jsonl)")
    limit: int | None = Field(None, ge=1, description="only the first N questions (a trial run)")
    overwrite: bool = Field(False, description="discard saved answers and generate all again")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress lines")
    ray: RayConfig = Field(default_factory=RayConfig)

    def missing(self) -> str | None:
        if self.questions is None or self.output is None or not self.model:
            return (
                "give --model DIR (or --base-url URL --model NAME), --questions Q.jsonl and "
                "--output A.jsonl"
            )
        return None
