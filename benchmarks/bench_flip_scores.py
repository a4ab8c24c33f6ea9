"""Suspected flips, measured: which score finds planted flipped labels after one epoch, what it costs, and whether the
flipped-share estimate's 95% interval covers the planted share.

One run per (model, planted share, seed): plant flips in a share of the training pairs (chosen and rejected swapped),
train one epoch with `ConservativeDPOTrainer`, then compare, for every trained pair, these scores of the label as
given (lower = more suspect):

- `policy@trained`: the policy's margin log pi(y_w|x) - log pi(y_l|x) when the pair was first trained on (from
  training's own forwards: what `trl-conservative run` uses by default, no extra pass);
- `reference`: the reference model's margin (the same forwards);
- `beta*h@trained`: the implicit-reward margin beta * (policy margin - reference margin) at that step;
- `policy@end`, `beta*h@end`: the same after training, from one extra forward pass over the training split (the
  `suspected_flips_pass` setting).

For each: AUC (a flipped pair ranked above a clean one), precision and recall at the planted count, precision of the
top 20. The estimate (`trl_conservative.flips.estimate`) is fitted to `policy@trained` and its training progress.

    python benchmarks/bench_flip_scores.py --model toy --shares 0 0.05 0.15 0.3 --seeds 0 1 2 3 4
    python benchmarks/bench_flip_scores.py --model real --pairs 160 --shares 0 0.15 0.3 --seeds 0 1 2 3 4
    python benchmarks/bench_flip_scores.py --write     # tables into RESULTS.md from flip_scores.jsonl

Each run appends one JSON line to `benchmarks/flip_scores.jsonl` (a run already there is skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_line, markdown_table, write_section  # noqa: E402

OUT = Path(__file__).with_name("flip_scores.jsonl")
SCORES = ("policy@trained", "reference", "beta*h@trained", "policy@end", "beta*h@end")
# What the estimate is fitted to: what a run reports (`estimate_label_noise`: both training-time scores, the lower end
# checked by the fits to the policy's margin alone and to the reference's margins alone), then the fit to both without
# that check, then each score alone.
REPORTED = "reported (both, lower end checked by the policy alone and the reference alone)"
ESTIMATED_FROM = (REPORTED, "policy@trained + beta*h@trained", "policy@trained", "beta*h@trained", "reference")


def auc(scores: list[float], flipped: list[bool]) -> float:
    """P(a flipped pair scores below a clean one), ties half: the Mann-Whitney statistic."""
    pos = [s for s, f in zip(scores, flipped, strict=True) if f]
    neg = [s for s, f in zip(scores, flipped, strict=True) if not f]
    if not pos or not neg:
        return float("nan")
    ordered = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    # rank-sum with average ranks for ties
    ranks: list[float] = [0.0] * len(ordered)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][0] == ordered[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, (_, label) in zip(ranks, ordered, strict=True) if label)
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return 1.0 - u / (len(pos) * len(neg))


def precision_at(scores: list[float], flipped: list[bool], k: int) -> float:
    if k <= 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: scores[i])[:k]
    return sum(flipped[i] for i in order) / k


def setup(model: str, pairs: int, seed: int) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(model path, clean training rows, trainer settings) for the toy or the real model."""
    if model == "toy":
        from trl_conservative.demo.embedded import builtin_model_path
        from trl_conservative.demo.tasks import DATA_DIR, TRAIN_FILE, read_jsonl

        rows = read_jsonl(DATA_DIR / TRAIN_FILE)[:pairs] if pairs else read_jsonl(DATA_DIR / TRAIN_FILE)
        # The embedded default's settings (trl_conservative/demo/data/default.yaml), one epoch.
        settings = dict(
            loss_type=["cdpo"], beta=0.3, label_smoothing=0.1, learning_rate=3e-4, lr_scheduler_type="constant",
            per_device_train_batch_size=32, max_length=16,
        )
        return str(builtin_model_path()), rows, settings
    from trl_conservative.demo.chat_tasks import ChatFactsTask
    from trl_conservative.demo.pretrained import pretrained_model_path

    # A short system prompt of the user's own (the template's default one is 21 tokens: it would dominate the
    # cost of these short pairs on a 2-core CPU).
    system = {"role": "system", "content": "Answer briefly."}
    rows = [
        {**row, "prompt": [system, *row["prompt"]]} for row in ChatFactsTask(seed=seed).build()["train"][: pairs or 128]
    ]
    # The reference recipe's loss (cDPO, beta 0.1, eps 0.1, cosine with 10% warm-up, one epoch), with a learning
    # rate for a 135M model.
    settings = dict(
        loss_type=["cdpo"], beta=0.1, label_smoothing=0.1, learning_rate=float(os.environ.get("FLIP_LR", "2e-5")),
        lr_scheduler_type="cosine", warmup_steps=0.1, per_device_train_batch_size=8, max_length=128,
    )
    return str(pretrained_model_path()), rows, settings


def one_run(model: str, share: float, seed: int, pairs: int, *, extra_pass: bool = True) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_conservative import ConservativeDPOConfig, ConservativeDPOTrainer
    from trl_conservative.demo.tasks import flip_labels
    from trl_conservative.flips.estimate import estimate_label_noise
    from trl_conservative.run.label_noise import find_suspected_flips
    from trl_conservative.trainer.pair_scoring import pair_scores

    torch.manual_seed(seed)
    if model == "toy":
        torch.set_num_threads(1)  # as `trl-conservative run` does for the tiny builtin model
    path, clean, settings = setup(model, pairs, seed)
    rows, flipped_rows = flip_labels(clean, share, seed=seed)
    flipped = set(flipped_rows)
    with tempfile.TemporaryDirectory() as tmp:
        args = ConservativeDPOConfig(
            output_dir=tmp, use_cpu=True, bf16=False, report_to="none", num_train_epochs=1, logging_steps=5,
            save_strategy="no", seed=seed, data_seed=seed, gradient_checkpointing=False, **settings,
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        given = Dataset.from_list(rows)
        trainer = ConservativeDPOTrainer(model=path, args=args, train_dataset=given, processing_class=tokenizer)
        if len(trainer.train_dataset) != len(rows):
            raise SystemExit(f"TRL dropped {len(rows) - len(trainer.train_dataset)} rows: shorten the data")
        record = trainer._record_pair_scores
        spent = [0.0]

        def timed(*a: Any, **k: Any) -> None:
            started = time.perf_counter()
            record(*a, **k)
            spent[0] += time.perf_counter() - started

        trainer._record_pair_scores = timed  # type: ignore[method-assign]
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        end_scores, end_margins = pair_scores(trainer) if extra_pass else ({}, {})
        pass_s = time.perf_counter() - started if extra_pass else math.nan
        # The whole default step of `trl-conservative run` (left-out pairs, estimate, list), without the pass.
        started = time.perf_counter()
        noise, listed_flips = find_suspected_flips(trainer, given, top=20, log=lambda _line: None)
        step_s = time.perf_counter() - started
    book = {s.row: s for s in trainer.pair_scores.scores()}
    trained = sorted(book)
    beta = float(args.beta)
    raw = {
        "flipped": [r in flipped for r in trained],
        "progress": [book[r].progress for r in trained],
        "policy@trained": [book[r].policy_margin for r in trained],
        "reference": [book[r].reference_margin for r in trained],
        "beta*h@trained": [book[r].implicit_margin(beta) for r in trained],
        **(
            {"policy@end": [end_scores[r] for r in trained], "beta*h@end": [end_margins[r] for r in trained]}
            if extra_pass
            else {}
        ),
    }
    started = time.perf_counter()
    estimate_label_noise(raw["policy@trained"], raw["reference"], raw["progress"])
    estimate_s = time.perf_counter() - started
    return {
        "model": model, "share": share, "seed": seed, "pairs": len(rows), "planted": len(flipped),
        "scored": len(trained), "steps": trainer.state.global_step, "train_s": train_s, "record_s": spent[0], "step_s": step_s,
        "estimate_s": estimate_s, "pass_s": pass_s,
        "listed": len(listed_flips), "listed_flipped": sum(f.index in flipped for f in listed_flips),
        "verdict": noise.verdict, "settings": dict(settings), "raw": raw, **derive(raw),
    }


def derive(raw: dict[str, Any]) -> dict[str, Any]:
    """What the stored per-pair scores say, computed with the installed code: each score's detection quality, the
    estimate fitted to each score (the default: both training-time scores), the default list's order and verdict."""
    from trl_conservative.flips.estimate import estimate_flip_share, estimate_label_noise, flip_design
    from trl_conservative.report.suspected_flips import LabelNoise, listed_positions

    labels = raw["flipped"]
    k = sum(labels)
    quality = {
        name: {
            "auc": auc(raw[name], labels),
            "precision_at_k": precision_at(raw[name], labels, k),
            "precision_top20": precision_at(raw[name], labels, min(20, len(labels))),
        }
        for name in SCORES
        if raw.get(name) is not None
    }
    designs = {
        "policy@trained + beta*h@trained": flip_design(raw["policy@trained"], raw["reference"], raw["progress"]),
        "policy@trained": flip_design(raw["policy@trained"], None, raw["progress"]),
        "beta*h@trained": flip_design(raw["beta*h@trained"], None, raw["progress"]),
        "reference": flip_design(raw["reference"]),
    }
    default = estimate_label_noise(raw["policy@trained"], raw["reference"], raw["progress"])
    estimates: dict[str, Any] = {
        REPORTED: None if default is None else {"share": default.share, "low": default.low, "high": default.high}
    }
    for name, design in designs.items():
        e = estimate_flip_share(design)
        estimates[name] = None if e is None else {"share": e.share, "low": e.low, "high": e.high}
    out: dict[str, Any] = {"quality": quality, "estimates": estimates}
    if default is not None:
        ranked = [-d for d in default.disagreement]  # lower = more suspect, as for the scores
        quality["fitted disagreement"] = {
            "auc": auc(ranked, labels),
            "precision_at_k": precision_at(ranked, labels, k),
            "precision_top20": precision_at(ranked, labels, min(20, len(ranked))),
        }
        listed = listed_positions(default, raw["policy@trained"], top=20)
        out["listed"] = len(listed)
        out["listed_flipped"] = sum(labels[i] for i in listed)
        out["verdict"] = LabelNoise(
            share=default.share, low=default.low, high=default.high, scored=default.n, pairs=default.n
        ).verdict
    return out


def done(model: str, share: float, seed: int, pairs: int) -> bool:
    if not OUT.exists():
        return False
    for line in OUT.read_text().splitlines():
        r = json.loads(line)
        if (r["model"], r["share"], r["seed"]) == (model, share, seed) and (not pairs or r["pairs"] == pairs):
            return True
    return False


def runs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in OUT.read_text().splitlines()] if OUT.exists() else []


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


def write() -> None:
    results = [{**r, **derive(r["raw"])} for r in runs()]  # derived with the installed code, from stored scores
    body = [
        "## Suspected flips: scores, cost and the flipped-share estimate (`benchmarks/bench_flip_scores.py`)",
        "",
        machine_line(),
        "",
        "One epoch per run with planted flips (chosen and rejected swapped in a random share of the training pairs); "
        "scores of the label as given, lower = more suspect. `policy@trained`: the policy's margin "
        "log pi(y_w|x) - log pi(y_l|x) when the pair was first trained on (from training's own forwards, the "
        "default); `reference`: the reference's margin; `beta*h@trained`: the implicit-reward margin at that step; "
        "`@end`: after training, from the extra pass (`suspected_flips_pass`); `fitted disagreement`: 1 - c(v) of the "
        "label-noise model over both training-time scores (the report's order when the verdict is flipped; when "
        "it is undetermined the report orders by `policy@trained`). P@k: precision (= recall) when "
        "listing as many pairs as were planted; top 20: precision of the 20 most suspect. Means over seeds. "
        "The estimate's rows: `reported` is what a run reports (`estimate_label_noise`): the fit to both "
        "training-time scores, its interval's lower end no higher than those of the fits to `policy@trained` alone "
        "and to the reference's margins alone (flips are claimed only where every fit sees them); the other rows are "
        "single fits, for comparison.",
        "",
    ]
    groups = sorted({(r["model"], r["pairs"]) for r in results}, key=lambda g: (g[0] != "real", g[1]))
    for model, pairs in groups:
        mine = [r for r in results if (r["model"], r["pairs"]) == (model, pairs)]
        first = mine[0]
        what = (
            "SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`), chat-format pairs with known answers "
            "(`trl_conservative.demo.chat_tasks`)"
            if model == "real"
            else "the embedded default's tiny arithmetic model and its shipped training split"
        )
        body += [f"### {model} model, {pairs} pairs: {what}", "", f"Settings: {first['settings']}, one epoch.", ""]
        if model == "real":
            times = [r["train_s"] for r in mine]
            body += [
                f"{pairs} pairs (with a short system prompt of our own, 'Answer briefly.'), batch 8: {first['steps']} "
                f"optimizer steps; {len({r['seed'] for r in mine})} seeds (the seed picks the questions and the flipped "
                f"pairs). Training took {min(times):.0f}-{max(times):.0f} s per run on 2 CPU cores that other jobs "
                "sometimes shared: read the time columns as orders of magnitude, the shares within a run as measured.",
                "",
            ]
        rows = []
        for share in sorted({r["share"] for r in mine}):
            if share == 0:
                continue
            group = [r for r in mine if r["share"] == share]
            for name in ("fitted disagreement", *SCORES):
                if not all(name in r["quality"] for r in group):
                    continue
                rows.append([
                    share, name, f"{_mean([r['quality'][name]['auc'] for r in group]):.3f}",
                    f"{_mean([r['quality'][name]['precision_at_k'] for r in group]):.3f}",
                    f"{_mean([r['quality'][name]['precision_top20'] for r in group]):.3f}", len(group),
                ])
        body += [markdown_table(["planted share", "score", "AUC", "P@k = R@k", "top 20", "seeds"], rows), ""]
        est_rows = []
        for share in sorted({r["share"] for r in mine}):
            group = [r for r in mine if r["share"] == share]
            for name in ESTIMATED_FROM:
                es = [r["estimates"][name] for r in group if r["estimates"].get(name)]
                if not es:
                    continue
                covered = sum(e["low"] <= r["planted"] / r["pairs"] <= e["high"] for e, r in zip(es, group, strict=True))
                est_rows.append([
                    share, name, ", ".join(f"{e['share']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" for e in es),
                    f"{covered}/{len(es)}", f"{_mean([e['high'] - e['low'] for e in es]):.3f}",
                ])
        body += [
            "Flipped-share estimate (95% profile-likelihood interval) per seed, fitted to each score:",
            "",
            markdown_table(["planted share", "fitted to", "estimate [95% interval] per seed", "covers planted",
                            "mean width"], est_rows),
            "",
        ]
        cost_rows = []
        for share in sorted({r["share"] for r in mine}):
            group = [r for r in mine if r["share"] == share]
            train = _mean([r["train_s"] for r in group])
            cost_rows.append([
                share, f"{train:.1f}", f"{_mean([r['record_s'] for r in group]):.3f}",
                f"{100 * _mean([r['record_s'] / r['train_s'] for r in group]):.2f}%",
                f"{_mean([r.get('step_s', math.nan) for r in group]):.2f}",
                f"{100 * _mean([(r['record_s'] + r.get('step_s', math.nan)) / r['train_s'] for r in group]):.2f}%",
                *(
                    [f"{_mean([r['pass_s'] for r in group]):.1f}",
                     f"{100 * _mean([r['pass_s'] / r['train_s'] for r in group]):.1f}%"]
                    if any(math.isfinite(r["pass_s"]) for r in group)
                    else ["not run", "not run"]
                ),
                f"{_mean([r['listed'] for r in group]):.1f}", f"{_mean([r['listed_flipped'] for r in group]):.1f}",
                ", ".join(r.get("verdict", "?") for r in group),
            ])
        body += [
            "Cost (seconds, means over seeds): recording the scores during training, the after-run step "
            "(left-out pairs, estimate, list; what `trl-conservative run` does by default), the default's total as a "
            "share of training, and the optional extra pass; and what the report lists (at most 20; pairs more likely "
            "flipped than not, or, when the verdict is undetermined, the pairs the policy disagrees with most):",
            "",
            markdown_table(["planted share", "training s", "recording s", "recording share", "after-run step s",
                            "default cost share", "extra pass s", "extra pass share", "listed",
                            "listed that were flipped", "verdict per seed"], cost_rows),
            "",
        ]
    write_section("flip-scores", "\n".join(body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("toy", "real"), default="toy")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.05, 0.15, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--pairs", type=int, default=0, help="training pairs (0: the model's default)")
    parser.add_argument("--write", action="store_true", help="write the tables into RESULTS.md and stop")
    parser.add_argument(
        "--no-extra-pass", action="store_true", help="skip the after-training pass (no @end scores; saves its time)"
    )
    options = parser.parse_args()
    if options.write:
        write()
        return
    for share in options.shares:
        for seed in options.seeds:
            if done(options.model, share, seed, options.pairs):
                continue
            result = one_run(options.model, share, seed, options.pairs, extra_pass=not options.no_extra_pass)
            with OUT.open("a") as f:
                f.write(json.dumps(result) + "\n")
            q = result["quality"]["policy@trained"]
            e = result["estimates"][REPORTED]
            print(
                f"{options.model} share={share} seed={seed}: train {result['train_s']:.0f}s, AUC {q['auc']:.3f}, "
                f"P@k {q['precision_at_k']:.3f}, estimate {e}", flush=True,
            )


if __name__ == "__main__":
    main()
