"""MLflow recording of runs and sweeps: one parent run per sweep, one child run per trial.

Where runs go: `MLFLOW_TRACKING_URI` (default `sqlite:///<absolute cwd>/mlflow.db`; absolute because Ray
workers run in other working directories) and `MLFLOW_EXPERIMENT_NAME` (default "prefsweep"). The driver
calls `ensure_experiment()` once and hands `tracking_uri()` and the experiment id to the workers; workers
never resolve the store themselves (unless the driver found it down: then rank 0 resolves the experiment
by name when the store is back).

A trial's run holds the resolved config as flattened params (secrets redacted), every metric the trainer
logs at its step, the PNG curves, `resolved_config.yaml`, `trainer_state.json` and tags (loss, git commit,
dataset fingerprint, Ray job). Only rank 0 logs: other ranks' callbacks never open a client. Rank 0 logs
through an on-disk spool and a background sender (`rayjobs.mlflow_spool`), so a tracking outage neither
stops nor slows training and loses no point; `prefsweep mlflow-sync OUTPUT_DIR` replays what is left.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_USER
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH
from transformers import TrainerCallback

from rayjobs import leaderboard, report_plots
from rayjobs.leaderboard import TrialSummary

__all__ = [
    "MlflowLoggingCallback",
    "TrialSummary",
    "ensure_experiment",
    "experiment_name",
    "finish_sweep_parent",
    "flatten_params",
    "redact",
    "run_context_tags",
    "start_sweep_parent",
    "tracking_uri",
    "try_ensure_experiment",
    "ui_command",
]

DEFAULT_EXPERIMENT_NAME = "prefsweep"
# Without this tag MLflow 3's UI opens an experiment in its GenAI view; with it, the training-runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

TAG_LOSS = "prefsweep.loss"
TAG_TRIAL = "prefsweep.trial"
TAG_KIND = "prefsweep.kind"  # "sweep" (parent), "trial" (child) or "run" (a single `prefsweep train`)
TAG_DATASET_FINGERPRINT = "prefsweep.dataset_fingerprint"
TAG_RAY_JOB_ID = "prefsweep.ray_job_id"
TAG_RAY_SUBMISSION_ID = "prefsweep.ray_job_submission_id"
TAG_DROPPED_LOG_BATCHES = "prefsweep.dropped_log_batches"

RESOLVED_CONFIG_NAME = "resolved_config.yaml"  # same name trainer/config.py writes into output_dir
RUN_FILES = ("trainer_state.json", "all_results.json", "train_results.json", "eval_results.json")
# What `log_model: true` uploads from output_dir (top level only; checkpoints stay out).
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken")
NOT_MODEL_FILES = set(RUN_FILES) | {"training_args.bin"}

REDACTED = "***"
_SECRET_WORDS = {"token", "password", "passwd", "secret", "key", "apikey", "credential", "credentials"}
# `pad_token: "<pad>"` and friends name tokenizer strings, not credentials.
_TOKENIZER_WORDS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special"}
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")

logger = logging.getLogger("prefsweep.mlflow")


# ----------------------------------------------------------------------------------------------- store


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, with relative sqlite / file paths made absolute; default `<cwd>/mlflow.db`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{Path(path).resolve()}"
        return uri
    if uri.startswith("file:") or "://" not in uri:
        path = uri[len("file://") :] if uri.startswith("file://") else uri.removeprefix("file:")
        return Path(path).resolve().as_uri()
    return uri


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT_NAME


def _local_artifact_location(uri: str, name: str) -> str | None:
    """A SQLite store's artifacts live next to the database file (`mlruns/<experiment>/<run id>/`), not
    under whichever working directory first opened it (MLflow's default)."""
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :]
        if db.startswith("/"):
            return str(Path(db).parent / "mlruns" / (re.sub(r"[^\w.-]", "_", name).lstrip(".") or "_"))
    return None  # servers choose their own artifact store (`--artifacts-destination`)


def ensure_experiment(name: str | None = None, uri: str | None = None) -> str:
    """Id of experiment `name` (default `experiment_name()`), created with the experiment-kind tag if missing.

    Called once, by the driver, before any worker starts, so that a fresh SQLite file is created and
    migrated by one process. An existing experiment that lacks the kind tag gets it; one that has
    another kind keeps it (a user's choice). A deleted experiment of that name is restored. `uri`: the
    store (default `tracking_uri()`).
    """
    name = name or experiment_name()
    uri = uri or tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=_local_artifact_location(uri, name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as err:  # another driver created it a moment ago
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise err
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def try_ensure_experiment(name: str | None = None) -> str | None:
    """`ensure_experiment()` for a driver that must not wait on a dead server: None (with a warning) when
    the store is unreachable; pass it on with `experiment_name` and rank 0 resolves it when the store is back."""
    from rayjobs.mlflow_spool import fail_fast_http, is_permanent

    fail_fast_http(tracking_uri())
    try:
        return ensure_experiment(name)
    except MlflowException as err:
        if is_permanent(err):
            raise
        logger.warning("MLflow at %s is unreachable (%s); the experiment is resolved when it is back",
                       tracking_uri(), str(err).splitlines()[0] if str(err) else err)  # fmt: skip
        return None


def ui_command() -> str:
    """The command that opens this store in the MLflow UI (or the server's address for http stores)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


# ---------------------------------------------------------------------------------------------- params


def _words(key: str) -> list[str]:
    return re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())


def is_secret_key(key: str) -> bool:
    """`hub_token`, `api_key`, `aws_secret_access_key`, `HF_TOKEN`, `dbPassword` are; `max_new_tokens`,
    `pad_token` and `tokenizer_name` are not."""
    words = _words(key)
    if not _SECRET_WORDS.intersection(words):
        return False
    return not ("token" in words and _TOKENIZER_WORDS.intersection(words))


def _redact_text(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1" + REDACTED + "@", _HF_TOKEN.sub(REDACTED, text))


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config tree with secret-looking keys' values and inline tokens/passwords replaced."""
    if key and is_secret_key(key) and not (value is None or isinstance(value, bool) or value == ""):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _param_key(key: str) -> str:
    key = _BAD_KEY_CHARS.sub("_", key).strip("/") or "_"
    return key[:MAX_ENTITY_KEY_LENGTH]


def flatten_params(config: dict) -> dict[str, str]:
    """Nested config -> `{"ray.num_workers": "2", ...}`: values stringified, cut to MLflow's param limit,
    secrets redacted (the whole subtree under a secret-looking key)."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[_param_key(prefix)] = str(node)[:MAX_PARAM_VAL_LENGTH]

    walk(redact(config), "")
    return flat


def _loss_of(config: dict) -> str | None:
    if config.get("stage") == "kto":
        return "kto"
    return config.get("pref_loss")


def _dump_yaml(config: dict) -> str:
    return yaml.safe_dump(redact(config), sort_keys=False)


# ------------------------------------------------------------------------------------------------ tags


def git_commit(path: str | Path | None = None) -> str | None:
    """HEAD of the repository holding `path`; default: the one holding this code (as MLflow tags the
    entry point's repository), else the working directory's."""
    for where in [path] if path else [Path(__file__).parent, Path.cwd()]:
        try:
            out = subprocess.run(
                ["git", "-C", str(where), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.stdout.strip():
            return out.stdout.strip()
    return None


def run_context_tags() -> dict[str, str]:
    """Git commit, user and Ray job of this process. Call it on the driver and pass the result as `tags`:
    a Ray worker's working dir has no `.git`, and only the job's driver sees its submission id."""
    tags = {MLFLOW_USER: getpass.getuser()}
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    try:  # set by the Ray job supervisor in the entrypoint's environment
        metadata = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata", {})
        if metadata.get("job_submission_id"):
            tags[TAG_RAY_SUBMISSION_ID] = str(metadata["job_submission_id"])
    except (ValueError, AttributeError):
        pass
    if "ray" in sys.modules:  # never import Ray just to ask
        ray = sys.modules["ray"]
        if ray.is_initialized():
            tags[TAG_RAY_JOB_ID] = ray.get_runtime_context().get_job_id()
    return tags


def _with_retries(call, *args, tries: int = 4, **kwargs):
    """SQLite allows one writer; parallel trials may find it locked past MLflow's own busy timeout, which
    MLflow reports as TEMPORARILY_UNAVAILABLE. Other errors are not retried."""
    for attempt in range(tries):
        try:
            return call(*args, **kwargs)
        except MlflowException as err:
            if err.error_code != "TEMPORARILY_UNAVAILABLE" or attempt == tries - 1:
                raise
            time.sleep(0.5 * 2**attempt)


# -------------------------------------------------------------------------------------------- callback


class MlflowLoggingCallback(TrainerCallback):
    """Records one training run in MLflow from inside the Hugging Face Trainer, on rank 0 only, and never
    lets the tracking store stop or slow the training.

    Everything goes first to an on-disk spool in the output dir (`mlflow_spool.jsonl`, one fsync'd line per
    logging step) and is sent by a background thread (`rayjobs.mlflow_spool`), retried while the store is
    down; whatever is unsent when the run ends stays there for `prefsweep mlflow-sync OUTPUT_DIR`.

    `on_train_begin` opens the spool and the run: a child of `parent_run_id` when given (an existing child
    of that name is reused, so a restarted trial keeps one run), or the run `run_id` names (or that
    `ensure_run()` made on the driver); params and tags are logged. If the store is down the run is created
    when it comes back (in experiment `experiment_id`, or by `experiment_name` when the driver could not
    resolve one). `on_log` spools every finite number at `state.global_step`; `finalize_run`, called after
    the trainer wrote its files, spools plots, config, state and the end of the run and waits up to
    `flush_timeout_s` for a failing store. The object is picklable before, during and after (the client,
    the spool and its thread are not pickled).
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
    ):
        from rayjobs import mlflow_spool

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
        self._client: MlflowClient | None = None  # the driver's, after ensure_run()
        self._spool = None  # rank 0, from on_train_begin to finalize_run
        self._sender = None
        self._last_timestamp = 0
        self._dropped = 0  # dropped_log_batches once the spool is closed

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_spool": None, "_sender": None}

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
        from rayjobs.mlflow_spool import fail_fast_http, is_permanent

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
        experiment_id = self.experiment_id or ensure_experiment(self.experiment_name, uri=self.tracking_uri)
        tags = self._run_tags()
        run_id = self.run_id
        if run_id is None and self.parent_run_id is not None:
            run_id = find_child_run(client, experiment_id, self.parent_run_id, self.run_name)
        if run_id is None:
            run = _with_retries(client.create_run, experiment_id, run_name=self.run_name, tags=tags)
            run_id, logged = run.info.run_id, {}
        else:
            _with_retries(client.update_run, run_id, status="RUNNING")
            logged = client.get_run(run_id).data.params
        self.run_id = run_id
        params = flatten_params(self.config)
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            logger.warning("MLflow run %s keeps its first values of params %s", run_id, changed)
        _with_retries(
            client.log_batch,
            run_id,
            params=[Param(k, v) for k, v in params.items() if k not in logged],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._spool is not None:
            return
        from rayjobs import mlflow_spool

        mlflow_spool.fail_fast_http(self.tracking_uri)
        header = {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "experiment_name": self.experiment_name,
            "run_name": self.run_name,
            "parent_run_id": self.parent_run_id,
            "run_id": self.run_id,
            "params": flatten_params(self.config),
            "tags": self._run_tags(),
        }
        self._spool = spool = mlflow_spool.Spool.open(Path(args.output_dir), header)
        self._last_timestamp = spool.state.last_timestamp
        self.run_id = spool.state.run_id or self.run_id
        delivery = mlflow_spool.Delivery(spool, self.tracking_uri, on_run=self._run_created)
        self._sender = mlflow_spool.Sender(delivery)
        self._sender.start()
        # A healthy store has the run before the first step (a dead one fails at once, a hung one is
        # given OPEN_WAIT_S); the sender keeps retrying either way.
        self._sender.wait_sent(spool.state.items[-1]["seq"], mlflow_spool.OPEN_WAIT_S)

    def _run_created(self, run_id: str) -> None:
        self.run_id = run_id

    def _default_tags(self) -> dict[str, str]:
        tags = {TAG_KIND: "trial" if self.parent_run_id else "run"}
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        loss = _loss_of(self.config)
        if loss:
            tags[TAG_LOSS] = str(loss)
        return tags

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._spool is None or not logs:
            return
        # Strictly increasing per run: two logs of one key at one step (a train and an eval log of
        # `epoch`) stay two points, and a resent point is recognisably the same point.
        now = self._last_timestamp = max(int(time.time() * 1000), self._last_timestamp + 1)
        step = int(state.global_step)
        metrics = [
            [_param_key(k), float(v), now, step]
            for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
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
            tags = {TAG_DATASET_FINGERPRINT: dataset_fingerprint} if dataset_fingerprint else {}
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
            _with_retries(self._client.set_terminated, self.run_id, status=status)
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
                    return _dump_yaml(written)
            except yaml.YAMLError:
                pass
        return _dump_yaml(self.config)


def _env_experiment_name() -> str:
    return experiment_name()


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the spool's folder when inside it (so a moved output dir still syncs)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def find_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, run_name: str) -> str | None:
    """The run named `run_name` under `parent_run_id`, if any."""
    if "'" in run_name:
        return None
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.run_name = '{run_name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _model_files(output_dir: Path) -> list[Path]:
    found = {p for pattern in MODEL_FILE_PATTERNS for p in output_dir.glob(pattern) if p.is_file()}
    return sorted(p for p in found if p.name not in NOT_MODEL_FILES)


# ----------------------------------------------------------------------------------------------- sweeps


def start_sweep_parent(spec: dict, spec_path: str | None, *, experiment_id: str, run_name: str) -> str:
    """Create the sweep's parent run (left RUNNING): the spec as params and as `sweep_spec.yaml`."""
    client = MlflowClient(tracking_uri())
    tags = {**run_context_tags(), TAG_KIND: "sweep"}
    if spec_path:
        tags["prefsweep.sweep_spec_path"] = str(spec_path)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(spec).items()])
    client.log_text(run_id, _dump_yaml(spec), "sweep_spec.yaml")
    return run_id


def _child_runs(client: MlflowClient, parent_run_id: str) -> list:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def finish_sweep_parent(
    parent_run_id: str,
    trials: list[TrialSummary],
    *,
    metric: str,
    mode: str,
    scope: str = "last",
    status: str = "FINISHED",
) -> str:
    """Log the leaderboard (CSV, Markdown), comparison plots and `best_config.yaml` on the parent, end it,
    and return the leaderboard as terminal text.

    Trials are ranked by their final metric (`scope="last"`, Ray Tune's default) or their best one
    (`scope="best"`). A trial without `run_id` is matched to its child run by name; one without a curve
    gets the metric's history from MLflow. Children still RUNNING (stopped by a scheduler, or their
    workers died) are marked KILLED.
    """
    leaderboard.check_mode(mode, scope)
    client = MlflowClient(tracking_uri())
    children = {r.info.run_name: r for r in _child_runs(client, parent_run_id)}
    filled = []
    for t in trials:
        run = children.get(t.trial)
        run_id = t.run_id or (run.info.run_id if run else None)
        curve = list(t.curve)
        if not curve and run_id:
            curve = [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]
        filled.append(leaderboard.complete(t, run_id=run_id, curve=curve, mode=mode))
    for run in children.values():
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")

    ranked = leaderboard.rank(filled, mode=mode, scope=scope)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "leaderboard.csv").write_text(leaderboard.to_csv(ranked, metric))
        (out / "leaderboard.md").write_text(leaderboard.to_markdown(ranked, metric, mode=mode, scope=scope))
        report_plots.metric_vs_beta(ranked, metric, scope=scope).savefig(out / "metric_vs_beta.png", dpi=100)
        report_plots.metric_curves(ranked, metric).savefig(out / "metric_curves.png", dpi=100)
        best = ranked[0] if ranked and leaderboard.score(ranked[0], scope) is not None else None
        if best is not None:
            (out / "best_config.yaml").write_text(_dump_yaml(best.config))
        client.log_artifacts(parent_run_id, str(out))
    tags = [
        RunTag("prefsweep.metric", metric),
        RunTag("prefsweep.mode", mode),
        RunTag("prefsweep.num_trials", str(len(trials))),
    ]
    metrics = []
    if best is not None:
        tags += [
            RunTag("prefsweep.best_trial", best.trial),
            RunTag("prefsweep.best_run_id", best.run_id or ""),
        ]
        metrics.append(
            Metric(_param_key(f"best/{metric}"), leaderboard.score(best, scope), int(time.time() * 1000), 0)
        )
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)
    client.set_terminated(parent_run_id, status=status)
    return leaderboard.to_text(ranked, metric, mode=mode, scope=scope)
