"""Stage configurations: YAML files validated by pydantic, overridable from the CLI.

Every key of a stage's YAML is also a command-line option of the same name
(``rpm: 60`` in YAML is ``--rpm 60``; nested keys use dots: ``--teacher.rpm 60``).
Unknown or invalid keys fail with a message that names the key and where it came from.
"""

from __future__ import annotations

import argparse
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from selfee import prompts
from selfee.adapter import LoraSettings
from selfee.collect.sources import SOURCES

C = TypeVar("C", bound="StageConfig")


class ConfigError(ValueError):
    """A user mistake in a config file or option; the message is meant for the user."""


class JobFailed(RuntimeError):
    """A job that could not finish for a reason the user can act on; the message says how."""


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --- stage configs ---------------------------------------------------------------------

FaultKind = Literal["429", "500", "timeout", "malformed"]


class TeacherConfig(StageConfig):
    """The offline teacher: an OpenAI-compatible server that answers deterministically."""

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8100, ge=0, le=65535, description="TCP port (0: any free port)")
    model: str = Field("offline-teacher", description="model name the server reports")
    rpm: int | None = Field(
        None, gt=0, description="server-side requests-per-minute limit (429 over it)"
    )
    latency_ms: float = Field(0.0, ge=0, description="added latency per request")
    fault_rate: float = Field(0.0, ge=0, le=1, description="fraction of requests that fail")
    fault_kinds: list[FaultKind] = Field(
        default_factory=lambda: ["429", "500", "timeout", "malformed"],
        min_length=1,
        description="faults to inject, chosen evenly",
    )
    timeout_fault_s: float = Field(
        30.0, ge=0, description="how long a 'timeout' fault holds the request"
    )
    seed: int = Field(0, description="seed for replies, verdicts and faults")
    needed_fraction: float = Field(
        0.5, ge=0, le=1, description="fraction of first critiques that ask for a revision"
    )
    later_needed_fraction: float = Field(
        0.0, ge=0, le=1, description="the same for critiques of revised answers"
    )
    judge_unparseable_fraction: float = Field(
        0.0, ge=0, le=1, description="fraction of judge requests answered without scores"
    )
    context_tokens: int | None = Field(
        None,
        ge=16,
        description="reject prompts + max_tokens over this many tokens (4 bytes a token), "
        "as OpenAI does (400 context_length_exceeded)",
    )
    api_key_env: str | None = Field(
        None,
        description="require the key in this environment variable (401 otherwise, echoing the "
        "key sent, as some servers do)",
    )


class RayConfig(StageConfig):
    address: str | None = Field(
        None,
        description="Ray cluster address; empty: $RAY_ADDRESS (as `ray job submit` sets it), "
        "else an embedded Ray of the job's own",
    )
    num_cpus: int | None = Field(None, gt=0, description="CPUs for an embedded Ray")
    dashboard: bool = Field(
        True, description="start the Ray dashboard with an embedded Ray (127.0.0.1:8265 or next)"
    )


SourceName = Literal[tuple(SOURCES)]  # type: ignore[valid-type]  # one list: collect.sources


class SourceSpec(StageConfig):
    name: SourceName = Field(description="which dataset format the files are in")
    path: Path = Field(description="a file, or a folder of .json/.jsonl/.parquet files")
    cap: int | None = Field(None, ge=0, description="keep at most this many rows")
    fraction: float = Field(1.0, gt=0, le=1, description="keep this sampled fraction")


class CollectConfig(StageConfig):
    """Collection: every SelFee source through Ray Data into Instruction rows."""

    sources: list[SourceSpec] = Field(
        default_factory=list,
        description="NAME=PATH per source (YAML: name, path, cap, fraction)",
        json_schema_extra={"cli_aliases": ["--source"]},
    )
    output: Path = Field(Path("outputs/collect"), description="output folder")
    jsonl: bool = Field(False, description="also write instructions.jsonl")
    seed: int = Field(0, description="seed for sampling and per-task caps")
    flan_per_task: int = Field(10, ge=1, description="FLAN rows kept per task")
    dedup: bool = Field(True, description="drop repeats of the same normalised instruction")
    skip_bad_rows: bool = Field(
        False, description="count and report malformed rows instead of stopping at the first"
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("sources", mode="before")
    @classmethod
    def _name_equals_path(cls, value: Any) -> Any:
        """``--source gsm8k=train.jsonl`` on the command line."""
        if not isinstance(value, list):
            return value
        specs = []
        for item in value:
            if isinstance(item, str):
                name, sep, path = item.partition("=")
                if not sep or not path:
                    raise ValueError(f"a source is NAME=PATH, got {item!r}")
                item = {"name": name.strip(), "path": path.strip()}
            specs.append(item)
        return specs


class RetryConfig(StageConfig):
    max_retries: int = Field(6, ge=0, le=50, description="retries per request after the first try")
    backoff_s: float = Field(1.0, ge=0, description="first backoff delay; doubles per retry")
    max_backoff_s: float = Field(60.0, ge=0, description="longest backoff delay")
    timeout_s: float = Field(120.0, gt=0, description="seconds before a request times out")


class PricesConfig(StageConfig):
    """For the cost estimate only (US dollars per million tokens; 0: not shown)."""

    prompt_per_million: float = Field(0.0, ge=0, description="$ per 1M prompt tokens")
    completion_per_million: float = Field(0.0, ge=0, description="$ per 1M completion tokens")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_per_million
            + completion_tokens * self.completion_per_million
        ) / 1e6


class LLMJobConfig(StageConfig):
    """What every job that calls a teacher or judge LLM shares: endpoint, limits, retries."""

    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint; empty: OpenAI if the API key variable is "
        "set, else the offline teacher",
    )
    model: str | None = Field(None, description="model name (required with base_url)")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable that holds the API key"
    )
    rpm: int | None = Field(None, gt=0, description="requests per minute for the whole job")
    tpm: int | None = Field(None, gt=0, description="tokens per minute for the whole job")
    max_tokens: int = Field(1024, ge=1, description="longest reply per request, in tokens")
    context_tokens: int = Field(
        4096, ge=256, description="the model's context window: prompt + reply must fit"
    )
    temperature: float = Field(1.0, ge=0, le=2, description="sampling temperature")
    workers: int = Field(
        2, ge=1, le=256, description="Ray workers (each gets 1/workers of rpm, tpm)"
    )
    concurrency: int = Field(16, ge=1, le=4096, description="rows in flight, all workers together")
    worker_cpus: float = Field(0.25, gt=0, description="CPUs Ray reserves per worker")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress lines")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    prices: PricesConfig = Field(default_factory=PricesConfig)
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig,
        description="the offline teacher, used when no endpoint is configured",
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _reply_fits_context(self) -> LLMJobConfig:
        if self.max_tokens >= self.context_tokens:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be below context_tokens "
                f"({self.context_tokens}): the prompt needs room too"
            )
        return self


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


class JudgeConfig(LLMJobConfig):
    """Pairwise judging of two answer files, in both orders (SelFee / Vicuna evaluation)."""

    questions: Path | None = Field(None, description="questions (question.jsonl format)")
    answers: list[Path] = Field(
        default_factory=list, description="exactly two answer files: A.jsonl B.jsonl"
    )
    out_dir: Path = Field(Path("outputs/judge"), description="reviews, cache and report")
    prompts: Path | None = Field(
        None, description="upstream prompt.jsonl (with --reviewers): reproduce that setting"
    )
    reviewers: Path | None = Field(None, description="upstream reviewer.jsonl (with --prompts)")
    unparsed_retries: int = Field(
        2, ge=0, le=10, description="ask again this often when no score can be read"
    )
    temperature: float = Field(0.2, ge=0, le=2, description="judge sampling temperature")
    context_tokens: int = Field(
        8192, ge=256, description="the judge's context window (prompt + reply)"
    )

    @model_validator(mode="after")
    def _pairs(self) -> JudgeConfig:
        if (self.prompts is None) != (self.reviewers is None):
            raise ValueError("give both --prompts and --reviewers (upstream files), or neither")
        return self


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
    "max_length": 512,
    "micro_batch_size": 2,
    "gradient_checkpointing": False,
    "checkpoint_every_steps": 20,
}


class TrainConfig(StageConfig):
    """Fine-tuning on SelFee chains with Ray Train + DeepSpeed (CPU or GPU, one job)."""

    _tiny_defaults_used: list[str] = PrivateAttr(default_factory=list)

    data: Path | None = Field(
        None, description="chains: augment output (.jsonl) or upstream's released JSON/JSONL"
    )
    model: str = Field("tiny", description="'tiny' or a Hugging Face causal-LM directory")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    adapter: Literal["none", "lora", "qlora"] = Field(
        "none",
        description="'none': full fine-tuning; 'lora': low-rank adapters on a frozen base "
        "(peft); 'qlora': the same on a 4-bit base (bitsandbytes, CUDA GPUs only)",
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
    max_length: int = Field(2048, ge=16, description="tokens per example (SelFee: 2048)")
    overflow: Literal["truncate", "drop"] = Field(
        "truncate", description="what happens to longer examples (counted in the summary)"
    )
    batching: Literal["length-grouped", "random", "packed"] = Field(
        "length-grouped",
        description="'random' pads random batches to their longest (upstream); 'packed' puts "
        "whole examples side by side in rows of max_length tokens, kept apart "
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
        if self.adapter == "qlora" and not self.use_gpu:
            raise ValueError(
                "adapter qlora loads the base in 4 bits with bitsandbytes, which runs on CUDA "
                "GPUs only: set use_gpu true on a GPU machine, or use adapter lora on CPUs"
            )
        per_pass = self.micro_batch_size * self.num_workers
        if self.global_batch_size % per_pass:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.micro_batch_size} x num_workers {self.num_workers} "
                f"= {per_pass}"
            )
        return self

    def accumulation(self) -> int:
        """Gradient accumulation steps: global batch = micro batch x accumulation x workers."""
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)

    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.use_gpu)


class QuickstartConfig(StageConfig):
    """SelFee end to end on embedded Ray: the offline teacher on Ray Serve augments the
    sample instructions, a tiny model trains on the chains, answers the sample questions
    autonomously and with forced revisions, the teacher judges the two, the report compares."""

    output_dir: Path = Field(Path("outputs/quickstart"), description="where results go")
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


QuantType = Literal[
    "f32", "f16", "q8_0", "q6_K", "q5_K_M", "q5_K_S", "q4_K_M", "q4_K_S", "q4_0", "q3_K_M", "q2_K"
]


EngineName = Literal["auto", "hf", "llama_cpp", "vllm"]
ENGINE_HELP = (
    "'auto': llama_cpp for a .gguf file; vllm where GPUs are reserved and vLLM is installed; "
    "else hf (Hugging Face transformers)"
)


class VLLMConfig(StageConfig):
    """How a vLLM engine starts (``selfee.engines.vllm``); empty: a default for the device."""

    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV cache size (empty: vLLM's share of GPU memory; 1 GiB on CPU)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="share of GPU memory vLLM may take (weights + KV cache)"
    )
    max_num_seqs: int = Field(256, ge=1, description="requests in flight in one engine step")
    max_context: int | None = Field(
        None, ge=16, description="vLLM's max_model_len (empty: the model's own context)"
    )
    block_size: int | None = Field(
        None, ge=1, description="tokens per KV block, the unit of prefix caching (empty: 32 on "
        "CPU, vLLM's default on GPU)",
    )  # fmt: skip
    enforce_eager: bool | None = Field(
        None, description="skip CUDA graphs / torch.compile (empty: on CPU only)"
    )


class GenerationConfig(StageConfig):
    """Revision control and sampling (``selfee.revision``): the same keys in batch
    inference and as request fields of the Serve endpoint."""

    min_revisions: int = Field(
        0, ge=0, le=100, description="force at least this many revisions (0: the model decides)"
    )
    max_revisions: int | None = Field(
        None, ge=0, le=100, description="stop before the revision past this many (empty: no cap)"
    )
    max_new_tokens: int = Field(
        1024, ge=1, description="tokens generated per question, all revisions"
    )
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    seed: int = Field(0, description="sampling seed (each question adds its index)")
    answer_only: bool = Field(
        False, description="write the answer only: no feedback, no revision (sampling baselines)"
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> GenerationConfig:
        if self.max_revisions is not None and self.min_revisions > self.max_revisions:
            raise ValueError(
                f"min_revisions ({self.min_revisions}) is above max_revisions ({self.max_revisions})"
            )
        if self.answer_only and self.min_revisions:
            raise ValueError("answer_only writes no revision: min_revisions must be 0")
        return self


class ModelConfig(StageConfig):
    """Which model answers, on which engine, with what resources (``selfee infer`` and
    ``selfee eval``): model actors on Ray Data, or an OpenAI-compatible endpoint."""

    model: str | None = Field(
        None,
        description="a Hugging Face model directory, a LoRA adapter directory (loaded on its "
        "base) or a .gguf file; with base_url, the endpoint's model name",
    )
    engine: EngineName = Field("auto", description=ENGINE_HELP)
    model_id: str | None = Field(
        None, description="model_id in the answers (default: the model directory's name)"
    )
    base_url: str | None = Field(
        None,
        description="an OpenAI-compatible /v1 endpoint (vLLM, Ray Serve) instead of a local model",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with its key")
    batch_size: int = Field(
        8, ge=1, le=512, description="questions generated together per actor call"
    )
    concurrency: int = Field(1, ge=1, le=256, description="model actors (each holds one copy)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs Ray reserves per actor (1 on GPUs)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': CUDA if the actor has a GPU"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bf16 on CUDA, fp32 on CPU"
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="with engine vllm")


class InferConfig(GenerationConfig, ModelConfig):
    """Batch inference with revision control: questions in, SelFee/FastChat answers out."""

    questions: Path | None = Field(None, description="questions (SelFee/Vicuna question.jsonl)")
    output: Path | None = Field(None, description="answer file to write (.jsonl)")
    limit: int | None = Field(None, ge=1, description="only the first N questions (a trial run)")
    overwrite: bool = Field(False, description="discard saved answers and generate all again")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress lines")
    ray: RayConfig = Field(default_factory=RayConfig)


class ServeConfig(StageConfig):
    """The SelFee endpoint on Ray Serve: OpenAI-compatible, revision control per request."""

    model: Path | None = Field(
        None,
        description="the Hugging Face model directory, LoRA adapter directory or .gguf file to serve",
    )
    engine: EngineName = Field("auto", description=ENGINE_HELP)
    model_name: str | None = Field(
        None, description="the name clients send as 'model' (default: the directory's name)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': CUDA if the replica has a GPU"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bf16 on CUDA, fp32 on CPU"
    )
    host: str = Field("127.0.0.1", description="HTTP interface (0.0.0.0 to listen on all)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    route_prefix: str = Field("/", description="where the app lives (the API is <prefix>/v1)")
    max_batch_size: int = Field(
        8, ge=1, le=256, description="hf, llama_cpp: requests' steps run as one batch (vllm "
        "batches continuously)",
    )  # fmt: skip
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="how long a step waits for others to join its batch"
    )
    min_replicas: int = Field(1, ge=0, description="model replicas kept running")
    max_replicas: int = Field(2, ge=1, description="most model replicas under load")
    target_ongoing_requests: float = Field(
        4, gt=0, description="autoscaling adds replicas above this many requests per replica"
    )
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs Ray reserves per model replica")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs per model replica (1 on GPUs)")
    max_new_tokens: int = Field(
        512, ge=1, description="tokens per request when it names no max_tokens"
    )
    max_revisions_limit: int = Field(
        20, ge=0, le=100, description="the most min_revisions / max_revisions a request may ask for"
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="with engine vllm")
    prefix_affinity: bool = Field(
        True, description="vllm: send a chain's continuations to the replica that holds its "
        "prefix (Ray Serve LLM's PrefixCacheAffinityRouter)",
    )  # fmt: skip
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self

    def served_name(self) -> str:
        return self.model_name or (
            Path(self.model).name.removesuffix(".gguf") if self.model else "selfee"
        )


class DemoConfig(StageConfig):
    """The Gradio demo: a chat UI that talks to a SelFee endpoint over HTTP."""

    endpoint: str = Field("http://127.0.0.1:8000/v1", description="the OpenAI-compatible /v1 URL")
    api_key_env: str = Field("SELFEE_API_KEY", description="environment variable with its key")
    host: str = Field("127.0.0.1", description="interface the demo listens on")
    port: int = Field(7860, ge=1, le=65535, description="the demo's port")
    share: bool = Field(False, description="ask Gradio for a public share link")


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


class ExportGGUFConfig(StageConfig):
    """GGUF files for llama.cpp from a LLaMA-architecture Hugging Face model directory."""

    model: Path = Field(description="the Hugging Face model directory (LLaMA architecture)")
    quant: list[QuantType] = Field(
        default_factory=lambda: ["q8_0", "q4_K_M"], min_length=1,
        description="the types to write, one file each: --quant f16 q8_0 q4_K_M",
    )  # fmt: skip
    output: Path = Field(Path("outputs/export"), description="the folder the GGUF files go to")
    eval_data: Path | None = Field(
        None, description="chains (JSONL) whose perplexity each file is measured on"
    )
    prompts: int = Field(8, ge=1, le=1000, description="fixed prompts for the greedy agreement")
    max_new_tokens: int = Field(64, ge=1, description="greedy tokens per prompt")
    threads: int | None = Field(
        None, ge=1, description="llama.cpp threads; all CPUs when not given"
    )
    converter_dir: Path | None = Field(
        None,
        description="llama.cpp's convert_hf_to_gguf.py folder (default: $SELFEE_LLAMA_CPP_DIR, "
        "else <venv>/share/llama.cpp, unpacked by make)",
    )


# --- loading ---------------------------------------------------------------------------


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> C:
    """Read ``path`` (YAML), apply dotted ``overrides`` and validate as ``cls``."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values")
        data = loaded
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, cls, source, set(overrides or {}))) from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def describe_validation_error(
    err: ValidationError, cls: type[BaseModel], source: str, cli_keys: set[str]
) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        cli_key = next((k for k in cli_keys if key == k or key.startswith(k + ".")), None)
        if cli_key is not None:
            origin = f"option --{cli_key.replace('_', '-')}"
        else:
            origin = f"key '{key}' in {source}"
        if item["type"] == "extra_forbidden":
            hint = _suggest(cls, [str(p) for p in item["loc"]])
            lines.append(f"unknown {origin}{hint}")
        elif item["type"] == "missing":
            lines.append(f"missing --{key.replace('_', '-')} (or '{key}' in a --config file)")
        else:
            lines.append(f"invalid {origin}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def _suggest(cls: type[BaseModel], loc: list[str]) -> str:
    model: Any = cls
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None or not _is_model(field.annotation):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return (
        f" (did you mean '{close[0]}'?)"
        if close
        else f" (known keys: {', '.join(model.model_fields)})"
    )


# --- command line ----------------------------------------------------------------------

_DEST_PREFIX = "config:"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaf_fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, annotation, pydantic FieldInfo) for every non-model field."""
    leaves = []
    for name, info in cls.model_fields.items():
        if _is_model(info.annotation):
            leaves += _leaf_fields(info.annotation, f"{prefix}{name}.")
        else:
            leaves.append((prefix + name, info.annotation, info))
    return leaves


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return bool in typing.get_args(annotation)
    return False


def _option_help(info: Any) -> str:
    """The key's description and its default, unless the description already says what an
    unset key means ("default: ...", "empty: ...")."""
    text = info.description or ""
    if info.is_required():
        return f"{text} (required)"
    value = info.get_default(call_default_factory=True)
    if "default" in text or (value is None and "empty" in text):
        return text
    return f"{text} (default: {'not set' if value is None else value})"


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[StageConfig]) -> None:
    """``--config FILE`` plus one option for every key of ``cls``, named as in the YAML."""
    parser.add_argument("--config", metavar="FILE", help="YAML config; options below override it")
    group = parser.add_argument_group("config keys (same names as in the YAML file)")
    for dotted, annotation, info in _leaf_fields(cls):
        dashed = f"--{dotted.replace('_', '-')}"
        names = [dashed] if dashed == f"--{dotted}" else [dashed, f"--{dotted}"]
        kwargs: dict[str, Any] = {
            "dest": _DEST_PREFIX + dotted,
            "default": argparse.SUPPRESS,
            "metavar": dotted.rsplit(".", 1)[-1].upper(),
            "help": _option_help(info),
        }
        if _is_bool(annotation):
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs.pop("metavar")
        elif _is_list(annotation):
            kwargs["nargs"] = "+"
            kwargs["action"] = "extend"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        names += [str(alias) for alias in extra.get("cli_aliases", [])]  # type: ignore[union-attr]
        group.add_argument(*names, **kwargs)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    overrides = {
        dest[len(_DEST_PREFIX) :]: _parse_cli_value(value)
        for dest, value in vars(args).items()
        if dest.startswith(_DEST_PREFIX)
    }
    return load_config(cls, getattr(args, "config", None), overrides)


def _parse_cli_value(value: Any) -> Any:
    """Leave scalars to pydantic's coercion; let ``null``/``none`` clear an optional key."""
    if isinstance(value, str) and value.lower() in ("null", "none"):
        return None
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def dump_config(config: StageConfig) -> dict[str, Any]:
    """The config as plain data for manifests and logs."""
    return config.model_dump(mode="json")
