"""A tiny GPT-2 and tokenizer built in seconds, for tests that need a real model."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = [
    "the",
    "food",
    "was",
    "great",
    "good",
    "bad",
    "awful",
    "lovely",
    "terrible",
    "room",
    "staff",
    "friendly",
    "rude",
    "clean",
    "dirty",
    "phone",
    "battery",
    "screen",
    "film",
    "plot",
    "actors",
    "book",
    "story",
    "hotel",
    "service",
    "fast",
    "slow",
    "and",
    "but",
    "very",
    "not",
    "really",
    "quite",
    "a",
    "an",
    "is",
    "it",
    "this",
    "my",
    "new",
    "old",
    "i",
    "liked",
    "hated",
    "enjoyed",
]


def tiny_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
        for _ in range(n)
    ]


def build_tiny_model(
    out_dir: Path,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
) -> Path:
    """Save a randomly initialised GPT-2 (2 layers by default) and a byte-level BPE
    tokenizer. vLLM's CPU build wants a head size of 32 or 64 (n_embd / n_head)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(tiny_corpus(seed=seed), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=fast.eos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
