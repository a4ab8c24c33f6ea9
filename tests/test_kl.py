"""KL monitoring: the pure measures against independent computations, then the trainer's `kl/...` metrics."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from batches import joined

from trl_conservative import ConfigError
from trl_conservative.kl import (
    KLSums,
    LogitTransform,
    exact_token_kl_chunked,
    kl_metrics,
    logged_metric_names,
    logit_transform_for,
    logratio_sums,
)

pytestmark = pytest.mark.core

KL_KEYS = ("kl/exact", "kl/exact_chosen", "kl/exact_rejected")
LOGRATIO_KEYS = (
    "logratio/chosen",
    "logratio/rejected",
    "logratio/chosen_per_token",
    "logratio/rejected_per_token",
)


# --- pure functions ----------------------------------------------------------------------------------------
def _full_vocab_kl(z_p: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Independent reference: sum_v p (log p - log q), in float64, per position."""
    logp, logq = F.log_softmax(z_p.double(), -1), F.log_softmax(z_q.double(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _random_heads(seed: int = 0, rows: int = 3, tokens: int = 7, hidden: int = 8, vocab: int = 50) -> Any:
    g = torch.Generator().manual_seed(seed)
    hp, hq = torch.randn(rows, tokens, hidden, generator=g), torch.randn(rows, tokens, hidden, generator=g)
    wp, wq = torch.randn(vocab, hidden, generator=g), torch.randn(vocab, hidden, generator=g)
    bp, bq = torch.randn(vocab, generator=g), torch.randn(vocab, generator=g)
    mask = torch.rand(rows, tokens, generator=g) > 0.4
    mask[0, 0] = True
    return hp, hq, wp, wq, bp, bq, mask


def test_logratio_sums_match_the_formula_and_ignore_masked_positions() -> None:
    g = torch.Generator().manual_seed(0)
    pol, ref = -torch.rand(4, 6, generator=g) * 3, -torch.rand(4, 6, generator=g) * 3
    mask = torch.rand(4, 6, generator=g) > 0.5
    got = logratio_sums(pol, ref, mask)
    torch.testing.assert_close(got.double(), ((pol - ref).double() * mask.double()).sum(1), rtol=0, atol=1e-5)
    # Garbage (even -inf, as a float16 log-prob can underflow to) at masked positions changes nothing.
    garbage = torch.where(mask, pol, torch.tensor(float("-inf")))
    assert torch.equal(logratio_sums(garbage, ref, mask), got)
    assert logratio_sums(pol, pol.clone(), mask).abs().max() == 0


def test_logratio_sums_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        logratio_sums(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_logged_metric_names_are_true_kls_or_named_log_ratios() -> None:
    everything = logged_metric_names(exact=True, logratio=True, sequence=True, evaluates=True)
    assert "kl/exact" in everything and "eval_kl/sequence" in everything and "kl/sequence" not in everything
    for name in everything:
        base = name.removeprefix("eval_")
        assert base.split("/")[0] in {"kl", "logratio", "sampled"}, name
    assert logged_metric_names(exact=False, logratio=False, sequence=True, evaluates=False) == frozenset()


def test_exact_kl_matches_full_vocabulary_computation() -> None:
    hp, hq, wp, wq, bp, bq, mask = _random_heads()
    got = exact_token_kl_chunked(hp, hq, mask, policy_weight=wp, ref_weight=wq, policy_bias=bp, ref_bias=bq)
    per_token = _full_vocab_kl(hp @ wp.T + bp, hq @ wq.T + bq)
    expected = (per_token * mask).sum(1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert (got > 0).all()


def test_exact_kl_direction_is_policy_to_reference() -> None:
    """KL(pi || pi_ref), not KL(pi_ref || pi): the two differ for asymmetric distributions."""
    hp, hq, wp, wq, _, _, mask = _random_heads(seed=3)
    got = exact_token_kl_chunked(hp, hq, mask, policy_weight=wp, ref_weight=wq)
    forward = (_full_vocab_kl(hp @ wp.T, hq @ wq.T) * mask).sum(1)
    backward = (_full_vocab_kl(hq @ wq.T, hp @ wp.T) * mask).sum(1)
    torch.testing.assert_close(got.double(), forward, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got.double(), backward, rtol=1e-2)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 10_000])
def test_exact_kl_does_not_depend_on_chunk_size(chunk_size: int) -> None:
    hp, hq, wp, wq, bp, bq, mask = _random_heads(seed=1)
    kw = dict(policy_weight=wp, ref_weight=wq, policy_bias=bp, ref_bias=bq)
    base = exact_token_kl_chunked(hp, hq, mask, chunk_size=3, **kw)
    torch.testing.assert_close(exact_token_kl_chunked(hp, hq, mask, chunk_size=chunk_size, **kw), base)


def test_exact_kl_is_zero_for_identical_models_and_never_negative() -> None:
    hp, _, wp, _, bp, _, mask = _random_heads(seed=2)
    same = exact_token_kl_chunked(
        hp, hp.clone(), mask, policy_weight=wp, ref_weight=wp.clone(), policy_bias=bp, ref_bias=bp.clone()
    )
    assert same.abs().max() == 0
    # Nearly identical models: the true KL is ~1e-12, below float32 rounding; the result is clamped, not < 0.
    near = exact_token_kl_chunked(hp, hp + 1e-7, mask, policy_weight=wp, ref_weight=wp)
    assert (near >= 0).all() and near.max() < 1e-6


def test_exact_kl_applies_logit_scale_and_softcap() -> None:
    hp, hq, wp, wq, _, _, mask = _random_heads(seed=4)
    tp, tq = LogitTransform(scale=0.5, softcap=3.0), LogitTransform(scale=2.0)
    got = exact_token_kl_chunked(
        hp, hq, mask, policy_weight=wp, ref_weight=wq, policy_transform=tp, ref_transform=tq
    )
    z_p = 3.0 * torch.tanh((hp @ wp.T) * 0.5 / 3.0)
    z_q = (hq @ wq.T) * 2.0
    torch.testing.assert_close(got.double(), (_full_vocab_kl(z_p, z_q) * mask).sum(1), rtol=1e-5, atol=1e-5)


def test_exact_kl_projects_bfloat16_heads_in_float32() -> None:
    """A bf16 head is projected in float32: the result equals the float64 KL of the bf16-rounded weights."""
    hp, hq, wp, wq, _, _, mask = _random_heads(seed=5)
    wp16, wq16 = wp.bfloat16(), wq.bfloat16()
    got = exact_token_kl_chunked(hp.bfloat16(), hq.bfloat16(), mask, policy_weight=wp16, ref_weight=wq16)
    assert got.dtype == torch.float32
    hp64, hq64 = hp.bfloat16().double(), hq.bfloat16().double()
    expected = (_full_vocab_kl(hp64 @ wp16.double().T, hq64 @ wq16.double().T) * mask).sum(1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    # A bf16 projection would not be this close: its logits are rounded to 3 significant digits.
    rounded = (
        _full_vocab_kl((hp.bfloat16() @ wp16.T).double(), (hq.bfloat16() @ wq16.T).double()) * mask
    ).sum(1)
    assert (rounded - expected).abs().max() > 1e-4


def test_exact_kl_rejects_bad_arguments() -> None:
    hp, hq, wp, wq, _, _, mask = _random_heads()
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        exact_token_kl_chunked(hp, hq, mask, policy_weight=wp, ref_weight=wq, chunk_size=0)
    with pytest.raises(ValueError, match="vocabularies differ"):
        exact_token_kl_chunked(hp, hq, mask, policy_weight=wp, ref_weight=wq[:10])


def test_logit_transform_read_from_config() -> None:
    from transformers import Gemma2Config, LlamaConfig

    assert logit_transform_for(LlamaConfig()) == LogitTransform()
    gemma = logit_transform_for(Gemma2Config(final_logit_softcapping=30.0))
    assert gemma == LogitTransform(scale=1.0, softcap=30.0)
    odd = LlamaConfig()
    odd.logits_scaling = 8.0
    with pytest.raises(ValueError, match="logits_scaling=8.0"):
        logit_transform_for(odd)


def test_pair_table_and_metrics() -> None:
    # Two pairs: rows are [chosen0, chosen1, rejected0, rejected1].
    sums = KLSums(
        tokens=torch.tensor([2.0, 3.0, 1.0, 4.0]),
        logratio=torch.tensor([0.2, -0.3, 0.1, 0.8]),
        exact=torch.tensor([0.4, 0.6, 0.2, 0.8]),
    )
    names, table = sums.pair_table()
    assert table.shape == (2, 6)
    metrics = kl_metrics(names, table)
    assert metrics == pytest.approx(
        {
            "kl/exact": 2.0 / 10,
            "kl/exact_chosen": 1.0 / 5,
            "kl/exact_rejected": 1.0 / 5,
            "logratio/chosen": (0.2 - 0.3) / 2,
            "logratio/rejected": (0.1 + 0.8) / 2,
            "logratio/chosen_per_token": (0.2 - 0.3) / 5,
            "logratio/rejected_per_token": (0.1 + 0.8) / 5,
        }
    )
    # Splitting the pairs over two "processes" and concatenating gives the same metrics.
    halves = torch.cat([table[:1], table[1:]])
    assert kl_metrics(names, halves) == pytest.approx(metrics)
    # Without tokens nothing token-weighted is reported.
    empty = KLSums(tokens=torch.zeros(2), logratio=torch.zeros(2))
    assert set(kl_metrics(*empty.pair_table())) == {"logratio/chosen", "logratio/rejected"}


# --- config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kl_exact_steps", -1, "kl_exact_steps must be an integer >= 0, got -1"),
        ("kl_exact_steps", 2.5, "kl_exact_steps must be an integer >= 0, got 2.5"),
        ("kl_chunk_size", 0, "kl_chunk_size must be an integer >= 1, got 0. Tokens per chunk"),
        ("kl_drift", "yes", "kl_drift must be True or False, got 'yes'"),
        ("kl_sequence_prompts", -1, "kl_sequence_prompts must be an integer >= 0, got -1"),
        ("kl_sequence_max_new_tokens", 0, "kl_sequence_max_new_tokens must be an integer >= 1, got 0"),
        ("kl_sequence_samples_per_prompt", 1.5, "kl_sequence_samples_per_prompt must be an integer >= 1"),
    ],
)
def test_config_rejects_bad_kl_settings(make_config: Any, field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(**{field: value})


def test_plain_dpo_config_gets_kl_defaults() -> None:
    from trl import DPOConfig

    from trl_conservative.kl.settings import KL_CHUNK_SIZE_DEFAULT, KL_EXACT_STEPS_DEFAULT, kl_settings

    settings = kl_settings(DPOConfig(output_dir="unused", use_cpu=True, report_to="none"))
    assert (settings.exact_steps, settings.chunk_size, settings.drift) == (
        KL_EXACT_STEPS_DEFAULT,
        KL_CHUNK_SIZE_DEFAULT,
        True,
    )


# --- the trainer -------------------------------------------------------------------------------------------
def _logs_with(trainer: Any, key: str) -> list[dict[str, Any]]:
    return [h for h in trainer.state.log_history if key in h]


def _independent_kl(policy: Any, reference: Any, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every KL and log-ratio metric from full logits of both models (float64), over the batch's completion tokens."""
    batch = joined(batch)
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        z_p, z_q = policy(**kw).logits[:, :-1], reference(**kw).logits[:, :-1]
    logp, logq = F.log_softmax(z_p.double(), -1), F.log_softmax(z_q.double(), -1)
    mask = batch["completion_mask"][:, 1:].double()
    exact = ((logp.exp() * (logp - logq)).sum(-1) * mask).sum(1)
    target = batch["input_ids"][:, 1:, None]
    logratio = ((logp.gather(-1, target) - logq.gather(-1, target)).squeeze(-1) * mask).sum(1)
    tokens = mask.sum(1)
    (exact_c, exact_r), (lr_c, lr_r), (tok_c, tok_r) = exact.chunk(2), logratio.chunk(2), tokens.chunk(2)
    return {
        "kl/exact": float(exact.sum() / tokens.sum()),
        "kl/exact_chosen": float(exact_c.sum() / tok_c.sum()),
        "kl/exact_rejected": float(exact_r.sum() / tok_r.sum()),
        "logratio/chosen": float(lr_c.mean()),
        "logratio/rejected": float(lr_r.mean()),
        "logratio/chosen_per_token": float(lr_c.sum() / tok_c.sum()),
        "logratio/rejected_per_token": float(lr_r.sum() / tok_r.sum()),
    }


def _eval_batch(trainer: Any) -> dict[str, torch.Tensor]:
    batch = next(iter(trainer.get_eval_dataloader()))
    return trainer._prepare_inputs(batch)


@pytest.mark.slow
def test_kl_is_zero_at_init_then_positive(tiny_model_dir: Any, tiny_dataset: Any, make_config: Any) -> None:
    from trl_conservative import ConservativeDPOTrainer

    args = make_config(
        max_steps=4, learning_rate=1e-2, kl_exact_steps=1, loss_type="cdpo", label_smoothing=0.1
    )
    trainer = ConservativeDPOTrainer(str(tiny_model_dir), args=args, train_dataset=tiny_dataset)
    trainer.train()
    logs = _logs_with(trainer, "loss")
    assert len(logs) == 4
    first, last = logs[0], logs[-1]
    # Step 1's forward runs before the first update: policy == reference, every KL and log-ratio exactly 0.
    for key in KL_KEYS + LOGRATIO_KEYS:
        assert first[key] == 0.0, key
    assert last["kl/exact"] > 1e-4 and last["kl/exact_chosen"] > 0 and last["kl/exact_rejected"] > 0
    assert last["logratio/chosen"] != 0 and last["logratio/rejected"] != 0
    assert all(h[key] >= 0 for h in logs for key in KL_KEYS)
    # The pooled token KL is the token-weighted mean of the two sides: it lies between them.
    low, high = sorted((last["kl/exact_chosen"], last["kl/exact_rejected"]))
    assert low <= last["kl/exact"] <= high
    # The log-ratios are the implicit rewards divided by beta.
    assert last["logratio/chosen"] == pytest.approx(last["rewards/chosen"] / args.beta, rel=1e-4, abs=1e-6)
    assert not [k for h in logs for k in h if k.startswith("kl/") and k not in KL_KEYS]


@pytest.mark.slow
def test_every_kl_is_non_negative_while_training_hard_and_zero_at_step_0(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    """A high learning rate drives rejected log-ratios far below 0; every `kl/` value stays >= 0 (0 at step 0)."""
    from trl_conservative import ConservativeDPOTrainer

    args = make_config(
        max_steps=8,
        learning_rate=0.1,
        kl_exact_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        eval_on_start=True,
        kl_sequence_prompts=4,
        kl_sequence_max_new_tokens=6,
    )
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=args, train_dataset=tiny_dataset, eval_dataset=tiny_dataset.select(range(4))
    )
    trainer.train()
    history = trainer.state.log_history
    kl_values = [
        (h["step"], k, v) for h in history for k, v in h.items() if k.removeprefix("eval_").startswith("kl/")
    ]
    assert {k for _, k, _ in kl_values} >= {"kl/exact", "eval_kl/exact", "eval_kl/sequence"}
    assert all(v >= 0 for _, _, v in kl_values), kl_values
    at_start = [(k, v) for step, k, v in kl_values if step == 0]
    assert at_start and all(v == 0.0 for _, v in at_start), at_start
    assert min(h["logratio/rejected"] for h in history if "logratio/rejected" in h) < -1  # trained hard
    assert history[-1]["step"] == 8 or any(h.get("step") == 8 for h in history)


@pytest.mark.slow
def test_logged_exact_kl_describes_the_policy_of_its_window(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    """Logging and exact KL every N steps: the first logged value is > 0 and equals an independent full-vocabulary
    KL between the reference and the policy as it was on the window's last step, on that step's batch."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    from trl_conservative import ConservativeDPOTrainer

    n = 3
    # float32 end to end (DPOConfig turns bf16 autocast on by default, even on a CPU): equal to float rounding.
    args = make_config(max_steps=n, logging_steps=n, kl_exact_steps=n, learning_rate=5e-2, bf16=False)
    trainer = ConservativeDPOTrainer(str(tiny_model_dir), args=args, train_dataset=tiny_dataset)
    seen: dict[str, Any] = {}

    class Snapshot(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == n - 1:  # the window's last step, before its update
                seen["weights"] = {k: v.detach().clone() for k, v in kwargs["model"].state_dict().items()}

    original = trainer.compute_loss

    def recording(model: Any, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
        if trainer.state.global_step == n - 1:
            seen["batch"] = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = recording  # type: ignore[method-assign]
    trainer.add_callback(Snapshot())
    trainer.train()
    logs = _logs_with(trainer, "kl/exact")
    assert [h["step"] for h in logs] == [n]
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    policy.load_state_dict(seen["weights"])
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    expected = _independent_kl(policy.eval(), reference.eval(), seen["batch"])
    assert logs[0]["kl/exact"] > 1e-4
    for key in KL_KEYS:
        assert logs[0][key] == pytest.approx(expected[key], abs=1e-5, rel=1e-4), key


@pytest.mark.slow
def test_float16_model_trains_to_the_end_like_stock_trl(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    """TRL's own `test_train_model_dtype`: a float16 model at lr 0.1. Stock DPOTrainer trains it; so do we, with
    the default KL settings, whatever the diagnostics show (they never stop training)."""
    from trl import DPOConfig, DPOTrainer

    from trl_conservative import ConservativeDPOTrainer

    # In float32 compute (bf16 autocast off) the float16 loss itself turns NaN at step 4; stock TRL goes on
    # (transformers' logging_nan_inf_filter logs it as 0.0). The NaN guard halts on the loss by design, so it is
    # switched off here to show that nothing else, diagnostics included, stops training.
    ours = {"nan_guard": False}
    steps = {}
    for name, trainer_class, config_class, extra in (
        ("stock", DPOTrainer, DPOConfig, {}),
        ("ours", ConservativeDPOTrainer, None, ours),
    ):
        args = make_config(
            config_class,
            output_dir=f"{make_config().output_dir}-{name}",
            max_steps=6,
            learning_rate=0.1,
            model_init_kwargs={"dtype": torch.float16},
            **extra,
        )
        trainer = trainer_class(str(tiny_model_dir), args=args, train_dataset=tiny_dataset)
        assert next(trainer.model.parameters()).dtype == torch.float16
        trainer.train()
        steps[name] = trainer.state.global_step
    assert steps == {"stock": 6, "ours": 6}


@pytest.mark.slow
def test_eval_kl_equals_independent_full_vocabulary_computation(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    args = make_config(max_steps=3, learning_rate=1e-2, per_device_eval_batch_size=8, kl_chunk_size=5)
    evalset = tiny_dataset.select(range(8))
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=args, train_dataset=tiny_dataset, eval_dataset=evalset
    )
    trainer.train()
    metrics = trainer.evaluate()
    expected = _independent_kl(trainer.model, trainer.ref_model, _eval_batch(trainer))
    assert expected["kl/exact"] > 1e-3
    for key, value in expected.items():
        assert metrics[f"eval_{key}"] == pytest.approx(value, abs=1e-4), key
    # The chunk size changes nothing (1 token at a time, or the whole batch at once).
    for chunk_size in (1, 10_000):
        trainer.kl = dataclasses.replace(trainer.kl, chunk_size=chunk_size)
        assert trainer.evaluate()["eval_kl/exact"] == pytest.approx(metrics["eval_kl/exact"], abs=1e-6)


@pytest.mark.slow
def test_exact_kl_on_the_last_step_of_each_window_and_off_switches(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=make_config(max_steps=4, kl_exact_steps=2), train_dataset=tiny_dataset
    )
    trainer.train()
    # Computed on steps 2 and 4 themselves (never on an earlier step's forward); log-ratios every step.
    assert [h["step"] for h in _logs_with(trainer, "kl/exact")] == [2, 4]
    assert [h["step"] for h in _logs_with(trainer, "logratio/chosen")] == [1, 2, 3, 4]

    off = ConservativeDPOTrainer(
        str(tiny_model_dir),
        args=make_config(max_steps=2, kl_exact_steps=0, kl_drift=False),
        train_dataset=tiny_dataset,
    )
    off.train()
    assert not [k for h in off.state.log_history for k in h if k.startswith(("kl/", "logratio/"))]


@pytest.mark.slow
def test_plain_dpo_config_and_trl_native_loss_log_kl(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from trl import DPOConfig

    from trl_conservative import ConservativeDPOTrainer

    args = make_config(DPOConfig, max_steps=2, loss_type="hinge")
    trainer = ConservativeDPOTrainer(str(tiny_model_dir), args=args, train_dataset=tiny_dataset)
    assert not trainer.loss_plan.custom
    trainer.train()
    logs = _logs_with(trainer, "loss")
    assert set(LOGRATIO_KEYS) <= set(logs[0]) and set(LOGRATIO_KEYS) <= set(logs[1])
    assert "kl/exact" not in logs[0]  # default kl_exact_steps=10: first computed on step 10


@pytest.mark.slow
def test_peft_reference_is_the_adapter_disabled(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from peft import LoraConfig

    from trl_conservative import ConservativeDPOTrainer

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = make_config(
        max_steps=3, learning_rate=5e-2, kl_exact_steps=1, per_device_eval_batch_size=8, kl_sequence_prompts=0
    )
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir),
        args=args,
        train_dataset=tiny_dataset,
        eval_dataset=tiny_dataset.select(range(8)),
        peft_config=peft_config,
    )
    assert trainer.ref_model is None
    trainer.train()
    logs = _logs_with(trainer, "loss")
    for key in KL_KEYS:
        assert logs[0][key] == pytest.approx(0.0, abs=1e-6), key
    assert logs[-1]["kl/exact"] > 0
    metrics = trainer.evaluate()
    batch = _eval_batch(trainer)
    with trainer.model.disable_adapter():
        ref_logits_model = _FrozenLogits(trainer.model, batch)
    expected = _independent_kl(trainer.model, ref_logits_model, batch)
    assert expected["kl/exact"] > 1e-3
    for key, value in expected.items():
        # abs=1e-4 as promised; rel=1e-3 too: at KL ~ 6e-3 the wrong direction is off by 4e-3 relative, < 1e-4 abs.
        assert metrics[f"eval_{key}"] == pytest.approx(value, abs=1e-4), key
        assert metrics[f"eval_{key}"] == pytest.approx(value, rel=1e-3, abs=1e-7), key


class _FrozenLogits:
    """Logits of a model computed once (e.g. inside `disable_adapter()`), replayed when called."""

    def __init__(self, model: Any, batch: dict[str, torch.Tensor]) -> None:
        batch = joined(batch)
        with torch.no_grad():
            self.logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def __call__(self, **_: Any) -> Any:
        return self


@pytest.mark.slow
def test_precompute_without_reference_warns_once_and_logs_what_it_can(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    kw = dict(max_steps=3, learning_rate=1e-2, kl_exact_steps=1)
    live = ConservativeDPOTrainer(str(tiny_model_dir), args=make_config(**kw), train_dataset=tiny_dataset)
    live.train()
    with caplog.at_level(logging.WARNING):
        pre = ConservativeDPOTrainer(
            str(tiny_model_dir),
            args=make_config(precompute_ref_log_probs=True, **kw),
            train_dataset=tiny_dataset,
        )
        pre.train()
    assert pre.ref_model is None
    warnings = [r.getMessage() for r in caplog.records if "KL monitoring" in r.getMessage()]
    assert len(warnings) == 1
    assert "kl/exact" in warnings[0] and "kl/sequence" in warnings[0] and "ref_model" in warnings[0]
    live_logs, pre_logs = _logs_with(live, "loss"), _logs_with(pre, "loss")
    for a, b in zip(live_logs, pre_logs, strict=True):
        assert "kl/exact" not in b
        # The log-ratios from the precomputed sums equal the per-token values of the live run.
        for key in LOGRATIO_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-5), key


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["ref_model", "peft"])
def test_precompute_with_a_reference_still_computes_exact_kl(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, reference: str
) -> None:
    """With a reference model (or a PEFT adapter to disable), exact-KL steps run one reference forward."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from trl_conservative import ConservativeDPOTrainer

    def run(precompute: bool) -> list[dict[str, Any]]:
        kw: dict[str, Any] = {}
        if reference == "peft":
            kw["peft_config"] = LoraConfig(
                r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
            )
        elif precompute:
            kw["ref_model"] = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        args = make_config(
            max_steps=3, learning_rate=5e-2, kl_exact_steps=1, precompute_ref_log_probs=precompute
        )
        # TRL 0.2x builds the PEFT model before transformers seeds: LoRA's A starts from the global RNG.
        torch.manual_seed(0)
        trainer = ConservativeDPOTrainer(str(tiny_model_dir), args=args, train_dataset=tiny_dataset, **kw)
        trainer.train()
        return _logs_with(trainer, "loss")

    live, pre = run(precompute=False), run(precompute=True)
    assert [h["kl/exact"] for h in pre] == pytest.approx([h["kl/exact"] for h in live], abs=1e-6)
    assert pre[0]["kl/exact"] == pytest.approx(0.0, abs=1e-7) and pre[-1]["kl/exact"] > 1e-4


def test_project_float32_casts_a_half_precision_head_tile_by_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    import trl_conservative.kl.measures as kl

    g = torch.Generator().manual_seed(7)
    hidden, weight, bias = (
        torch.randn(3, 8, generator=g),
        torch.randn(50, 8, generator=g),
        torch.randn(50, generator=g),
    )
    monkeypatch.setattr(kl, "VOCAB_TILE", 7)  # 50 rows: 8 tiles, the last one short
    got = kl.project_float32(hidden, weight.bfloat16(), bias.bfloat16())
    expected = hidden.double() @ weight.bfloat16().double().T + bias.bfloat16().double()
    assert got.dtype == torch.float32 and got.shape == (3, 50)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(kl.project_float32(hidden, weight, bias), F.linear(hidden, weight, bias))
