"""Step time of a reference-free loss (SimPO) with and without the reference model, measured side by side.

Both trainers train the same SimPO loss on the same tiny random model, data and seed; the only difference is that
one declares `needs_reference=True` (the loss ignores the reference log-probs, so training is identical) and
therefore loads a reference model and runs its forward on every step, as TRL does for every loss. KL monitoring
is off in both (it needs a reference).

Paired runs: both trainers live in one single-threaded process, and each measured step runs one optimizer step of
each trainer back to back (the order alternates), so machine load, which drifts on a shared machine, hits both
sides of a pair alike. A step is what `Trainer.train` does per batch: `training_step` (forward, the reference
forward if any, backward) plus the optimizer step. Reported: the median step time of each, the median over pairs
of the per-pair saving, the parameters each trainer holds, and whether the losses were equal at every step.

    python benchmarks/bench_reference_free.py            # ~2 min on 2 CPU cores
    python benchmarks/bench_reference_free.py --quick    # smoke: smaller model, fewer steps
    python benchmarks/bench_reference_free.py --write    # also write the table into benchmarks/RESULTS.md

Needs the SimPO plugin: pip install -e plugins/trl-conservative-simpo (scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_line, markdown_table, median, write_section  # noqa: E402

FREE, WITH_REF = "simpo", "simpo_with_ref"
LABELS = {FREE: "simpo, reference-free", WITH_REF: "simpo, with a reference"}


def _rows(n: int, length: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(k))

    return [{"prompt": text(length // 2), "chosen": text(length), "rejected": text(length)} for _ in range(n)]


def measure(
    model_dir: str, out_dir: str, *, steps: int, warmup: int, batch: int, length: int
) -> dict[str, Any]:
    """Train both trainers step by step, interleaved; return per-step times, losses and parameters held."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import dataclasses
    import types

    import torch
    from datasets import Dataset
    from trl_conservative_simpo import SimPOLoss

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer, hookimpl
    from trl_conservative.registry import registered_plugins

    torch.set_num_threads(1)

    @hookimpl
    def register_losses(register: Any) -> None:
        register(dataclasses.replace(SimPOLoss(), name=WITH_REF, needs_reference=True))

    total = warmup + steps
    dataset = Dataset.from_list(_rows(batch * total, length, seed=0))
    trainers: dict[str, Any] = {}
    with registered_plugins(("bench", types.SimpleNamespace(register_losses=register_losses))):
        for loss in (FREE, WITH_REF):
            args = ConservativeDPOConfig(
                output_dir=str(Path(out_dir) / loss),
                use_cpu=True,
                report_to="none",
                per_device_train_batch_size=batch,
                max_steps=total,
                learning_rate=1e-4,
                save_strategy="no",
                seed=0,
                data_seed=0,
                gradient_checkpointing=False,
                disable_tqdm=True,
                max_length=4 * length,
                dataloader_num_workers=0,
                loss_type=loss,
                beta=2.0,
                loss_params={"gamma": 0.5},
                kl_drift=False,
                kl_exact_steps=0,
            )
            trainers[loss] = ConservativeDPOTrainer(model=model_dir, args=args, train_dataset=dataset)
    held = {
        loss: sum(p.numel() for m in (t.model, t.ref_model) if m is not None for p in m.parameters())
        for loss, t in trainers.items()
    }
    batches = {loss: [t._prepare_inputs(b) for b in t.get_train_dataloader()] for loss, t in trainers.items()}
    for t in trainers.values():
        t.create_optimizer()
        t.model.train()
        t.current_gradient_accumulation_steps = 1  # what `Trainer.train` sets before its first step
    times: dict[str, list[float]] = {FREE: [], WITH_REF: []}
    losses: dict[str, list[float]] = {FREE: [], WITH_REF: []}
    for step in range(total):
        for loss in (FREE, WITH_REF) if step % 2 == 0 else (WITH_REF, FREE):
            trainer = trainers[loss]
            start = time.perf_counter()
            value = trainer.training_step(trainer.model, batches[loss][step])
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            losses[loss].append(float(value))
            if step >= warmup:
                times[loss].append(elapsed)
    return {"times": times, "losses": losses, "held": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer steps")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    opts = parser.parse_args()

    from trl_conservative.demo.tiny import save_tiny_model

    size = (
        dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
        if opts.quick
        else dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=512)
    )
    steps, warmup, batch, length = (10, 2, 4, 32) if opts.quick else (40, 4, 8, 48)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_tiny_model(Path(tmp) / "model", **size))
        result = measure(model, tmp, steps=steps, warmup=warmup, batch=batch, length=length)
    times, losses, held = result["times"], result["losses"], result["held"]
    savings = [1 - free / ref for free, ref in zip(times[FREE], times[WITH_REF], strict=True)]
    same = all(abs(a - b) <= 1e-6 for a, b in zip(losses[FREE], losses[WITH_REF], strict=True))
    rows = [
        [
            LABELS[loss],
            f"{median(times[loss]) * 1000:.1f}",
            f"{held[loss] / 1e6:.2f}M",
            f"{losses[loss][-1]:.4f}",
        ]
        for loss in (FREE, WITH_REF)
    ]
    table = markdown_table(["configuration", "median step (ms)", "parameters held", "last loss"], rows)
    quartiles = sorted(savings)
    q1, q3 = quartiles[len(quartiles) // 4], quartiles[(3 * len(quartiles)) // 4]
    summary = (
        f"Step-time saving without the reference: {median(savings) * 100:.1f}% (median of {len(savings)} paired "
        f"steps; interquartile range {q1 * 100:.1f}% to {q3 * 100:.1f}%). Losses identical at every step: {same}."
    )
    print(table)
    print(summary)
    if opts.write:
        body = "\n\n".join(
            [
                "## Reference-free losses (`benchmarks/bench_reference_free.py`)",
                machine_line(),
                f"Tiny random Llama ({size['hidden_size']} hidden, {size['num_layers']} layers, character vocabulary), "
                f"{batch} pairs per step, ~{length}-character completions, {steps} paired steps after {warmup} "
                "warm-up, one thread, beta = 2, gamma = 0.5.",
                table,
                summary,
                "The saving is the reference's forward pass. It is large here because on CPU TRL 1.16's fused LM head "
                "(no Triton) makes that no-grad forward cost more than half of the policy's forward and backward; "
                "expect less where a backward costs its usual two forwards.",
            ]
        )
        write_section("reference-free", body)


if __name__ == "__main__":
    main()
