"""The models this project builds, from a spec that training and inference share.

``tiny``: a LLaMA-architecture model built from a config (random init) sized for a CPU.
``hf``: a Hugging Face causal-LM directory, grown by the tokens the run added (SelFee added
``[PAD]`` to LLaMA; the new embedding rows start at zero, as in its delta weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# What every model directory this project writes holds beside the weights: how its text is
# laid out, and where it came from (objective, hashes, the adapter it was merged from, ...).
METADATA_FILE = "selfee.json"
PROMPT_FORMAT = "selfee"  # selfee.chain: '### Answer:' / '### Feedback k:' / '### Revision k:'


def write_metadata(folder: Path, meta: dict[str, Any]) -> None:
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def tiny_llama_config(tiny: dict[str, Any], tokenizer: Any, max_context: int) -> dict[str, Any]:
    """The LlamaConfig (as a dict, so it travels to workers and into the export)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny["hidden_size"],
        intermediate_size=tiny["intermediate_size"],
        num_hidden_layers=tiny["num_layers"],
        num_attention_heads=tiny["num_heads"],
        num_key_value_heads=tiny["num_heads"],
        max_position_embeddings=max_context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return config.to_dict()


def hf_spec(path: str | Path, tokenizer: Any) -> dict[str, Any]:
    """The spec of a Hugging Face base, grown to the run's tokenizer (its ``[PAD]``)."""
    return {"kind": "hf", "path": str(Path(path).resolve()), "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip


def model_config(spec: dict[str, Any]) -> Any:
    """The transformers config of a model spec, with the run's vocabulary size."""
    from transformers import AutoConfig, LlamaConfig

    if spec["kind"] == "tiny":
        return LlamaConfig.from_dict(spec["config"])
    config = AutoConfig.from_pretrained(spec["path"])
    config.vocab_size = max(config.vocab_size, spec["vocab_size"])
    if spec.get("pad_token_id") is not None:
        config.pad_token_id = spec["pad_token_id"]
    return config


def build_model(spec: dict[str, Any], seed: int, quantized: bool = False, dtype: Any = None) -> Any:
    """``quantized``: the base in 4 bits (NF4, bf16 compute) on this process's GPU (or on
    the CPU where there is none), for QLoRA (bitsandbytes). ``dtype``: a Hugging Face
    base's weights as loaded (float32 unless given: training keeps fp32 master weights)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)
    if spec["kind"] == "tiny":
        return LlamaForCausalLM(model_config(spec))
    load: dict[str, Any] = {"dtype": dtype or torch.float32}
    if quantized:
        from transformers import BitsAndBytesConfig

        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        load = {"dtype": torch.bfloat16, "device_map": {"": device},
                "quantization_config": BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16)}  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(spec["path"], **load)
    old = model.get_input_embeddings().weight.shape[0]
    if spec["vocab_size"] > old:
        model.resize_token_embeddings(spec["vocab_size"], mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old:] = 0
            output = model.get_output_embeddings()
            if output is not None:
                output.weight[old:] = 0
    if spec.get("pad_token_id") is not None:
        model.config.pad_token_id = spec["pad_token_id"]
    return model
