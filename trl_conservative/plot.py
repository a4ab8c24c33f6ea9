"""`plot_run`: a PNG with the loss, reward-margin and KL curves of a run (needs the `plot` extra: matplotlib)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .summary import MARGIN, PLOT_FILE, RunSummary


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_run(summary: RunSummary, output_dir: str | Path) -> Path | None:
    """Draw loss, reward margin and KL (train and eval) against the step; None when matplotlib is missing."""
    if not matplotlib_available():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    panels = [("loss", ["loss", "eval_loss"]), ("reward margin", [MARGIN, f"eval_{MARGIN}"])]
    kl = summary.kl_metrics()
    # One KL measure keeps the panel readable: the exact token KL when logged, else the k3 estimate.
    main = next((m for m in ("kl/exact", "kl/k3", "kl/k1") if m in kl or f"eval_{m}" in kl), None)
    if main is not None:
        panels.append((f"KL to reference ({main})", [m for m in (main, f"eval_{main}") if m in kl]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            points = summary.series(key)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if len(points) < 12 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(output_dir) / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
