"""`sampled_sequence_kl` refuses misuse with one `ValueError` naming the argument and the bad value, before any
generation (issue 20 family 9): empty prompts gave NaN; strings, out-of-vocabulary ids, two vocabularies and prompts
beyond the context gave raw torch errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trl_conservative.kl import sampled_sequence_kl

pytestmark = pytest.mark.core

VOCAB, CONTEXT = 12, 16


def _llama(vocab: int = VOCAB, context: int = CONTEXT, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def _gpt2(vocab: int = VOCAB, context: int = CONTEXT) -> Any:
    """Learned absolute positions: a position past the context is an IndexError in torch."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=context, eos_token_id=2, bos_token_id=1
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {"policy": _llama(), "reference": _llama(seed=1), "gpt2": _gpt2(), "wide": _llama(vocab=VOCAB + 4)}


@pytest.fixture
def no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any forward at all fails the test: the checks come before generation."""
    from trl_conservative.kl import sampling

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a forward ran before the arguments were checked")

    monkeypatch.setattr(sampling, "_sample_batch", refuse)


CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("empty-list", "policy", {"prompts": []}, ["prompts is empty", "at least one", "input_ids"]),
    ("empty-tuple", "policy", {"prompts": ()}, ["prompts is empty"]),
    ("empty-prompt", "policy", {"prompts": [[3], []]}, ["prompt 1 is empty", "prompts[1] = []"]),
    (
        "empty-tensor-prompt",
        "policy",
        {"prompts": [torch.tensor([], dtype=torch.long)]},
        ["prompt 0 is empty"],
    ),
    (
        "str-prompts",
        "policy",
        {"prompts": "What is 2+2?"},
        ["prompts is a str", "'What is 2+2?'", "tokenizer"],
    ),
    ("str-prompt", "policy", {"prompts": [[3, 4], "hello"]}, ["prompt 1 is a str", "'hello'", "tokenizer"]),
    ("bytes-prompt", "policy", {"prompts": [b"hi"]}, ["prompt 0 is a bytes", "tokenizer"]),
    ("list-of-str", "policy", {"prompts": [["3", "4"]]}, ["prompt 0 holds '3'", "prompts[0][0]", "token id"]),
    ("flat-ids", "policy", {"prompts": [3, 4, 5]}, ["prompt 0 is an int", "prompts[0] = 3", "[[3, ...]]"]),
    ("float-id", "policy", {"prompts": [[3, 4.0]]}, ["prompt 0 holds 4.0", "float", "prompts[0][1]"]),
    ("none-id", "policy", {"prompts": [[3, None]]}, ["prompt 0 holds None", "prompts[0][1]"]),
    ("float-tensor", "policy", {"prompts": [torch.tensor([3.0, 4.0])]}, ["prompt 0 is a 1-D torch.float32"]),
    ("oov-high", "policy", {"prompts": [[3, 4], [5, VOCAB]]}, [f"token id {VOCAB}", "prompts[1][1]", "0-11"]),
    ("oov-negative", "policy", {"prompts": [[-1, 4]]}, ["token id -1", "prompts[0][0]", "vocabulary of 12"]),
    ("oov-huge", "policy", {"prompts": [[50256]]}, ["token id 50256", "tokenizer"]),
    ("oov-tensor", "policy", {"prompts": torch.tensor([[3, 99]])}, ["token id 99", "prompts[0][1]"]),
    ("oov-pad", "policy", {"prompts": [[3]], "pad_token_id": 40}, ["pad_token_id 40", "vocabulary of 12"]),
    ("oov-eos-as-pad", "policy", {"prompts": [[3]], "eos_token_id": 77}, ["eos_token_id 77", "pad_token_id"]),
    ("vocab-mismatch", "wide", {"prompts": [[3, 4]]}, ["reference has a vocabulary of 16", "policy 12"]),
    ("too-long", "policy", {"prompts": [[3] * (CONTEXT + 1)]}, ["prompt 0 has 17 tokens", "context of 16"]),
    (
        "too-long-2nd",
        "policy",
        {"prompts": [[3], [4] * 40]},
        ["prompt 1 has 40 tokens", "max_position_embeddings"],
    ),
    ("too-long-gpt2", "gpt2", {"prompts": [[3] * 20]}, ["prompt 0 has 20 tokens", "context of 16"]),
    (
        "gpt2-completion-past-context",
        "gpt2",
        {"prompts": [[3] * 14], "max_new_tokens": 5},
        ["max_new_tokens=5", "18 positions", "context of 16", "lower max_new_tokens to 3"],
    ),
    ("prompts-not-a-list", "policy", {"prompts": 7}, ["prompts must be a list of token-id lists", "int"]),
    ("prompts-3d-tensor", "policy", {"prompts": torch.zeros(1, 2, 3, dtype=torch.long)}, ["3-D tensor"]),
]


@pytest.mark.parametrize(("case", "which", "kwargs", "phrases"), CASES, ids=[c[0] for c in CASES])
def test_misuse_is_one_value_error_before_generation(
    models: dict[str, Any],
    no_generation: None,
    case: str,
    which: str,
    kwargs: dict[str, Any],
    phrases: list[str],
) -> None:
    policy = models["gpt2"] if which == "gpt2" else models["policy"]
    reference = {"gpt2": policy, "wide": models["wide"]}.get(which, models["reference"])
    kwargs = {"max_new_tokens": 2, **kwargs}
    prompts = kwargs.pop("prompts")
    with pytest.raises(ValueError) as raised:
        sampled_sequence_kl(policy, reference, prompts, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, (phrase, message)


def test_the_empty_prompt_list_was_nan_and_is_refused_by_the_row_api_too(models: dict[str, Any]) -> None:
    from trl_conservative.kl.sampling import sequence_kl_rows

    with pytest.raises(ValueError, match="prompts is empty"):
        sequence_kl_rows(models["policy"], models["reference"], [], [], max_new_tokens=2)


def test_valid_prompts_of_every_accepted_form_still_sample(models: dict[str, Any]) -> None:
    import numpy as np

    policy, reference = models["policy"], models["reference"]
    forms: list[Any] = [
        [[3, 4], [5]],
        ((3, 4), (5,)),
        [torch.tensor([3, 4]), torch.tensor([5])],
        [np.array([3, 4]), [np.int64(5)]],
        torch.tensor([[3, 4], [5, 6]]),
        [[3] * CONTEXT],  # a prompt filling the context: rotary positions go on past it without an error
        [[0, VOCAB - 1]],  # the first and the last id
    ]
    for prompts in forms:
        result = sampled_sequence_kl(policy, reference, prompts, max_new_tokens=3, samples_per_prompt=2)
        assert result.samples == 2 * len(prompts)
        assert result.mean >= 0.0


def test_gpt2_prompt_and_completion_exactly_filling_the_context_samples(models: dict[str, Any]) -> None:
    gpt2 = models["gpt2"]
    result = sampled_sequence_kl(gpt2, gpt2, [[3] * 14], max_new_tokens=3, eos_token_id=[], pad_token_id=0)
    assert result.mean == pytest.approx(0.0, abs=1e-6)
    assert result.mean_length == 3.0
