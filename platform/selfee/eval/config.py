"""``selfee eval`` settings: the task, its questions, and the answers to score or the model
that writes them (the same model settings as ``selfee infer``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from selfee.config import RayConfig
from selfee.engines.config import ModelConfig
from selfee.eval.sandbox import SandboxLimits
from selfee.eval.tasks import TaskName


class EvalConfig(ModelConfig):
    """Does revision help? Per-turn accuracy on checkable tasks (GSM8K, MATH, AQuA, code)."""

    task: TaskName | None = Field(None, description="gsm8k, math, aqua or code")
    questions: Path | None = Field(
        None, description="question.jsonl rows with 'gold', or Instruction rows (collect)"
    )
    answers: Path | None = Field(
        None, description="score this answer file (SelFee/FastChat, with whole_generation) "
        "instead of generating: its chains are scored turn by turn",
    )  # fmt: skip
    autonomous_answers: Path | None = Field(
        None, description="with --answers: the model's autonomous answers, scored as such"
    )
    revisions: int = Field(
        3, ge=0, le=20, description="revisions forced in the per-turn chain (turns 0..N); "
        "the autonomous run may revise up to this many",
    )  # fmt: skip
    max_new_tokens: int = Field(
        512, ge=1, description="tokens per turn (answer or revision, with its feedback); a "
        "chain may spend this many times (1 + revisions)",
    )  # fmt: skip
    samples: int = Field(
        4, ge=0, le=64, description="independent answers per question for the majority-vote "
        "baseline (0: none)",
    )  # fmt: skip
    sample_temperature: float = Field(0.7, gt=0, le=2, description="temperature of the samples")
    seed: int = Field(0, description="sampling seed")
    output: Path | None = Field(
        None, description="folder for answers, scores and the report (default: "
        "outputs/eval/TASK); with adapters, a folder in it per model (NAME: its answers, "
        "scores, report and plot)",
    )  # fmt: skip
    print_json: bool = Field(
        False,
        description="print one JSON object instead of tables",
        json_schema_extra={"cli_aliases": ["--json"]},
    )
    plot: Path | None = Field(None, description="write the per-turn plot here (.png)")
    bootstrap: int = Field(2000, ge=100, le=100000, description="bootstrap resamples for CIs")
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits, description="code runs")
    limit: int | None = Field(None, ge=1, description="only the first N questions (a trial run)")
    overwrite: bool = Field(False, description="discard saved generations and scores")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress lines")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _source(self) -> EvalConfig:
        if self.autonomous_answers is not None and self.answers is None:
            raise ValueError("--autonomous-answers goes with --answers (the per-turn chains)")
        if self.answers is not None and (self.model or self.base_url):
            raise ValueError("give --answers (score a file) or --model (generate), not both")
        if self.adapters and self.answers is not None:
            raise ValueError("--adapters go with --model DIR (they generate on its base)")
        return self

    def missing(self) -> str | None:
        if self.task is None or self.questions is None:
            return "give --task gsm8k|math|aqua|code and --questions FILE"
        if self.answers is None and not self.model:
            return ("give --answers FILE.jsonl to score, or --model DIR / x.gguf (or --base-url "
                    "URL --model NAME) to generate and score")  # fmt: skip
        return None

    @property
    def folder(self) -> Path:
        return self.output or Path("outputs/eval") / str(self.task)

    def one_model_configs(self) -> dict[str | None, EvalConfig]:
        """The model's evaluation (None) and each adapter's, as an evaluation of that model
        alone would be configured, each in its own folder (``folder``/name) with its plot."""
        if not self.adapters:
            return {None: self}
        runs = {}
        for adapter in (None, *self.adapters):
            alone = {"adapters": {}} if adapter is None else self.alone(adapter)
            name = adapter or self.answer_model_id()
            plot = None if self.plot is None else self.folder / name / self.plot.name
            runs[adapter] = self.model_copy(update={**alone, "output": self.folder / name,
                                                    "plot": plot})  # fmt: skip
        return runs
