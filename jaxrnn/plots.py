"""Plots of training runs (matplotlib is imported only when one is drawn)."""

from __future__ import annotations

import pathlib

import numpy as np


def plot_loss_curve(history: list[dict], step_losses: list[float], path: str | pathlib.Path, unit: str) -> None:
    """Saves a PNG of the per-step training loss (smoothed) and the per-epoch validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if step_losses:
        window = max(1, len(step_losses) // 200)
        smooth = np.convolve(step_losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, label="train (per step, smoothed)", alpha=0.8)
    if history:
        ax.plot([h["step"] for h in history], [h["valid_loss"] for h in history], "o-", label="validation (per epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"cross-entropy (nats per {unit})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
