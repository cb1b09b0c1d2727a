"""Keep packages a run does not use out of its process: start-up time of `prefsweep train` and of each trial.

accelerate and transformers import DeepSpeed whenever it is installed (`make setup` installs the
`deepspeed` extra), and DeepSpeed imports MLflow for its autotuner: about 2 s of imports on 2 cores, in
every run, for runs that never use either. A `None` entry in `sys.modules` is Python's documented way to
make a package absent for this process: `importlib.util.find_spec` then returns None (so both libraries'
availability checks say "not installed") and `import deepspeed` raises ImportError.
"""

from __future__ import annotations

import sys

from trainer.config.schema import TrainConfig


def skip_unused_deepspeed(cfg: TrainConfig) -> bool:
    """Mark DeepSpeed absent in this process when `cfg` uses none; True when it did.

    Call it once per process, before the run builds its Trainer, and only in processes that run
    exactly this config (the CLI's in-process run, a Ray Train worker): a later config in the same
    process that names `deepspeed` would find it missing. Does nothing once DeepSpeed is imported."""
    if cfg.training.get("deepspeed") or "deepspeed" in sys.modules:
        return False
    sys.modules["deepspeed"] = None  # type: ignore[assignment]
    return True
