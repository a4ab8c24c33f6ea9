"""The sampled sequence KL(pi || pi_ref): against exact enumeration, its invariants, and in the trainer."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch

from trl_conservative.kl import SequenceKL, sampled_sequence_kl
from trl_conservative.kl.sampling import summarize_rows

pytestmark = pytest.mark.core

VOCAB, EOS = 5, 4


def _tiny_lm(seed: int, *, sharpen: float = 30.0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        eos_token_id=EOS,
        bos_token_id=0,
        pad_token_id=EOS,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)  # peakier next-token distributions: a KL of a few nats
    return model


def _next_logprobs(model: Any, sequence: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([sequence])).logits[0, -1].double().log_softmax(-1)


def _exact_sequence_kl(policy: Any, reference: Any, prompt: list[int], max_new_tokens: int) -> float:
    """sum over every completion y (ended by EOS, or cut at max_new_tokens) of p(y) log p(y)/q(y), enumerated."""
    total = 0.0

    def walk(prefix: list[int], log_p: float, log_q: float) -> None:
        nonlocal total
        lp, lq = _next_logprobs(policy, prompt + prefix), _next_logprobs(reference, prompt + prefix)
        for token in range(VOCAB):
            a, b = log_p + float(lp[token]), log_q + float(lq[token])
            if token == EOS or len(prefix) + 1 == max_new_tokens:
                total += math.exp(a) * (a - b)
            else:
                walk(prefix + [token], a, b)

    walk([], 0.0, 0.0)
    return total


def test_equals_the_enumerated_sequence_kl_within_3_standard_errors() -> None:
    policy, reference = _tiny_lm(0), _tiny_lm(1)
    prompt, length = [0, 1, 2], 4
    exact = _exact_sequence_kl(policy, reference, prompt, length)
    assert exact > 1.0
    estimates = {}
    for samples in (100, 400):
        result = sampled_sequence_kl(
            policy, reference, [prompt], max_new_tokens=length, samples_per_prompt=samples
        )
        assert isinstance(result, SequenceKL) and result.samples == samples
        assert abs(result.mean - exact) < 3 * result.stderr, (samples, result.mean, exact, result.stderr)
        assert 0 <= result.truncated <= 1 and 1 <= result.mean_length <= length
        estimates[samples] = result
    # Four times the samples: the standard error halves (1/sqrt(samples)), within sampling noise.
    ratio = estimates[100].stderr / estimates[400].stderr
    assert 1.6 < ratio < 2.5, ratio


def test_batching_and_left_padding_change_nothing() -> None:
    """Seeded per (prompt, sample): one row at a time or a left-padded batch of prompts of different lengths
    draws the same samples (equal up to float rounding of the padded batch)."""
    policy, reference = _tiny_lm(0), _tiny_lm(1)
    prompts = [[0, 1, 2], [3], [2, 2]]
    kw: dict[str, Any] = {"max_new_tokens": 5, "samples_per_prompt": 3}
    batched = sampled_sequence_kl(policy, reference, prompts, batch_size=9, **kw)
    single = sampled_sequence_kl(policy, reference, prompts, batch_size=1, **kw)
    assert batched.per_prompt == pytest.approx(single.per_prompt, abs=1e-5)
    assert (batched.mean_length, batched.truncated) == (single.mean_length, single.truncated)
    assert batched.mean == pytest.approx(sum(batched.per_prompt) / 3)
    reseeded = sampled_sequence_kl(policy, reference, prompts, batch_size=9, seed=1, **kw)
    assert reseeded.per_prompt != pytest.approx(batched.per_prompt, abs=1e-5)


def test_zero_when_the_policy_is_the_reference() -> None:
    policy = _tiny_lm(0)
    reference = _tiny_lm(0)  # the same weights, another object
    result = sampled_sequence_kl(
        policy, reference, [[0, 1], [2, 3, 1]], max_new_tokens=6, samples_per_prompt=4
    )
    assert result.mean == 0.0 and result.stderr == 0.0 and set(result.per_prompt) == {0.0}


def test_ignores_the_models_generation_config() -> None:
    """Temperature 1, no top-k/top-p, whatever the model's generation config says (instruct models set them)."""
    policy, reference = _tiny_lm(0), _tiny_lm(1)
    plain = sampled_sequence_kl(
        policy, reference, [[0, 1, 2]], max_new_tokens=4, samples_per_prompt=50, seed=3
    )
    policy.generation_config.top_k, policy.generation_config.top_p = 1, 0.1
    policy.generation_config.temperature, policy.generation_config.do_sample = 0.2, False
    again = sampled_sequence_kl(
        policy, reference, [[0, 1, 2]], max_new_tokens=4, samples_per_prompt=50, seed=3
    )
    assert again == plain


def test_peft_adapter_off_equals_an_explicit_reference() -> None:
    from peft import LoraConfig, get_peft_model

    base = _tiny_lm(0)
    reference = _tiny_lm(0)
    policy = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained-looking adapter: LoRA's B starts at 0
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    prompts = [[0, 1, 2], [1, 3]]
    adapter_off = sampled_sequence_kl(policy, None, prompts, max_new_tokens=5, samples_per_prompt=8)
    explicit = sampled_sequence_kl(policy, reference, prompts, max_new_tokens=5, samples_per_prompt=8)
    assert adapter_off.mean > 1e-3
    assert adapter_off.mean == pytest.approx(explicit.mean, abs=1e-5)
    assert adapter_off.per_prompt == pytest.approx(explicit.per_prompt, abs=1e-5)


def test_rejects_bad_arguments() -> None:
    policy = _tiny_lm(0)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0"):
        sampled_sequence_kl(policy, policy, [[0]], max_new_tokens=0)
    with pytest.raises(ValueError, match="not a PEFT model"):
        sampled_sequence_kl(policy, None, [[0]], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampled_sequence_kl(policy, policy, [[0], []], max_new_tokens=2)


def test_summary_statistics() -> None:
    # Two prompts x two samples: (kl, length, truncated).
    table = torch.tensor([[[1.0, 3, 0], [3.0, 4, 1]], [[0.0, 2, 0], [2.0, 4, 1]]], dtype=torch.float64)
    result = summarize_rows(table)
    assert result.per_prompt == (2.0, 1.0) and result.mean == 1.5
    # Fixed prompts: Var(mean) = (s_1^2 + s_2^2) / k / n^2 with s_i^2 = 2 each.
    assert result.stderr == pytest.approx(math.sqrt((2 + 2) / 2) / 2)
    assert (result.truncated, result.mean_length, result.samples) == (0.5, 3.25, 4)
    one = summarize_rows(table[:, :1])  # one sample per prompt: the spread over prompts
    assert one.stderr == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert math.isnan(summarize_rows(table[:1, :1]).stderr)


# --- in the trainer ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_trainer_logs_the_sequence_kl_at_each_evaluation(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    args = make_config(
        max_steps=4,
        learning_rate=5e-2,
        eval_strategy="steps",
        eval_steps=4,
        eval_on_start=True,
        kl_sequence_prompts=3,
        kl_sequence_max_new_tokens=8,
        kl_sequence_samples_per_prompt=2,
    )
    evalset = tiny_dataset.select(range(6))
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=args, train_dataset=tiny_dataset, eval_dataset=evalset
    )
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_kl/sequence" in h]
    assert [h["step"] for h in evals] == [0, 4]
    start, end = evals
    assert start["eval_kl/sequence"] == 0.0 and start["eval_sampled/kl_stderr"] == 0.0
    assert end["eval_kl/sequence"] > 0 and end["eval_sampled/kl_stderr"] > 0
    assert 0 <= end["eval_sampled/truncated"] <= 1 and 1 <= end["eval_sampled/length"] <= 8
    # The same number from the public function on the trainer's models and the eval prompts (same seed).
    prompts = list(dict.fromkeys(tuple(p) for p in trainer.eval_dataset[trainer.PROMPT_COLUMN]))[:3]
    direct = sampled_sequence_kl(
        trainer.model,
        trainer.ref_model,
        [list(p) for p in prompts],
        max_new_tokens=8,
        samples_per_prompt=2,
        seed=args.seed,
        eos_token_id=trainer.processing_class.eos_token_id,
        pad_token_id=trainer.processing_class.pad_token_id,
    )
    assert direct.mean == pytest.approx(end["eval_kl/sequence"], rel=1e-5)


@pytest.mark.slow
def test_reference_free_run_says_once_that_there_is_no_sequence_kl(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    args = make_config(
        max_steps=2, loss_type="simpo", eval_strategy="steps", eval_steps=1, kl_exact_steps=0, kl_drift=False
    )
    with caplog.at_level(logging.WARNING):
        trainer = ConservativeDPOTrainer(
            str(tiny_model_dir),
            args=args,
            train_dataset=tiny_dataset,
            eval_dataset=tiny_dataset.select(range(4)),
        )
        trainer.train()
    notes = [r.getMessage() for r in caplog.records if "kl/sequence" in r.getMessage()]
    assert len(notes) == 1 and "reference-free" in notes[0]
    assert not [k for h in trainer.state.log_history for k in h if "kl/" in k]
