"""Tags prefsweep puts on MLflow runs, and the context tags (git commit, user, Ray job) of this process."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_USER

TAG_LOSS = "prefsweep.loss"
TAG_TRIAL = "prefsweep.trial"
TAG_KIND = "prefsweep.kind"  # "sweep" (parent), "trial" (child) or "run" (a single `prefsweep train`)
TAG_DATASET_FINGERPRINT = "prefsweep.dataset_fingerprint"
TAG_RAY_JOB_ID = "prefsweep.ray_job_id"
TAG_RAY_SUBMISSION_ID = "prefsweep.ray_job_submission_id"
TAG_DROPPED_LOG_BATCHES = "prefsweep.dropped_log_batches"
# On a sweep's parent run and on every trial's run: the sweep's id, chosen by the driver before it reaches
# the store, so a trial created while the parent run does not exist yet is still found as its child
# (`rayjobs.tracking.store.link_sweep_children`).
TAG_SWEEP_ID = "prefsweep.sweep_id"


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
