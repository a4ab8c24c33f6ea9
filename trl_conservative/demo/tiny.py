"""Tiny, offline models and tokenizers: random init, built in code, saved locally. No hub access.

Used by the tests, by `trl_conservative.testing` for plugin authors, by the embedded default run and by the
benchmarks. The tokenizer is character-level over printable ASCII, so any text round-trips.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

__all__ = [
    "CHARS",
    "SPECIAL_TOKENS",
    "build_model",
    "build_tokenizer",
    "save_tiny_model",
    "tiny_preference_rows",
]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = string.printable[:-2]  # printable ASCII without \x0b\x0c


def build_tokenizer(vocab_chars: str = CHARS) -> Any:
    """A character-level `PreTrainedTokenizerFast` with pad/bos/eos/unk tokens and a simple chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in dict.fromkeys(vocab_chars):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return fast


def build_model(
    vocab_size: int,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 256,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Any:
    """A randomly initialised Llama-architecture causal LM of the given size (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(
    path: str | Path, *, seed: int = 0, vocab_size: int | None = None, **model_kwargs: Any
) -> Path:
    """Build a tiny tokenizer and model and `save_pretrained` both into `path`; returns the path.

    `vocab_size` (default: the tokenizer's size) may be larger than the tokenizer, to measure large-vocabulary
    costs; the extra rows are simply never the label.
    """
    path = Path(path)
    tokenizer = build_tokenizer()
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(
            f"vocab_size must be >= the tokenizer's {len(tokenizer)} tokens, got {vocab_size!r}."
        )
    model = build_model(vocab_size or len(tokenizer), seed=seed, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_preference_rows(n: int = 16, seed: int = 0) -> list[dict[str, str]]:
    """`n` prompt/chosen/rejected rows of a toy task: the chosen answer sums two digits correctly."""
    import random

    from .tasks import preference_row

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        wrong = (a + b + rng.randint(1, 5)) % 19
        rows.append(preference_row(a, b, wrong))
    return rows
