"""The label-noise experiment: what conservative DPO is for.

On the package's verifiable arithmetic preference task, flip a fraction rho of the training pairs (chosen and
rejected swapped), train from the SFT-warmed tiny model with several losses over several seeds, and report on the
clean held-out split: preference accuracy (fraction of pairs whose implicit reward ranks the right answer first)
and the final exact token KL to the reference.

Losses: sigmoid DPO; cDPO with eps = rho (the true flip rate) and with a fixed eps = 0.1; IPO; and every installed
plugin loss (run with label_smoothing = rho, which is rDPO's flip rate; losses that ignore it are unaffected).

    python benchmarks/bench_label_noise.py --write   # ~8 min on 2 cores: 5 rho x 6 losses x 3 seeds, 5 epochs
    python benchmarks/bench_label_noise.py --quick   # smoke: 2 rho, 2 losses, 1 seed, few steps
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_line, markdown_table, write_section  # noqa: E402

BUILTIN = {"sigmoid", "cdpo", "ipo"}


def variants(rho: float, plugin_losses: list[str], quick: bool) -> list[tuple[str, str, float]]:
    """(label, loss_type, label_smoothing) to train at flip rate rho."""
    out = [("sigmoid", "sigmoid", 0.0), ("cdpo eps=rho", "cdpo", rho)]
    if quick:
        return out
    out += [("cdpo eps=0.1", "cdpo", 0.1), ("ipo", "ipo", 0.0)]
    out += [(name, name, min(rho, 0.49)) for name in plugin_losses]
    return out


def train_once(
    model: str,
    train_rows: list[dict[str, str]],
    test_rows: list[dict[str, str]],
    loss: str,
    eps: float,
    seed: int,
    epochs: float,
    out: str,
) -> dict[str, float]:
    from datasets import Dataset

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer

    args = ConservativeDPOConfig(
        output_dir=out,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        num_train_epochs=epochs,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        beta=0.1,
        loss_type=loss,
        label_smoothing=eps,
        logging_steps=10,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        gradient_checkpointing=False,
        disable_tqdm=True,
        bf16=False,
        max_length=16,
        # The exact KL is computed on every evaluation batch when kl_exact_steps > 0; a huge period keeps it
        # (nearly) out of training, where it is not needed.
        kl_exact_steps=10**9,
        kl_drift=False,
    )
    trainer = ConservativeDPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(test_rows),
    )
    trainer.train()
    metrics = trainer.evaluate()
    return {
        "accuracy": metrics["eval_rewards/accuracies"],
        "kl": metrics.get("eval_kl/exact", float("nan")),
        "margin": metrics["eval_rewards/margins"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--write", action="store_true", help="write the table into benchmarks/RESULTS.md + a PNG"
    )
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=None)
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    from trl_conservative import available_losses
    from trl_conservative.embedded import builtin_model_path
    from trl_conservative.tasks import DATA_DIR, TEST_FILE, TRAIN_FILE, flip_labels, read_jsonl

    hf_logging.set_verbosity_error()
    quick = opts.quick
    rhos = [0.0, 0.3] if quick else [0.0, 0.1, 0.2, 0.3, 0.4]
    seeds = list(range(opts.seeds or (1 if quick else 3)))
    epochs = opts.epochs or (0.25 if quick else 5.0)
    # Every installed plugin loss, except the copyable template in plugins/template (a renamed sigmoid).
    plugins = sorted(name for name in set(available_losses()) - BUILTIN if not name.startswith("template"))
    model = str(builtin_model_path(log=print))
    clean = read_jsonl(DATA_DIR / TRAIN_FILE)
    test = read_jsonl(DATA_DIR / TEST_FILE)
    tmp = tempfile.mkdtemp(prefix="bench-noise-")
    started = time.perf_counter()
    table: dict[tuple[str, float], list[dict[str, float]]] = {}
    for rho in rhos:
        for seed in seeds:
            noisy, _ = flip_labels(clean, rho, seed=seed)
            for label, loss, eps in variants(rho, plugins, quick):
                result = train_once(model, noisy, test, loss, eps, seed, epochs, tmp)
                table.setdefault((label, rho), []).append(result)
                print(
                    f"rho={rho:.1f} seed={seed} {label:<14} acc={result['accuracy']:.3f} kl={result['kl']:.4f} "
                    f"({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )

    labels = list(dict.fromkeys(label for label, _ in table))
    rows = []
    for label in labels:
        row: list[Any] = [label]
        for rho in rhos:
            runs = table.get((label, rho), [])
            acc = [r["accuracy"] for r in runs]
            kl = [r["kl"] for r in runs]
            spread = f" ±{statistics.stdev(acc):.3f}" if len(acc) > 1 else ""
            row.append(f"{statistics.mean(acc):.3f}{spread} / {statistics.mean(kl):.3f}" if runs else "-")
        rows.append(row)
    md = markdown_table(["loss"] + [f"rho={rho:.1f}: acc / KL" for rho in rhos], rows)
    print("\n" + md)
    if opts.write:
        png = Path(__file__).with_name("label_noise.png")
        _plot(table, labels, rhos, png)
        write_section(
            "label-noise",
            "## 3. Label noise (`benchmarks/bench_label_noise.py`)\n\n"
            f"{machine_line()}\n\nTask: the shipped arithmetic preference data ({len(clean)} training pairs, "
            f"{len(test)} clean held-out pairs); a fraction rho of training pairs flipped; model: the SFT-warmed "
            f"tiny model of the embedded default; {epochs:g} epochs, lr 3e-4 constant, beta 0.1, batch 32; "
            f"{len(seeds)} seeds (mean ± standard deviation). Cells: held-out preference accuracy / exact token "
            f"KL to the reference on the held-out split. A reference-free loss (SimPO) ranks pairs by its own reward, the "
            "length-averaged log-likelihood, which the SFT-warmed model already orders correctly on most pairs: its "
            "accuracy is not comparable with the reference-relative rows, and it has no KL (no reference is "
            "loaded).\n\n{md}\n\n![label noise](label_noise.png)",
        )


def _plot(
    table: dict[tuple[str, float], list[dict[str, float]]], labels: list[str], rhos: list[float], path: Path
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'trl-conservative[plot]')")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label in labels:
        xs = [rho for rho in rhos if (label, rho) in table]
        axes[0].plot(
            xs,
            [statistics.mean(r["accuracy"] for r in table[(label, x)]) for x in xs],
            marker="o",
            label=label,
        )
        axes[1].plot(
            xs, [statistics.mean(r["kl"] for r in table[(label, x)]) for x in xs], marker="o", label=label
        )
    axes[0].set(xlabel="flipped fraction rho", ylabel="held-out preference accuracy")
    axes[1].set(xlabel="flipped fraction rho", ylabel="exact token KL (held-out)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
