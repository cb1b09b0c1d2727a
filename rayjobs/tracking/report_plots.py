"""Comparison charts for a sweep's parent run: the metric against beta per loss, and all trials' curves.

Built on `matplotlib.figure.Figure` directly (no pyplot): no global backend or figure registry is touched,
so this is safe in a driver that also runs Ray and Tune threads.
"""

from __future__ import annotations

from collections import defaultdict

from matplotlib.figure import Figure

from rayjobs.tracking.leaderboard import TrialSummary, score


def metric_vs_beta(trials: list[TrialSummary], metric: str, *, scope: str = "last") -> Figure:
    """One line per loss type: the trial's ranking value against `pref_beta` (log x when beta spans 10x).

    Where a loss's trials also differ in simpo_gamma or pref_ftx (a beta x gamma sweep), each value of
    those gets its own line, so a line never joins points that differ in more than beta.
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    gammas, ftxs = defaultdict(set), defaultdict(set)
    for t in trials:
        gammas[t.loss].add(t.gamma)
        ftxs[t.loss].add(t.ftx)
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in trials:
        value = score(t, scope)
        if value is not None:
            label = t.loss
            label += f" gamma={t.gamma:g}" if len(gammas[t.loss]) > 1 and t.gamma is not None else ""
            label += f" ftx={t.ftx:g}" if len(ftxs[t.loss]) > 1 else ""
            lines[label].append((t.beta, value))
    for loss in sorted(lines):
        points = sorted(lines[loss])
        ax.plot([b for b, _ in points], [v for _, v in points], "o-", label=loss)
    betas = [b for points in lines.values() for b, _ in points]
    if betas and min(betas) > 0 and max(betas) >= 10 * min(betas):
        ax.set_xscale("log")
    if lines:
        ax.legend(title="loss", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no trial reported the metric", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("pref_beta")
    ax.set_ylabel(f"{scope} {metric}")
    ax.set_title(f"{metric} vs beta, per loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def metric_curves(trials: list[TrialSummary], metric: str) -> Figure:
    """Every trial's (step, value) curve of the sweep metric in one chart."""
    fig = Figure(figsize=(7.2, 4.4))
    ax = fig.subplots()
    drawn = 0
    for t in trials:
        if t.curve:
            steps, values = zip(*t.curve)
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=t.trial)
            drawn += 1
    if drawn:
        ax.legend(fontsize="x-small", ncol=1 + drawn // 12, loc="best")
    else:
        ax.text(0.5, 0.5, "no trial reported the metric", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of all trials")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
