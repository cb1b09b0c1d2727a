"""`python -m rayjobs.sweep SWEEP.yaml [KEY=VALUE ...]`: a Ray Tune sweep whose trials are Ray Train runs.

    driver (this process)            Tune trial (one per config)          Ray Train workers
    ---------------------            ---------------------------          -----------------
    load_sweep: validate spec,       trial_driver(config)                 run_training(...)
      every corner config            -> TorchTrainer(callbacks=           -> RayReportCallback
    MLflow parent run                     [QueueReportCallback])              (every log step)
    Tuner(trial_driver).fit()            .fit()                           -> MLflow child run
    leaderboard -> MLflow + terminal

This is Ray Train V2's Tune pattern: a trial is a small driver that builds a `TorchTrainer`; the
trial's workers report every logging step, `QueueReportCallback` forwards rank 0's reports to Tune,
so ASHA can stop a trial between evaluations. The trial driver itself asks Tune for no CPU (it only
waits on its workers), and at most as many trials run at once as the cluster can hold workers for
(`max_concurrent_trials`), so no trial sits on a half-started worker group.

Trial names are `trial_<index>_<loss>_beta<beta>[...]`: deterministic, so a sweep can be restored
and each trial's output dir (`<output_dir>/<trial name>`) and MLflow child run found by name.

Ctrl-C or SIGTERM: Tune saves the sweep's state, the parent run ends KILLED, the driver prints the
`--resume` command and exits 130 / 143 (`rayjobs.sweep_interrupt`).

`--resume` (after the driver died or was interrupted) restores the sweep with `Tuner.restore` from `<storage>/<name>`:
finished trials are kept as they are, unfinished ones run again and resume from their Ray Train run's
latest checkpoint (same run name and storage, so Ray Train restores it), errored ones are restarted.
The MLflow parent run whose id the first driver wrote to `<storage>/<name>/prefsweep_parent_run.json`
is reopened, and each trial reattaches to its child run by name: one child run per trial.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
from pathlib import Path

from rayjobs.background import in_background
from rayjobs.sweep_interrupt import Interrupted, SweepInterrupts, exit_code, resume_command
from rayjobs.sweep_state import previous_invocation
from sweeps.spec import SweepSpec, load_sweep
from sweeps.trials import trial_name, trial_overrides
from trainer.config import TrainConfig, apply_overrides, with_overrides
from trainer.errors import ConfigError
from trainer.phases import mark

logger = logging.getLogger("prefsweep")

DEFAULT_STORAGE = "~/ray_results"
# The trial driver needs no CPU of its own (Ray Train's controller takes none either). One byte of
# `memory` keeps Tune's placement group non-empty; a fractional CPU would not: with 0.001 CPU per driver,
# two 1-CPU trials need 2.002 CPUs and on a 2-CPU machine the second trial's workers wait for the first.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 1}
TRIAL_ABORT_WAIT_S = 20.0  # how long a stopped trial waits for its Train run's abort, then for its fit() to return
TRAIN_RUN_NAME = "train"
"""Each trial's Ray Train run: `<storage>/<sweep>/<trial>/train`."""


def storage_root(spec: SweepSpec) -> str:
    """Where Tune and Ray Train keep results: a local absolute path or a cloud URI."""
    root = spec.storage_path or DEFAULT_STORAGE
    return root if "://" in root else str(Path(root).expanduser().resolve())


def experiment_path(spec: SweepSpec) -> str:
    """The sweep's Tune experiment dir (Tune's state, the trials' Ray Train runs, the parent run id)."""
    return f"{storage_root(spec).rstrip('/')}/{spec.name}"


def trial_changes(base: TrainConfig, sampled: dict, name: str) -> dict:
    """What a trial changes in the sweep's parsed base: the sampled values, output in `<output_dir>/<name>`."""
    return {**trial_overrides(sampled), "output_dir": str(base.output_dir / name)}


def trial_driver(config: dict, *, base: TrainConfig, storage: str, sweep_name: str, metric: str,
                 tracking: dict | None, report_slots, resume: bool = False, local_ray: bool = False,
                 user_env: dict | None = None, fork_server: str | None = None) -> None:
    """One Tune trial: run the sampled config as a Ray Train job and forward its reports to Tune.

    `report_slots`: the sweep's `ReportSlots` actor. `resume` (a restored sweep): continue from the
    latest checkpoint of this trial's Ray Train run. `local_ray`: the sweep runs on the local Ray it
    started: the Train run's controller runs here, in the trial's actor (`rayjobs.torch_trainer`).
    `user_env`: the sweep driver's environment where it matters to the workers (`worker_env`). `fork_server`: the
    socket of the sweep's fork server, which starts the workers with the training stack imported (`rayjobs.warm_fork`).
    """
    import uuid

    from ray import tune

    from rayjobs.train import make_torch_trainer
    from rayjobs.tune_forward import QueueReportCallback, TrialSlot, fit_and_forward

    name = tune.get_context().get_trial_name()
    # resume: what a killed run left in its output dir is its own: resumed below, or started over
    changes = trial_changes(base, config, name)
    cfg = with_overrides(base, {**changes, "overwrite_output_dir": True} if resume else changes)
    trial_storage = f"{storage.rstrip('/')}/{sweep_name}/{name}"
    invocation = previous_invocation(f"{trial_storage}/{TRAIN_RUN_NAME}") if resume else None
    if invocation:
        print(f"prefsweep: trial {name} resumes from its latest checkpoint", flush=True)
    reports = TrialSlot(report_slots, f"{name}/{uuid.uuid4().hex}", controller_actor=not local_ray)
    trainer = make_torch_trainer(
        cfg,
        name=TRAIN_RUN_NAME,
        storage_path=trial_storage,
        tracking={**tracking, "run_name": name} if tracking else None,
        callbacks=[QueueReportCallback(reports)],
        metric=metric,
        invocation=invocation,
        local_trial=local_ray,
        user_env=user_env,
        fork_server=fork_server,
    )
    abort = functools.partial(reports.abort_here, trainer) if local_ray else reports.abort_run
    # Tune hands this actor to a next trial (reuse_actors) only once this thread has ended; a scheduler-stopped
    # trial's thread first aborts its Train run (see rayjobs.tune_forward), more than Tune's 2 s default.
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(int(2 * TRIAL_ABORT_WAIT_S) + 10)
    try:  # not Ray's TuneReportCallback: its last report can hang the trial (see rayjobs.tune_forward)
        fit_and_forward(trainer.fit, reports, tune.report, abort=functools.partial(abort, TRIAL_ABORT_WAIT_S),
                        abort_wait_s=TRIAL_ABORT_WAIT_S)
    finally:
        reports.forget()


def trial_namer(base: dict):
    """Tune's `trial_name_creator` / `trial_dirname_creator`: creation order plus sampled values.

    Trials are numbered as Tune creates them (a fixed order for a seeded search); trial ids are no
    help: Tune's variant generator counts in them, but searchers such as Optuna's use random ids.
    A restored sweep keeps its trials' names; the namer's `offset` (the trials it already had) numbers
    new ones after them. (A closure, not an object: Tune deep-copies its config, which copies objects
    but not functions, and every copy must count in the same `indices`.)
    """
    indices: dict[str, int] = {}

    def name(trial) -> str:
        index = indices.setdefault(str(trial.trial_id), name.offset + len(indices))
        return trial_name(index, trial_overrides(trial.config), base)

    name.offset = 0
    return name


def per_trial_resources(cfg) -> dict[str, float]:
    """What one trial's Ray Train run holds: its workers' resources."""
    from rayjobs.train import scaling_config

    return {k: float(v) for k, v in scaling_config(cfg).total_resources.items() if v}


def default_concurrency(cluster: dict[str, float], per_trial: dict[str, float]) -> int:
    """How many trials' worker groups fit in the cluster at once (at least 1: an autoscaler may add nodes)."""
    fits = [int(cluster.get(name, 0.0) // need) for name, need in per_trial.items() if need > 0]
    return max(1, min(fits)) if fits else 1


def build_reference_caches(spec: SweepSpec, base_cfg: TrainConfig, *, shards: int = 1) -> list:
    """Reference log-probs once per distinct cache key, before any trial starts, split into `shards` Ray
    tasks per key (`rayjobs.ref_cache_build`).

    The reference model is frozen, so its log-probs are the same in every trial that shares the model,
    data and tokenization; trials (`precompute_ref: auto`) then read them instead of running the
    reference each step. The sweep's corner configs (every loss, range ends) name the keys. Each shard
    task holds one training worker's resources (on a GPU cluster, a GPU); without GPUs an equal share of
    the largest node's CPUs, so a CPU machine's cores do not idle through the build.
    """
    from rayjobs.ref_cache_build import build_reference_caches as build

    per_worker = {k: v / base_cfg.ray.num_workers for k, v in per_trial_resources(base_cfg).items()}
    return build(spec, base_cfg, per_worker=per_worker, shards=shards)


def reference_cache_tags(infos: list) -> dict[str, str]:
    """The sweep parent run's cache tags (its trials carry their own): `miss` when the driver built a
    cache, `hit` when every one existed, `off` when the sweep uses none; the driver's build time."""
    from trainer.ref_cache import CacheInfo

    if not infos:
        return CacheInfo().tags()
    status = "miss" if any(i.status == "miss" for i in infos) else "hit"
    return CacheInfo(status=status, build_seconds=sum(i.build_seconds for i in infos)).tags()


def run(source: str | Path | dict, overrides: list[str] = (), *, worker_logs: bool = False,
        resume: bool = False) -> int:
    """Run the sweep; print Tune's trial table while it runs and a leaderboard at the end.

    Workers' own output (every trial's training logs) stays in Ray's log files unless `worker_logs`.
    `resume`: restore the sweep a dead driver left in `<storage>/<name>` (see the module docstring).
    """
    spec = load_sweep(source, list(overrides))
    exp_path = experiment_path(spec)
    if resume:
        from ray import tune

        if not tune.Tuner.can_restore(exp_path):
            raise ConfigError(f"--resume: no sweep state to resume at {exp_path} (no Tune experiment state "
                              f"there); run the sweep without --resume")
    from rayjobs.train import prepare_config

    if spec.tiny_model:
        from trainer.tiny_model import ensure_tiny_model

        if ensure_tiny_model(spec.tiny_model):  # e.g. in a `ray job submit` working dir: models/ is git-ignored
            print(f"prefsweep: built the tiny model at {Path(spec.tiny_model).resolve()} "
                  f"(`prefsweep make-tiny-model {spec.tiny_model}`: it was not in {Path.cwd()})", flush=True)
    if spec.tiny_reward_model:
        from trainer.reward_model import ensure_tiny_reward_model

        if ensure_tiny_reward_model(spec.tiny_reward_model, spec.tiny_model):
            print(f"prefsweep: built the tiny reward model at {Path(spec.tiny_reward_model).resolve()} "
                  f"(`make tiny-reward-model`: it was not in {Path.cwd()})", flush=True)
    base_cfg = prepare_config(spec.base)
    if "tokenized_cache" not in base_cfg.given:  # trials share one tokenization (trainer.data.token_cache)
        base_cfg = with_overrides(base_cfg, {"tokenized_cache": True})

    from ray import tune

    from rayjobs.local_ray import cluster_resources, ensure_ray
    from rayjobs.sweep_parent import SweepParent
    from rayjobs.tracking import store as mlflow_store
    from rayjobs.tracking.tags import TAG_SWEEP_ID

    if base_cfg.ray.run_name:
        raise ConfigError("ray_run_name / ray.run_name names the Ray Train run of `prefsweep train`; a sweep names "
                          "each trial's run after the trial: remove it")
    import ray

    from rayjobs import warm_fork

    # one server for every trial's workers, on a Ray this process starts; its imports run beside Ray's start
    fork_server = (warm_fork.start() if not ray.is_initialized() and warm_fork.wanted(
        use_gpu=base_cfg.ray.use_gpu, deepspeed=base_cfg.training.get("deepspeed")) else None)
    how = ensure_ray(log_to_driver=worker_logs, init_kwargs=base_cfg.ray.init_kwargs)
    per_trial = per_trial_resources(base_cfg)
    concurrency = spec.max_concurrent_trials or default_concurrency(cluster_resources(), per_trial)
    storage = storage_root(spec)
    print(
        f"prefsweep: sweep {spec.name!r} ({spec.search} search, metric {spec.metric} {spec.mode}, "
        f"scheduler {spec.scheduler.type}); each trial holds {per_trial}; up to {concurrency} at once "
        f"on {'a local Ray' if how == 'local' else 'Ray at ' + (os.environ.get('RAY_ADDRESS') or 'this session')}",
        flush=True,
    )

    mark("sweep_ray_ready")
    shards = concurrency * base_cfg.ray.num_workers  # the training workers the sweep may run at once
    if spec.reference_cache:
        from rayjobs.ref_cache_build import cache_under_storage

        base_cfg = cache_under_storage(base_cfg, storage if spec.storage_path else None)
    # The MLflow store's set-up (a new SQLite store runs its schema migrations: seconds) overlaps the cache
    # build, which runs in Ray tasks. None: the store is down; the parent run and the trials resolve it later.
    experiment = in_background(mlflow_store.try_ensure_experiment)
    cache_infos = build_reference_caches(spec, base_cfg, shards=shards) if spec.reference_cache else []
    mark("sweep_cache_built")
    experiment_id = experiment()
    mark("sweep_mlflow_ready")
    parent = SweepParent.start(spec, exp_path=exp_path, output_dir=base_cfg.output_dir, experiment_id=experiment_id,
                               tags=reference_cache_tags(cache_infos), resume=resume)  # fmt: skip
    if resume:
        print(f"prefsweep: resuming sweep {spec.name!r} from {exp_path}; MLflow parent run "
              f"{parent.run_id or '(spooled, not created yet)'}", flush=True)  # fmt: skip
    from rayjobs.train import tracking_args

    tracking = tracking_args(run_name="", experiment_id=parent.record["experiment_id"] or experiment_id,
                             parent_run_id=parent.run_id, log_model=spec.log_model)  # fmt: skip
    tracking["tags"][TAG_SWEEP_ID] = parent.sweep_id  # links trials started before the parent run exists
    from rayjobs.tune_forward import ReportSlots

    report_slots = ray.remote(ReportSlots).options(num_cpus=0).remote()
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=base_cfg, storage=storage, sweep_name=spec.name, metric=spec.metric,
                             tracking=tracking, report_slots=report_slots, resume=resume, local_ray=how == "local",
                             user_env={"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}
                             if "OMP_NUM_THREADS" in os.environ else {},
                             fork_server=fork_server),
        TRIAL_DRIVER_RESOURCES,
    )
    if resume:
        tuner = restore_tuner(exp_path, trainable)
    else:
        tuner = new_tuner(spec, trainable, base_cfg, storage, concurrency)
    interrupts = SweepInterrupts()
    mark("sweep_tuner_fit")
    try:
        with interrupts:
            grid = tuner.fit()
        summaries = trial_summaries(grid, spec, base_cfg) if interrupts.signum is None else []
    except BaseException:
        parent.finish([], metric=spec.metric, mode=spec.mode, status="KILLED")
        raise
    if interrupts.signum is not None:  # Tune saved the sweep's state; --resume finishes it
        parent.finish([], metric=spec.metric, mode=spec.mode, status="KILLED")
        print(f"prefsweep: sweep {spec.name!r} interrupted; its state is in {exp_path}. Finish it with:\n"
              f"  {resume_command(source, overrides, worker_logs=worker_logs)}", file=sys.stderr, flush=True)
        return exit_code(interrupts.signum)
    board = parent.finish(summaries, metric=spec.metric, mode=spec.mode)
    registered = None
    if spec.register_best and parent.delivered:  # it reads the best trial from the parent run in the store
        registered = register_best(spec, parent.run_id, base_cfg.output_dir)
    errors = [r for r in grid if r.error is not None]
    print(f"\nprefsweep: sweep {spec.name!r} finished: {len(summaries)} trials, {len(errors)} failed")
    print(board)
    print(f"\nTrial output dirs: {base_cfg.output_dir}/<trial>; Ray results: {storage}/{spec.name}")
    if registered is not None:
        print(f"Best trial registered in MLflow as model {spec.name!r} version {registered.version}")
    print(f"Compare the trials in MLflow: {mlflow_store.ui_command()}")
    if not any(math.isfinite((r.metrics or {}).get(spec.metric, math.nan)) for r in grid):
        print(f"warning: no trial reported {spec.metric}; check the eval settings of the base config",
              file=sys.stderr)
    for result in errors:
        print(f"trial {Path(result.path).name} failed: {result.error}", file=sys.stderr)
    return 1 if errors else 0


def register_best(spec: SweepSpec, parent_run_id: str, output_root: Path):
    """`register_best: true`: the best trial's model, registered under the sweep's name; a failure is reported,
    never fatal (the sweep's results are all in by now)."""
    from rayjobs.tracking import best_model
    from rayjobs.tracking import store as mlflow_store

    try:
        return best_model.register_best(parent_run_id, spec.name, output_root, mlflow_store.tracking_uri())
    except Exception as err:  # noqa: BLE001
        logger.warning("the best trial's model was not registered: %s", err)
        return None


def new_tuner(spec: SweepSpec, trainable, base: TrainConfig, storage: str, concurrency: int):
    from ray import tune

    from sweeps.tune_space import param_space, scheduler, search_algorithm

    namer = trial_namer(base.given)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec) if spec.search != "optuna" else None,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            num_samples=spec.num_samples,
            search_alg=search_algorithm(spec, concurrency),
            scheduler=scheduler(spec),
            trial_name_creator=namer,
            trial_dirname_creator=namer,
            # a next trial runs in a finished one's actor: no new process, imports done (~8 CPU-s a trial)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=1),
    )


def restore_tuner(path: str, trainable):
    """`Tuner.restore`: finished trials stay finished, unfinished ones continue, errored ones restart.

    The trial namer comes back from the pickled Tuner with its count at pickling time: trials the
    searcher has yet to create are numbered after the ones the experiment already holds.
    """
    from ray import tune

    tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, restart_errored=True)
    namer = getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "trial_name_creator", None)
    if callable(namer) and hasattr(namer, "offset"):
        namer.offset = len(tuner.get_results())
    return tuner


def trial_summaries(grid, spec: SweepSpec, base: TrainConfig) -> list:
    """One `TrialSummary` per Tune result: sampled values and final metric (curves come from MLflow)."""
    from rayjobs.tracking.leaderboard import EXTRA_METRICS, TrialSummary

    summaries = []
    for result in grid:
        name = Path(result.path).name
        changes = trial_changes(base, result.config or {}, name)
        raw = apply_overrides(base.given, changes)
        cfg = with_overrides(base, {**changes, "overwrite_output_dir": True})  # read for its values; the run is over
        final = (result.metrics or {}).get(spec.metric, math.nan)
        summaries.append(
            TrialSummary(
                trial=name,
                loss=cfg.loss_name,
                beta=cfg.finetuning.pref_beta,
                gamma=cfg.finetuning.simpo_gamma if cfg.loss_name == "simpo" else None,
                ftx=cfg.finetuning.pref_ftx,
                final=float(final) if math.isfinite(final) else None,
                best=None,
                config=raw,
                extras={k: float(v) for k, v in (result.metrics or {}).items()
                        if k in EXTRA_METRICS and k != spec.metric and math.isfinite(v)},
            )
        )
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prefsweep sweep",
        description="Run a sweep spec with Ray Tune; each trial is a Ray Train run recorded in MLflow. "
        "Starts a local Ray unless RAY_ADDRESS is set.",
    )
    parser.add_argument("sweep", help="sweep spec YAML (see sweeps/demo.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="spec keys (num_samples=2, search=optuna, scheduler.grace_period=2) or base-config keys "
        "(max_steps=4, ray.num_workers=2)",
    )
    parser.add_argument("--resume", action="store_true",
                        help="finish the sweep a dead driver left in <storage_path>/<name>: finished trials are "
                        "kept, unfinished ones resume from their checkpoints, MLflow runs are reattached")
    parser.add_argument("--worker-logs", action="store_true",
                        help="also print every trial's training logs (default: only the trial table)")
    args = parser.parse_args(argv)
    try:
        return run(args.sweep, args.overrides, worker_logs=args.worker_logs, resume=args.resume)
    except ConfigError as err:
        print(f"prefsweep sweep: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"prefsweep sweep: {err} before any trial started; nothing to resume", file=sys.stderr)
        return exit_code(err.signum)


if __name__ == "__main__":
    from rayjobs.cli import as_own_process

    raise SystemExit(as_own_process(main))
