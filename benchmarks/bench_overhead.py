"""Step time and peak memory of ConservativeDPOTrainer against stock trl.DPOTrainer, measured side by side.

Each configuration trains in its own fresh process (so peak RSS is its own), in paired rounds
(stock, ours KL off, ours KL on, stock, ...) on the same tiny random model, data and seed. We report the median
per-step time over the steps after warm-up, the ratio to stock for the same loss (median over rounds), and the
training peak memory (the process's peak RSS during `train()` above its RSS just before).

    python benchmarks/bench_overhead.py            # full: V=32000, 3 rounds, ~16 min on 2 cores
    python benchmarks/bench_overhead.py --quick    # smoke: tiny sizes, 1 round
    python benchmarks/bench_overhead.py --write    # also write the table into benchmarks/RESULTS.md

Targets (issue 6): at most 1.00x stock for the same loss with KL measures off, at most 1.05x with every KL
measure on. cDPO has no stock TRL >= 0.29 counterpart; it is compared with stock `sigmoid`, which does the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_line, markdown_table, median, write_section  # noqa: E402

# (label, trainer, loss, KL setting, stock loss to compare with). KL settings: "off" (kl_exact_steps=0,
# kl_drift=False), "default" (every measure on at its default cadence: drift every step, the exact KL every
# 10 steps), "every step" (the exact KL too at every step: the most it can cost).
CONFIGS = [
    ("stock sigmoid", "stock", "sigmoid", "off", None),
    ("ours sigmoid", "ours", "sigmoid", "off", "stock sigmoid"),
    ("ours sigmoid + KL", "ours", "sigmoid", "default", "stock sigmoid"),
    ("ours sigmoid + exact KL every step", "ours", "sigmoid", "every step", "stock sigmoid"),
    ("ours cdpo", "ours", "cdpo", "off", "stock sigmoid"),
    ("ours cdpo + KL", "ours", "cdpo", "default", "stock sigmoid"),
    ("stock ipo", "stock", "ipo", "off", None),
    ("ours ipo", "ours", "ipo", "off", "stock ipo"),
    ("ours ipo + KL", "ours", "ipo", "default", "stock ipo"),
]
KL_SETTINGS = {
    "off": dict(kl_exact_steps=0, kl_drift=False),
    "default": dict(kl_exact_steps=10, kl_drift=True),
    "every step": dict(kl_exact_steps=1, kl_drift=True),
}


def _rows(n: int, length: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(k))

    return [{"prompt": text(length // 2), "chosen": text(length), "rejected": text(length)} for _ in range(n)]


def worker(spec: dict[str, Any]) -> dict[str, float]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer

    step_times: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_times.append(time.perf_counter() - self.t0)

    common: dict[str, Any] = dict(
        output_dir=spec["out"],
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=spec["batch"],
        max_steps=spec["steps"],
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        gradient_checkpointing=False,
        disable_tqdm=True,
        max_length=spec["length"] * 2,
        beta=0.1,
        loss_type=spec["loss"],
        label_smoothing=0.1 if spec["loss"] == "cdpo" else 0.0,
    )
    if spec["trainer"] == "stock":
        trainer_cls, args = DPOTrainer, DPOConfig(**common)
    else:
        trainer_cls, args = ConservativeDPOTrainer, ConservativeDPOConfig(**common, **KL_SETTINGS[spec["kl"]])
    dataset = Dataset.from_list(_rows(spec["batch"] * spec["steps"], spec["length"], seed=0))
    trainer = trainer_cls(model=spec["model"], args=args, train_dataset=dataset, callbacks=[StepTimer()])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer.train()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The mean, not the median, of the timed steps: a periodic cost (the exact KL every 10th step) must count.
    timed = step_times[spec["warmup"] :]
    return {"step_s": sum(timed) / len(timed), "peak_mb": max(after - before, 0) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke test)")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print("RESULT " + json.dumps(worker(json.loads(opts.worker))), flush=True)
        return

    from trl_conservative.demo.tiny import save_tiny_model

    quick = opts.quick
    vocab = opts.vocab or (2048 if quick else 32000)
    rounds = opts.rounds or (1 if quick else 3)
    size = (
        dict(hidden_size=64, num_layers=2, intermediate_size=128)
        if quick
        else dict(hidden_size=128, num_layers=2, intermediate_size=344)
    )
    spec_base = dict(batch=4, length=24 if quick else 64, steps=4 if quick else 13, warmup=1 if quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model = save_tiny_model(tmp / "model", vocab_size=vocab, max_position_embeddings=512, **size)
    print(
        f"model: Llama-shaped, V={vocab}, {size}; batch {spec_base['batch']} pairs, ~{spec_base['length']} "
        f"tokens per completion; {rounds} paired round(s)\n{machine_line()}",
        flush=True,
    )

    results: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in CONFIGS}
    for r in range(rounds):
        for label, trainer, loss, kl, _ in CONFIGS:
            spec = dict(spec_base, trainer=trainer, loss=loss, kl=kl, model=str(model), out=str(tmp / "out"))
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
            results[label].append(json.loads(line[len("RESULT ") :]))
            print(f"round {r + 1} {label:<36} {results[label][-1]}", flush=True)

    rows = []
    for label, _, _, _, baseline in CONFIGS:
        step = median([x["step_s"] for x in results[label]])
        peak = median([x["peak_mb"] for x in results[label]])
        if baseline is None:
            rows.append([label, f"{step * 1000:.1f}", "1.00x", f"{peak:.0f}", "1.00x"])
            continue
        t_ratio = median(
            [a["step_s"] / b["step_s"] for a, b in zip(results[label], results[baseline], strict=True)]
        )
        m_base = median([x["peak_mb"] for x in results[baseline]])
        m_ratio = f"{peak / m_base:.2f}x" if m_base > 0 else "n/a"
        rows.append([label, f"{step * 1000:.1f}", f"{t_ratio:.3f}x vs {baseline}", f"{peak:.0f}", m_ratio])
    table = markdown_table(
        ["configuration", "step (ms, median of rounds)", "time ratio", "train peak RSS (MB)", "memory ratio"], rows
    )
    print("\n" + table)
    if opts.write:
        body = (
            "## 1. Overhead against stock TRL (`benchmarks/bench_overhead.py`)\n\n"
            f"{machine_line()}\n\nModel: random Llama-shaped, V={vocab}, {size}; batch {spec_base['batch']} pairs of "
            f"~{spec_base['length']}-token completions; {spec_base['steps']} steps, the first {spec_base['warmup']} "
            f"not timed; {rounds} paired rounds, each configuration in a fresh process. Ratios are medians over "
            "rounds of (ours / stock) for the same loss. KL off: `kl_exact_steps=0, kl_drift=False`; + KL: every measure "
            "at its default cadence (drift every step, exact KL every 10 steps, so one of the 10 timed steps); "
            "exact KL every step: `kl_exact_steps=1`.\n\n" + table
        )
        write_section("overhead", body)


if __name__ == "__main__":
    main()
