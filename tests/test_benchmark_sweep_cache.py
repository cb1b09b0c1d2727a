"""The pure bookkeeping of `benchmarks.sweep_cache`: counting reference forwards, the one-forward-per-example
check with the cache, and matching trials between the variants. No sweep runs here."""

from __future__ import annotations

import pytest

from benchmarks.sweep_cache import BETAS, check_run, metric_differences, reference_forwards, summarize

N_TRIALS = 2 * len(BETAS)


def trial(loss="sigmoid", beta=0.1, *, status="hit", forwards=0, loss_value=0.69, logged=((1, 0.693), (2, 0.69))):
    return {"complete": True, "loss": loss, "beta": beta, "ref_cache": {"status": status},
            "run_reference_forwards": forwards, "steps": 2,
            "metrics": {"train_loss": loss_value, "eval_loss": loss_value, "train_runtime": 10.0},
            "logged_losses": [list(x) for x in logged], "logged_eval_losses": [[2, loss_value]]}


def run(variant, trials, *, build=(), wall=100.0, round_=0):
    return {"variant": variant, "round": round_, "wall_seconds": wall, "load_average_1min_before": 0.5,
            "concurrent_trials": 2, "cache_builds": [{"driver_seconds": 5}] if build else [],
            "cache_manifests": [{"key": "k", "reference_forwards": b, "rows": {}} for b in build], "trials": trials}


def cached_run(build=20, **kw):
    return run("cache", {f"trial_{i:03d}": trial(**kw) for i in range(N_TRIALS)}, build=(build,))


def uncached_run(per_trial=30, **kw):
    return run("no_cache", {f"trial_{i:03d}": trial(status="off", forwards=per_trial, **kw) for i in range(N_TRIALS)})


def test_forwards_sum_the_build_and_every_trial():
    """build 20 + 8 trials x 0 = 20; without the cache 0 + 8 x 30 = 240."""
    assert reference_forwards(cached_run()) == {"cache_build": 20, "trials": 0, "total": 20}
    assert reference_forwards(uncached_run()) == {"cache_build": 0, "trials": 240, "total": 240}


def test_cache_run_passes_with_exactly_one_forward_per_example():
    assert check_run(cached_run(build=20), examples=20, n_trials=N_TRIALS) == []


@pytest.mark.parametrize("build", [19, 21, 40])
def test_cache_run_fails_with_any_other_forward_count(build):
    problems = check_run(cached_run(build=build), examples=20, n_trials=N_TRIALS)
    assert any("reference forwards with the cache" in p for p in problems)


def test_a_trial_that_ran_its_own_reference_fails_the_cache_run():
    r = cached_run(build=20)
    r["trials"]["trial_003"] = trial(status="off", forwards=30)
    problems = check_run(r, examples=20, n_trials=N_TRIALS)
    assert any("50 reference forwards" in p for p in problems)
    assert any("trial_003 did not read the cache" in p for p in problems)


def test_two_builds_fail_even_when_the_counts_add_up():
    r = cached_run()
    r["cache_manifests"] = [{"key": "a", "reference_forwards": 10, "rows": {}},
                            {"key": "b", "reference_forwards": 10, "rows": {}}]
    assert any("2 caches built" in p for p in check_run(r, examples=20, n_trials=N_TRIALS))


def test_missing_and_unfinished_trials_are_reported():
    r = uncached_run()
    del r["trials"]["trial_000"]
    r["trials"]["trial_001"]["complete"] = False
    problems = check_run(r, examples=20, n_trials=N_TRIALS)
    assert f"{N_TRIALS - 1} trial dirs, expected {N_TRIALS}" in problems
    assert "trial_001 did not finish" in problems


def test_metric_differences_are_max_abs_over_trials_and_logged_steps():
    """Trial 2's train_loss differs by 3e-5 and its step-2 loss by 2e-4: the maxima are those."""
    a, b = uncached_run(), cached_run()
    b["trials"]["trial_002"]["metrics"]["train_loss"] += 3e-5
    b["trials"]["trial_002"]["logged_losses"][1][1] += 2e-4
    diff = metric_differences(a, b)
    assert diff["mismatched"] == []
    assert diff["max_abs"]["train_loss"] == pytest.approx(3e-5)
    assert diff["max_abs"]["logged_losses"] == pytest.approx(2e-4)
    assert diff["max_abs"]["eval_loss"] == 0.0


def test_trials_with_other_loss_or_beta_are_not_compared():
    a, b = uncached_run(), cached_run()
    b["trials"]["trial_004"]["beta"] = 0.5
    assert metric_differences(a, b)["mismatched"] == ["trial_004"]


def test_wall_ratio_is_the_median_of_per_round_ratios():
    """Rounds: 80/100, 90/100, 60/100 -> per-round 0.8, 0.9, 0.6; median 0.8 (not 230/300)."""
    runs = {"no_cache": [uncached_run() for _ in range(3)],
            "cache": [cached_run() for _ in range(3)]}
    for r, wall in zip(runs["cache"], (80.0, 90.0, 60.0)):
        r["wall_seconds"] = wall
    summary = summarize(runs, {"train": 16, "eval": 4, "skipped": 0})
    assert summary["wall_ratio_per_round"] == pytest.approx([0.8, 0.9, 0.6])
    assert summary["wall_ratio"] == pytest.approx(0.8)
    assert summary["examples"]["total"] == 20
