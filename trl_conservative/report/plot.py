"""`plot_run`: a PNG with the loss, reward-margin and KL curves of a run (needs the `plot` extra: matplotlib)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trl_conservative.metric_names import EVAL_LOSS, KL_EXACT, KL_SEQUENCE, LOSS

from .summary import MARGIN, PLOT_FILE, RunSummary

__all__ = [
    "matplotlib_available",
    "plot_run",
]


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_run(summary: RunSummary, output_dir: str | Path) -> Path | None:
    """Draw loss, reward margin and KL (train and eval) against the step; None when matplotlib is missing."""
    if not matplotlib_available():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    panels = [("loss", [LOSS, EVAL_LOSS]), ("reward margin", [MARGIN, f"eval_{MARGIN}"])]
    kl = summary.kl_metrics()
    # Token KL (nats per token) and sequence KL (nats per sequence) differ in scale: one panel each.
    token = [m for m in (KL_EXACT, f"eval_{KL_EXACT}") if m in kl]
    if token:
        panels.append(("token KL to reference (nats/token)", token))
    if f"eval_{KL_SEQUENCE}" in kl:
        panels.append(("sequence KL on own samples (nats)", [f"eval_{KL_SEQUENCE}"]))
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
