"""Sweep specs: parsing, validation messages, and the search spaces Ray Tune and Optuna sample from.

No Ray cluster here: Tune's own variant generator and an Optuna study sample the spaces in-process.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from ray.tune.search.variant_generator import generate_variants

from rayjobs.sweep import default_concurrency, trial_namer
from sweeps.spec import load_sweep
from sweeps.trials import trial_name, trial_overrides
from sweeps.tune_space import optuna_define_by_run, param_space, scheduler, search_algorithm
from trainer.config import apply_overrides, load_config
from trainer.errors import ConfigError
from trainer.losses import loss_names

BASE = {
    "model_name_or_path": "models/tiny-llama",
    "stage": "dpo",
    "do_train": True,
    "dataset": "dpo_en_demo",
    "dataset_dir": "data",
    "output_dir": "outputs/spec-test",
    "val_size": 0.125,
    "eval_strategy": "steps",
    "eval_steps": 4,
}
BETA_RANGES = {"sigmoid": (0.01, 0.5), "ipo": (0.1, 1.0), "simpo": (2.0, 10.0)}
CONDITIONAL = {
    "base": BASE,
    "space": {
        "pref_loss": {"choice": ["sigmoid", "ipo", "simpo"]},
        "pref_beta": {"by": "pref_loss", "values": {
            "sigmoid": {"loguniform": list(BETA_RANGES["sigmoid"])},
            "ipo": {"uniform": list(BETA_RANGES["ipo"])},
            "simpo": {"uniform": list(BETA_RANGES["simpo"])},
        }},
        "simpo_gamma": {"by": "pref_loss", "values": {"simpo": {"uniform": [0.3, 1.0]}}},
        "dpo_label_smoothing": {"by": "pref_loss", "values": {"sigmoid": {"choice": [0.0, 0.1, 0.2]}}},
        "learning_rate": {"loguniform": [1e-5, 1e-3]},
    },
    "num_samples": 200,
}


def spec_with(**changes) -> dict:
    spec = copy.deepcopy(CONDITIONAL)
    spec.update(changes)
    return spec


def tune_samples(spec, n: int) -> list[dict]:
    """n configs drawn by Ray Tune's BasicVariantGenerator machinery from the spec's param space."""
    rng = np.random.RandomState(spec.search_seed)
    space = param_space(spec)
    samples = []
    while len(samples) < n:
        samples += [trial_overrides(config) for _, config in generate_variants(space, random_state=rng)]
    return samples[:n]


def check_conditional_sample(overrides: dict) -> None:
    loss = overrides["pref_loss"]
    assert ("simpo_gamma" in overrides) == (loss == "simpo"), overrides
    assert ("dpo_label_smoothing" in overrides) == (loss == "sigmoid"), overrides
    low, high = BETA_RANGES[loss]
    assert low <= overrides["pref_beta"] <= high, overrides
    cfg = load_config(apply_overrides(BASE, overrides))  # every sample is a valid training config
    if loss != "simpo":
        assert cfg.finetuning.simpo_gamma is None


def test_tune_conditional_space_gives_simpo_gamma_to_simpo_trials_only():
    spec = load_sweep(CONDITIONAL)
    samples = tune_samples(spec, 200)
    assert {s["pref_loss"] for s in samples} == {"sigmoid", "ipo", "simpo"}
    for overrides in samples:
        check_conditional_sample(overrides)


def test_tune_sampling_is_seeded():
    spec = load_sweep(CONDITIONAL)
    assert tune_samples(spec, 20) == tune_samples(spec, 20)
    other = load_sweep(spec_with(search_seed=1))
    assert tune_samples(other, 20) != tune_samples(spec, 20)


def test_optuna_define_by_run_conditions():
    spec = load_sweep(spec_with(search="optuna"))
    define = optuna_define_by_run(spec)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    for _ in range(60):
        trial = study.ask()
        constants = define(trial) or {}
        overrides = trial_overrides({**trial.params, **constants})
        loss = overrides["pref_loss"]
        assert f"pref_beta[{loss}]" in trial.params  # one Optuna distribution per loss
        assert ("simpo_gamma[simpo]" in trial.params) == (loss == "simpo")
        check_conditional_sample(overrides)
        study.tell(trial, overrides["pref_beta"])


def test_optuna_searcher_state_can_be_saved(tmp_path):
    """Tune pickles the searcher (its define-by-run space included) into the experiment state."""
    searcher = search_algorithm(load_sweep(spec_with(search="optuna")), max_concurrent=2)
    searcher.save(str(tmp_path / "searcher.pkl"))
    assert (tmp_path / "searcher.pkl").stat().st_size > 0


def test_trial_namer_numbers_trials_in_creation_order():
    """Optuna's trial ids are random hex; names must not depend on them."""
    namer = trial_namer(BASE)
    first = SimpleNamespace(trial_id="3faf5cef", config={"pref_loss": "simpo", "pref_beta": 2.5, "simpo_gamma": 0.5})
    second = SimpleNamespace(trial_id="0a1b2c3d", config={"pref_loss_case": {"pref_loss": "ipo", "pref_beta": 0.3}})
    assert namer(first) == "trial_000_simpo_beta2.5_gamma0.5"
    assert namer(second) == "trial_001_ipo_beta0.3"
    assert namer(first) == "trial_000_simpo_beta2.5_gamma0.5"  # the dirname creator asks again


def test_per_loss_beta_grid_expands_for_each_loss():
    spec = load_sweep({
        "base": BASE,
        "space": {
            "pref_loss": {"grid": ["sigmoid", "simpo"]},
            "pref_beta": {"by": "pref_loss", "values": {"sigmoid": {"grid": [0.05, 0.1]}, "simpo": {"grid": [2.0, 2.5, 5.0]}}},
            "simpo_gamma": {"by": "pref_loss", "values": {"simpo": 0.5}},
        },
    })
    got = sorted((s["pref_loss"], s["pref_beta"], s.get("simpo_gamma")) for s in tune_samples(spec, 5))
    assert got == [("sigmoid", 0.05, None), ("sigmoid", 0.1, None),
                   ("simpo", 2.0, 0.5), ("simpo", 2.5, 0.5), ("simpo", 5.0, 0.5)]


def test_condition_on_a_base_constant_is_resolved_up_front():
    spec = load_sweep({
        "base": {**BASE, "pref_loss": "simpo"},
        "space": {
            "pref_beta": {"grid": [2.0, 4.0]},
            "simpo_gamma": {"by": "pref_loss", "values": {"simpo": {"uniform": [0.3, 1.0]}}},
            "dpo_label_smoothing": {"by": "pref_loss", "values": {"sigmoid": 0.1}},
        },
    })
    for overrides in tune_samples(spec, 2):
        assert 0.3 <= overrides["simpo_gamma"] <= 1.0
        assert "dpo_label_smoothing" not in overrides


def test_shipped_demo_sweep_covers_six_trials_three_losses():
    spec = load_sweep("sweeps/demo.yaml")
    samples = tune_samples(spec, 3 * spec.num_samples)
    assert len(samples) >= 6
    assert len({s["pref_loss"] for s in samples}) >= 3
    assert spec.base["model_name_or_path"] == "models/tiny-llama"  # what `make tiny-model` builds
    names = [trial_name(i, s, spec.base) for i, s in enumerate(samples)]
    assert len(set(names)) == len(names)


def test_losses_sweep_runs_every_paired_loss_and_each_trial_is_a_valid_config():
    """Every paired registry entry and MPO's combined loss; every sampled trial passes config validation
    (each modifier with a loss it applies to); f-divergence, LD-DPO and WPO each take two or more values."""
    spec = load_sweep("sweeps/losses.yaml", ["bf16=false"])
    assert set(spec.space["pref_loss"].values()) == set(loss_names("dpo")) | {"sigmoid+bco_pair+sft"}
    samples = tune_samples(spec, 60)
    assert {s["pref_loss"] for s in samples} == set(spec.space["pref_loss"].values())
    for s in samples:
        load_config(spec.base, s)
    for key in ("f_divergence_type", "ld_alpha", "use_weighting"):
        assert len({s.get(key) for s in samples if key in s}) >= 2, key
    mpo = next(s for s in samples if s["pref_loss"] == "sigmoid+bco_pair+sft")
    assert load_config(spec.base, mpo).finetuning.pref_loss_weights == [0.8, 0.2, 1.0]


@pytest.mark.parametrize("name", ["losses", "simpo", "ftx"])
def test_gpu_sweeps_validate_on_a_cpu_driver(name):
    """A CPU head node of a GPU cluster validates bf16 configs (precision is checked on the workers)."""
    spec = load_sweep(f"sweeps/{name}.yaml")
    assert spec.base["bf16"] is True


@pytest.mark.parametrize("name", ["demo", "losses", "simpo", "ftx"])
def test_every_shipped_sweep_loads(name):
    spec = load_sweep(f"sweeps/{name}.yaml", [] if name == "demo" else ["bf16=false"])
    assert spec.name == name
    assert spec.metric == "eval_rewards/accuracies" and spec.mode == "max"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_sample": 3}, "unknown key 'num_sample'; did you mean 'num_samples'?"),
        ({"metric": "eval_reward/accuracies"}, "did you mean 'eval_rewards/accuracies'?"),
        ({"mode": "maximize"}, "mode must be one of ['max', 'min']"),
        ({"search": "bayes"}, "search: unknown key 'bayes'"),
        ({"space": {"pref_bta": {"uniform": [0.1, 1]}}}, "'pref_bta' is not a training config key; did you mean 'pref_beta'?"),
        ({"space": {"pref_beta": {"uniform": [1, 0.1]}}}, "low must be < high"),
        ({"space": {"pref_beta": {"loguniform": [0, 1]}}}, "low must be > 0"),
        ({"space": {"pref_beta": {"normal": [0, 1]}}}, "unknown key 'normal'"),
        ({"space": {"pref_beta": [0.1, 0.2]}}, "space.pref_beta: expected one of {grid: ..."),
        ({"space": {"ray.num_workers": {"grid": [1, 2]}}}, "set trial_resources instead"),
        ({"space": {"pref_loss": {"grid": ["sigmoid", "ipo"]}, "simpo_gamma": {"uniform": [0.3, 1.0]}}},
         "simpo_gamma is only used by pref_loss simpo, but pref_loss is 'sigmoid' (make it conditional"),
        ({"space": {"pref_loss": {"grid": ["sigmoid", "simpo"]},
                    "simpo_gamma": {"by": "pref_loss", "values": {"simpoo": {"uniform": [0.3, 1.0]}}}}},
         "'simpoo' is never a value of pref_loss in this sweep"),
        ({"space": {"pref_loss": {"choice": ["sigmoid", "simpo"]},
                    "pref_beta": {"by": "pref_loss", "values": {"simpo": {"grid": [2.0, 3.0]}}}}},
         "a grid inside a condition needs pref_loss to be a grid too"),
        ({"space": {"pref_loss": {"grid": ["sigmoid", "simpo"]}}, "search": "optuna"},
         "search optuna samples and cannot expand a grid; use choice"),
        ({"space": {"learning_rate": {"uniform": [1e-4, 1e-3]}}, "base": {**BASE, "eval_strategy": "no", "val_size": 0.0}},
         "needs an evaluation set"),
        ({"scheduler": {"type": "asha", "grace": 2}}, "scheduler: unknown key 'grace'; did you mean 'grace_period'?"),
        ({"trial_resources": {"num_worker": 2}}, "did you mean 'num_workers'?"),
    ],
)
def test_spec_errors_name_the_problem(changes, message):
    spec = {"base": BASE, "space": {"pref_beta": {"uniform": [0.05, 0.5]}}}
    spec.update(changes)
    with pytest.raises(ConfigError) as err:
        load_sweep(spec)
    assert message in str(err.value)


def test_overrides_split_between_spec_and_base_config():
    spec = load_sweep("sweeps/demo.yaml", ["num_samples=1", "max_steps=3", "ray.num_workers=2",
                                           "scheduler.type=asha", "scheduler.grace_period=2"])
    assert spec.num_samples == 1
    assert spec.base["max_steps"] == 3 and spec.base["ray"]["num_workers"] == 2
    assert spec.scheduler.type == "asha" and spec.scheduler.grace_period == 2
    with pytest.raises(ConfigError, match="neither a sweep key nor a training config key"):
        load_sweep("sweeps/demo.yaml", ["num_trials=3"])


def test_asha_counts_evaluations_for_eval_metrics_and_steps_otherwise():
    assert scheduler(load_sweep(spec_with(scheduler="asha")))._time_attr == "evaluations"
    assert scheduler(load_sweep(spec_with(scheduler="asha", metric="loss", mode="min")))._time_attr == "step"
    assert scheduler(load_sweep(spec_with(scheduler="none"))) is None


def test_trial_names_are_deterministic_and_carry_the_values():
    assert trial_name(3, {"pref_loss": "simpo", "pref_beta": 2.5, "simpo_gamma": 0.5}, BASE) == (
        "trial_003_simpo_beta2.5_gamma0.5"
    )
    assert trial_name(12, {"pref_loss": "sigmoid", "pref_beta": 0.0123456, "pref_ftx": 0.1}, BASE) == (
        "trial_012_sigmoid_beta0.0123_ftx0.1"
    )
    assert trial_name(0, {}, BASE) == "trial_000_sigmoid_beta0.1"  # the config's defaults
    assert trial_overrides({"pref_loss_case": {"pref_loss": "ipo", "pref_beta": 0.2}, "learning_rate": 1e-4,
                            "simpo_gamma": None, "pref_beta[ipo]": 0.3}) == {
        "pref_loss": "ipo", "pref_beta": 0.3, "learning_rate": 1e-4}


@pytest.mark.parametrize(
    ("cluster", "per_trial", "expected"),
    [
        ({"CPU": 2.0}, {"CPU": 1.0}, 2),  # this laptop: two one-worker CPU trials
        ({"CPU": 2.0}, {"CPU": 2.0}, 1),
        ({"CPU": 64.0, "GPU": 8.0}, {"CPU": 8.0, "GPU": 4.0}, 2),  # GPUs are the limit
        ({"CPU": 8.0}, {"GPU": 1.0}, 1),  # no GPU yet (autoscaler): one at a time, not zero
    ],
)
def test_default_concurrency_is_what_the_cluster_holds(cluster, per_trial, expected):
    assert default_concurrency(cluster, per_trial) == expected
