"""Leaderboard ranking and rendering, with the expected orders worked out by hand.

Five trials (final, best):  a (0.6, 0.9)   b (0.8, 0.8)   c (-, -)   d (0.6, 0.7)   e (NaN, 0.95)
NaN counts as missing. Missing values rank last; ties and missing values go in trial-name order.

    max, last:  b 0.8 > a 0.6 = d 0.6 | c, e       ->  b a d c e
    min, last:  a 0.6 = d 0.6 < b 0.8 | c, e       ->  a d b c e
    max, best:  e 0.95 > a 0.9 > b 0.8 > d 0.7 | c ->  e a b d c
    min, best:  d 0.7 < b 0.8 < a 0.9 < e 0.95 | c ->  d b a e c
"""

from __future__ import annotations

import csv
import io
import math

import pytest

from rayjobs.tracking import leaderboard, report_plots
from rayjobs.tracking.leaderboard import TrialSummary


def trial(name: str, final: float | None, best: float | None, loss: str = "sigmoid", beta: float = 0.1):
    return TrialSummary(name, loss, beta, None, 0.0, final, best, run_id=None, config={"name": name})


TRIALS = [
    trial("c", None, None),
    trial("e", math.nan, 0.95),
    trial("a", 0.6, 0.9),
    trial("d", 0.6, 0.7),
    trial("b", 0.8, 0.8),
]


@pytest.mark.parametrize(
    ("mode", "scope", "expected"),
    [
        ("max", "last", "badce"),
        ("min", "last", "adbce"),
        ("max", "best", "eabdc"),
        ("min", "best", "dbaec"),
    ],
)
def test_rank_orders_by_mode_and_scope(mode, scope, expected):
    ranked = leaderboard.rank(TRIALS, mode=mode, scope=scope)
    assert "".join(t.trial for t in ranked) == expected


def test_rank_rejects_unknown_mode_and_scope():
    with pytest.raises(ValueError, match="mode must be one of"):
        leaderboard.rank(TRIALS, mode="maximize")
    with pytest.raises(ValueError, match="scope must be one of"):
        leaderboard.rank(TRIALS, mode="max", scope="all")


def test_complete_fills_final_and_best_from_the_curve():
    """Curve (out of order, one NaN): steps 2 -> 0.7, 4 -> 0.5. Final = value at the last step = 0.5;
    best = 0.7 under max, 0.5 under min. Values the driver already knows are kept."""
    t = trial("x", None, None)
    curve = [(4, 0.5), (2, 0.7), (6, math.nan)]
    filled = leaderboard.complete(t, run_id="r1", curve=curve, mode="max")
    assert (filled.final, filled.best, filled.curve, filled.run_id) == (0.5, 0.7, [(2, 0.7), (4, 0.5)], "r1")
    assert leaderboard.complete(t, run_id=None, curve=curve, mode="min").best == 0.5
    known = leaderboard.complete(trial("y", 0.9, 0.95), run_id="r2", curve=curve, mode="max")
    assert (known.final, known.best) == (0.9, 0.95)
    assert leaderboard.complete(t, run_id=None, curve=[], mode="max").final is None


def test_renderings_agree_on_order_and_values():
    ranked = leaderboard.rank(TRIALS, mode="max")
    metric = "eval_rewards/accuracies"
    rows = list(csv.DictReader(io.StringIO(leaderboard.to_csv(ranked, metric))))
    assert [r["trial"] for r in rows] == list("badce")
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0][f"final {metric}"] == "0.8" and rows[3][f"final {metric}"] == ""

    md = leaderboard.to_markdown(ranked, metric, mode="max").splitlines()
    assert md[2] == f"| rank | trial | loss | beta | gamma | ftx | final {metric} | best {metric} | run_id |"
    assert md[4] == "| 1 | b | sigmoid | 0.1 | - | 0 | 0.8000 | 0.8000 | - |"

    text = leaderboard.to_text(ranked, metric, mode="max").splitlines()
    assert text[0] == f"Leaderboard: {metric} (max, ranked by last value), 5 trials"
    assert [line.split()[1] for line in text[3:]] == list("badce")
    assert len({len(line) for line in text[1:4]}) == 1  # aligned columns


def test_metric_vs_beta_draws_one_line_per_loss_and_gamma():
    """sigmoid at beta 0.5, 0.1 (given out of order) -> one line sorted by beta; simpo at two gammas ->
    two lines; a trial without a value is not drawn. Betas span 0.1..2 (20x) -> log x axis."""
    trials = [
        TrialSummary("s2", "sigmoid", 0.5, None, 0.0, 0.7, 0.7),
        TrialSummary("s1", "sigmoid", 0.1, None, 0.0, 0.6, 0.6),
        TrialSummary("p1", "simpo", 2.0, 0.3, 0.0, 0.5, 0.5),
        TrialSummary("p2", "simpo", 2.0, 1.0, 0.0, 0.8, 0.8),
        TrialSummary("p3", "simpo", 1.0, 1.0, 0.0, None, None),
    ]
    ax = report_plots.metric_vs_beta(trials, "m").axes[0]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines == {
        "sigmoid": ([0.1, 0.5], [0.6, 0.7]),
        "simpo gamma=0.3": ([2.0], [0.5]),
        "simpo gamma=1": ([2.0], [0.8]),
    }
    assert ax.get_xscale() == "log"


def test_metric_curves_draws_every_trial_with_points():
    trials = [
        TrialSummary("a", "ipo", 0.1, None, 0.0, 0.5, 0.5, curve=[(2, 0.25), (4, 0.5)]),
        TrialSummary("b", "ipo", 0.5, None, 0.0, None, None),
    ]
    ax = report_plots.metric_curves(trials, "m").axes[0]
    assert [
        (line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
    ] == [("a", [2, 4], [0.25, 0.5])]
