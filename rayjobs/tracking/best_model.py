"""The sweep's best trial as an MLflow 3 logged model, registered under the sweep's name.

After the leaderboard is on the parent run (`prefsweep.best_run_id`, `prefsweep.best_trial` tags), the
best trial's output dir (its final weights, or LoRA adapter, and tokenizer, as the trainer saved them)
is logged as a LoggedModel whose source run is the trial's child run, linked as that run's output, and
registered with `mlflow.register_model` under the sweep's name: each sweep of that name adds a
version. The files are Hugging Face's own (`config.json`, `model.safetensors` or
`adapter_model.safetensors`, tokenizer files), so

    path = mlflow.artifacts.download_artifacts("models:/<sweep name>/<version>")
    AutoModelForCausalLM.from_pretrained(path)        # or PeftModel.from_pretrained(base, path)

loads it, and so does `mlflow.pyfunc.load_model("models:/<sweep name>/<version>")` (greedy answers to
prompts; `rayjobs.tracking.pyfunc_model`: MLflow's transformers flavor cannot log a local checkpoint
under transformers 5, its `build_flavor_config_from_local_checkpoint` fails).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from rayjobs.tracking.pyfunc_model import add_pyfunc_flavor

logger = logging.getLogger("prefsweep.mlflow")

MODEL_NAME = "model"
# What a trainer's output dir holds that is the model (top level only; checkpoints and run files stay out).
MODEL_FILES = ("*.safetensors", "config.json", "generation_config.json", "adapter_config.json", "tokenizer*",
               "special_tokens_map.json", "chat_template.jinja", "*.model", "vocab.json", "merges.txt")


def model_files(output_dir: Path) -> list[Path]:
    found = {p for pattern in MODEL_FILES for p in Path(output_dir).glob(pattern) if p.is_file()}
    return sorted(found)


def register_best(parent_run_id: str, registered_name: str, output_root: Path, tracking_uri: str):
    """Log the best trial's model (from `output_root/<best trial>`) and register it; the ModelVersion,
    or None (with a warning saying why) when there is no best trial or its output dir holds no weights."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    best_run_id, best_trial = parent.data.tags.get("prefsweep.best_run_id"), parent.data.tags.get("prefsweep.best_trial")
    if not best_run_id or not best_trial:
        logger.warning("no best trial to register (no trial reported the sweep metric)")
        return None
    files = model_files(Path(output_root) / best_trial)
    if not any(f.suffix == ".safetensors" for f in files):
        logger.warning("best trial %s: no saved weights in %s (shared storage?); nothing registered",
                       best_trial, Path(output_root) / best_trial)
        return None
    run = client.get_run(best_run_id)
    model = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=best_run_id,
        params={k: v for k, v in run.data.params.items() if k in ("pref_loss", "pref_beta", "simpo_gamma", "pref_ftx")},
        tags={"prefsweep.trial": best_trial, "prefsweep.sweep_run_id": parent_run_id}, model_type="causal-lm",
    )
    with tempfile.TemporaryDirectory(prefix="prefsweep-model-") as tmp:
        for f in files:
            shutil.copy2(f, tmp)
        add_pyfunc_flavor(Path(tmp))
        client.log_model_artifacts(model.model_id, tmp)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    step = max((m.step for m in run.data._metric_objs), default=0)
    client.log_outputs(best_run_id, [LoggedModelOutput(model.model_id, step)])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # register_model uses the default client
    try:
        version = mlflow.register_model(f"models:/{model.model_id}", registered_name,
                                        tags={"prefsweep.trial": best_trial})
    finally:
        mlflow.set_tracking_uri(previous)
    client.set_tag(parent_run_id, "prefsweep.registered_model", f"{registered_name}/{version.version}")
    return version
