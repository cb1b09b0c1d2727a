"""PNG curves of a run's log history (`plot_loss: true`), named as LLaMA-Factory names them."""

from __future__ import annotations

import math
from pathlib import Path

PLOTTED = {
    "loss": "training_loss.png",
    "eval_loss": "training_eval_loss.png",
    "rewards/accuracies": "training_rewards_accuracies.png",
}


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """Exponential moving average, TensorBoard-style, for noisy per-step curves."""
    out, last = [], values[0] if values else 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        out.append(last)
    return out


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
            steps.append(int(entry["step"]))
            values.append(float(value))
    return steps, values


def plot_curves(log_history: list[dict], output_dir: str | Path) -> list[Path]:
    """Write one PNG per key in PLOTTED that has points; eval accuracies share the accuracy chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, filename in PLOTTED.items():
        steps, values = series(log_history, key)
        if not steps:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        ax.plot(steps, values, color="#1f77b4", alpha=0.35, label=key)
        if len(values) > 2:
            ax.plot(steps, smooth(values), color="#1f77b4", label=f"{key} (smoothed)")
        if key == "rewards/accuracies":
            eval_steps, eval_values = series(log_history, "eval_rewards/accuracies")
            if eval_steps:
                ax.plot(eval_steps, eval_values, "o-", color="#d62728", label="eval_rewards/accuracies")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} of {Path(output_dir).name}")
        ax.legend()
        fig.tight_layout()
        path = Path(output_dir) / filename
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
