"""Small chain sets for training tests: templated, so a tiny model learns them in seconds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
THINGS = ["apple", "car", "house", "bird", "river", "book", "lamp", "chair"]


def make_chains(n: int, seed: int = 0, revisions: int = 1) -> list[dict[str, Any]]:
    """``n`` chains: an answer, feedback that asks for a revision, then revisions until the
    last feedback says "Revision is not needed."."""
    rng = random.Random(seed)
    chains = []
    for i in range(n):
        color, thing = rng.choice(COLORS), rng.choice(THINGS)
        outputs = [{"output": f"The {thing} is {color}.", "feedback": ""}]
        for k in range(revisions):
            outputs[-1]["feedback"] = (
                f"The answer names the color but not why. Score: {5 + k}. Revision is needed."
            )
            outputs.append({"output": f"The {thing} is {color} because it was painted {color}."})
        outputs[-1]["feedback"] = "The answer is complete. Score: 9. Revision is not needed."
        chains.append(
            {
                "id": f"c{i}",
                "dataset": "synthetic",
                "instruction": f"What color is the {thing}?",
                "input": "" if i % 3 else f"Look at the {thing}.",
                "output": "",
                "outputs": outputs,
                "iteration": len(outputs),
                "iteration_truncated": False,
                "error": None,
            }
        )
    return chains


def write_pad_less_base(folder: Path) -> Path:
    """A small random LLaMA saved as a Hugging Face directory with a byte-level BPE
    tokenizer that has no pad token (like LLaMA's): what a real base model looks like to
    training, which adds [PAD]."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from selfee.train import sft

    texts = [sft.chain_text(r) for r in make_chains(8)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )  # fmt: skip
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    no_pad = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(vocab_size=len(no_pad), hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                    tie_word_embeddings=False)
    ).save_pretrained(folder)  # fmt: skip
    no_pad.save_pretrained(folder)
    return folder


def write_random_adapter(
    model: Any, base: Path, adapter: Path, tokenizer: Any, rank: int = 16, seed: int = 1,
    std: float = 0.02,
) -> Any:  # fmt: skip
    """A LoRA adapter of ``rank`` on every linear layer of ``model`` (the base saved in
    ``base``) with random weights (peft starts B at zero: the adapter would change nothing),
    saved to ``adapter``; returns the wrapped model. ``std`` 0: an adapter that changes
    nothing (and tells which model answered)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from selfee.adapter import LLAMA_LINEAR

    lora = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=LLAMA_LINEAR, task_type="CAUSAL_LM"
    )
    wrapped = get_peft_model(model, lora)
    wrapped.peft_config["default"].base_model_name_or_path = str(base)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)
    wrapped.save_pretrained(adapter, safe_serialization=True, save_embedding_layers=False)
    tokenizer.save_pretrained(adapter)
    return wrapped
