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

    questions: Path | None = Field(
        None,
        description="questions: SelFee/Vicuna question.jsonl rows (an optional 'input' each), or "
        "Instruction rows (collect)",
    )
    output: Path | None = Field(
        None, description="answer file to write (.jsonl); '{model}' in it: the model's name "
        "(model_id, or an adapter's), one file per model",
    )  # fmt: skip
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

    def answer_file(self, model_name: str | None = None) -> Path:
        """The answer file of ``model_name`` (the model's own: None)."""
        assert self.output is not None
        return Path(str(self.output).replace("{model}", model_name or self.answer_model_id()))

    def one_model_configs(self) -> dict[str | None, InferConfig]:
        """The model's run (None) and each adapter's, as a run of that model alone would be
        configured: each answer file, journal and manifest is what that run would leave."""
        runs: dict[str | None, InferConfig] = {None: self}
        for name in self.adapters:
            runs[name] = self.model_copy(
                update={**self.alone(name), "output": self.answer_file(name)}
            )
        return runs
