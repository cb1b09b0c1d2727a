"""`python -m rayjobs.train CONFIG.yaml [KEY=VALUE ...]`: one preference run as a Ray Train job.

    driver (this process)                  Ray Train workers (N processes, DDP)
    ---------------------                  ------------------------------------
    load + validate the config once        train_fn_per_worker({"loop": TrainLoop})
    make its paths absolute          --->    run_training(loop.config,   (the driver's TrainConfig)
    TorchTrainer(ScalingConfig, ...)           callbacks=[RayReportCallback,
    .fit()                                                MLflow callback (rank 0 logs)])

`use_ray: false` runs `trainer.workflow.run_training` in this process instead; both write the same
output dir (rank 0 writes it). Workers run in a Ray-chosen working directory, so every relative path of
the config (output dir, data, model, DeepSpeed JSON) is made absolute against the driver's working
directory before it is shipped: on one machine, or on a cluster with shared storage, everyone sees the
same files.

DDP runs over gloo on CPU and nccl on GPU. `deepspeed: configs/ds_z2.json` passes straight through to
Hugging Face's Trainer inside each worker.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rayjobs.train_loop import TrainLoop
from trainer.config import TrainConfig, load_config, with_overrides
from trainer.errors import ConfigError
from trainer.losses import loss_help
from trainer.model_source import check_models

UNRESOLVED = object()  # an MLflow experiment id not asked for yet (None: asked, the store was down)
REPORT_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_S = "0.25"

# This module stays light (no transformers / MLflow at import): Ray's controller actor unpickles
# `train_fn_per_worker`, which imports this module there. The worker side lives in rayjobs.worker.


# ------------------------------------------------------------------------------------------ config


def absolute_paths(cfg: TrainConfig, base: Path | None = None) -> dict[str, Any]:
    """Overrides that make the config's local paths absolute against `base` (default: the cwd).

    `model_name_or_path` / `ref_model` only when they name an existing local directory (otherwise they
    are hub ids); `deepspeed` only when it is a path (it may be an inline dict); the reference
    log-prob cache root (`ref_cache_dir`) when set and not a URI.
    """
    base = (base or Path.cwd()).resolve()

    def absolute(value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)

    remote = cfg.data.dataset_dir.startswith("REMOTE:")  # a hub repo, not a path
    fixed: dict[str, Any] = {
        "output_dir": absolute(str(cfg.output_dir)),
        "dataset_dir": cfg.data.dataset_dir if remote else absolute(cfg.data.dataset_dir),
    }
    for key in ("model_name_or_path", "ref_model"):
        value = getattr(cfg.model, key)
        if value and Path(absolute(value)).exists():
            fixed[key] = absolute(value)
    reward_model = getattr(cfg.finetuning, "eval_reward_model", None)
    if reward_model and Path(absolute(reward_model)).exists():  # else a hub id
        fixed["eval_reward_model"] = absolute(reward_model)
    if cfg.model.cache_dir:
        fixed["cache_dir"] = absolute(cfg.model.cache_dir)
    if getattr(cfg.finetuning, "ref_cache_dir", None) and "://" not in cfg.finetuning.ref_cache_dir:
        fixed["ref_cache_dir"] = absolute(cfg.finetuning.ref_cache_dir)
    deepspeed = cfg.training.get("deepspeed")
    if isinstance(deepspeed, str) and deepspeed:
        fixed["deepspeed"] = absolute(deepspeed)
    for key in ("dataset", "eval_dataset"):  # TRL-format files named relative to the working dir
        names = _local_dataset_names(getattr(cfg.data, key), Path(fixed["dataset_dir"]), base)
        if names is not None:
            fixed[key] = names
    return fixed


def _local_dataset_names(value: str | None, dataset_dir: Path, base: Path) -> str | None:
    """`value` with each name that is a path relative to `base` (and neither registered in dataset_dir's
    dataset_info.json nor a path inside dataset_dir) made absolute; None when nothing changes."""
    if not value:
        return None
    try:
        registered = set(json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        registered = set()
    names = [n.strip() for n in value.split(",") if n.strip()]
    fixed = [
        str(base / n) if n not in registered and not (dataset_dir / n).exists() and (base / n).exists() else n
        for n in names
    ]
    return ",".join(fixed) if fixed != names else None


def prepare_config(source: str | Path | dict, overrides: Sequence[str] | dict = ()) -> TrainConfig:
    """Read, override and validate a config, with its local paths made absolute and its models checked
    readable here: the one parse of a run."""
    cfg = load_config(source, list(overrides) if not isinstance(overrides, dict) else overrides)
    cfg = with_overrides(cfg, absolute_paths(cfg))
    # a wrong path or an uncached hub id: one line here, before any worker starts
    check_models(cfg.model, eval_reward_model=getattr(cfg.finetuning, "eval_reward_model", None))
    return cfg


# ----------------------------------------------------------------------------------------- driver


def train_fn_per_worker(loop_config: dict) -> None:
    """Ray Train's per-worker entry (`loop_config["loop"]`: a `TrainLoop`); see `rayjobs.worker.run_worker`."""
    from rayjobs.worker_warmup import wait

    wait()  # the imports a private run's worker began at its start (rayjobs.worker_warmup), before any other
    from trainer.phases import mark
    from trainer.unused_imports import skip_unused_deepspeed

    mark("worker_start")
    if "torch" in sys.modules:  # the threads this worker trains with (Ray's rule: its CPUs; rayjobs.worker_warmup)
        mark(f"worker_torch_threads={sys.modules['torch'].get_num_threads()}")
    skip_unused_deepspeed(loop_config["loop"].config)  # a worker process runs this one config
    from rayjobs.worker import run_worker

    run_worker(loop_config["loop"])


def scaling_config(cfg: TrainConfig):
    """Ray's ScalingConfig from the config's `ray:` section (resource names upper-cased: cpu -> CPU)."""
    from ray.train import ScalingConfig

    resources = cfg.ray.resources_per_worker
    if resources is not None:
        resources = {k.upper() if k.lower() in ("cpu", "gpu") else k: float(v) for k, v in resources.items()}
    return ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources,
                         placement_strategy=cfg.ray.placement_strategy)


def worker_config(cfg: TrainConfig, *, progress: bool) -> TrainConfig:
    """The config as workers run it: on CPU workers `use_cpu` (Accelerate sees a CPU process group
    as distributed only when told it runs on CPU); with a Ray progress bar, no Hugging Face tqdm.
    Keys the user set are kept."""
    defaults = {}
    if not cfg.ray.use_gpu:
        defaults["use_cpu"] = True
    if progress:
        defaults["disable_tqdm"] = True
    defaults = {k: v for k, v in defaults.items() if k not in cfg.given}
    return with_overrides(cfg, defaults) if defaults else cfg


def make_torch_trainer(
    cfg: TrainConfig,
    *,
    name: str,
    storage_path: str | None = None,
    tracking: dict | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = False,
    metric: str | None = None,
    invocation: str | None = None,
    private_ray: bool = False,
    yield_cpu: bool = False,
    local_trial: bool = False,
    user_env: Mapping[str, str] | None = None,
    fork_server: str | None = None,
):
    """A `TorchTrainer` whose workers run `run_training` on `cfg` (from `prepare_config`: absolute paths).

    `tracking`: keyword arguments of `rayjobs.tracking.MlflowLoggingCallback` but `config` (plain
    values; the callback is built inside each worker and only rank 0 logs), or None. `metric`: a
    sweep's metric, reported first at every step (see `rayjobs.worker.RayReportCallback`).
    `invocation`: the id of an earlier `fit()` whose checkpoints the workers may resume from.
    `private_ray`: the run owns the local Ray it runs on (see `rayjobs.torch_trainer`); `yield_cpu`: and this
    process too (the CLI): the rest of that Ray runs at low priority while the workers train. `local_trial`: a
    sweep's trial on the sweep's own local Ray (the controller runs in the trial's actor). `user_env`: the
    environment the user started prefsweep with, where this process's differs (a trial actor's: Ray sets
    `OMP_NUM_THREADS` in it). `fork_server`: the socket of the sweep's fork server (`rayjobs.warm_fork`).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchConfig

    from rayjobs.torch_trainer import LeanTorchTrainer

    # Ray Train's controller takes a worker's report when it polls the workers (every 2 s by
    # default) and the worker's next report waits for that: reporting every log step needs a
    # faster poll. Propagated to the controller and workers by Ray Train.
    os.environ.setdefault(REPORT_POLL_ENV, REPORT_POLL_S)
    # Ray Train's print patch bypasses `sys.stdout`, so output that libraries capture by swapping
    # sys.stdout (dill disassembles functions that way when `datasets` fingerprints a map) leaks.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    scaling = scaling_config(cfg)
    loop = TrainLoop(worker_config(cfg, progress=progress), progress=progress, name=name, metric=metric,
                     tracking=tracking)
    if invocation:
        loop.invocation = invocation
    warm_workers = private_ray or local_trial  # the checkout is on a local Ray's PYTHONPATH (rayjobs.local_ray)
    return LeanTorchTrainer(
        train_fn_per_worker,
        private_ray=private_ray,
        yield_cpu=yield_cpu,
        local_trial=local_trial,
        train_loop_config={"loop": loop},
        # Ray Train, not transformers, opens the process group: ddp_timeout (LF sets it) is its timeout
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo",
                                 timeout_s=int(cfg.training.get("ddp_timeout") or 1800)),
        scaling_config=scaling,
        run_config=RunConfig(
            name=name,
            storage_path=storage_path or cfg.ray.storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.num_to_keep),
            callbacks=list(callbacks) or None,
            # a local Ray's workers import the training stack while Ray Train sets them up
            worker_runtime_env=warm_runtime_env(cfg, scaling, user_env, fork_server) if warm_workers else None,
            # INFO prints every report's whole metrics dict; the trainer prints its own logs
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def warm_runtime_env(cfg: TrainConfig, scaling, user_env: dict | None, fork_server: str | None = None) -> dict:
    """The runtime env of a local Ray's workers: the warm-up hook, and the fork server's client where one runs
    (`fork_server`: a sweep's, by its socket's path; else this process's own, `prefsweep train`'s)."""
    from rayjobs.warm_fork import forkable, py_executable
    from rayjobs.worker_warmup import worker_env

    runtime_env = {"env_vars": worker_env(deepspeed=bool(cfg.training.get("deepspeed")),
                                          cpus=scaling.total_resources.get("CPU", 0) / scaling.num_workers,
                                          environ=user_env)}
    executable = py_executable(fork_server)
    if executable and forkable(use_gpu=cfg.ray.use_gpu, deepspeed=cfg.training.get("deepspeed")):
        runtime_env["py_executable"] = executable
    return runtime_env


def tracking_args(*, run_name: str, experiment_id: str | None, parent_run_id: str | None = None,
                  log_model: bool = False) -> dict:
    """Plain keyword arguments for the workers' MLflow callback (store, experiment and tags resolved
    here, where `MLFLOW_*` are set; `experiment_id` None: the store was down, rank 0 resolves the name)."""
    from rayjobs.tracking import store as mlflow_store
    from rayjobs.tracking import tags as mlflow_tags

    return {
        "tracking_uri": mlflow_store.tracking_uri(),
        "experiment_id": experiment_id,
        "experiment_name": mlflow_store.experiment_name(),
        "run_name": run_name,
        "parent_run_id": parent_run_id,
        "tags": mlflow_tags.run_context_tags(),
        "log_model": log_model,
    }


def run(source: str | Path | dict, overrides: Sequence[str] = (), *, log_model: bool = False,
        track: bool = True, own_process: bool = False) -> dict[str, float]:
    """Train one run (through Ray Train unless `use_ray: false`); return its final metrics.
    `own_process`: this process exists for this run (the CLI), so packages it does not use may be kept out."""
    if own_process:
        cfg, how, experiment_id = _prepare_while_ray_starts(source, overrides, track=track)
    else:
        cfg, how, experiment_id = prepare_config(source, overrides), None, UNRESOLVED
    from trainer.phases import mark

    mark("config_parsed")
    run_name = cfg.ray.run_name or cfg.output_dir.name
    if cfg.use_ray and how is None:
        from rayjobs.local_ray import ensure_ray

        # before the MLflow tags, which record the Ray job id; a Ray of its own needs no dashboard
        how = ensure_ray(init_kwargs=cfg.ray.init_kwargs, dashboard=False)
    private_ray = how == "local"
    tracking = None
    if track:
        if experiment_id is UNRESOLVED:
            from rayjobs.tracking.store import try_ensure_experiment

            experiment_id = try_ensure_experiment()
        tracking = tracking_args(run_name=run_name, experiment_id=experiment_id, log_model=log_model)
    if not cfg.use_ray:
        metrics = _run_in_process(cfg, tracking, own_process=own_process)
    else:
        from trainer.config.driver_checks import as_a_driver

        # worker_config validates again (use_cpu added): as a driver's checks, in a process that only drives.
        # tqdm_ray redraws its bar with every forwarded log line: only worth it on a terminal.
        make = functools.partial(make_torch_trainer, cfg, name=run_name, tracking=tracking,
                                 progress=sys.stdout.isatty(), private_ray=private_ray,
                                 yield_cpu=private_ray and own_process)
        trainer = as_a_driver(make) if own_process else make()
        mark("fit_start")
        trainer.fit()
        metrics = _final_metrics(cfg.output_dir)
    _print_summary(cfg, metrics, tracked=track)
    return metrics


def _prepare_while_ray_starts(source: str | Path | dict, overrides: Sequence[str], *,
                              track: bool = False) -> tuple[TrainConfig, str | None, Any]:
    """`prepare_config` on a thread while this thread starts Ray: on 2 cores Ray's start (its daemons, ~2.7 s)
    and the validation overlap. The validation runs as a driver's (`_prepare_in_driver`: without PEFT and
    transformers' model code, ~0.2 s of checks after ~1 s of imports instead of ~3 s), as this process only
    drives the workers. Only when the config, read without validation (LF's and legacy key names mapped as
    `load_config` maps them), asks for Ray (`use_ray`, the default) with no `ray.init_kwargs`; otherwise, or
    when it cannot be read that way, nothing starts early.
    `track`: the same thread then resolves the MLflow experiment (`try_ensure_experiment`: importing MLflow and
    opening its store, 1.5-2.5 s), which the validation, now short, leaves time for before Ray is up.
    Returns the config, `ensure_ray`'s answer (None: not started) and the experiment id (None: the store is
    down; UNRESOLVED: not asked). A config error wins over a Ray start error: it is the one the user can fix;
    a private Ray started for a config that turns out wrong is shut down before the error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    from rayjobs.local_ray import ensure_ray
    from trainer.config.coerce import coerce
    from trainer.config.lf_compat import map_legacy_keys
    from trainer.config.lf_keys import map_lf_keys
    from trainer.config.parsing import apply_overrides, read_yaml
    from trainer.phases import mark

    try:
        raw = apply_overrides(read_yaml(source) if not isinstance(source, dict) else dict(source), overrides)
        raw = map_lf_keys(map_legacy_keys(raw))
        early = coerce("use_ray", raw.get("use_ray", True), bool) and not (raw.get("ray") or {}).get("init_kwargs")
    except (ConfigError, AttributeError):  # prepare_config says what is wrong
        early = False
    if not early:
        return prepare_config(source, overrides), None, UNRESOLVED
    from rayjobs import warm_fork

    try:
        use_gpu = coerce("ray.use_gpu", (raw.get("ray") or {}).get("use_gpu", False), bool)
    except ConfigError:  # the validation says what is wrong
        use_gpu = True
    if warm_fork.wanted(use_gpu=use_gpu, deepspeed=raw.get("deepspeed")):  # imports beside Ray's start
        warm_fork.start()
    with ThreadPoolExecutor(1, thread_name_prefix="prefsweep-config") as pool:
        validated = pool.submit(_driver_setup, source, overrides, track)
        try:
            how = ensure_ray(dashboard=False)
            mark("ray_started")
        except BaseException:
            if validated.exception() is not None:
                raise validated.exception() from None
            raise
        if validated.exception() is not None:
            if how == "local":  # started here for nothing: not left running in a caller's process
                import ray

                ray.shutdown()
            raise validated.exception()
        cfg, experiment_id = validated.result()
        return cfg, how, experiment_id


def _driver_setup(source: str | Path | dict, overrides: Sequence[str], track: bool) -> tuple[TrainConfig, Any]:
    """The config as `_prepare_in_driver` validates it, then (`track`) the MLflow experiment's id."""
    cfg = _prepare_in_driver(source, overrides)
    if not track:
        return cfg, UNRESOLVED
    from rayjobs.tracking.store import try_ensure_experiment
    from trainer.phases import mark

    experiment_id = try_ensure_experiment()
    mark("experiment_resolved")
    return cfg, experiment_id


def _prepare_in_driver(source: str | Path | dict, overrides: Sequence[str]) -> TrainConfig:
    """`prepare_config` in a driver that trains nothing itself: the same checks, without PEFT and transformers'
    model code, which only the workers use (`trainer.config.driver_checks`)."""
    from trainer.config.driver_checks import as_a_driver
    from trainer.phases import mark

    cfg = as_a_driver(prepare_config, source, overrides)
    mark("config_validated")
    return cfg


def _run_in_process(cfg: TrainConfig, tracking: dict | None, *, own_process: bool = False) -> dict[str, float]:
    if own_process:  # the CLI: this process runs this one config
        from trainer.unused_imports import skip_unused_deepspeed

        skip_unused_deepspeed(cfg)
    from trainer.workflow import run_training

    if cfg.training.get("bf16") and "use_cpu" not in cfg.given:
        import torch

        if not torch.cuda.is_available():  # transformers refuses bf16 without a GPU unless told it runs on CPU
            print("prefsweep: no GPU here: bf16 trains on the CPU (use_cpu: true)", flush=True)
            cfg = with_overrides(cfg, {"use_cpu": True})

    tracker = None
    if tracking is not None:
        from rayjobs.tracking.callback import MlflowLoggingCallback

        tracker = MlflowLoggingCallback(**tracking, config=cfg.to_flat_dict())
    result = None
    try:
        result = run_training(cfg, callbacks=[tracker] if tracker else [])
    finally:
        if tracker is not None:
            tracker.finalize_run(cfg.output_dir, result.dataset_fingerprint if result else None,
                                 status="FINISHED" if result else "FAILED")
    return dict(result.metrics)


def _final_metrics(output_dir: Path) -> dict[str, float]:
    """Rank 0's `all_results.json` (Ray Train's own Result keeps metrics only with checkpoints)."""
    path = Path(output_dir) / "all_results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _print_summary(cfg: TrainConfig, metrics: dict[str, float], *, tracked: bool) -> None:
    shown = {k: v for k, v in metrics.items() if k in ("loss", "train_loss", "eval_loss") or "rewards/" in k}
    print(f"\nprefsweep: run finished; output dir {cfg.output_dir}")
    for key in sorted(shown):
        print(f"  {key:32s} {shown[key]:.4f}")
    if tracked:
        from rayjobs.tracking import store as mlflow_store

        print(f"MLflow: {mlflow_store.ui_command()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prefsweep train",
        description="Train one preference run from a LLaMA-Factory-style YAML, through Ray Train "
        "(use_ray=false: in this process). Starts a local Ray unless RAY_ADDRESS is set.",
        epilog=loss_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. pref_beta=0.2 ray.num_workers=2 use_ray=false")
    parser.add_argument("--log-model", action="store_true", help="upload the final model to MLflow")
    parser.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    args = parser.parse_args(argv)
    try:
        run(args.config, args.overrides, log_model=args.log_model, track=not args.no_mlflow, own_process=True)
    except ConfigError as err:
        print(f"prefsweep train: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from rayjobs.cli import as_own_process

    raise SystemExit(as_own_process(main))
