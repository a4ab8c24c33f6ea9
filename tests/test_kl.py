"""KL monitoring: the pure measures against independent computations, then the trainer's `kl/...` metrics."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from trl_conservative import ConfigError
from trl_conservative.kl import (
    KLSums,
    LogitTransform,
    exact_token_kl_chunked,
    kl_metrics,
    logit_transform_for,
    token_kl_drift,
)

KL_KEYS = ("kl/exact", "kl/k1", "kl/k3", "kl/logratio_chosen", "kl/logratio_rejected")


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


def test_token_drift_matches_formulas_and_ignores_masked_positions() -> None:
    g = torch.Generator().manual_seed(0)
    pol, ref = -torch.rand(4, 6, generator=g) * 3, -torch.rand(4, 6, generator=g) * 3
    mask = torch.rand(4, 6, generator=g) > 0.5
    drift = token_kl_drift(pol, ref, mask)
    logratio = (pol - ref).double()
    m = mask.double()
    torch.testing.assert_close(drift.k1.double(), (logratio * m).sum(1), rtol=0, atol=1e-5)
    k3 = torch.exp(-logratio) - 1 + logratio
    torch.testing.assert_close(drift.k3.double(), (k3 * m).sum(1), rtol=0, atol=1e-5)
    assert drift.tokens.tolist() == mask.sum(1).float().tolist()
    # Garbage (even inf) at masked positions changes nothing.
    garbage = torch.where(mask, pol, torch.tensor(float("-inf")))
    again = token_kl_drift(garbage, ref, mask)
    assert torch.equal(again.k1, drift.k1) and torch.equal(again.k3, drift.k3)
    assert (drift.k3 >= 0).all()


def test_token_drift_is_exactly_zero_when_equal() -> None:
    logps = -torch.rand(3, 5)
    drift = token_kl_drift(logps, logps.clone(), torch.ones(3, 5))
    assert drift.k1.abs().max() == 0 and drift.k3.abs().max() == 0


def test_token_drift_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        token_kl_drift(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


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


def test_exact_kl_in_bfloat16_weights_stays_close() -> None:
    hp, hq, wp, wq, _, _, mask = _random_heads(seed=5)
    got = exact_token_kl_chunked(hp, hq, mask, policy_weight=wp.bfloat16(), ref_weight=wq.bfloat16())
    assert got.dtype == torch.float32
    expected = (_full_vocab_kl(hp @ wp.T, hq @ wq.T) * mask).sum(1)
    torch.testing.assert_close(got.double(), expected, rtol=0.05, atol=0.05)


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
        k1=torch.tensor([0.2, -0.3, 0.1, 0.8]),
        k3=torch.tensor([0.02, 0.03, 0.01, 0.04]),
        exact=torch.tensor([0.4, 0.6, 0.2, 0.8]),
    )
    names, table = sums.pair_table()
    assert table.shape == (2, 8)
    metrics = kl_metrics(names, table)
    assert metrics == pytest.approx(
        {
            "kl/k1": (0.2 - 0.3 + 0.1 + 0.8) / 10,
            "kl/k3": 0.10 / 10,
            "kl/exact": 2.0 / 10,
            "kl/logratio_chosen": (0.2 - 0.3) / 2,
            "kl/logratio_rejected": (0.1 + 0.8) / 2,
        }
    )
    # Splitting the pairs over two "processes" and concatenating gives the same metrics.
    halves = torch.cat([table[:1], table[1:]])
    assert kl_metrics(names, halves) == pytest.approx(metrics)
    # Without tokens nothing token-weighted is reported.
    empty = KLSums(tokens=torch.zeros(2), k1=torch.zeros(2))
    assert set(kl_metrics(*empty.pair_table())) == {"kl/logratio_chosen", "kl/logratio_rejected"}


# --- config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kl_exact_steps", -1, "kl_exact_steps must be an integer >= 0, got -1"),
        ("kl_exact_steps", 2.5, "kl_exact_steps must be an integer >= 0, got 2.5"),
        ("kl_chunk_size", 0, "kl_chunk_size must be an integer >= 1 .*got 0"),
        ("kl_drift", "yes", "kl_drift must be True or False, got 'yes'"),
    ],
)
def test_config_rejects_bad_kl_settings(make_config: Any, field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(**{field: value})


def test_plain_dpo_config_gets_kl_defaults() -> None:
    from trl import DPOConfig

    from trl_conservative.config import KL_CHUNK_SIZE_DEFAULT, KL_EXACT_STEPS_DEFAULT, kl_settings

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
    """Every KL measure from full logits of both models (float64), over the completion tokens of the batch."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        z_p, z_q = policy(**kw).logits[:, :-1], reference(**kw).logits[:, :-1]
    logp, logq = F.log_softmax(z_p.double(), -1), F.log_softmax(z_q.double(), -1)
    mask = batch["completion_mask"][:, 1:].double()
    exact = (logp.exp() * (logp - logq)).sum(-1)
    target = batch["input_ids"][:, 1:, None]
    logratio = (logp.gather(-1, target) - logq.gather(-1, target)).squeeze(-1)
    k3 = torch.exp(-logratio) - 1 + logratio
    tokens = mask.sum()
    seq = (logratio * mask).sum(1)
    chosen, rejected = seq.chunk(2)
    return {
        "kl/exact": float((exact * mask).sum() / tokens),
        "kl/k1": float(seq.sum() / tokens),
        "kl/k3": float((k3 * mask).sum() / tokens),
        "kl/logratio_chosen": float(chosen.mean()),
        "kl/logratio_rejected": float(rejected.mean()),
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
    for key in KL_KEYS:
        assert first[key] == pytest.approx(0.0, abs=1e-6), key
    assert last["kl/exact"] > 1e-4 and last["kl/k3"] > 1e-4
    assert last["kl/logratio_chosen"] != 0 and last["kl/logratio_rejected"] != 0
    assert all(h["kl/exact"] >= 0 and h["kl/k3"] >= 0 for h in logs)
    # The log-ratios are the implicit rewards divided by beta.
    assert last["kl/logratio_chosen"] == pytest.approx(last["rewards/chosen"] / args.beta, rel=1e-4, abs=1e-6)


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
def test_exact_kl_every_n_steps_and_off_switches(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=make_config(max_steps=4, kl_exact_steps=2), train_dataset=tiny_dataset
    )
    trainer.train()
    # Computed at global steps 0 and 2, i.e. in the logs of steps 1 and 3; the drift measures every step.
    assert [h["step"] for h in _logs_with(trainer, "kl/exact")] == [1, 3]
    assert [h["step"] for h in _logs_with(trainer, "kl/k3")] == [1, 2, 3, 4]

    off = ConservativeDPOTrainer(
        str(tiny_model_dir),
        args=make_config(max_steps=2, kl_exact_steps=0, kl_drift=False),
        train_dataset=tiny_dataset,
    )
    off.train()
    assert not [k for h in off.state.log_history for k in h if k.startswith("kl/")]


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
    assert set(KL_KEYS) <= set(logs[0])  # default kl_exact_steps=10: computed at step 0
    assert "kl/exact" not in logs[1] and "kl/k1" in logs[1]


@pytest.mark.slow
def test_peft_reference_is_the_adapter_disabled(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from peft import LoraConfig

    from trl_conservative import ConservativeDPOTrainer

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = make_config(max_steps=3, learning_rate=5e-2, kl_exact_steps=1, per_device_eval_batch_size=8)
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
    assert "kl/exact" in warnings[0] and "kl/k3" in warnings[0] and "ref_model" in warnings[0]
    live_logs, pre_logs = _logs_with(live, "loss"), _logs_with(pre, "loss")
    for a, b in zip(live_logs, pre_logs, strict=True):
        assert "kl/exact" not in b and "kl/k3" not in b
        # k1 and the log-ratios from the precomputed sums equal the per-token values of the live run.
        for key in ("kl/k1", "kl/logratio_chosen", "kl/logratio_rejected"):
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
        trainer = ConservativeDPOTrainer(str(tiny_model_dir), args=args, train_dataset=tiny_dataset, **kw)
        trainer.train()
        return _logs_with(trainer, "loss")

    live, pre = run(precompute=False), run(precompute=True)
    assert [h["kl/exact"] for h in pre] == pytest.approx([h["kl/exact"] for h in live], abs=1e-6)
    assert pre[0]["kl/exact"] == pytest.approx(0.0, abs=1e-7) and pre[-1]["kl/exact"] > 1e-4
    assert all("kl/k3" not in h for h in pre)
