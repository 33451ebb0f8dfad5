"""A tiny SelFee model trained in seconds: it answers, asks for one revision, revises, and
then says "Revision is not needed." (the chains of ``selfee.testing.chains.make_chains``); forced to
go on, it keeps revising in the same format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from selfee.chain import render_prompt
from selfee.testing.chains import make_chains
from selfee.tokenizer import train_tiny_tokenizer
from selfee.train import sft

QUESTIONS = [c["instruction"] for c in make_chains(64, seed=1)]


def training_chains() -> list[dict]:
    """Mostly one revision, then "not needed"; a quarter go on with revisions after a
    rewritten verdict (the text a forced rewrite leaves), so the model knows how to continue
    one, as SelFee's models learned from their multi-revision data."""
    chains = make_chains(96, seed=0, revisions=1)
    for i, chain in enumerate(chains[::4]):
        done = chain["outputs"][-1]
        extra = 1 + i % 3
        forced = {**done, "feedback": done["feedback"].replace("not needed", "needed")}
        chain["outputs"] = chain["outputs"][:-1] + [forced] * extra + [done]
        chain["iteration"] = len(chain["outputs"])
    return chains


def train_selfee_model(
    out: Path, steps: int = 300, max_positions: int = 4096,
    hidden: int = 64, layers: int = 2, mlp: int = 176, lr: float = 3e-3,
) -> Path:  # fmt: skip
    """The tests' model by default (0.2M parameters); the benchmarks ask for a wider and
    deeper one where a token must cost what it does on a real model."""
    torch.manual_seed(0)
    chains = training_chains()
    tokenizer = train_tiny_tokenizer([sft.chain_text(c) for c in chains], vocab_size=400)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64),  # head size ≥ 32: vLLM's CPU attention
        num_key_value_heads=max(2, hidden // 64),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    examples = [sft.tokenize_chain(tokenizer, c, max_context=512) for c in chains]
    pairs = [(e.input_ids, e.labels) for e in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(0)
    model.train()
    for _ in range(steps):
        batch = sft.collate(rng.sample(pairs, 16), tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "selfee.json").write_text(
        json.dumps({"prompt_format": "selfee", "final_loss": loss.item()})
    )
    return out


def question_file(path: Path, n: int) -> Path:
    """Questions in the SelFee/Vicuna question.jsonl format."""
    rows = [
        {"question_id": i + 1, "text": q, "category": "generic"}
        for i, q in enumerate(QUESTIONS[:n])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompt(i: int = 0) -> str:
    return render_prompt(QUESTIONS[i])
