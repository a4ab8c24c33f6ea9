"""The TRL 0.23-0.28 adapter (`trainer/dpo_loss_adapter.py`) against TRL 0.2x's own code, on the seed's stack.

Runs only where TRL 0.2x is installed (CI's seed-stack venv: TRL 0.23.0, transformers 4.56.1). The rest of the suite
runs there too; these tests hold what only that line can show: our `cdpo` and `ipo` train step for step like TRL
0.2x's native `sigmoid` + `label_smoothing` and `ipo`, and the completion lengths and positions we read from the
batch are the ones TRL's forward scores, truncation included.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from batches import joined

from trl_conservative import ConfigError, ConservativeDPOTrainer
from trl_conservative.trainer.trl_compat import TRL_STACK

pytestmark = [
    pytest.mark.core,
    pytest.mark.skipif(TRL_STACK != "dpo_loss", reason="TRL 0.23-0.28 only (CI's seed-stack venv)"),
]


def _logs(trainer: Any, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h and "loss" in h]


def _train_pair(
    make_config: Any,
    model_dir: Any,
    dataset: Any,
    ours: dict[str, Any],
    native: dict[str, Any],
    **shared: Any,
) -> tuple[Any, Any]:
    from trl import DPOConfig, DPOTrainer

    runs = []
    for name, trainer_class, config_class, kw in (
        ("ours", ConservativeDPOTrainer, None, ours),
        ("native", DPOTrainer, DPOConfig, native),
    ):
        args = make_config(config_class, output_dir=f"{make_config().output_dir}-{name}", **shared, **kw)
        trainer = trainer_class(model=str(model_dir), args=args, train_dataset=dataset)
        trainer.train()
        runs.append(trainer)
    return runs[0], runs[1]


@pytest.mark.slow
@pytest.mark.parametrize("reference_free", [False, True])
def test_cdpo_trains_like_trl_native_sigmoid_with_label_smoothing(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, reference_free: bool
) -> None:
    ours, native = _train_pair(
        make_config,
        tiny_model_dir,
        tiny_dataset,
        ours={"loss_type": "cdpo"},
        native={"loss_type": "sigmoid"},
        label_smoothing=0.2,
        beta=0.5,
        max_steps=5,
        learning_rate=5e-3,
        reference_free=reference_free,
    )
    losses = _logs(ours, "loss")
    assert len(losses) == 5 and losses == _logs(native, "loss")
    if not reference_free:  # policy == reference at step 0
        assert losses[0] == pytest.approx(math.log(2), abs=6e-5)
    assert len(set(losses)) > 2  # it trained: the losses moved
    for key in ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert _logs(ours, key) == pytest.approx(_logs(native, key), abs=1e-6), key
    assert _logs(ours, "logratio/chosen")  # and the drift signals were logged beside them


@pytest.mark.slow
@pytest.mark.parametrize("truncation_mode", ["keep_end", "keep_start"])
def test_ipo_trains_like_trl_native_ipo_with_truncation(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, truncation_mode: str
) -> None:
    """IPO averages each sequence's log-prob over its completion tokens: with `max_length` cutting rows, our lengths
    (read from the batch) must be the tokens TRL's own forward scores, or the losses part."""
    ours, native = _train_pair(
        make_config,
        tiny_model_dir,
        tiny_dataset,
        ours={"loss_type": "ipo"},
        native={"loss_type": "ipo"},
        beta=0.5,
        max_steps=4,
        learning_rate=5e-3,
        max_length=6,  # prompts are 4 tokens, completions 2-3 with EOS: 7-token rows are cut
        truncation_mode=truncation_mode,
    )
    assert len(_logs(ours, "loss")) == 4
    assert _logs(ours, "loss") == _logs(native, "loss")


@pytest.mark.slow
def test_a_registry_loss_mixes_with_a_trl_loss_like_trl_mixes_its_own(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    ours, native = _train_pair(
        make_config,
        tiny_model_dir,
        tiny_dataset,
        ours={"loss_type": ["cdpo", "hinge"]},
        native={"loss_type": ["sigmoid", "hinge"]},
        loss_weights=[0.7, 0.3],
        label_smoothing=0.1,
        beta=0.5,
        max_steps=4,
        learning_rate=5e-3,
    )
    assert len(_logs(ours, "loss")) == 4 and _logs(ours, "loss") == _logs(native, "loss")
    assert ours.loss_type == ["trl_conservative:cdpo", "hinge"]  # TRL computes hinge, we compute cdpo


@pytest.mark.parametrize(
    ("max_length", "truncation_mode"), [(None, "keep_end"), (6, "keep_end"), (6, "keep_start")]
)
def test_lengths_and_positions_are_the_tokens_trl_scores(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, max_length: int | None, truncation_mode: str
) -> None:
    """TRL's own forward, asked for sums and then for means (its IPO mode), gives the token counts it scored; and
    the per-token log-probs at our completion positions, from an independent full-logits pass, add up to its sums."""
    from trl_conservative.trainer.dpo_loss_adapter import completion_positions, surviving_lengths

    args = make_config(loss_type="cdpo", max_length=max_length, truncation_mode=truncation_mode)
    trainer = ConservativeDPOTrainer(model=str(tiny_model_dir), args=args, train_dataset=tiny_dataset)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    lengths, real = surviving_lengths(batch, trainer.max_length, trainer.truncation_mode)
    with torch.no_grad():
        sums = trainer.concatenated_forward(trainer.model, batch)
        trainer.loss_type = ["ipo"]
        means = trainer.concatenated_forward(trainer.model, batch)
    trl_sums = torch.cat([sums["chosen_logps"], sums["rejected_logps"]]).double()
    trl_means = torch.cat([means["chosen_logps"], means["rejected_logps"]]).double()
    torch.testing.assert_close(trl_sums / trl_means, lengths.double(), rtol=1e-5, atol=1e-5)
    if max_length is not None:  # the case really truncates rows
        assert bool((real == max_length).any())
    # Positions: hidden state t scores token t + 1; in the joined, flushed-left rows.
    rows = joined(batch, max_length, truncation_mode)
    assert torch.equal(rows["attention_mask"].sum(1), real)
    with torch.no_grad():
        logits = trainer.model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
    token_logps = (
        F.log_softmax(logits[:, :-1].double(), -1).gather(-1, rows["input_ids"][:, 1:, None]).squeeze(-1)
    )
    mask = completion_positions(lengths, real, rows["input_ids"].size(1))
    assert torch.equal(mask.long(), rows["completion_mask"][:, 1:])
    torch.testing.assert_close((token_logps * mask).sum(1), trl_sums, rtol=1e-4, atol=1e-4)


def test_exact_kl_with_truncated_rows_equals_an_independent_computation(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from transformers import AutoModelForCausalLM

    args = make_config(
        loss_type="cdpo", max_length=6, truncation_mode="keep_end", per_device_eval_batch_size=8
    )
    evalset = tiny_dataset.select(range(8))
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    trainer = ConservativeDPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=tiny_dataset, eval_dataset=evalset
    )
    metrics = trainer.evaluate()
    rows = joined(trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader()))), 6, "keep_end")
    kw = {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]}
    with torch.no_grad():
        logp = F.log_softmax(trainer.model(**kw).logits[:, :-1].double(), -1)
        logq = F.log_softmax(trainer.ref_model(**kw).logits[:, :-1].double(), -1)
    mask = rows["completion_mask"][:, 1:].double()
    expected = ((logp.exp() * (logp - logq)).sum(-1) * mask).sum() / mask.sum()
    assert float(expected) > 1e-3
    assert metrics["eval_kl/exact"] == pytest.approx(float(expected), abs=1e-5)


def test_liger_with_a_registry_loss_is_refused_before_any_model_loads(make_config: Any) -> None:
    import dataclasses

    from trl import DPOConfig

    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    flag = "use_liger_loss" if "use_liger_loss" in fields else "use_liger_kernel"  # renamed in TRL 0.28
    with pytest.raises(ConfigError, match=f"{flag}=True"):
        make_config(loss_type="cdpo", **{flag: True})


@pytest.mark.slow
def test_what_the_line_cannot_measure_is_said_once(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="trl_conservative"):
            trainer = ConservativeDPOTrainer(
                model=str(tiny_model_dir),
                # ld_alpha: TRL's own sigmoid (registry losses refuse it), on its length-weighted sums.
                args=make_config(loss_type="sigmoid", ld_alpha=0.5, max_steps=2, kl_exact_steps=1),
                train_dataset=tiny_dataset,
            )
            trainer.train()
    finally:
        hf_logging.disable_propagation()
    said = [r.getMessage() for r in caplog.records if "KL monitoring" in r.getMessage()]
    assert len(said) == 1 and "logratio/*" in said[0] and "ld_alpha" in said[0]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("kl/exact" in h and "logratio/chosen" not in h for h in logs)
