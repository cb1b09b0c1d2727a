"""A sweep's trials ranked by the sweep metric, as CSV, Markdown and terminal text.

Ranking follows Ray Tune: `mode="max"` puts the largest value first, `mode="min"` the smallest;
`scope="last"` (Tune's default) ranks by each trial's final value, `scope="best"` by its best value.
Trials without a value rank last, in name order, as do ties.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace

MODES = ("max", "min")
SCOPES = ("last", "best")


@dataclass
class TrialSummary:
    trial: str
    """Tune's trial name; also the child run's name."""
    loss: str
    beta: float
    gamma: float | None
    """`simpo_gamma`; None for losses that do not use it."""
    ftx: float
    """`pref_ftx`, the weight of the SFT term."""
    final: float | None
    """Last reported value of the sweep metric."""
    best: float | None
    """Best reported value of the sweep metric under the sweep's mode."""
    run_id: str | None = None
    config: dict = field(default_factory=dict)
    """The trial's resolved training config (what `best_config.yaml` holds for the winner)."""
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, value) of the sweep metric."""
    extras: dict[str, float] = field(default_factory=dict)
    """Other final metrics shown beside the sweep metric (`EXTRA_METRICS`: reward accuracy, win rate)."""


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def check_mode(mode: str, scope: str = "last") -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def complete(
    trial: TrialSummary, *, run_id: str | None, curve: list[tuple[int, float]], mode: str
) -> TrialSummary:
    """Fill a missing run id, curve, final or best value (the latter two from the curve)."""
    check_mode(mode)
    points = sorted((int(s), float(v)) for s, v in curve if _finite(v) is not None)
    final, best = _finite(trial.final), _finite(trial.best)
    if points:
        final = points[-1][1] if final is None else final
        values = [v for _, v in points]
        best = (max(values) if mode == "max" else min(values)) if best is None else best
    return replace(trial, run_id=trial.run_id or run_id, curve=points, final=final, best=best)


def score(trial: TrialSummary, scope: str = "last") -> float | None:
    return _finite(trial.final if scope == "last" else trial.best)


def rank(trials: list[TrialSummary], *, mode: str, scope: str = "last") -> list[TrialSummary]:
    """Best first; trials with no value last; ties and valueless trials in trial-name order."""
    check_mode(mode, scope)
    sign = -1.0 if mode == "max" else 1.0

    def key(t: TrialSummary):
        value = score(t, scope)
        return (value is None, sign * value if value is not None else 0.0, t.trial)

    return sorted(trials, key=key)


COLUMNS = ("rank", "trial", "loss", "beta", "gamma", "ftx", "final", "best", "run_id")
EXTRA_METRICS = ("eval_rewards/accuracies", "eval_reward/win_rate_vs_ref", "eval_reward/mean")
"""Shown after `best` when a trial reported them and they are not the sweep metric."""


def extra_names(ranked: list[TrialSummary]) -> list[str]:
    return [name for name in EXTRA_METRICS if any(name in t.extras for t in ranked)]


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


def _rows(ranked: list[TrialSummary]) -> list[list[str]]:
    return [
        [
            str(i),
            t.trial,
            t.loss,
            f"{t.beta:g}",
            "-" if t.gamma is None else f"{t.gamma:g}",
            f"{t.ftx:g}",
            _fmt(t.final),
            _fmt(t.best),
            *(_fmt(t.extras.get(name)) for name in extra_names(ranked)),
            t.run_id or "-",
        ]
        for i, t in enumerate(ranked, start=1)
    ]


def _header(metric: str, extras: list[str] = ()) -> list[str]:
    named = [c if c not in ("final", "best") else f"{c} {metric}" for c in COLUMNS]
    return [*named[:-1], *extras, named[-1]]


def to_csv(ranked: list[TrialSummary], metric: str) -> str:
    """Machine-readable: full precision, empty cells for missing values."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extras = extra_names(ranked)
    writer.writerow(_header(metric, extras))
    for i, t in enumerate(ranked, start=1):
        writer.writerow(
            [
                i,
                t.trial,
                t.loss,
                t.beta,
                "" if t.gamma is None else t.gamma,
                t.ftx,
                "" if t.final is None else t.final,
                "" if t.best is None else t.best,
                *("" if t.extras.get(name) is None else t.extras[name] for name in extras),
                t.run_id or "",
            ]
        )
    return buf.getvalue()


def to_markdown(ranked: list[TrialSummary], metric: str, *, mode: str, scope: str = "last") -> str:
    lines = [
        f"# Leaderboard: `{metric}` ({mode}, ranked by {scope} value)",
        "",
        "| " + " | ".join(_header(metric, extra_names(ranked))) + " |",
        "|" + "---|" * (len(COLUMNS) + len(extra_names(ranked))),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(ranked)]
    return "\n".join(lines) + "\n"


def to_text(ranked: list[TrialSummary], metric: str, *, mode: str, scope: str = "last") -> str:
    """Aligned columns for the terminal; the metric is named in the title, run ids are left to the CSV."""
    header = [*COLUMNS[:-1], *extra_names(ranked)]
    rows = [row[:-1] for row in _rows(ranked)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {0, 3, 4, 5, *range(6, len(header))}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    title = f"Leaderboard: {metric} ({mode}, ranked by {scope} value), {len(ranked)} trials"
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)]).rstrip() + "\n"
