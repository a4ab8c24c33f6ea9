"""The label-noise study: when does conservative DPO help?

On the verifiable arithmetic task (`label_noise_worker.py`: a tiny Llama taught addition by a short SFT, the
reference; one preference pair per training prompt, the right sum against the reference's own wrong greedy answer
or a near miss), flip a fraction rho of the training pairs and of a noisy validation split (the same pairs for
every loss within a seed), train DPO, cDPO, IPO and rDPO over a beta grid, and measure on clean held-out prompts
the task accuracy of greedy decoding against the reference, plus ranking, flipped-pair fitting, calibration and the
on-policy sequence KL. Each loss is compared at its best beta on the noisy validation split; the pre-stated
contrast is cDPO(eps = rho) against best-beta DPO at rho = 0.2 and 0.4, as paired differences over test items x
seeds with 95% CIs.

    python benchmarks/bench_label_noise.py --pilot        # time one training, measure the discordance: size seeds
    nice -n 10 python benchmarks/bench_label_noise.py --run --seeds 5 --budget-min 55   # resumable, 2 workers
    python benchmarks/bench_label_noise.py --kl           # KL pass over saved weights (if trained without it)
    python benchmarks/bench_label_noise.py --write        # tables and plots into RESULTS.md / label_noise*.png
    python benchmarks/bench_label_noise.py --quick        # smoke test: tiny task, 3 trainings, < 30 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from label_noise_stats import (  # noqa: E402
    best_index,
    detection,
    paired_difference,
    t_interval,
    units_needed,
)
from label_noise_worker import Study, noisy, reference_path  # noqa: E402
from results import machine_line, markdown_table, write_section  # noqa: E402

RHOS = (0.0, 0.1, 0.2, 0.3, 0.4)
BETAS = (0.5, 2.0, 8.0)
CONTRAST_RHOS = (0.2, 0.4)
EPS_CAP = 0.45


def variants(rho: float) -> dict[str, tuple[str, float]]:
    """label -> (loss_type, label_smoothing) at flip rate rho."""
    return {
        "dpo": ("sigmoid", 0.0),
        "cdpo eps=rho": ("cdpo", rho),
        "ipo": ("ipo", 0.0),
        "rdpo eps=rho": ("rdpo", rho),
        "cdpo eps=rho/2": ("cdpo", round(rho / 2, 4)),
        "cdpo eps=2rho": ("cdpo", min(round(2 * rho, 4), EPS_CAP)),
        "cdpo eps=0.1": ("cdpo", 0.1),
    }


# Blocks in the order they run: the pre-stated contrast first, so a cut never touches it.
BLOCKS: tuple[tuple[str, tuple[float, ...], tuple[str, ...]], ...] = (
    ("contrast", CONTRAST_RHOS, ("dpo", "cdpo eps=rho")),
    ("dpo/cdpo other rho", (0.0, 0.1, 0.3), ("dpo", "cdpo eps=rho")),
    ("ipo, rdpo", RHOS, ("ipo", "rdpo eps=rho")),
    ("mis-specified eps", RHOS, ("cdpo eps=rho/2", "cdpo eps=2rho", "cdpo eps=0.1")),
)


def train_key(loss: str, eps: float, beta: float, rho: float, seed: int) -> str:
    """cDPO and rDPO at eps = 0 are DPO exactly: one training serves all three."""
    if loss in ("cdpo", "rdpo") and eps == 0:
        loss = "sigmoid"
    return f"{loss}|{eps:g}|{beta:g}|{rho:g}|{seed}"


def plan(
    seeds: Iterable[int],
    *,
    rhos: Iterable[float] = RHOS,
    betas: Iterable[float] = BETAS,
    blocks: Any = BLOCKS,
) -> list[dict[str, Any]]:
    """Unique trainings in run order: the first block (the contrast) for every seed, then the other blocks seed by
    seed, so that a run cut by its time budget leaves whole seeds of every comparison."""
    rhos, betas, seeds = list(rhos), list(betas), list(seeds)
    jobs: dict[str, dict[str, Any]] = {}
    order = [(b, s) for b in blocks[:1] for s in seeds] + [(b, s) for s in seeds for b in blocks[1:]]
    for (block, block_rhos, labels), seed in order:
        for rho in (r for r in block_rhos if r in rhos):
            for label in labels:
                loss, eps = variants(rho)[label]
                for beta in betas:
                    key = train_key(loss, eps, beta, rho, seed)
                    if key in jobs:
                        continue
                    effective = "sigmoid" if loss in ("cdpo", "rdpo") and eps == 0 else loss
                    jobs[key] = dict(
                        key=key, block=block, rho=rho, seed=seed, loss=effective, eps=eps, beta=beta,
                        scores=rho in CONTRAST_RHOS,
                    )  # fmt: skip
    return list(jobs.values())


# --- running --------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(
    jobs: list[dict[str, Any]],
    study: Study,
    ref: Path,
    runs_path: Path,
    *,
    workers: int,
    budget_s: float,
    weights_root: Path | None,
) -> None:
    """Train every job not yet in `runs_path` (append one JSON line each); stop submitting after `budget_s`."""
    from label_noise_worker import run_job

    done = {r["key"] for r in read_jsonl(runs_path)}
    todo = [
        {**j, "study": asdict(study), "ref_path": str(ref)}
        | ({"weights_dir": str(weights_root / j["key"].replace("|", "_"))} if weights_root else {})
        for j in jobs
        if j["key"] not in done
    ]
    print(
        f"{len(jobs)} trainings planned, {len(jobs) - len(todo)} already done, {len(todo)} to run", flush=True
    )
    started = time.monotonic()
    runs_path.parent.mkdir(parents=True, exist_ok=True)
    with runs_path.open("a") as sink:

        def record(result: dict[str, Any]) -> None:
            result.pop("study", None)
            sink.write(json.dumps(result) + "\n")
            sink.flush()
            last = result["epochs"][-1]
            print(
                f"[{time.monotonic() - started:6.0f}s] {result['key']:<28} task {last['task']:.3f} "
                f"val {last['val']:.3f} kl {last['kl']:.3f} ({result['wall_s']:.1f}s)",
                flush=True,
            )

        if workers <= 1:
            for job in todo:
                if time.monotonic() - started > budget_s:
                    print("budget reached: stopping", flush=True)
                    break
                record(run_job(job))
            return
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, maxtasksperchild=40) as pool:
            pending: list[Any] = []
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < workers and time.monotonic() - started < budget_s:
                    pending.append(pool.apply_async(run_job, (queue.pop(0),)))
                if not pending:
                    print(f"budget reached: {len(queue)} trainings not run", flush=True)
                    break
                time.sleep(0.2)
                for task in [t for t in pending if t.ready()]:
                    pending.remove(task)
                    record(task.get())


def kl_pass(
    study: Study, ref: Path, runs_path: Path, kl_path: Path, weights_root: Path, workers: int
) -> None:
    from label_noise_worker import kl_job

    have = {r["key"] for r in read_jsonl(kl_path)}
    jobs = []
    for r in read_jsonl(runs_path):
        folder = weights_root / r["key"].replace("|", "_")
        if r["key"] in have or not folder.is_dir():
            continue
        weights = [(e + 1, str(folder / f"epoch{e + 1}.pt")) for e in range(len(r["epochs"]))]
        jobs.append(
            dict(key=r["key"], seed=r["seed"], study=asdict(study), ref_path=str(ref), weights=weights)
        )
    print(f"KL pass: {len(jobs)} runs", flush=True)
    import multiprocessing as mp

    started = time.monotonic()
    with kl_path.open("a") as sink, mp.get_context("spawn").Pool(workers) as pool:
        for i, result in enumerate(pool.imap_unordered(kl_job, jobs)):
            for row in result["rows"]:
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            if i % 20 == 0:
                print(f"[{time.monotonic() - started:.0f}s] {i + 1}/{len(jobs)}", flush=True)


# --- analysis -------------------------------------------------------------------------------------------------
class Results:
    """The runs, indexed; selection of beta (and epoch) on the noisy validation split, per seed."""

    def __init__(self, runs: list[dict[str, Any]], kl_rows: list[dict[str, Any]]) -> None:
        kl = {(r["key"], r["epoch"]): r for r in kl_rows}
        for run in runs:
            for e, ep in enumerate(run["epochs"]):
                extra = kl.get((run["key"], e + 1))
                if extra is not None and not math.isfinite(ep.get("kl", math.nan)):
                    ep["kl"], ep["kl_se"] = extra["kl"], extra["kl_se"]
        self.by_key = {r["key"]: r for r in runs}
        self.ref_task = runs[0]["ref_task"] if runs else ""
        self.seeds = sorted({r["seed"] for r in runs})
        self.betas = sorted({r["beta"] for r in runs})

    def run(self, label: str, rho: float, beta: float, seed: int) -> dict[str, Any] | None:
        loss, eps = variants(rho)[label]
        return self.by_key.get(train_key(loss, eps, beta, rho, seed))

    def choose(self, label: str, rho: float, seed: int, endpoint: str) -> dict[str, Any] | None:
        """The epoch record at the best beta on noisy validation accuracy: final epoch, or best (beta, epoch)."""
        candidates = []
        for beta in self.betas:
            run = self.run(label, rho, beta, seed)
            if run is None:
                return None  # an incomplete beta grid is not a fair selection
            epochs = run["epochs"] if endpoint == "selected" else run["epochs"][-1:]
            candidates += [{**ep, "beta": beta, "run": run} for ep in epochs]
        return candidates[best_index([c["val"] for c in candidates])]

    def complete_seeds(self, label: str, rho: float, endpoint: str = "final") -> list[int]:
        return [s for s in self.seeds if self.choose(label, rho, s, endpoint) is not None]

    def items(self, label: str, rho: float, seeds: list[int], endpoint: str) -> list[int]:
        out: list[int] = []
        for seed in seeds:
            chosen = self.choose(label, rho, seed, endpoint)
            assert chosen is not None
            out += [int(c) for c in chosen["task_items"]]
        return out

    def ref_items(self, seeds: list[int]) -> list[int]:
        return [int(c) for c in self.ref_task] * len(seeds)

    def mean(self, label: str, rho: float, metric: str, endpoint: str = "final") -> tuple[float, int]:
        seeds = self.complete_seeds(label, rho, endpoint)
        values = [self.choose(label, rho, s, endpoint)[metric] for s in seeds]  # type: ignore[index]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        return (statistics.mean(values) if values else math.nan), len(seeds)

    def contrast(self, a: str, b: str, rho: float, endpoint: str) -> Any:
        seeds = sorted(
            set(self.complete_seeds(a, rho, endpoint)) & set(self.complete_seeds(b, rho, endpoint))
        )
        if not seeds:
            return None, seeds, (math.nan, math.nan)
        pooled = paired_difference(self.items(a, rho, seeds, endpoint), self.items(b, rho, seeds, endpoint))
        per_seed = []
        for s in seeds:
            ca, cb = self.choose(a, rho, s, endpoint), self.choose(b, rho, s, endpoint)
            per_seed.append(ca["task"] - cb["task"])  # type: ignore[index]
        return pooled, seeds, t_interval(per_seed)


def _f(x: float, digits: int = 3, sign: bool = False) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def analyse(res: Results, study: Study, pilot: dict[str, Any] | None) -> tuple[str, str, dict[str, Any]]:
    """(conclusion paragraph, markdown body, headline numbers)."""
    n_items = len(res.ref_task)
    ref_acc = res.ref_task.count("1") / n_items
    labels = [lab for lab in variants(0.2) if any(res.complete_seeds(lab, r) for r in RHOS)]
    head: dict[str, Any] = {"ref_acc": ref_acc, "n_items": n_items}
    md: list[str] = []

    # 1. The pre-stated contrast.
    rows = []
    for rho in CONTRAST_RHOS:
        for endpoint in ("final", "selected"):
            pooled, seeds, (tm, th) = res.contrast("cdpo eps=rho", "dpo", rho, endpoint)
            if pooled is None:
                continue
            head[f"contrast_{rho}_{endpoint}"] = pooled
            rows.append([
                f"C{len(rows) + 1}", f"{rho:.1f}", endpoint, len(seeds), pooled.n, str(pooled), f"±{pooled.half_width:.3f}",
                f"{pooled.discordant:.3f}", f"{tm:+.3f} ±{th:.3f}",
            ])  # fmt: skip
    md.append(
        "### The pre-stated contrast: cDPO(eps = rho) minus DPO, each at its best beta on the noisy validation "
        "split\n\nTask accuracy (greedy decoding, exact match) on the clean test prompts; the difference is paired "
        "per test item and seed (units = items x seeds). `final`: last epoch, beta chosen on validation; "
        "`selected`: beta and epoch chosen on validation. The last column is the same difference as a t-interval "
        "over per-seed accuracies (the seed-level check).\n\n"
        + markdown_table(
            [
                "row",
                "rho",
                "endpoint",
                "seeds",
                "units",
                "difference [95% CI]",
                "half-width",
                "discordant",
                "per-seed t-interval",
            ],
            rows,
        )  # fmt: skip
    )

    # 2. Accuracy change vs the reference per loss and rho.
    rows = []
    for label in labels:
        row: list[Any] = [f"A{len(rows) + 1}", label]
        for rho in RHOS:
            seeds = res.complete_seeds(label, rho)
            if not seeds:
                row.append("-")
                continue
            d = paired_difference(res.items(label, rho, seeds, "final"), res.ref_items(seeds))
            kl, _ = res.mean(label, rho, "kl")
            row.append(f"{d.mean:+.3f} ±{d.half_width:.3f} / {_f(kl, 2)} ({len(seeds)})")
        rows.append(row)
    md.append(
        f"### Task accuracy change against the reference, by loss and flip rate\n\nReference accuracy "
        f"{ref_acc:.3f} on {n_items} clean test prompts. Cells: change in accuracy (final epoch, beta chosen on the "
        "noisy validation split) ±95% half-width / on-policy sequence KL to the reference, nats per sequence "
        "(seeds). `cdpo eps=rho` and `rdpo eps=rho` at rho = 0 are DPO itself.\n\n"
        + markdown_table(["row", "loss"] + [f"rho={r:.1f}" for r in RHOS], rows)
    )

    # 2b. Every beta: the accuracy-vs-KL frontier as numbers (no selection).
    rows = []
    for label in labels:
        for beta in res.betas:
            row = [f"B{len(rows) + 1}", label, f"{beta:g}"]
            for rho in RHOS:
                runs = [res.run(label, rho, beta, s) for s in res.seeds]
                runs = [r for r in runs if r is not None]
                if not runs:
                    row.append("-")
                    continue
                task = statistics.mean(r["epochs"][-1]["task"] for r in runs)
                kl = statistics.mean(r["epochs"][-1]["kl"] for r in runs)
                row.append(f"{task - ref_acc:+.3f} / {_f(kl, 3)} ({len(runs)})")
            rows.append(row)
    md.append(
        "### Every beta, no selection: accuracy change and KL (the frontier in numbers)\n\nCells: task accuracy "
        "change against the reference at the final epoch / on-policy sequence KL (nats per sequence), means over "
        "seeds (seeds). Compare losses at matched KL here, not only at their validation-selected beta.\n\n"
        + markdown_table(["row", "loss", "beta"] + [f"rho={r:.1f}" for r in RHOS], rows)
    )

    # 3. Secondary metrics at the contrast rhos.
    rows = []
    for rho in CONTRAST_RHOS:
        for label in labels:
            if not res.complete_seeds(label, rho):
                continue
            vals = {m: res.mean(label, rho, m)[0] for m in
                    ("task", "rank", "reward", "flip_fit", "clean_fit", "ece", "p_test", "kl")}  # fmt: skip
            sel, _ = res.mean(label, rho, "task", "selected")
            betas = [res.choose(label, rho, s, "final")["beta"] for s in res.complete_seeds(label, rho)]  # type: ignore[index]
            rows.append([
                f"M{len(rows) + 1}", f"{rho:.1f}", label, _f(vals["task"]), _f(sel), _f(vals["rank"]), _f(vals["reward"]),
                _f(vals["flip_fit"]), _f(vals["clean_fit"]), _f(vals["ece"]), _f(vals["p_test"]),
                _f(vals["kl"], 2), "/".join(f"{b:g}" for b in betas),
            ])  # fmt: skip
    md.append(
        "### Every metric at rho = 0.2 and 0.4 (means over seeds, best beta on validation)\n\n`task`: greedy exact "
        "match, final epoch; `task (sel.)`: at the validation-selected epoch; `rank`: clean test pairs with "
        "pi(y_w) > pi(y_l); `reward`: clean test pairs with beta*h > 0; `flip fit`: flipped training pairs the "
        "policy ends up fitting (margin > 0 on the wrong label); `clean fit`: the same on unflipped pairs; `ECE`: "
        "calibration of sigma(beta h) against the noisy validation labels; `p test`: mean sigma(beta h) on clean "
        "test pairs; `KL`: on-policy sequence KL; `betas`: the beta chosen per seed.\n\n"
        + markdown_table(
            [
                "row",
                "rho",
                "loss",
                "task",
                "task (sel.)",
                "rank",
                "reward",
                "flip fit",
                "clean fit",
                "ECE",
                "p test",
                "KL",
                "betas",
            ],
            rows,
        )  # fmt: skip
    )

    # 4. Mis-specified eps against DPO.
    rows = []
    for label in ("cdpo eps=rho/2", "cdpo eps=rho", "cdpo eps=2rho", "cdpo eps=0.1", "rdpo eps=rho", "ipo"):
        row = [f"E{len(rows) + 1}", label]
        for rho in RHOS[1:]:
            pooled, seeds, _ = res.contrast(label, "dpo", rho, "final")
            row.append(f"{pooled} ({len(seeds)})" if pooled is not None else "-")
        rows.append(row)
    md.append(
        "### Each loss minus best-beta DPO, paired (final epoch), with a mis-specified eps\n\nUsers never know rho: "
        "eps = rho/2, rho, 2 rho (capped at 0.45) and a fixed 0.1. Cells: difference in task accuracy [95% CI] "
        "(seeds).\n\n" + markdown_table(["row", "loss"] + [f"rho={r:.1f}" for r in RHOS[1:]], rows)
    )

    # 5. Suspected-flip detection at rho = 0.2.
    rows = []
    for rho, label, score in [
        (r, lab, sc)
        for r in CONTRAST_RHOS
        for lab in ("dpo", "cdpo eps=rho")
        for sc in ("score_policy", "score_margin")
    ]:
        dets = []
        for seed in res.complete_seeds(label, rho):
            chosen = res.choose(label, rho, seed, "final")
            run = chosen["run"]  # type: ignore[index]
            scores = run["epochs"][-1].get(score)
            if scores is None:
                continue
            _, flipped = noisy([{"chosen": "a", "rejected": "b"}] * len(scores), rho, seed)
            dets.append((detection(scores, flipped, 20), detection(scores, flipped, len(flipped))))
        if not dets:
            continue
        avg = {f: statistics.mean(getattr(d[1], f) for d in dets) for f in
               ("precision_at_k", "precision_negative", "recall_negative", "auc")}  # fmt: skip
        p20 = statistics.mean(d[0].precision_at_k for d in dets)
        head[f"flip_{rho}_{label}_{score}"] = {"p20": p20, **avg, "k": dets[0][1].k, "seeds": len(dets)}
        name = "margin beta*h" if score == "score_margin" else "policy log-ratio"
        rows.append([
            f"F{len(rows) + 1}", f"{rho:.1f}", label, name, f"{p20:.3f}", f"{avg['precision_at_k']:.3f} (k={dets[0][1].k})",
            f"{avg['precision_negative']:.3f} / {avg['recall_negative']:.3f}", f"{avg['auc']:.3f}", len(dets),
        ])  # fmt: skip
    md.append(
        "### Suspected flips: which training pairs does the trained policy disagree with?\n\nPairs "
        "ranked by score, most negative first, against the truly flipped ones (a fraction rho of the training "
        "pairs), for the policy trained at its validation-selected beta. Scores on the label as given: `policy "
        "log-ratio` = log pi(y_w|x) - log pi(y_l|x) (what `trl-conservative run` lists), `margin` = beta*h. "
        "`top 20`: precision of the 20 most suspect (the report's default list); `top k`: precision = recall when "
        "listing as many pairs as were flipped; `score < 0`: precision / recall of every pair the policy ranks "
        "against its label; AUC: chance a flipped pair ranks above a clean one (0.5 = no signal).\n\n"
        + markdown_table(
            ["row", "rho", "trained with", "score", "top 20", "top k", "score < 0: P / R", "AUC", "seeds"],
            rows,
        )
    )

    # Conclusion.
    c2, c4 = head.get("contrast_0.2_final"), head.get("contrast_0.4_final")
    s2, s4 = head.get("contrast_0.2_selected"), head.get("contrast_0.4_selected")

    def verdict(p: Any) -> str:
        if p is None:
            return "not measured"
        lo, hi = p.mean - p.half_width, p.mean + p.half_width
        if lo > 0:
            return f"{p} (cDPO better)"
        if hi < 0:
            return f"{p} (cDPO worse)"
        return f"{p} (no detectable difference)"

    conclusion = (
        f"**The pre-stated contrast in one line (computed).** cDPO with eps = rho against DPO, each at its best beta "
        f"on the noisy validation split, "
        f"task accuracy difference [95% CI] at the final epoch: rho = 0.2 {verdict(c2)}; rho = 0.4 {verdict(c4)}; "
        f"with the epoch also chosen on validation: rho = 0.2 {verdict(s2)}; rho = 0.4 {verdict(s4)}."
    )
    if pilot:
        md.insert(
            0,
            "### Design and power\n\n" + pilot["text"],
        )
    return conclusion, "\n\n".join(md), head


def power_text(res: Results, study: Study) -> dict[str, Any]:
    """Discordance of the pilot seeds' contrast -> the seeds needed for a 0.02 half-width."""
    out = {}
    worst = 0.0
    for rho in CONTRAST_RHOS:
        pooled, seeds, _ = res.contrast("cdpo eps=rho", "dpo", rho, "final")
        if pooled is None:
            continue
        need = units_needed(pooled.discordant, pooled.mean)
        out[rho] = (pooled, seeds, need)
        worst = max(worst, need / len(res.ref_task))
    return {"per_rho": out, "seeds_needed": math.ceil(worst)}


def plot(res: Results, path_rho: Path, path_frontier: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref_acc = res.ref_task.count("1") / len(res.ref_task)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in variants(0.2):
        xs, ys, es = [], [], []
        for rho in RHOS:
            seeds = res.complete_seeds(label, rho)
            if not seeds:
                continue
            d = paired_difference(res.items(label, rho, seeds, "final"), res.ref_items(seeds))
            xs.append(rho)
            ys.append(ref_acc + d.mean)
            es.append(d.half_width)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax.axhline(ref_acc, color="grey", ls="--", lw=1, label="reference")
    ax.set(xlabel="flipped fraction rho", ylabel="task accuracy (greedy, clean test prompts)",
           title="Accuracy vs label noise (best beta on noisy validation, final epoch)")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_rho, dpi=100)
    plt.close(fig)

    fig, grid = plt.subplots(2, 3, figsize=(13, 8), sharey=True)
    axes = list(grid.flat)[: len(RHOS)]
    grid.flat[-1].axis("off")
    colors = dict(zip(variants(0.2), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, rho in zip(axes, RHOS, strict=True):
        for label in variants(rho):
            pts = []
            for beta in res.betas:
                runs = [res.run(label, rho, beta, s) for s in res.seeds]
                runs = [r for r in runs if r is not None]
                if not runs:
                    continue
                kl = [r["epochs"][-1]["kl"] for r in runs]
                acc = statistics.mean(r["epochs"][-1]["task"] for r in runs)
                if all(math.isfinite(k) for k in kl):
                    pts.append((statistics.mean(kl), acc))
            if pts:
                pts.sort()
                ax.plot(*zip(*pts, strict=True), marker="o", color=colors[label], label=label)
        ax.axhline(ref_acc, color="grey", ls="--", lw=1)
        ax.set(title=f"rho = {rho:.1f}", xlabel="sequence KL to reference (nats)")
    for ax in (axes[0], axes[3]):
        ax.set_ylabel("task accuracy (final epoch)")
    handles, names = axes[1].get_legend_handles_labels()
    grid.flat[-1].legend(handles, names, loc="center", title="loss (dashed: reference)")
    fig.suptitle("Accuracy vs KL: each point one beta (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path_frontier, dpi=100)
    plt.close(fig)


# --- entry point ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny smoke run (the test suite)")
    mode.add_argument(
        "--pilot", action="store_true", help="the contrast block for 2 seeds: cost and discordance"
    )
    mode.add_argument("--run", action="store_true", help="train the grid (resumable)")
    mode.add_argument("--kl", action="store_true", help="KL pass over weights saved by --run")
    mode.add_argument("--write", action="store_true", help="analyse the runs: RESULTS.md section and plots")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget-min", type=float, default=55.0, help="stop submitting trainings after this")
    parser.add_argument("--skip-blocks", default="", help="comma-separated block names not to run")
    parser.add_argument("--save-weights", action="store_true", help="keep per-epoch weights for --kl")
    parser.add_argument("--dir", type=Path, default=None, help="where runs.jsonl (and weights) go")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trl_conservative.demo.embedded import cache_dir

    study = Study.quick() if opts.quick else Study()
    folder = opts.dir or cache_dir() / f"label-noise-{study.key()}"
    folder.mkdir(parents=True, exist_ok=True)
    runs_path, kl_path, weights = folder / "runs.jsonl", folder / "kl.jsonl", folder / "weights"
    ref = reference_path(study, cache_dir(), log=print)

    if opts.quick:
        jobs = plan([0], rhos=(0.0, 0.2), betas=(2.0,), blocks=BLOCKS[:2])
        runs_path.unlink(missing_ok=True)
        run(jobs, study, ref, runs_path, workers=1, budget_s=math.inf, weights_root=None)
        res = Results(read_jsonl(runs_path), [])
        conclusion, body, _ = analyse(res, study, None)
        print(conclusion + "\n\n" + body)
        return
    if opts.pilot:
        jobs = plan(range(2), blocks=BLOCKS[:1])
        t0 = time.monotonic()
        run(jobs, study, ref, runs_path, workers=opts.workers, budget_s=math.inf,
            weights_root=weights if opts.save_weights else None)  # fmt: skip
        res = Results(read_jsonl(runs_path), [])
        walls = [r["wall_s"] + sum(e["eval_s"] for e in r["epochs"]) for r in res.by_key.values()]
        power = power_text(res, study)
        print(f"pilot: {len(jobs)} trainings in {time.monotonic() - t0:.0f}s wall; per training "
              f"{statistics.median(walls):.1f}s median (train + eval), {opts.workers} workers")  # fmt: skip
        for rho, (pooled, _seeds, need) in power["per_rho"].items():
            print(f"rho={rho}: discordance {pooled.discordant:.3f}, mean {pooled.mean:+.3f} -> {need} units "
                  f"= {need / len(res.ref_task):.1f} seeds of {len(res.ref_task)} items")  # fmt: skip
        print(f"seeds needed: {power['seeds_needed']}")
        (folder / "pilot.json").write_text(json.dumps({
            "trainings": len(jobs), "wall_s": time.monotonic() - t0, "median_training_s": statistics.median(walls),
            "per_rho": {str(k): [v[0].discordant, v[0].mean, v[2]] for k, v in power["per_rho"].items()},
            "seeds_needed": power["seeds_needed"],
        }))  # fmt: skip
        return
    if opts.run:
        skip = {b.strip() for b in opts.skip_blocks.split(",") if b.strip()}
        blocks = tuple(b for b in BLOCKS if b[0] not in skip)
        jobs = plan(range(opts.seeds), blocks=blocks)
        run(jobs, study, ref, runs_path, workers=opts.workers, budget_s=opts.budget_min * 60,
            weights_root=weights if opts.save_weights else None)  # fmt: skip
        return
    if opts.kl:
        kl_pass(study, ref, runs_path, kl_path, weights, opts.workers)
        return
    res = Results(read_jsonl(runs_path), read_jsonl(kl_path))
    pilot_file = folder / "pilot.json"
    pilot = None
    if pilot_file.is_file():
        p = json.loads(pilot_file.read_text())
        pilot = {"text": design_text(study, p, res)}
    conclusion, body, head = analyse(res, study, pilot)
    print(conclusion + "\n\n" + body)
    if opts.write:
        here = Path(__file__).parent
        plot(res, here / "label_noise.png", here / "label_noise_frontier.png")
        write_section(
            "label-noise",
            "## 3. Label noise: when does conservative DPO help? (`benchmarks/bench_label_noise.py`)\n\n"
            f"{_hand_conclusion()}{conclusion}\n\n{machine_line()}\n\n{body}\n\n![accuracy vs rho](label_noise.png)\n\n"
            "![accuracy vs KL](label_noise_frontier.png)",
        )
        (folder / "headline.json").write_text(json.dumps(head, default=str, indent=1))


def _hand_conclusion() -> str:
    """The conclusion paragraph written from the numbers (benchmarks/label_noise_conclusion.md), if present."""
    path = Path(__file__).with_name("label_noise_conclusion.md")
    return path.read_text().strip() + "\n\n" if path.is_file() else ""


def design_text(study: Study, pilot: dict[str, Any], res: Results) -> str:
    n_items = len(res.ref_task)
    disc = ", ".join(
        f"rho = {rho}: {d:.3f} discordant, mean {m:+.3f}" for rho, (d, m, _) in pilot["per_rho"].items()
    )
    return (
        f"Task: two-number addition, operands 0-{study.max_operand}; {n_items} test prompts never seen in SFT or "
        f"DPO; the reference is a tiny Llama (hidden {study.hidden_size}, 2 layers) after {study.sft_steps} SFT "
        f"steps, which answers {res.ref_task.count('1') / n_items:.3f} of the test prompts right (something left to "
        f"learn). One preference pair per training prompt: the right sum against the reference's own greedy answer "
        f"when wrong, else a near miss; {study.val_prompts} further prompts form the noisy validation split. DPO: "
        f"{study.epochs} epochs, lr {study.learning_rate:g} constant, batch {study.batch_size}, beta in "
        f"{{{', '.join(f'{b:g}' for b in res.betas)}}}, evaluated after every epoch.\n\n"
        f"Power: the paired difference of two accuracies on the same units has variance p_disc - delta^2 per unit, "
        f"so a 95% CI half-width <= 0.02 needs n >= (1.96/0.02)^2 (p_disc - delta^2) units (test items x seeds). "
        f"The pilot (the contrast block on 2 seeds, {pilot['trainings']} trainings, median "
        f"{pilot['median_training_s']:.1f} s per training and evaluation) measured {disc}, so "
        f"{pilot['seeds_needed']} seeds x {n_items} items suffice; the study ran {len(res.seeds)} seeds. Counting "
        "items x seeds as independent units ignores the variance between seeds (training order, the beta chosen); "
        "the contrast table's last column, a t-interval over the per-seed differences, shows it."
    )


if __name__ == "__main__":
    main()
