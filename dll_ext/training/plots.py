"""PNG figures drawn with matplotlib's object API and the Agg renderer, leaving pyplot's global
backend alone (the toolkit may run inside a user's notebook)."""
from typing import Dict, List

from dll_ext.training.errors import require


def figure(n_axes: int = 1, width: float = 6.0, height: float = 4.0):
    """A matplotlib Figure with `n_axes` side by side, and the list of its axes."""
    Figure = require("matplotlib.figure", "plotting").Figure
    fig = Figure(figsize=(width * n_axes, height), layout="constrained")
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    return fig, list(axes)


def plot_curves(history: List[Dict[str, float]], path) -> None:
    """One panel per metric with train_<m> and val_<m> columns, over the epochs."""
    metrics = [key[len("val_"):] for key in history[0] if key.startswith("val_")]
    fig, axes = figure(len(metrics))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, metrics):
        for split in ("train", "val"):
            values = [row.get(f"{split}_{metric}") for row in history]
            ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, label=split)
        if metric == "loss" and all(row[f"{s}_loss"] > 0 for row in history for s in ("train", "val")):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)
