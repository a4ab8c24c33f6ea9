"""Step time of a reference-free loss (SimPO) with and without the reference model, measured side by side.

Both configurations train the same SimPO loss on the same tiny random model, data and seed; the only
difference is that one declares `needs_reference=True` (the loss ignores the reference log-probs, so the
training is identical) and therefore loads a reference model and runs its forward on every step, as TRL does
for every loss. KL monitoring is off in both (it needs a reference). Each run is its own single-threaded
process, in paired rounds whose order alternates (free first, then with-ref first, ...) so that load drifting
on a shared machine favours neither side. We report the median per-step time after warm-up, the saving of each
round's pair (median over rounds), the logged losses (equal in both) and the parameters each trainer holds.

    python benchmarks/bench_reference_free.py            # ~4 min on 2 CPU cores
    python benchmarks/bench_reference_free.py --quick    # smoke: smaller model, 2 rounds
    python benchmarks/bench_reference_free.py --write    # also write the table into benchmarks/RESULTS.md

Needs the SimPO plugin: pip install -e plugins/trl-conservative-simpo (scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_line, markdown_table, median, write_section  # noqa: E402

CONFIGS = [("simpo, reference-free", "simpo"), ("simpo, with a reference", "simpo_with_ref")]


def _rows(n: int, length: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(k))

    return [{"prompt": text(length // 2), "chosen": text(length), "rejected": text(length)} for _ in range(n)]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training run in this process; returns per-step times, losses and parameter counts."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import dataclasses
    import time
    import types

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl_conservative_simpo import SimPOLoss

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer, hookimpl
    from trl_conservative.plugins import registered_plugins

    torch.set_num_threads(spec["threads"])

    @hookimpl
    def register_losses(register: Any) -> None:
        register(dataclasses.replace(SimPOLoss(), name="simpo_with_ref", needs_reference=True))

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self._start)

    timer = StepTimer()
    dataset = Dataset.from_list(_rows(spec["batch"] * spec["steps"], spec["length"], seed=0))
    with registered_plugins(("bench", types.SimpleNamespace(register_losses=register_losses))):
        args = ConservativeDPOConfig(
            output_dir=spec["out"],
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=spec["batch"],
            max_steps=spec["steps"],
            learning_rate=1e-4,
            logging_steps=1,
            save_strategy="no",
            seed=0,
            data_seed=0,
            gradient_checkpointing=False,
            disable_tqdm=True,
            max_length=spec["max_length"],
            dataloader_num_workers=0,
            loss_type=spec["loss"],
            beta=2.0,
            loss_params={"gamma": 0.5},
            # KL monitoring off in both: it needs a reference, and would be extra work in one run only.
            kl_drift=False,
            kl_exact_steps=0,
        )
        trainer = ConservativeDPOTrainer(
            model=spec["model"], args=args, train_dataset=dataset, callbacks=[timer]
        )
        held = sum(p.numel() for p in trainer.model.parameters())
        if trainer.ref_model is not None:
            held += sum(p.numel() for p in trainer.ref_model.parameters())
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"times": timer.times, "losses": losses, "params_held": held}


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {spec['loss']}:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, two rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print(json.dumps(worker(json.loads(opts.worker))))
        return

    from trl_conservative.tiny import save_tiny_model

    size = (
        dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
        if opts.quick
        else dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=512)
    )
    rounds = opts.rounds or (2 if opts.quick else 4)
    steps, warmup = (6, 2) if opts.quick else (14, 4)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_tiny_model(Path(tmp) / "model", **size))
        base = dict(model=model, steps=steps, batch=8, length=48, max_length=128, threads=1)
        per_config: dict[str, list[float]] = {loss: [] for _, loss in CONFIGS}
        savings: list[float] = []
        losses: dict[str, list[float]] = {}
        held: dict[str, int] = {}
        for r in range(rounds):
            medians = {}
            for _, loss in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
                result = _run({**base, "loss": loss, "out": str(Path(tmp) / f"out-{loss}-{r}")})
                medians[loss] = median(result["times"][warmup:])
                per_config[loss].append(medians[loss])
                losses[loss], held[loss] = result["losses"], result["params_held"]
                print(
                    f"round {r + 1}/{rounds} {loss:15s} median step {medians[loss] * 1000:7.1f} ms",
                    flush=True,
                )
            savings.append(1 - medians["simpo"] / medians["simpo_with_ref"])
    same = all(abs(a - b) <= 1e-6 for a, b in zip(losses["simpo"], losses["simpo_with_ref"], strict=True))
    rows = [
        [
            label,
            f"{median(per_config[loss]) * 1000:.1f}",
            f"{held[loss] / 1e6:.2f}M",
            f"{losses[loss][-1]:.4f}",
        ]
        for label, loss in CONFIGS
    ]
    table = markdown_table(["configuration", "median step (ms)", "parameters held", "last loss"], rows)
    summary = (
        f"Step-time saving without the reference: {median(savings) * 100:.1f}% "
        f"(median of {rounds} paired round(s): {', '.join(f'{s * 100:.1f}%' for s in savings)}); "
        f"losses identical step for step: {same}."
    )
    print()
    print(table)
    print(summary)
    if opts.write:
        body = "\n\n".join(
            [
                "## Reference-free losses (`benchmarks/bench_reference_free.py`)",
                machine_line(),
                f"Tiny random Llama ({size['hidden_size']} hidden, {size['num_layers']} layers), batch 8 pairs, "
                f"~{base['length']}-token completions, {steps} steps ({warmup} warm-up), beta = 2, gamma = 0.5.",
                table,
                summary,
            ]
        )
        write_section("reference-free", body)


if __name__ == "__main__":
    main()
