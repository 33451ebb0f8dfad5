"""``selfee quickstart`` settings: the whole pipeline on embedded Ray."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from selfee.config import RayConfig, StageConfig
from selfee.export.config import QuantType
from selfee.teacher.config import TeacherConfig
from selfee.train.config import TinyModelConfig


class QuickstartConfig(StageConfig):
    """SelFee end to end on embedded Ray: the offline teacher on Ray Serve augments the
    sample instructions, a tiny model trains on the chains, answers the sample questions
    autonomously and with forced revisions, the teacher judges the two, the report compares."""

    renamed: ClassVar[dict[str, str]] = {"output_dir": "output"}

    output: Path = Field(Path("outputs/quickstart"), description="where results go")
    instructions: Path | None = Field(
        None,
        description="Instruction JSONL to augment; empty: collect from the sample source files "
        "(all ten formats) that selfee writes",
    )
    sample_rows: int = Field(200, ge=1, le=10000, description="rows written per sample source file")
    collect_cap: int = Field(
        6, ge=1, description="instructions kept per source (they are augmented and trained on)"
    )
    questions: Path | None = Field(
        None, description="evaluation questions (question.jsonl format); empty: the shipped ones"
    )
    max_iterations: int = Field(3, ge=1, le=20, description="answer + revisions per chain")
    concurrency: int = Field(4, ge=1, le=256, description="records in flight at once")
    tiny: TinyModelConfig = Field(
        default_factory=lambda: TinyModelConfig(hidden_size=128, num_layers=2, vocab_size=1024),
        description="the tiny model trained on the chains",
    )
    train_steps: int = Field(200, ge=1, description="optimizer steps of the tiny model")
    learning_rate: float = Field(3e-3, gt=0, description="peak learning rate of the tiny model")
    forced_revisions: int = Field(
        3, ge=1, le=20, description="min_revisions of the second answer set"
    )
    max_new_tokens: int = Field(
        256, ge=16, description="tokens per answer, all revisions (the forced run: this much "
        "per forced revision too)",
    )  # fmt: skip
    eval_revisions: int = Field(
        2, ge=0, le=10, description="forced revisions of the eval stage (sample math and code)"
    )
    gguf: list[QuantType] = Field(
        default_factory=lambda: ["q8_0", "q4_K_M"],
        description="GGUF files the trained model is exported to and answers with again "
        "(llama.cpp); `gguf: []` in the config skips it",
    )
    serve: bool = Field(
        False, description="leave the model's endpoint and the Gradio demo running (Ctrl-C stops)"
    )
    serve_port: int = Field(
        8000, ge=1, le=65535, description="Ray Serve HTTP port; the teacher is at /teacher/v1"
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig,
        description="offline teacher settings (host and port are unused under Serve)",
    )
