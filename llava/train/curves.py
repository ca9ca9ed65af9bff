"""Training curves as PNG: one panel per stage (loss, smoothed), plus the CLIP hard-negative checks."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402

from llava.train.loop import History  # noqa: E402


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` steps (the raw loss of one batch is noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_histories(histories: list[History], path: str | Path, title: str) -> Path:
    """A row of loss panels, one per stage, and a panel of evaluation metrics where a stage has them."""
    with_evals = [h for h in histories if h.evals]
    n = len(histories) + len(with_evals)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    axes = list(axes[0])
    for ax, h in zip(axes, histories, strict=False):
        steps = range(1, len(h.losses) + 1)
        ax.plot(steps, h.losses, color="0.8", linewidth=0.6, label="batch")
        ax.plot(steps, smooth(h.losses, max(1, len(h.losses) // 40)), color="C0", label="smoothed")
        ax.set_title(f"{h.name} ({h.seconds / 60:.1f} min)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax, h in zip(axes[len(histories) :], with_evals, strict=True):
        for metric, points in sorted(h.evals.items()):
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=metric)
        ax.set_title(f"{h.name}: held-out checks")
        ax.set_xlabel("step")
        ax.set_ylim(0.4, 1.01)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
