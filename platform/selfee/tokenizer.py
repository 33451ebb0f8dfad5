"""Tokenizers: the tiny model's own (trained on the run's text) and HF ones for real models.

The tiny tokenizer is byte-level BPE (the `tokenizers` library), so every string round-trips,
and the SelFee headers and verdict phrases are added tokens: one token each, whatever the
training text looked like, which also keeps revision control's stop strings cheap to spot.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from selfee import chain

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "[PAD]"  # [PAD]: the token SelFee added to LLaMA
SELFEE_PHRASES = [
    chain.INSTRUCTION_HEADER,
    chain.INPUT_HEADER,
    chain.ANSWER_HEADER,
    chain.FEEDBACK,
    chain.REVISION,
    chain.VERDICT_NEEDED,
    chain.VERDICT_NOT_NEEDED,
]


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, UNK, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(p, normalized=False) for p in SELFEE_PHRASES])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def raw_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A model's tokenizer as it is, for inference (vLLM loads it so): no ``[PAD]`` added
    where the model has no row for one (``load_tokenizer`` adds it for training), so text
    that reads "[PAD]" stays text instead of an id the model has no row for."""
    return AutoTokenizer.from_pretrained(str(path), use_fast=True)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a model directory, with a pad token (``[PAD]`` if it had none).

    Label masking needs character offsets, which only fast tokenizers give.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: need a fast tokenizer (tokenizer.json) for label masking")
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer
