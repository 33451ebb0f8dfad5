"""``selfee train`` and ``selfee delta`` settings: the model, the SFT set, Ray Train + DeepSpeed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from selfee.adapter import LoraSettings
from selfee.config import RayConfig, StageConfig


class TinyModelConfig(StageConfig):
    """A LLaMA-architecture model built from this config (random init), for CPUs and tests."""

    hidden_size: int = Field(128, ge=8, description="width of the residual stream")
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(4, ge=1, description="attention heads (hidden_size must divide)")
    intermediate_size: int = Field(344, ge=8, description="MLP width")
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary trained on the run's text")
    seed: int = Field(0, description="seed of the random initialisation")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        return self


class LossOnConfig(StageConfig):
    """Which parts of the target carry loss (the prompt never does)."""

    answer: bool = Field(True, description="the initial answer")
    feedback: bool = Field(True, description="every '### Feedback k' and its text")
    revisions: bool = Field(True, description="every '### Revision k' and its text")

    def kinds(self) -> list[str]:
        switches = {"answer": self.answer, "feedback": self.feedback, "revision": self.revisions}
        return [kind for kind, on in switches.items() if on]


# What configs/train-tiny.yaml sets for a tiny random model (global batch: about 8).


TINY_TRAIN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "max_context": 512,
    "micro_batch_size": 2,
    "gradient_checkpointing": False,
    "checkpoint_every_steps": 20,
}


class TrainConfig(StageConfig):
    """Fine-tuning on SelFee chains with Ray Train + DeepSpeed (CPU or GPU, one job)."""

    renamed: ClassVar[dict[str, str]] = {"max_length": "max_context"}

    _tiny_defaults_used: list[str] = PrivateAttr(default_factory=list)

    data: Path | None = Field(
        None, description="chains: augment output (.jsonl) or upstream's released JSON/JSONL"
    )
    model: str = Field("tiny", description="'tiny' or a Hugging Face causal-LM directory")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    adapter: Literal["none", "lora", "qlora"] = Field(
        "none",
        description="'none': full fine-tuning; 'lora': low-rank adapters on a frozen base "
        "(peft); 'qlora': the same on a 4-bit base (bitsandbytes; on CPUs it needs >= 0.50)",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    output: Path = Field(Path("outputs/train"), description="output folder (model/, checkpoints)")
    storage_path: str | None = Field(
        None,
        description="checkpoints: a shared folder or s3:// URI on multi-node clusters "
        "(default: <output>/checkpoints)",
    )
    objective: Literal["full", "answer-only"] = Field(
        "full", description="'full': the whole chain (SelFee); 'answer-only': the first answer"
    )
    loss_on: LossOnConfig = Field(default_factory=LossOnConfig)
    max_context: int = Field(
        2048, ge=16, description="the longest example in tokens, and a tiny model's context "
        "(SelFee: 2048)",
    )  # fmt: skip
    overflow: Literal["truncate", "drop"] = Field(
        "truncate", description="what happens to longer examples (counted in the summary)"
    )
    batching: Literal["length-grouped", "random", "packed"] = Field(
        "length-grouped",
        description="'random' pads random batches to their longest (upstream); 'packed' puts "
        "whole examples side by side in rows of max_context tokens, kept apart "
        "(micro_batch_size then counts rows)",
    )
    global_batch_size: int = Field(
        128, ge=1, description="examples per optimizer step, all workers (SelFee: 128)"
    )
    micro_batch_size: int = Field(
        4, ge=1, description="examples per forward pass per worker (rows when packed)"
    )
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on GPUs)")
    use_gpu: bool = Field(False, description="one GPU per worker, bf16 (see 'precision')")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto': bf16 on GPUs, fp32 on CPUs"
    )
    deepspeed: Path = Field(
        Path("zero2"),
        description="DeepSpeed JSON ('auto' keys are filled), or the package's zero1 (gradients "
        "reduced once per step: fastest when they fit) / zero2 / zero3",
    )
    gradient_checkpointing: bool = Field(True, description="recompute activations (less memory)")
    epochs: int = Field(3, ge=1, description="passes over the data (SelFee: 3)")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (overrides epochs)"
    )
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (SelFee: 2e-5)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (SelFee: 0)")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps warming up")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0: off)")
    seed: int = Field(0, description="seed of data order and initialisation")
    log_every_steps: int = Field(1, ge=1, description="report metrics every N steps")
    checkpoint_every_steps: int = Field(50, ge=1, description="checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (the latest ones)")
    max_failures: int = Field(
        2, ge=-1, description="worker failures recovered from the last checkpoint (-1: always)"
    )
    resume: bool = Field(False, description="continue the run found in the output folder")
    overwrite: bool = Field(False, description="discard an earlier run in the output folder")
    fault_injection_step: int | None = Field(
        None, ge=1, description="recovery drill: worker rank 1 is killed at this step, once"
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _tiny_defaults(self) -> TrainConfig:
        """A tiny random model learns nothing at SelFee's 7B settings (2e-5, batch 128): unless
        set, it gets those of configs/train-tiny.yaml (``tiny_defaults_used`` lists them)."""
        used = []
        if self.model == "tiny":
            for key, value in TINY_TRAIN_DEFAULTS.items():
                if key not in self.model_fields_set and getattr(self, key) != value:
                    self.__dict__[key] = value  # not marked as set by the user
                    used.append(key)
            per_pass = self.micro_batch_size * self.num_workers
            if "global_batch_size" not in self.model_fields_set:
                self.__dict__["global_batch_size"] = per_pass * max(1, round(8 / per_pass))
                used.append("global_batch_size")
        self._tiny_defaults_used = used
        return self

    @property
    def tiny_defaults_used(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._tiny_defaults_used}

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.resume and self.overwrite:
            raise ValueError("choose one of --resume (continue) and --overwrite (start over)")
        if not self.loss_on.kinds():
            raise ValueError("loss_on switches every segment off: nothing would be learned")
        if self.objective == "answer-only" and not self.loss_on.answer:
            raise ValueError("objective 'answer-only' needs loss_on.answer")
        if self.adapter != "none" and self.model == "tiny":
            raise ValueError(
                f"adapter {self.adapter} adapts a pretrained model: give --model DIR (a Hugging "
                "Face directory); the tiny model starts random, with nothing to adapt"
            )
        per_pass = self.micro_batch_size * self.num_workers
        if self.global_batch_size % per_pass:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.micro_batch_size} x num_workers {self.num_workers} "
                f"= {per_pass}"
            )
        return self

    def missing(self) -> str | None:
        if self.data is None:
            return "give the chains to train on: --data outputs/augment/chains.jsonl"
        return None

    def accumulation(self) -> int:
        """Gradient accumulation steps: global batch = micro batch x accumulation x workers."""
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)

    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.use_gpu)


class DeltaApplyConfig(StageConfig):
    """Restore fine-tuned weights from a base model and a delta (SelFee's released form)."""

    base: Path = Field(description="the base model directory (e.g. LLaMA-13B in HF format)")
    delta: Path = Field(description="the delta directory (weights, config, tokenizer)")
    output: Path = Field(description="where the restored model goes")


class DeltaMakeConfig(StageConfig):
    """Make a delta for publishing: fine-tuned weights minus the base model's."""

    base: Path = Field(description="the base model directory")
    target: Path = Field(description="the fine-tuned model directory")
    output: Path = Field(description="where the delta goes")
