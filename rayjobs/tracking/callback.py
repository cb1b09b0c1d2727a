"""MLflow recording of one training run from inside the Hugging Face Trainer: `MlflowLoggingCallback`.

A trial's run holds the resolved config as flattened params (secrets redacted, `rayjobs.tracking.params`),
every metric the trainer logs at its step, the PNG curves, `resolved_config.yaml`, `trainer_state.json` and
tags (loss, git commit, dataset fingerprint, Ray job; `rayjobs.tracking.tags`). Only rank 0 logs: other ranks'
callbacks never open a client. Rank 0 logs through an on-disk spool and a background sender
(`rayjobs.tracking.spool`), so a tracking outage neither stops nor slows training and loses no point;
`prefsweep mlflow-sync OUTPUT_DIR` replays what is left. Where runs go: `rayjobs.tracking.store`; a sweep's
parent run: `rayjobs.tracking.parent_run`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from transformers import TrainerCallback

from rayjobs.tracking.client import fail_fast_http, is_permanent, with_retries
from rayjobs.tracking.params import dump_yaml, flatten_params, param_key
from rayjobs.tracking.runs import open_run
from rayjobs.tracking.store import experiment_name, resolve_experiment
from rayjobs.tracking.tags import (
    TAG_DATASET_FINGERPRINT,
    TAG_KIND,
    TAG_LOSS,
    TAG_SWEEP_ID,
    TAG_TRIAL,
    run_context_tags,
)
from trainer.config import REF_CACHE_NAME, RESOLVED_CONFIG_NAME

RUN_FILES = ("trainer_state.json", "all_results.json", "train_results.json", "eval_results.json")
# What `log_model: true` uploads from output_dir (top level only; checkpoints stay out).
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken")
NOT_MODEL_FILES = set(RUN_FILES) | {"training_args.bin"}

logger = logging.getLogger("prefsweep.mlflow")


def _loss_of(config: dict) -> str | None:
    if config.get("stage") == "kto":
        return "kto"
    return config.get("pref_loss")


class MlflowLoggingCallback(TrainerCallback):
    """Records one training run in MLflow from inside the Hugging Face Trainer, on rank 0 only, and never
    lets the tracking store stop or slow the training.

    Everything goes first to an on-disk spool in the output dir (`mlflow_spool.jsonl`, one fsync'd line per
    logging step) and is sent by a background thread (`rayjobs.tracking.spool`), retried while the store is
    down; whatever is unsent when the run ends stays there for `prefsweep mlflow-sync OUTPUT_DIR`.

    `on_train_begin` opens the spool and the run: a child of `parent_run_id` when given (an existing child
    of that name is reused, so a restarted trial keeps one run), or the run `run_id` names (or that
    `ensure_run()` made on the driver); params and tags are logged. If the store is down the run is created
    when it comes back (in experiment `experiment_id`, or by `experiment_name` when the driver could not
    resolve one). `on_log` spools every finite number at `state.global_step`, once per key and step (below);
`finalize_run`, called after
    the trainer wrote its files, spools plots, config, state and the end of the run and waits up to
    `flush_timeout_s` for a failing store. `invocation`: the Ray Train `fit()` this worker belongs to; a
    later attempt of it reopens a spool an earlier one ended FAILED (`rayjobs.tracking.spool_file`). The object is picklable before, during and after (the client,
    the spool and its thread are not pickled).

    One value per metric and step, the first one logged: MLflow cannot delete a point, so a step logged
    again is skipped, never sent twice. That covers steps re-run after a restore (a worker group restarted
    from its last checkpoint, a trial resumed by `prefsweep sweep --resume`): the resumed spool holds every
    point the killed attempt logged, and `on_train_begin` reads from it the last step logged per key;
    points at or below it are dropped. A re-run step from the same checkpoint and seed has the value it
    had before (tests/test_fault_worker_death.py), so skipping loses nothing. It also covers a key logged
    twice at one step (`epoch` in the train and the eval log of a step). A trial resumed where its spool is
    gone (another node; a sweep resumed from a bucket) reattaches to its run by name, and the sender then
    skips the steps the run's history already holds (`Delivery.reattached`).
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str | None,
        run_name: str,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        config: dict,
        tags: dict[str, str] | None = None,
        log_model: bool = False,
        experiment_name: str | None = None,
        flush_timeout_s: float | None = None,
        invocation: str | None = None,
    ):
        from rayjobs.tracking import spool as mlflow_spool

        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name or _env_experiment_name()
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.run_id = run_id
        self.config = config
        self.tags = dict(tags or {})
        self.log_model = log_model
        self.flush_timeout_s = mlflow_spool.FLUSH_TIMEOUT_S if flush_timeout_s is None else flush_timeout_s
        self.invocation = invocation  # the Ray Train `fit()` this attempt belongs to (`rayjobs.worker`)
        self._client: MlflowClient | None = None  # the driver's, after ensure_run()
        self._spool = None  # rank 0, from on_train_begin to finalize_run
        self._sender = None
        self._last_timestamp = 0
        self._dropped = 0  # dropped_log_batches once the spool is closed
        self._system_metrics = None  # rank 0's MLflow SystemMetricsMonitor (rayjobs.tracking.trial_outputs)
        self._last_step: dict[str, int] = {}  # per metric key, the last step spooled (rank 0)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_spool": None, "_sender": None, "_system_metrics": None}

    @property
    def dropped_log_batches(self) -> int:
        """Metric batches the store refused for good (not outages: those are retried)."""
        if self._spool is None:
            return self._dropped
        return sum(1 for d in self._spool.state.dropped if d["item"] == "metrics")

    @property
    def spool_path(self) -> Path | None:
        return self._spool.path if self._spool is not None else None

    def ensure_run(self) -> str | None:
        """Create (or find) the run now, log params and tags, and return its id; None if the store is
        unreachable (the first worker then creates it when the store is back).

        Optional; call it on the driver before handing the callback to Ray Train: workers then attach
        to this run, so a restarted worker group (`max_failures`) keeps one run instead of opening a
        second, and the driver can still end the run (`finalize_run(status="FAILED")`) if no worker
        ever started. Without it, rank 0's `on_train_begin` does the same.
        """
        if self._client is None:
            fail_fast_http(self.tracking_uri)
            try:
                self._open_now()
            except Exception as err:  # noqa: BLE001
                self._client = None
                if is_permanent(err):
                    raise
                logger.warning("MLflow at %s is unreachable (%s); the run will be created when it is back",
                               self.tracking_uri, str(err).splitlines()[0] if str(err) else err)  # fmt: skip
        return self.run_id

    def _run_tags(self) -> dict[str, str]:
        return {**run_context_tags(), TAG_TRIAL: self.run_name, **self._default_tags(), **self.tags}

    def _open_now(self) -> None:
        """The driver's synchronous open (no spool: the driver has no output dir of its own)."""
        client = self._client = MlflowClient(self.tracking_uri)
        self.run_id, _ = open_run(
            client,
            experiment_id=lambda: resolve_experiment(self.experiment_id, self.experiment_name, uri=self.tracking_uri),
            run_name=self.run_name,
            params=flatten_params(self.config),
            tags=self._run_tags(),
            run_id=self.run_id,
            parent_run_id=self.parent_run_id,
            call=with_retries,
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._spool is not None:
            return
        from rayjobs.tracking import spool as mlflow_spool
        from rayjobs.tracking import spool_file

        fail_fast_http(self.tracking_uri)
        header = {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "experiment_name": self.experiment_name,
            "run_name": self.run_name,
            "parent_run_id": self.parent_run_id,
            "run_id": self.run_id,
            "params": flatten_params(self.config),
            "tags": self._run_tags(),
            "invocation": self.invocation,
        }
        self._spool = spool = spool_file.Spool.open(Path(args.output_dir), header)
        self._last_timestamp = spool.state.last_timestamp
        self._last_step = last_steps(spool.state.items)
        self.run_id = spool.state.run_id or self.run_id
        delivery = mlflow_spool.Delivery(spool, self.tracking_uri, on_run=self._run_created)
        self._sender = mlflow_spool.Sender(delivery)
        self._sender.start()
        # A healthy store has the run before the first step (a dead one fails at once, a hung one is
        # given OPEN_WAIT_S); the sender keeps retrying either way.
        self._sender.wait_sent(spool.state.items[-1]["seq"], mlflow_spool.OPEN_WAIT_S)
        from rayjobs.tracking.trial_outputs import start_system_metrics

        self._system_metrics = start_system_metrics(self.tracking_uri, self.run_id)

    def _run_created(self, run_id: str) -> None:
        self.run_id = run_id

    def _default_tags(self) -> dict[str, str]:
        trial = self.parent_run_id or TAG_SWEEP_ID in self.tags  # a sweep's trial, its parent known or not yet
        tags = {TAG_KIND: "trial" if trial else "run"}
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        loss = _loss_of(self.config)
        if loss:
            tags[TAG_LOSS] = str(loss)
        return tags

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._spool is None or not logs:
            return
        # Strictly increasing per run, so a resent point is recognisably the same point.
        now = self._last_timestamp = max(int(time.time() * 1000), self._last_timestamp + 1)
        step = int(state.global_step)
        metrics = [
            [param_key(k), float(v), now, step]
            for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        metrics = [m for m in metrics if step > self._last_step.get(m[0], -1)]  # once per key and step
        self._last_step.update((m[0], step) for m in metrics)
        if metrics:
            self._spool_item({"op": "metrics", "metrics": metrics})

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything spooled so far is sent (see `finalize_run`); True when it is."""
        if self._sender is None:
            return True
        return self._sender.flush(self.flush_timeout_s if timeout_s is None else timeout_s)

    def _spool_item(self, record: dict) -> None:
        try:
            item = self._spool.append(record)
        except OSError as err:  # a full disk must not end the run either; the point is lost, say so
            logger.warning("MLflow spool %s not written (%s): %s lost", self._spool.path, err, record["op"])
            return
        self._sender.put(item)

    def finalize_run(
        self, output_dir: Path, dataset_fingerprint: str | None = None, status: str = "FINISHED"
    ) -> None:
        """Spool the run's files from `output_dir`, the last tags and the end of the run, and wait (up to
        `flush_timeout_s` while the store fails) for them to be sent (rank 0; else no-op). Never raises
        for the store: what is not sent stays in the spool, and the log says how to replay it."""
        if self._spool is None:
            self._end_on_driver(status)
            return
        spool, sender, output_dir = self._spool, self._sender, Path(output_dir)
        try:
            files = [png.name for png in sorted(output_dir.glob("training_*.png"))]
            files += [name for name in RUN_FILES if (output_dir / name).is_file()]
            where = [[_relative(output_dir / name, spool.path.parent), None] for name in files]
            if self.log_model:
                where += [[_relative(p, spool.path.parent), "model"] for p in _model_files(output_dir)]
            texts = {RESOLVED_CONFIG_NAME: self._resolved_config_yaml(output_dir)}
            self._spool_item({"op": "artifacts", "files": where, "texts": texts})
            from rayjobs.tracking import trial_outputs

            trial_outputs.stop_system_metrics(self._system_metrics)
            self._system_metrics = None
            self._spool_item(trial_outputs.outputs_item(output_dir, self.config, dataset_fingerprint))
            tags = {TAG_DATASET_FINGERPRINT: dataset_fingerprint} if dataset_fingerprint else {}
            tags.update(_ref_cache_tags(output_dir))
            self._spool_item({"op": "tags", "tags": tags, "count_dropped": True})
            self._spool_item({"op": "end", "status": status})
            sent = sender.flush(self.flush_timeout_s)
        finally:
            sender.stop()
            self._dropped = self.dropped_log_batches
            spool.close()
            self._spool = self._sender = None
        unsent = spool.state.unsent()
        if not sent and unsent:
            points = sum(len(i.get("metrics", ())) for i in unsent)
            logger.warning(
                "MLflow: %d metric points and %d other items of run %s (%s) were not sent; they are kept in "
                "%s. When the tracking server is back, run: prefsweep mlflow-sync %s",
                points, sum(1 for i in unsent if i["op"] != "metrics"), self.run_name, self.run_id or "not yet created",
                spool.path, spool.path.parent,
            )  # fmt: skip

    def _end_on_driver(self, status: str) -> None:
        """The driver's callback, when no worker ever started: end the run `ensure_run()` made."""
        if self._client is None:
            return
        try:
            with_retries(self._client.set_terminated, self.run_id, status=status)
        except Exception as err:  # noqa: BLE001
            logger.warning("MLflow: could not end run %s as %s: %s", self.run_id, status, err)
        self._client = None

    def _resolved_config_yaml(self, output_dir: Path) -> str:
        """The trainer's own resolved config when it wrote one (secrets redacted), else ours."""
        path = output_dir / RESOLVED_CONFIG_NAME
        if path.is_file():
            try:
                written = yaml.safe_load(path.read_text())
                if isinstance(written, dict):
                    return dump_yaml(written)
            except yaml.YAMLError:
                pass
        return dump_yaml(self.config)


def last_steps(items: list[dict]) -> dict[str, int]:
    """The last step spooled per metric key in `items` (a resumed spool's): steps only grow within one
    attempt, so every step up to it was logged already."""
    last: dict[str, int] = {}
    for item in items:
        for key, _value, _ts, step in item.get("metrics", ()) if item["op"] == "metrics" else ():
            last[key] = max(step, last.get(key, step))
    return last


def _ref_cache_tags(output_dir: Path) -> dict[str, str]:
    """`prefsweep.ref_cache` (hit|miss|off) and its build time, from the run's `ref_cache.json` (written
    before training starts, so a run that failed later still has them)."""
    try:
        tags = json.loads((output_dir / REF_CACHE_NAME).read_text()).get("tags")
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def _env_experiment_name() -> str:
    return experiment_name()


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the spool's folder when inside it (so a moved output dir still syncs)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def _model_files(output_dir: Path) -> list[Path]:
    found = {p for pattern in MODEL_FILE_PATTERNS for p in output_dir.glob(pattern) if p.is_file()}
    return sorted(p for p in found if p.name not in NOT_MODEL_FILES)
